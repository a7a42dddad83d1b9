//! `doppel demo`: a real online migration on a throwaway local cluster.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use doppel::cancel::Cancel;
use doppel::demo;
use doppel::run::RunOptions;

use super::args::{ProgressMode, display};

/// `--scenario`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// A rewrite through the shadow table with a writer, then a revert.
    Shadow,
    /// Expand/contract on the table itself with a writer.
    Ledger,
}

/// The demo's own flags; everything else is `doppel run`'s default.
#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Which walk-through: `shadow` (an online rewrite through the shadow table, then a
    /// revert) or `ledger` (expand/contract on the table itself: expand, backfill, dual
    /// write, constraints, contract).
    #[arg(long, value_enum, default_value_t = Scenario::Shadow)]
    pub(crate) scenario: Scenario,
    /// Rows in the demo table (default: 1,000,000 for `shadow`, 200,000 for `ledger`).
    #[arg(long)]
    pub(crate) rows: Option<i64>,
    /// Target duration of one backfill chunk, in ms.
    #[arg(long, default_value_t = 100)]
    pub(crate) chunk_time: u64,
    /// Sessions copying chunks at once.
    #[arg(long, default_value_t = 2)]
    pub(crate) copy_workers: usize,
    /// Progress display: bars on a TTY, status lines otherwise.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub(crate) progress: ProgressMode,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 10)]
    pub(crate) status_interval: u64,
    /// Serve the migration's Prometheus metrics at http://ADDR/metrics while it runs.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
}

/// Runs the demo and prints its one-line summary.
///
/// Errors: the cluster cannot be started, the migration failed, or the result differs from
/// the twin.
pub(crate) async fn demo(args: DemoArgs, cancel: &Cancel) -> Result<()> {
    let mut template = RunOptions::new("", &[]);
    template.copy.chunk_time = Duration::from_millis(args.chunk_time.max(1));
    template.copy_workers = args.copy_workers.max(1);
    template.display = display(args.progress);
    template.status_interval = Duration::from_secs(args.status_interval.max(1));
    template.metrics_listen = args.metrics_listen;
    // The demo ends on its own summary; it does not wait for a scrape.
    template.metrics_linger = Duration::ZERO;
    if args.scenario == Scenario::Ledger {
        let r = demo::ledger::walk_through(args.rows.unwrap_or(200_000), &template, cancel).await?;
        println!(
            "ledger walk-through complete: {} rows, OID kept: {}, {} writer errors, {} mismatched rows; longest lock blocking writes per step: {}",
            r.rows,
            r.oid_kept,
            r.writer_errors,
            r.mismatches,
            r.steps
                .iter()
                .map(|(what, hold, _)| format!("{what}: {:.1} ms", hold.as_secs_f64() * 1000.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    let options = demo::DemoOptions {
        rows: args.rows.unwrap_or(1_000_000),
        run: template,
    };
    let r = demo::run(&options, cancel).await?;
    println!(
        "demo complete: {} rows migrated online in {:.1} s, lock held {:.1} ms; reverted with the writer running ({} change(s) written back, revert lock held {:.1} ms); writer worst latency {:.1} ms, {} writer errors, {} mismatched rows",
        r.rows,
        r.migration.as_secs_f64(),
        r.lock_held.as_secs_f64() * 1000.0,
        r.written_back,
        r.revert_lock_held.as_secs_f64() * 1000.0,
        r.writer.max_latency.as_secs_f64() * 1000.0,
        r.writer.errors,
        r.mismatches
    );
    Ok(())
}
