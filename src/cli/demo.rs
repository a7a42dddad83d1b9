//! `doppel demo`: a real online migration on a throwaway local cluster.

use anyhow::Result;
use clap::Args;
use doppel::cancel::Cancel;
use doppel::demo;

use super::args::{TuningArgs, run_options};

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Rows in the demo table.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) rows: i64,
    #[command(flatten)]
    pub(crate) tuning: TuningArgs,
}

/// Runs the demo and prints its one-line summary.
///
/// Errors: the cluster cannot be started, the migration failed, or the result differs from
/// the twin.
pub(crate) async fn demo(args: DemoArgs, cancel: &Cancel) -> Result<()> {
    let options = demo::DemoOptions {
        rows: args.rows,
        run: run_options(String::new(), Vec::new(), true, &args.tuning)?,
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
