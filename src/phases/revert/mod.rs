//! The revert window (docs/design.md §1.8): for a while after the cutover commits, every
//! change made to the new table is streamed back, through the reverse projection
//! ([`reverse`]), into the kept old table, so the old table stays an exact, current copy under
//! the old schema and a revert (the swap back, under the cutover's own protocol) loses no
//! write.
//!
//! Exactly once, by construction:
//! - the reverse publication (`FOR TABLE` the shadow, which becomes the new table: membership
//!   follows the OID through the rename) and a TEMPORARY slot are created before the cutover
//!   commits ([`ReverseStream::prepare`]), so every change committed after the cutover is in
//!   the slot's stream;
//! - that stream also carries the applier's own writes to the shadow until the cutover; the
//!   cutover transaction itself emits a logical message ([`marker_sql`]) with the window's
//!   prefix, and the reverse applier skips every transaction up to and including the one that
//!   carries it ([`crate::phases::apply::ApplyOptions::after_marker`]). Logical decoding
//!   delivers whole transactions in commit order, so what follows the marker is exactly what
//!   committed on the new table after the cutover: applied once each, none missed.
//!
//! The reverse applier is tolerant: a row the old table rejects (a value that does not
//! convert back, a constraint of the old table) is skipped and reported; the window then
//! says the revert is no longer lossless, and a revert refuses unless forced. It writes with
//! the applier's ordinary statements; the old table has no user trigger left after the
//! cutover (the triggers moved to the new table), so none fires.
//!
//! The slot is TEMPORARY: if doppel dies during the window, the slot goes with it and only
//! the guarded rollback script remains (see `cutover::rollback`).

mod reverse;
mod swap;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::conninfo;
use crate::model::catalog;
use crate::phases::apply::{Applier, ApplyOptions, ApplyStatus};
use crate::phases::capture::spool::{self, SpoolReader};
use crate::phases::capture::stream::{StreamStatus, Streamer};
use crate::phases::fence::Fencer;
use crate::plan::Plan;
use crate::sql::{ident, literal};
use crate::testing::Probe;

pub use reverse::{ColumnFate, fates};
pub use swap::RevertOutcome;

/// The content of the logical message that marks the cutover in the reverse stream.
const MARKER: &str = "cutover";

/// The statement the cutover transaction runs to mark the reverse stream: a transactional
/// logical message with the window's prefix (`doppel_<oid>_rev`).
pub fn marker_sql(plan: &Plan) -> String {
    format!(
        "SELECT pg_logical_emit_message(true, {}, {})",
        literal(&plan.names.revert_prefix),
        literal(MARKER)
    )
}

/// The reverse stream set up before the cutover: its publication, its TEMPORARY slot (held
/// by the replication connection the consumer owns) and the spool it is consumed into.
pub struct ReverseStream {
    streamer: Streamer,
    reader: Option<SpoolReader>,
    spool: PathBuf,
}

impl ReverseStream {
    /// Creates the window's publication `FOR TABLE` the shadow, then its TEMPORARY slot, and
    /// starts consuming the slot into `<work_dir>/doppel-<oid>-<pid>.revert.spool`.
    /// `replication` is the replication connection's configuration (with the exact-output
    /// settings); `client` a normal session.
    ///
    /// Errors: a statement or the replication connection failed (the caller drops what was
    /// created: the publication, and the slot goes with the connection).
    pub async fn prepare(
        client: &tokio_postgres::Client,
        replication: &conninfo::ConnInfo,
        plan: &Plan,
        work_dir: &Path,
        probe: Probe,
    ) -> Result<ReverseStream> {
        let n = &plan.names;
        client
            .batch_execute(
                &plan.create_publication_sql(&n.revert_publication, &n.shadow_qualified()),
            )
            .await
            .context("creating the revert window's publication")?;
        let mut connection = conninfo::connect_replication(replication)
            .await
            .context("opening the revert window's replication connection")?;
        let slot = connection
            .create_logical_slot(&n.revert_slot, true)
            .await
            .context("creating the revert window's replication slot")?;
        let stream = connection
            .start_logical_replication(
                &n.revert_slot,
                slot.consistent_point,
                &n.revert_publication,
                true,
            )
            .await
            .context("starting the revert window's stream")?;
        let spool = work_dir.join(format!(
            "doppel-{}-{}.revert.spool",
            plan.original.oid,
            std::process::id()
        ));
        let (writer, reader) = spool::create(&spool)?;
        Ok(ReverseStream {
            streamer: Streamer::spawn(stream, writer, probe),
            reader: Some(reader),
            spool,
        })
    }

    /// Stops the consumer (the server drops the TEMPORARY slot with its connection) and
    /// removes the spool. Returns the consumer's error if it had failed.
    pub async fn stop(self) -> Result<()> {
        let stopped = self.streamer.stop().await;
        std::fs::remove_file(&self.spool).ok();
        stopped
    }
}

/// What the revert window reports (status line, `status --json`, the run's report).
#[derive(Debug, Clone, Default)]
pub struct WindowStatus {
    /// The cutover's marker has come through the reverse stream: changes after it are being
    /// applied.
    pub streaming: bool,
    /// Changes applied to the old table.
    pub applied: u64,
    /// WAL between the reverse stream's head and what the reverse applier has applied
    /// (bytes).
    pub lag_bytes: u64,
    /// Keys whose latest change the old table rejected, with the reason: while any remain,
    /// a revert would lose them.
    pub rejected: Vec<(Vec<Option<String>>, String)>,
    /// Why a revert is no longer possible (the reverse stream or applier failed).
    pub broken: Option<String>,
}

impl WindowStatus {
    /// A revert loses nothing now.
    pub fn lossless(&self) -> bool {
        self.rejected.is_empty() && self.broken.is_none()
    }
}

/// An open revert window: the reverse applier on the reverse stream, its fencer, and what a
/// revert re-checks.
pub struct Window {
    /// The reverse plan (the new table as the source, the old one as the target).
    pub plan: Arc<Plan>,
    applier: Applier,
    fencer: Fencer,
    stream: ReverseStream,
    /// The new table's catalog fingerprint when the window opened.
    fingerprint: String,
    /// When the window closes by itself.
    pub ends: Instant,
}

impl Window {
    /// Opens the window once the cutover committed: reads the new table (`new_oid`) and its
    /// dependents, builds the reverse plan, and starts the tolerant reverse applier (which
    /// skips up to the cutover's marker) and a fencer on sessions of their own. The window
    /// lasts `duration` from now.
    ///
    /// Errors: a catalog read or a session failed; the reverse plan cannot be built.
    pub async fn open(
        config: &conninfo::ConnInfo,
        forward: &Plan,
        new_oid: u32,
        mut stream: ReverseStream,
        duration: Duration,
    ) -> Result<Window> {
        let client = conninfo::connect(config).await?;
        let plan = reverse::plan(&client, forward, new_oid).await?;
        let fingerprint = catalog::fingerprint(&client, new_oid).await?;
        client
            .batch_execute(&format!(
                "SET application_name = 'doppel revert applier'; {}",
                crate::sql::WORKING_SESSION
            ))
            .await?;
        let reader = stream
            .reader
            .take()
            .context("the revert window's spool reader was already taken")?;
        let options = ApplyOptions {
            after_marker: Some(MARKER.to_string()),
            tolerant: true,
            ..ApplyOptions::default()
        };
        let applier = Applier::spawn(client, plan.clone(), reader, options).await?;
        applier.set_collapse(!has_constraining_indexes(&plan.target));
        applier.resume();
        let fence_client = conninfo::connect(config).await?;
        fence_client
            .batch_execute(&format!(
                "SET application_name = 'doppel revert fence'; {}",
                crate::sql::WORKING_SESSION
            ))
            .await?;
        let fencer = Fencer::new(fence_client, &plan.names.message_prefix).await?;
        Ok(Window {
            plan,
            applier,
            fencer,
            stream,
            fingerprint,
            ends: Instant::now() + duration,
        })
    }

    /// The window's state now.
    pub fn status(&self) -> WindowStatus {
        let applied: ApplyStatus = self.applier.status();
        let stream: StreamStatus = self.stream.streamer.status();
        let head = stream.received.max(stream.server_wal_end);
        let broken = self
            .stream
            .streamer
            .check()
            .and_then(|()| self.applier.check())
            .err()
            .map(|e| format!("{e:#}"));
        WindowStatus {
            streaming: applied.past_marker,
            applied: applied.changes,
            lag_bytes: head.bytes_since(applied.applied.max(stream.confirmed.min(head))),
            rejected: applied.rejected,
            broken,
        }
    }

    /// Closes the window: stops the reverse applier and stream (the TEMPORARY slot goes with
    /// its connection) and drops the window's publication on `client`. The old table stays
    /// for the operator to drop.
    ///
    /// Errors: dropping the publication failed (logged by the caller; the slot is gone).
    pub async fn close(self, client: &tokio_postgres::Client) -> Result<()> {
        if let Err(e) = self.applier.stop().await {
            tracing::warn!("stopping the reverse applier: {e:#}");
        }
        if let Err(e) = self.stream.stop().await {
            tracing::warn!("stopping the reverse stream: {e:#}");
        }
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                ident(&self.plan.names.publication)
            ))
            .await
            .context("dropping the revert window's publication")
    }
}

/// Whether `table` has unique or exclusion indexes besides its primary key (then changes are
/// applied in source order, never collapsed per key).
fn has_constraining_indexes(table: &catalog::Table) -> bool {
    table.indexes.iter().any(|i| {
        !i.is_primary
            && (i.definition.starts_with("CREATE UNIQUE") || matches!(i.constraint, Some(('x', _))))
    })
}
