//! `doppel cleanup`: removes what an interrupted run left behind.

use std::path::PathBuf;

use clap::Args;
use doppel::conninfo;

use super::args::ConnArgs;

#[derive(Args, Debug)]
pub(crate) struct CleanupArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// The table whose leftovers to remove.
    #[arg(long)]
    pub(crate) table: String,
    /// The interrupted run's --work-dir: also remove its change spool files and control
    /// socket there.
    #[arg(long)]
    pub(crate) work_dir: Option<PathBuf>,
}

/// Runs `doppel cleanup` and prints what it removed.
pub(crate) async fn cleanup(args: CleanupArgs) -> anyhow::Result<()> {
    let config = conninfo::resolve(args.conn.dsn.as_deref())?;
    let report = doppel::run::cleanup(&config, &args.table, args.work_dir.as_deref()).await?;
    if report.removed.is_empty() {
        println!("nothing to clean up for {}", args.table);
    } else {
        for r in &report.removed {
            println!("removed {r}");
        }
    }
    Ok(())
}
