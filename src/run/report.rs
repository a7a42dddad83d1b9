//! What a run returns: the dry run's plan (rendered for a DBA) or the migration's report.

use std::time::Duration;

use crate::model::phase::Phase;
use crate::ops::history::HistoryOptions;
use crate::ops::progress;
use crate::phases::backfill::CopyReport;
use crate::phases::cutover::{self, CutoverReport};
use crate::phases::direct::DirectReport;
use crate::phases::revert::{self, ColumnFate};
use crate::phases::shadow;
use crate::phases::verify::VerifyReport;
use crate::plan::{Action, Clause, DirectPlan, Migration, Plan, Rewrite};
use crate::run::AlterReport;

/// What a completed migration did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The plan that ran.
    pub plan: Plan,
    /// Backfill figures.
    pub copy: CopyReport,
    /// Verification figures.
    pub verify: VerifyReport,
    /// Cutover figures.
    pub cutover: CutoverReport,
    /// Row changes applied from the stream.
    pub applied_changes: u64,
    /// Wall time of each phase, in order.
    pub phases: Vec<(Phase, Duration)>,
    /// Whole run.
    pub total: Duration,
    /// The revert window, when `--revert-window` opened one after the cutover.
    pub window: Option<super::WindowReport>,
    /// Every clause with its strategy (empty when the run was planned as a shadow
    /// migration alone).
    pub clauses: Vec<Clause>,
}

/// The result of `run`.
#[derive(Debug)]
pub enum Outcome {
    /// A dry run: the plan, nothing created.
    Planned(Box<Migration>),
    /// The shadow migration completed and verified (after the direct steps of a mix).
    Migrated(Box<RunReport>),
    /// `--resume` (or a reconnect) found that the interrupted run's cutover had committed:
    /// the run was finished (its slot, publication, spool and checkpoint removed).
    Finished(Box<super::Finished>),
    /// Every clause ran on the table itself (direct and online strategies).
    Altered(Box<AlterReport>),
}

/// Renders the dry-run plan for a DBA: checks passed, warnings, the shadow DDL, the phases,
/// the cutover and rollback SQL.
///
/// `revert_window` is `--revert-window`: the plan says what a revert would lose or risk, column
/// by column, and that it is possible only while doppel runs.
pub fn render_plan(
    plan: &Plan,
    script: &cutover::Script,
    revert_window: Option<std::time::Duration>,
) -> String {
    let mut out = String::new();
    let t = &plan.original;
    out.push_str(&format!(
        "doppel plan for {} (oid {}, about {} rows, {} with indexes and TOAST)\n",
        t.qualified(),
        t.oid,
        t.rows_estimate.max(0),
        progress::format_bytes(t.total_bytes.max(0) as u64)
    ));
    out.push_str(&format!(
        "ALTER: {}\n",
        plan.alter
            .statements
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    ));
    out.push_str(match plan.rewrite {
        Rewrite::Rewrite => "cost if run directly: full table rewrite under ACCESS EXCLUSIVE\n",
        Rewrite::ScanUnderLock => {
            "cost if run directly: a scan or index build under its lock (no rewrite)\n"
        }
        Rewrite::MetadataOnly => "cost if run directly: metadata-only (no rewrite)\n",
    });
    out.push_str("preflight: all checks passed\n");
    for w in &plan.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out.push_str("\napplication compatibility (what clients see at the cutover):\n");
    for line in &plan.compatibility {
        out.push_str(&format!("  - {line}\n"));
    }
    out.push_str(&format!(
        "\nphases:\n  1. create publication {} FOR TABLE {} and TEMPORARY logical slot {} (pgoutput)\n  2. create shadow {} (no indexes; autovacuum off)\n  3. backfill in primary-key chunks (time-sized), streaming changes to a local spool\n  4. build the primary key, apply the spooled changes, build {} secondary index(es)/constraint(s), VACUUM (ANALYZE)\n  5. verify counts and hashes chunk by chunk\n  6. cutover under ACCESS EXCLUSIVE with lock_timeout, then keep {} as {}\n",
        plan.names.publication,
        t.qualified(),
        plan.names.slot,
        plan.names.shadow_qualified(),
        shadow::plain_index_sql(plan).len() + shadow::constraining_sql(plan).len(),
        t.qualified(),
        plan.names.old_qualified()
    ));
    out.push_str("\nshadow DDL:\n");
    for s in shadow::create_sql(plan) {
        out.push_str(&format!("  {s};\n"));
    }
    out.push_str("\nafter the backfill:\n");
    for s in shadow::primary_key_sql(plan)
        .into_iter()
        .chain(shadow::plain_index_sql(plan))
        .chain(shadow::constraining_sql(plan))
    {
        out.push_str(&format!("  {s};\n"));
    }
    out.push_str(
        "\ncutover (one transaction, after LOCK TABLE .. IN ACCESS EXCLUSIVE MODE and a fence):\n",
    );
    for s in &script.forward {
        out.push_str(&format!("  {s};\n"));
    }
    out.push_str(&revert_section(plan, revert_window));
    out.push_str("\nrollback script (written to disk before the cutover commits):\n");
    for line in script.rollback.lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

/// The plan's "after the cutover" section: the revert window (or how to keep one), and
/// what writing the new table's rows back into the old table loses or risks.
fn revert_section(plan: &Plan, window: Option<std::time::Duration>) -> String {
    let mut out = String::from("\nafter the cutover:\n");
    match window {
        Some(d) => out.push_str(&format!(
            "  revert window: {} — doppel keeps running and streams every change made to {} back into {}; `doppel ctl --table {} revert` swaps back losing no write, `finalize` ends the window. A revert is possible only while doppel runs: its slot is TEMPORARY; if doppel dies, only the rollback script remains (it refuses when writes would be lost)\n",
            humantime::format_duration(d),
            plan.original.qualified(),
            plan.names.old_qualified(),
            plan.original.qualified()
        )),
        None => out.push_str(
            "  no revert window (recommended: --revert-window 30m keeps the old table current so a revert loses no write); the rollback script refuses when writes made after the cutover would be lost\n",
        ),
    }
    let (fates, added) = revert::fates(plan);
    for (column, fate) in fates {
        let line = match fate {
            ColumnFate::Same => continue,
            ColumnFate::Converted {
                new,
                old,
                always_fits: true,
            } => {
                format!(
                    "column {column}: written back from {new} to {old}: every value fits (lossless)"
                )
            }
            ColumnFate::Converted { new, old, .. } => format!(
                "column {column}: written back from {new} to {old}: a value written after the cutover that {old} cannot hold exactly is reported, and makes a revert lose it (revert refuses without --force)"
            ),
            ColumnFate::Dropped => format!(
                "column {column} (dropped by the ALTER): a row inserted after the cutover gets its default in the old table; a row updated keeps its old value"
            ),
        };
        out.push_str(&format!("  {line}\n"));
    }
    for column in added {
        out.push_str(&format!(
            "  column {column} (added by the ALTER): its values are not written back; a revert loses them\n"
        ));
    }
    out
}

/// Renders the dry run of a migration for a DBA: each clause with its strategy, the direct
/// steps with the lock each takes and how long it holds it, the shadow migration's plan
/// ([`render_plan`], when it is planned now), and where the run will be recorded.
/// `script` is the shadow's swap and rollback SQL, when there is a shadow planned now.
pub fn render_migration(
    migration: &Migration,
    script: Option<&cutover::Script>,
    revert_window: Option<std::time::Duration>,
    history: &HistoryOptions,
) -> String {
    let t = &migration.original;
    let mut out = format!(
        "doppel plan for {} (oid {}, about {} rows, {} with indexes and TOAST)\n",
        t.qualified(),
        t.oid,
        t.rows_estimate.max(0),
        progress::format_bytes(t.total_bytes.max(0) as u64)
    );
    out.push_str("\nstrategy per clause:\n");
    for (i, c) in migration.clauses.iter().enumerate() {
        out.push_str(&format!(
            "  {}. {:<7} {}   -- {}\n",
            i + 1,
            c.strategy.label(),
            c.text,
            c.reason
        ));
    }
    for w in &migration.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    if let Some(direct) = &migration.direct {
        out.push_str(&render_direct(migration, direct));
    }
    if let (Some(plan), Some(script)) = (migration.shadow_plan(), script) {
        out.push_str("\nshadow migration:\n");
        out.push_str(&render_plan(plan, script, revert_window));
    }
    out.push_str(&format!("\nhistory: {}\n", history.describe()));
    out
}

/// The direct steps of a plan: each with its statements, lock and expected hold.
fn render_direct(migration: &Migration, direct: &DirectPlan) -> String {
    let t = &migration.original;
    let size = progress::format_bytes(t.heap_bytes.max(0) as u64);
    let mut out = format!(
        "\ndirect steps on {} itself (its OID stays {}), {}:\n",
        t.qualified(),
        t.oid,
        if direct.grouped {
            "the brief parts of every clause grouped into one transaction before the scans and one after them"
        } else {
            "clause by clause (the written order could not be rearranged)"
        }
    );
    for (n, step) in direct.steps.iter().enumerate() {
        let (hold, note) = match &step.action {
            Action::Brief(_) => (
                "held for milliseconds (catalog only)".to_string(),
                "each attempt waits at most lock_timeout (--lock-timeout) for the lock, then rolls back and retries with backoff (--cutover-retries attempts, exit 5 after them); the control socket's lock-timeout=MS applies at the next attempt",
            ),
            Action::Validate { .. } => (
                format!(
                    "held for a full scan of {size} (about {} rows)",
                    t.rows_estimate.max(0)
                ),
                "not throttled: PostgreSQL cannot pause a VALIDATE; doppel's throttles are waited for before it starts, and an abort cancels it",
            ),
            Action::BuildIndex { .. } => (
                format!(
                    "held for two scans of {size} (about {} rows) and the waits for older transactions",
                    t.rows_estimate.max(0)
                ),
                "not throttled: PostgreSQL cannot pause an index build; doppel's throttles are waited for before it starts, and an abort cancels it (the invalid index is dropped)",
            ),
        };
        out.push_str(&format!(
            "  step {}: {} on {}: {} ({}); {hold}\n      {note}\n",
            n + 1,
            step.what,
            t.qualified(),
            step.lock.sql(),
            step.lock.effect()
        ));
        match &step.action {
            Action::Brief(sql) => {
                for s in sql {
                    out.push_str(&format!("      {s};\n"));
                }
            }
            Action::Validate { constraint, .. } => out.push_str(&format!(
                "      ALTER TABLE {} VALIDATE CONSTRAINT {};\n",
                t.qualified(),
                crate::sql::ident(constraint)
            )),
            Action::BuildIndex { sql, .. } => out.push_str(&format!("      {sql};\n")),
        }
    }
    out
}

/// The one-line summary of each direct step a run made: lock, attempts, hold.
pub fn render_steps(report: &DirectReport) -> Vec<String> {
    report
        .steps
        .iter()
        .map(|s| {
            format!(
                "{}: {} held {:.1} ms after {} attempt(s) (lock wait {:.1} ms)",
                s.what,
                s.lock.sql(),
                s.held.as_secs_f64() * 1000.0,
                s.attempts,
                s.lock_wait.as_secs_f64() * 1000.0
            )
        })
        .collect()
}
