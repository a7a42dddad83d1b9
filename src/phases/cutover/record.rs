//! The cutover record (docs/design.md §4.5): a JSON file next to the rollback script, written
//! after the commit.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::CutoverReport;
use crate::plan::Plan;

/// Stores the cutover record (JSON) next to the rollback script (same name, `.json`): table
/// and OID, the kept name, lock hold and fence wait (ms), the steps inside the lock (ms),
/// every attempt with its outcome, lock wait, lock hold and predicted drain (ms) and blocking pids,
/// killed sessions, the database, the commit LSN and the snapshot of the cutover
/// transaction, the script's absolute path and the failed after-commit steps. Returns its
/// path.
///
/// Errors: the record cannot be serialized or the file cannot be written (the caller only
/// warns: the cutover has committed).
pub(super) fn write(plan: &Plan, report: &CutoverReport) -> Result<PathBuf> {
    let attempts: Vec<serde_json::Value> = report
        .history
        .iter()
        .map(|a| {
            serde_json::json!({
                "attempt": a.attempt,
                "outcome": a.outcome,
                "lock_wait_ms": a.lock_wait_ms,
                "lock_held_ms": a.lock_held_ms,
                "predicted_drain_ms": a.predicted_drain_ms,
                "blocking_pids": a.blockers,
                "old_snapshot_wait_ms": a.old_snapshot_wait_ms,
                "old_snapshot_pids": a.old_snapshots,
            })
        })
        .collect();
    let record = serde_json::json!({
        "table": plan.original.qualified(),
        "table_oid": plan.original.oid,
        "kept_as": plan.names.old_qualified(),
        "finished_at_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "lock_held_ms": report.lock_held.as_secs_f64() * 1000.0,
        "fence_wait_ms": report.fence_wait.as_secs_f64() * 1000.0,
        "inside_lock_ms": report
            .inside_lock
            .iter()
            .map(|(step, d)| serde_json::json!({"step": step, "ms": d.as_secs_f64() * 1000.0}))
            .collect::<Vec<_>>(),
        "attempts": attempts,
        "killed": report.killed,
        "queued_old_snapshots": report.queued_old_snapshots,
        "changes_in_window": report.changes_in_window,
        "pgbouncer_reconnect": report.poolers,
        "database": report.database,
        "commit_lsn": report.commit_lsn.map(|l| l.to_string()),
        "snapshot": report.snapshot,
        "rollback_script": std::path::absolute(&report.rollback_path)
            .unwrap_or_else(|_| report.rollback_path.clone())
            .display()
            .to_string(),
        "unvalidated": report.unvalidated.iter().map(|(n, e)| serde_json::json!({"name": n, "error": e})).collect::<Vec<_>>(),
    });
    let path = report.rollback_path.with_extension("json");
    std::fs::write(&path, serde_json::to_string_pretty(&record)?)
        .with_context(|| format!("cannot write the cutover record {}", path.display()))?;
    Ok(path)
}
