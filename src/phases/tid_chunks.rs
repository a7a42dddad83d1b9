//! The backfill by TID range (`--chunk-by tid`, docs/design.md §1.4): chunks of heap pages
//! read in physical order by a TID Range Scan (PostgreSQL 14+), as PeerDB's CTID-parallel
//! initial copy does, instead of primary-key ranges read through the index.
//!
//! Each chunk still runs under its own short snapshot (invariant I4), so a TID range does not
//! partition the keys: a row updated between two chunks can leave its old version in a chunk
//! copied before the update and its new version in one copied after it, and the shadow holds
//! the key twice. Both versions are visible to snapshots taken after the slot's consistent
//! point only if a change to that key committed after it, so the stream has every such key.
//! After the last chunk a marker is emitted into the stream; the keys of every change spooled
//! before it are collected ([`crate::phases::apply::changed_keys`]) and their rows deleted
//! from the shadow before its primary key is built. The applier then replays every change
//! of those keys over an absent row, which the apply rules already handle (a full row is
//! upserted, a partial one re-read from the original). Idle, the set is empty and nothing is
//! deleted.
//!
//! A rewrite of the original during the copy (`VACUUM FULL`, `CLUSTER`) moves every row to
//! another TID without a change in the stream, so rows could be missed or copied twice: the
//! original's file node is read before and after the copy, and a change stops the run
//! (exit 8; a TRUNCATE, which gives it a new file too, is stopped there as well).
//!
//! Only keys whose version an UPDATE or DELETE replaced can have been copied twice, so only
//! those are collected ([`crate::phases::apply::changed_keys`]).

use std::collections::HashSet;

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::model::projection::key_arrays;
use crate::phases::capture::spool::SpoolReader;
use crate::plan::Plan;
use crate::testing::{Probe, broken};

/// The logical message content that marks the end of the backfill in the stream.
const MARKER: &str = "backfill-end";
/// Keys per `DELETE` statement (each statement is one scan of the shadow).
const KEYS_PER_DELETE: usize = 1_000_000;

/// The heap of table `oid` as the planner sees it now: its pages (`pg_relation_size` over
/// the block size) and the rows per page `pg_class` estimates (50 when it has no estimate).
///
/// Errors: the query fails.
pub async fn heap_pages(client: &Client, oid: u32) -> Result<(i64, f64)> {
    let row = client
        .query_one(
            "SELECT pg_relation_size(c.oid) / current_setting('block_size')::bigint,
                    CASE WHEN c.relpages > 0 AND c.reltuples > 0
                         THEN c.reltuples / c.relpages ELSE 50 END::float8
             FROM pg_class c WHERE c.oid = $1",
            &[&oid],
        )
        .await
        .context("reading the table's size for the TID-range chunks")?;
    Ok((row.get(0), row.get(1)))
}

/// The bound `(block,0)` of a TID range, as the copy statement's text parameter.
pub fn bound(block: i64) -> Vec<Option<String>> {
    vec![Some(format!("({block},0)"))]
}

/// The file node of table `oid` (`pg_relation_filenode`): a rewrite gives it a new one.
///
/// Errors: the query fails.
pub async fn filenode(client: &Client, oid: u32) -> Result<u32> {
    let row = client
        .query_one("SELECT pg_relation_filenode($1::oid)::oid", &[&oid])
        .await
        .context("reading the table's file node")?;
    Ok(row.get(0))
}

/// Stops the run (exit 8) when the original's file node is no longer `before`: the table
/// was rewritten (or truncated) during the TID-range copy.
///
/// Errors: the rewrite, as a conflict; a failed query.
pub async fn check_not_rewritten(client: &Client, plan: &Plan, before: u32) -> Result<()> {
    if filenode(client, plan.original.oid).await? == before {
        return Ok(());
    }
    Err(crate::failure::fail(
        crate::failure::FailureKind::Conflict,
        format!(
            "{} was rewritten or truncated during the backfill (VACUUM FULL, CLUSTER, TRUNCATE or a rewriting ALTER gave it a new file, its rows at other TIDs), so the TID-range chunks no longer cover it; nothing was cut over and the original table is untouched. Run doppel again, or with --chunk-by key",
            plan.original.qualified()
        ),
    ))
}

/// After the last TID-range chunk: emits the marker on `client`, collects the keys changed
/// before it from `reader` (a fresh reader of the run's spool) and deletes their rows from
/// the shadow. Returns (keys changed, shadow rows deleted).
///
/// Errors: the marker cannot be emitted, the spool cannot be read up to it
/// ([`crate::phases::apply::changed_keys`]), the `DELETE` fails.
pub async fn remove_copied_twice(
    client: &Client,
    plan: &Plan,
    reader: SpoolReader,
    probe: &Probe,
) -> Result<(usize, u64)> {
    client
        .execute(
            "SELECT pg_logical_emit_message(true, $1, $2)",
            &[&plan.names.message_prefix, &MARKER],
        )
        .await
        .context("marking the end of the backfill in the stream")?;
    let keys = crate::phases::apply::changed_keys(plan, reader, MARKER).await?;
    // Test-only broken variant (never in a normal build): the keys copied twice stay.
    if broken!(probe, NoTidDedupe) {
        return Ok((keys.len(), 0));
    }
    let deleted = delete_keys(client, plan, &keys).await?;
    Ok((keys.len(), deleted))
}

/// Deletes the shadow rows of `keys`, [`KEYS_PER_DELETE`] keys per statement.
async fn delete_keys(
    client: &Client,
    plan: &Plan,
    keys: &HashSet<Vec<Option<String>>>,
) -> Result<u64> {
    if keys.is_empty() {
        return Ok(0);
    }
    let sql = plan
        .projection
        .delete_keys_sql(&plan.names.shadow_qualified());
    let statement = client.prepare(&sql).await?;
    let keys: Vec<&Vec<Option<String>>> = keys.iter().collect();
    let mut deleted = 0;
    for batch in keys.chunks(KEYS_PER_DELETE) {
        let columns = key_arrays(plan.projection.key.len(), batch);
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = columns
            .iter()
            .map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        deleted += client
            .execute(&statement, &params)
            .await
            .context("removing the rows the TID-range backfill may have copied twice")?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_tid_literals() {
        assert_eq!(bound(42), vec![Some("(42,0)".to_string())]);
    }
}
