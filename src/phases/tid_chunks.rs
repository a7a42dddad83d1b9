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
//! before it are collected ([`crate::phases::apply::ChangedKeys`]) into a temporary table of
//! the control session, in sets of [`KEYS_PER_SET`] so that doppel's memory does not grow
//! with them, and their rows deleted from the shadow in one statement before its primary key
//! is built. The applier then replays every change of those keys over an absent row, which
//! the apply rules already handle (a full row is upserted, a partial one re-read from the
//! original). Idle, the set is empty and nothing is deleted.
//!
//! A rewrite of the original during the copy (`VACUUM FULL`, `CLUSTER`) moves every row to
//! another TID without a change in the stream, so rows could be missed or copied twice: the
//! original's file node is read before and after the copy, and a change stops the run
//! (exit 8; a TRUNCATE, which gives it a new file too, is stopped there as well).
//!
//! Only keys whose version an UPDATE or DELETE replaced can have been copied twice, so only
//! those are collected ([`crate::phases::apply::ChangedKeys`]).

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::model::projection::key_arrays;
use crate::phases::apply::{ChangedKeys, Key};
use crate::phases::capture::spool::SpoolReader;
use crate::plan::Plan;
use crate::testing::{Probe, broken};

/// The logical message content that marks the end of the backfill in the stream.
const MARKER: &str = "backfill-end";
/// Distinct keys doppel holds at once while it moves the changed keys to the server (about
/// 100 bytes each for a bigint key: some 10 MiB).
pub const KEYS_PER_SET: usize = 100_000;

/// The temporary table (of the control session) holding the changed keys.
const KEY_SET_TABLE: &str = "pg_temp.doppel_tid_changed_keys";

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
/// before it from `reader` (a fresh reader of the run's spool) into a temporary table of
/// `client`'s session, `set_size` distinct keys at a time ([`KEYS_PER_SET`] by default), and
/// deletes their rows from the shadow in one statement (one scan of the shadow, which has no
/// index yet). Returns (distinct keys changed, shadow rows deleted).
///
/// Errors: the marker cannot be emitted, the spool cannot be read up to it
/// ([`crate::phases::apply::ChangedKeys::next_set`]), the temporary table cannot be created
/// or filled, the `DELETE` fails.
pub async fn remove_copied_twice(
    client: &Client,
    plan: &Plan,
    reader: SpoolReader,
    set_size: usize,
    probe: &Probe,
) -> Result<(u64, u64)> {
    client
        .execute(
            "SELECT pg_logical_emit_message(true, $1, $2)",
            &[&plan.names.message_prefix, &MARKER],
        )
        .await
        .context("marking the end of the backfill in the stream")?;
    let mut changed = ChangedKeys::new(plan, reader, MARKER);
    let projection = &plan.projection;
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {KEY_SET_TABLE}; {}",
            projection.key_set_table_sql(KEY_SET_TABLE)
        ))
        .await
        .context("creating the temporary table of the keys changed during the copy")?;
    let removed = fill_and_delete(client, plan, &mut changed, set_size.max(1), probe).await;
    // Dropped on failure too (the session's end would drop it anyway); the first error wins.
    let dropped = client
        .batch_execute(&format!("DROP TABLE IF EXISTS {KEY_SET_TABLE}"))
        .await;
    let removed = removed?;
    dropped.context("dropping the temporary table of the keys changed during the copy")?;
    Ok(removed)
}

/// Moves the keys of `changed` into [`KEY_SET_TABLE`], `set_size` at a time, then deletes
/// their rows from the shadow. Returns (distinct keys, rows deleted).
async fn fill_and_delete(
    client: &Client,
    plan: &Plan,
    changed: &mut ChangedKeys<'_>,
    set_size: usize,
    probe: &Probe,
) -> Result<(u64, u64)> {
    let insert = client
        .prepare(&plan.projection.insert_key_set_sql(KEY_SET_TABLE))
        .await?;
    let width = plan.projection.key.len();
    let mut distinct = 0;
    while let Some(set) = changed.next_set(set_size).await? {
        let keys: Vec<&Key> = set.iter().collect();
        let columns = key_arrays(width, &keys);
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = columns
            .iter()
            .map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        distinct += client
            .execute(&insert, &params)
            .await
            .context("recording the keys changed during the copy")?;
    }
    // Test-only broken variant (never in a normal build): the keys copied twice stay.
    if broken!(probe, NoTidDedupe) || distinct == 0 {
        return Ok((distinct, 0));
    }
    let deleted = client
        .execute(
            &plan
                .projection
                .delete_key_set_sql(&plan.names.shadow_qualified(), KEY_SET_TABLE),
            &[],
        )
        .await
        .context("removing the rows the TID-range backfill may have copied twice")?;
    Ok((distinct, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_tid_literals() {
        assert_eq!(bound(42), vec![Some("(42,0)".to_string())]);
    }
}
