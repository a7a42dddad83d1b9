//! `doppel run`: the dry-run plan, or the migration with its report.

use clap::Args;
use doppel::cancel::Cancel;
use doppel::run::{self as migration, Outcome};
use doppel::{conninfo, phases::cutover};

use super::args::{ConnArgs, TuningArgs, run_options};

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// The table, written as SQL writes it: orders, public.orders, '"Sales Data"."Order-Lines"'.
    #[arg(long)]
    pub(crate) table: String,
    /// A clause of ALTER TABLE, e.g. "ALTER COLUMN customer_id TYPE bigint" (repeatable).
    #[arg(long = "alter", required = true)]
    pub(crate) alters: Vec<String>,
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
    let options = run_options(args.table, args.alters, args.execute, &args.tuning)?;
    match migration::run(&config, &options, cancel).await? {
        Outcome::Planned(plan) => {
            let client = conninfo::connect(&config).await?;
            let script = cutover::Script::build(&client, &plan, options.lock_timeout).await?;
            let security = conninfo::security(&client, &config).await?;
            println!("connection: {} ({security})", config.describe());
            println!("{}", migration::render_plan(&plan, &script));
            println!("dry run: nothing was changed. Add --execute to migrate.");
        }
        Outcome::Migrated(report) => {
            println!(
                "migrated {}: {} rows copied, {} changes applied, verified {} rows in {} chunks",
                report.plan.original.qualified(),
                report.copy.rows,
                report.applied_changes,
                report.verify.rows,
                report.verify.chunks
            );
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
            println!("old table kept as {}", report.plan.names.old_qualified());
            println!("cutover record: {}", report.cutover.record_path.display());
            println!(
                "rollback script: {}",
                report.cutover.rollback_path.display()
            );
        }
    }
    Ok(())
}
