//! The visibility wait before a re-read (docs/design.md §2.6, F3): a commit can be decoded
//! before new snapshots see it.

use std::time::Duration;

use anyhow::{Result, bail};

use crate::model::snapshot::Snapshot;
use crate::testing::{Probe, pause_point};

/// Waits until the transactions `xids` (32-bit, committed) are visible to new snapshots of
/// this session: a commit can be decoded before it leaves the ProcArray (docs/design.md F3). One
/// `pg_current_snapshot()` per check, whatever the number of transactions.
///
/// Errors: a transaction still invisible after 60 s (a synchronous standby that never
/// acknowledges), or a failed query.
pub async fn wait_visible(client: &impl tokio_postgres::GenericClient, xids: &[u32]) -> Result<()> {
    wait_visible_pausing(client, xids, &Probe::default()).await
}

/// [`wait_visible`], stopping once at the test-only `visibility-wait` pause point of `probe`
/// when a transaction is found invisible.
pub(super) async fn wait_visible_pausing(
    client: &impl tokio_postgres::GenericClient,
    xids: &[u32],
    probe: &Probe,
) -> Result<()> {
    if xids.is_empty() {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut first = true;
    loop {
        let text: String = client
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await?
            .get(0);
        let snapshot = Snapshot::parse(&text)?;
        let Some(xid) = xids.iter().copied().find(|x| !snapshot.sees_xid32(*x)) else {
            return Ok(());
        };
        if std::mem::take(&mut first) {
            pause_point!(probe, "visibility-wait", format!("xid={xid}"));
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "transaction {xid} was decoded but did not become visible within 60 s (a synchronous standby not acknowledging?)"
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
