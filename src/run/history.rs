//! A run's row in the migration history (docs/design.md §1.11; the table itself is
//! `ops::history`): begun once the run is planned, completed with its outcome. A history
//! that cannot be written is logged, never fatal.

use anyhow::Result;
use serde_json::json;

use super::{Outcome, RunOptions};
use crate::conninfo;
use crate::failure::exit_code;
use crate::ops::history::{self, End, Record, Start};
use crate::plan::Migration;

/// Opens the run's history row (outcome `running`) on a session of its own; `None` with
/// `--no-history` or when it cannot be written (logged).
pub(super) async fn begin(
    config: &crate::conninfo::ConnInfo,
    options: &RunOptions,
    migration: &Migration,
) -> Option<Record> {
    if !options.history.enabled {
        return None;
    }
    let strategies: Vec<(String, String, String)> = migration
        .clauses
        .iter()
        .map(|c| {
            (
                c.text.clone(),
                c.strategy.label().to_string(),
                c.reason.clone(),
            )
        })
        .collect();
    let mut clauses = options.alters.clone();
    clauses.extend(options.backfills.iter().map(|b| format!("--backfill {b}")));
    let start = Start {
        kind: "run",
        table: migration.original.qualified(),
        table_oid: Some(migration.original.oid),
        clauses,
        strategies: history::strategies_json(&strategies),
    };
    match open(config, options, &start).await {
        Ok(record) => Some(record),
        Err(e) => {
            tracing::warn!(
                "could not record this run in {} ({e:#}); it goes on unrecorded",
                options.history.qualified()
            );
            None
        }
    }
}

/// Opens a history row on a new session.
///
/// Errors: the session cannot be opened, or the row cannot be written.
pub(crate) async fn open(
    config: &crate::conninfo::ConnInfo,
    options: &RunOptions,
    start: &Start,
) -> Result<Record> {
    let client = conninfo::connect(config).await?;
    client
        .batch_execute("SET application_name = 'doppel history'")
        .await?;
    Record::begin(client, &options.history, start).await
}

/// Completes the run's row from its result.
pub(super) async fn finish(record: Option<Record>, result: &Result<Outcome>) {
    let Some(record) = record else { return };
    let end = match result {
        Ok(Outcome::Migrated(report)) => End {
            outcome: "succeeded".into(),
            exit_code: 0,
            rows_copied: Some(report.copy.rows as i64),
            lock_hold_ms: Some(report.cutover.lock_held.as_secs_f64() * 1000.0),
            cutover_lsn: report.cutover.commit_lsn.map(|l| l.to_string()),
            rollback_script: std::fs::read_to_string(&report.cutover.rollback_path).ok(),
            details: json!({
                "applied_changes": report.applied_changes,
                "cutover_attempts": report.cutover.attempts,
                "kept_as": report.plan.names.old_qualified(),
                "rollback_script_path": report.cutover.rollback_path.display().to_string(),
                "cutover_record": report.cutover.record_path.display().to_string(),
                "total_s": report.total.as_secs_f64(),
            }),
            ..End::default()
        },
        Ok(Outcome::Altered(report)) => End {
            outcome: "succeeded".into(),
            exit_code: 0,
            lock_hold_ms: Some(report.direct.longest_blocking_hold().as_secs_f64() * 1000.0),
            details: json!({
                "direct_steps": steps_json(&report.direct),
                "oid_unchanged": report.oid_after == report.original.oid,
                "total_s": report.total.as_secs_f64(),
            }),
            ..End::default()
        },
        // A resume that found the cutover committed returns before a record is begun.
        Ok(Outcome::Planned(_) | Outcome::Finished(_)) => return,
        Err(e) => {
            let code = exit_code(e);
            End {
                outcome: history::outcome_of(code).into(),
                exit_code: i32::from(code),
                error: Some(format!("{e:#}")),
                details: json!({}),
                ..End::default()
            }
        }
    };
    record.finish(end).await;
}

/// Each direct step as JSON: what, lock, attempts, hold and duration (ms).
fn steps_json(report: &crate::phases::direct::DirectReport) -> serde_json::Value {
    json!(
        report
            .steps
            .iter()
            .map(|s| json!({
                "step": s.what,
                "lock": s.lock.sql(),
                "attempts": s.attempts,
                "lock_wait_ms": s.lock_wait.as_secs_f64() * 1000.0,
                "held_ms": s.held.as_secs_f64() * 1000.0,
                "elapsed_ms": s.elapsed.as_secs_f64() * 1000.0,
            }))
            .collect::<Vec<_>>()
    )
}

/// Records an executed run that preflight refused (or whose lock another run holds), when
/// the history can be written: outcome `refused`, exit 2.
pub(super) async fn refused(
    config: &crate::conninfo::ConnInfo,
    options: &RunOptions,
    e: &anyhow::Error,
) {
    if !options.history.enabled {
        return;
    }
    let start = Start {
        kind: "run",
        table: options.table.clone(),
        table_oid: None,
        clauses: options.alters.clone(),
        strategies: json!([]),
    };
    let Ok(record) = open(config, options, &start).await else {
        return;
    };
    let code = exit_code(e);
    record
        .finish(End {
            outcome: history::outcome_of(code).into(),
            exit_code: i32::from(code),
            error: Some(format!("{e:#}")),
            details: json!({}),
            ..End::default()
        })
        .await;
}
