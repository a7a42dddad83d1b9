//! `doppel run`: the dry-run plan, or the migration with its report.

use clap::Args;
use doppel::cancel::Cancel;
use doppel::run::{self as migration, Outcome};
use doppel::{conninfo, phases::cutover};

use super::args::{ConnArgs, HistoryArgs, StrategyChoice, TuningArgs, run_options};

/// The exit codes, for `doppel run --help` (the table of `doppel::failure`).
const EXIT_CODES: &str = "Exit codes:
  0  migrated and verified, or a dry run found nothing to refuse
  1  internal or unexpected error (connection lost, a query failed, ...)
  2  preflight refused (every reason listed with its fix), or an invalid command line
  3  aborted by the operator: Ctrl-C, SIGTERM, the panic flag file, `doppel ctl .. abort`,
     a failing on-startup / on-preflight-ok / before-copy hook
  4  the replication stream or slot was lost
  5  the cutover budget was exhausted (--lock-timeout, --fence-timeout, --max-lock-hold on
     every attempt), or the writes outpaced the applier
  6  verification found an unexplained difference
  7  a critical threshold was crossed (--critical-retained-wal, --critical-query)
  8  the original changed in a way the migration cannot follow (DDL, TRUNCATE), or rows the
     new schema rejects
  9  the spool directory is full (ENOSPC); a --resumable run keeps its checkpoint: free
     space, then --resume";

#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// The table, written as SQL writes it: orders, public.orders, '"Sales Data"."Order-Lines"'.
    #[arg(long)]
    pub(crate) table: String,
    /// A clause of ALTER TABLE, e.g. "ALTER COLUMN customer_id TYPE bigint" (repeatable).
    #[arg(long = "alter", required = true)]
    pub(crate) alters: Vec<String>,
    /// How the clauses are carried out: `auto` chooses per clause the least-locking way
    /// (run directly, PostgreSQL's online recipe, or the shadow table); `shadow` takes the
    /// shadow table for every clause.
    #[arg(long, value_enum, default_value_t = StrategyChoice::Auto)]
    pub(crate) strategy: StrategyChoice,
    /// The value a column of the new table takes, as `column = expression` over the old row
    /// (subqueries and function calls allowed), computed by the copy and for every row written
    /// during the migration (repeatable). Implies the shadow table.
    #[arg(long = "backfill")]
    pub(crate) backfills: Vec<String>,
    #[command(flatten)]
    pub(crate) history: HistoryArgs,
    /// Perform the migration. Without it doppel only checks and prints the plan.
    #[arg(long)]
    pub(crate) execute: bool,
    #[command(flatten)]
    pub(crate) tuning: TuningArgs,
}

/// Runs `doppel run`: prints the plan (dry run) or the report (with `--execute`).
pub(crate) async fn run(args: RunArgs, cancel: &Cancel) -> anyhow::Result<()> {
    let config = conninfo::resolve(args.conn.dsn.as_deref())?;
    tracing::info!("connecting to {}", config.describe());
    let mut options = run_options(args.table, args.alters, args.execute, &args.tuning)?;
    options.force_shadow = args.strategy == StrategyChoice::Shadow;
    options.backfills = args.backfills;
    options.history = args.history.options()?;
    match migration::run(&config, &options, cancel).await? {
        Outcome::Planned(planned) => {
            let client = conninfo::connect(&config).await?;
            let script = match planned.shadow_plan() {
                Some(plan) => {
                    Some(cutover::Script::build(&client, plan, options.lock_timeout).await?)
                }
                None => None,
            };
            let security = conninfo::security(&client, &config).await?;
            println!("connection: {} ({security})", config.describe());
            println!(
                "{}",
                migration::render_migration(
                    &planned,
                    script.as_ref(),
                    options.revert_window,
                    &options.history
                )
            );
            println!("dry run: nothing was changed. Add --execute to migrate.");
        }
        Outcome::Finished(finished) => print_finished(&finished),
        Outcome::Altered(report) => print_altered(&report),
        Outcome::Migrated(report) => {
            println!(
                "migrated {}: {} rows copied, {} changes applied, verified {} rows in {} chunks",
                report.plan.original.qualified(),
                report.copy.rows,
                report.applied_changes,
                report.verify.rows,
                report.verify.chunks
            );
            for p in &report.verify.partitions {
                println!(
                    "  partition {}: verified {} rows in {} chunks",
                    p.name, p.rows, p.chunks
                );
            }
            for (phase, d) in &report.phases {
                println!("  {:<24}{:.2} s", phase.label(), d.as_secs_f64());
            }
            println!(
                "cutover: lock held {:.1} ms after {} attempt(s); total {:.1} s",
                report.cutover.lock_held.as_secs_f64() * 1000.0,
                report.cutover.attempts,
                report.total.as_secs_f64()
            );
            for (name, err) in &report.cutover.unvalidated {
                if name.starts_with("materialized view") {
                    println!(
                        "warning: {name} was not rebuilt on the new table ({err}); it still reads the kept old table (dropping that table needs CASCADE): fix the cause, then recreate the view from its definition (pg_get_viewdef) on the new table"
                    );
                } else {
                    println!(
                        "warning: foreign key {name} is NOT VALID: validation failed ({err}); run ALTER TABLE .. VALIDATE CONSTRAINT {name}"
                    );
                }
            }
            for who in &report.cutover.killed {
                println!("--kill-blockers: {who}");
            }
            match &report.window {
                Some(window) => print_window(&report, window),
                None => print_kept(&report),
            }
        }
    }
    Ok(())
}

/// A resumed run whose cutover had committed before the interruption.
fn print_finished(finished: &migration::Finished) {
    println!(
        "the interrupted run's cutover had committed: {} is the migrated table; finished it (removed: {})",
        finished.table,
        finished.removed.join(", ")
    );
    println!("old table kept as {}", finished.old_table);
    match &finished.rollback_script {
        Some(path) => println!("rollback script: {}", path.display()),
        None => println!(
            "no rollback script was found in --rollback-dir: look where the interrupted run wrote it"
        ),
    }
    for (name, err) in &finished.unvalidated {
        println!(
            "warning: foreign key {name} is NOT VALID: validation failed ({err}); run ALTER TABLE .. VALIDATE CONSTRAINT {name}"
        );
    }
}

/// What the direct and online steps did.
fn print_altered(report: &migration::AlterReport) {
    println!(
        "altered {} on the table itself in {:.1} s (OID {} {}):",
        report.original.qualified(),
        report.total.as_secs_f64(),
        report.oid_after,
        if report.oid_after == report.original.oid {
            "unchanged"
        } else {
            "changed"
        }
    );
    for c in &report.clauses {
        println!("  {:<7} {}", c.strategy.label(), c.text);
    }
    for line in migration::render_steps(&report.direct) {
        println!("  {line}");
    }
    println!(
        "longest lock blocking writes: {:.1} ms",
        report.direct.longest_blocking_hold().as_secs_f64() * 1000.0
    );
}

/// The kept old table, the record and the rollback script.
fn print_kept(report: &migration::RunReport) {
    println!("old table kept as {}", report.plan.names.old_qualified());
    println!("cutover record: {}", report.cutover.record_path.display());
    println!(
        "rollback script: {}",
        report.cutover.rollback_path.display()
    );
}

/// How the revert window ended, and what stays.
fn print_window(report: &migration::RunReport, window: &migration::WindowReport) {
    let table = report.plan.original.qualified();
    let open =
        humantime::format_duration(std::time::Duration::from_secs(window.open_for.as_secs()));
    match &window.end {
        migration::WindowEnd::Reverted(outcome) => {
            println!(
                "reverted: {table} is the original table again (revert lock held {:.1} ms after {} attempt(s)); {} change(s) made after the cutover were written back during the {open} window",
                outcome.swap.lock_held.as_secs_f64() * 1000.0,
                outcome.swap.attempts,
                window.applied
            );
            for (key, why) in &outcome.lost {
                println!("lost by the forced revert: key {key:?}: {why}");
            }
            for (name, err) in &outcome.swap.unvalidated {
                println!("warning: after the revert, {name} failed ({err})");
            }
            println!(
                "the migrated table is kept as {}; drop it with doppel cleanup --table {table} --drop-new-table once you no longer need it",
                report.plan.names.shadow_qualified()
            );
            println!("revert record: {}", outcome.swap.record_path.display());
        }
        end => {
            let how = match end {
                migration::WindowEnd::Expired => "expired".to_string(),
                migration::WindowEnd::Finalized => "finalized".to_string(),
                migration::WindowEnd::Interrupted => "ended by a signal or abort".to_string(),
                migration::WindowEnd::NotOpened(why) => format!("could not open ({why})"),
                migration::WindowEnd::Reverted(_) => unreachable!(),
            };
            println!(
                "revert window {how} after {open}: {} change(s) written back; the migration stands",
                window.applied
            );
            print_kept(report);
        }
    }
}
