//! `doppel backfill`: a batched, throttled, resumable UPDATE in primary-key chunks, ending
//! with the validation report (a dry run unless --execute).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use doppel::cancel::Cancel;
use doppel::conninfo;
use doppel::phases::backfill_update::UpdateOptions;
use doppel::phases::verify::describe_key;
use doppel::run::{self as migration, BackfillOptions, BackfillOutcome};

use super::args::{ConnArgs, HistoryArgs, ProgressMode, ThrottleArgs, display};

#[derive(Args, Debug)]
pub(crate) struct BackfillArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// The table, written as SQL writes it.
    #[arg(long)]
    pub(crate) table: String,
    /// `column = expression` over the row (subqueries and function calls allowed), e.g.
    /// 'state_id = (SELECT id FROM transaction_state s WHERE s.name = status)' (repeatable).
    #[arg(long = "set", required = true)]
    pub(crate) sets: Vec<String>,
    /// Only rows matching this predicate, e.g. 'state_id IS NULL'. The report counts the
    /// rows still matching it.
    #[arg(long = "where")]
    pub(crate) filter: Option<String>,
    /// Perform the update. Without it doppel only checks and prints the plan.
    #[arg(long)]
    pub(crate) execute: bool,
    /// Target duration of one chunk, in ms (one short transaction each).
    #[arg(long, default_value_t = 100)]
    pub(crate) chunk_time: u64,
    /// Sleep this many times each chunk's duration after it.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) nice_ratio: f64,
    /// lock_timeout of a chunk, in ms: its wait for a row the application has locked;
    /// the chunk is then retried.
    #[arg(long, default_value_t = 200)]
    pub(crate) lock_timeout: u64,
    /// Attempts of one chunk (retried on serialization failures, deadlocks and lock
    /// timeouts, with backoff).
    #[arg(long, default_value_t = 10)]
    pub(crate) retries: u32,
    #[command(flatten)]
    pub(crate) throttle: ThrottleArgs,
    /// Control socket path (default: `<work dir>/doppel-<table oid>.sock`).
    #[arg(long)]
    pub(crate) control_socket: Option<PathBuf>,
    /// Directory of hook executables (on-startup, on-throttled, on-status, on-success,
    /// on-failure).
    #[arg(long)]
    pub(crate) hooks_dir: Option<PathBuf>,
    /// Directory of the default control socket (default: the system temp dir).
    #[arg(long)]
    pub(crate) work_dir: Option<PathBuf>,
    /// Progress display: bars on a TTY, status lines otherwise.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub(crate) progress: ProgressMode,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 10)]
    pub(crate) status_interval: u64,
    #[command(flatten)]
    pub(crate) history: HistoryArgs,
}

/// Runs `doppel backfill`: prints the plan (dry run) or the chunks and the validation report.
pub(crate) async fn backfill(args: BackfillArgs, cancel: &Cancel) -> anyhow::Result<()> {
    let config = conninfo::resolve(args.conn.dsn.as_deref())?;
    tracing::info!("connecting to {}", config.describe());
    let options = BackfillOptions {
        table: args.table,
        sets: args.sets,
        filter: args.filter,
        execute: args.execute,
        update: UpdateOptions {
            chunk_time: Duration::from_millis(args.chunk_time.max(1)),
            nice_ratio: args.nice_ratio.max(0.0),
            lock_timeout: Duration::from_millis(args.lock_timeout.max(1)),
            retries: args.retries.max(1),
            ..UpdateOptions::default()
        },
        throttle: args.throttle.options()?,
        control_socket: args.control_socket,
        hooks_dir: args.hooks_dir,
        work_dir: args.work_dir.unwrap_or_else(std::env::temp_dir),
        display: display(args.progress),
        status_interval: Duration::from_secs(args.status_interval.max(1)),
        history: args.history.options()?,
    };
    match migration::backfill(&config, &options, cancel).await? {
        BackfillOutcome::Planned(plan) => {
            println!(
                "doppel backfill plan for {} (about {} rows)",
                plan.table.qualified(),
                plan.table.rows_estimate.max(0)
            );
            println!("each chunk, one short transaction (key range bound to $n):");
            println!("  {};", plan.update_sql);
            println!(
                "chunks of about --chunk-time {} ms, throttled between chunks; a chunk run again changes nothing",
                args.chunk_time
            );
            match &plan.resume {
                Some((id, key)) => println!(
                    "resume: after key {}, where the unfinished run of history row {id} stopped",
                    describe_key(key)
                ),
                None => println!("resume: none (starts at the first key)"),
            }
            println!("history: {}", plan.history);
            println!("dry run: nothing was changed. Add --execute to update.");
        }
        BackfillOutcome::Done(report) => {
            let u = &report.update;
            println!(
                "backfilled {}: {} row(s) changed of {} examined in {} chunk(s), {} retried, {:.1} s{}",
                report.table.qualified(),
                u.rows_changed,
                u.rows_examined,
                u.chunks,
                u.retries,
                u.elapsed.as_secs_f64(),
                u.resumed_after
                    .as_ref()
                    .map(|k| format!(", resumed after key {}", describe_key(k)))
                    .unwrap_or_default()
            );
            println!("validation:");
            for line in report.validation.lines() {
                println!("  {line}");
            }
            if let Some(id) = report.history_id {
                println!("recorded as history row {id}");
            }
        }
    }
    Ok(())
}
