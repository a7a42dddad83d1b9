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
    /// Also drop the migrated table a rollback or a revert swapped out
    /// (`_doppel_<oid>_new_<name>`): it may hold the writes made between the cutover and the
    /// rollback, which exist nowhere else. Without it, cleanup keeps such a table and says
    /// what it holds.
    #[arg(long)]
    pub(crate) drop_new_table: bool,
}

/// Runs `doppel cleanup` and prints what it removed.
pub(crate) async fn cleanup(args: CleanupArgs) -> anyhow::Result<()> {
    let config = conninfo::resolve(args.conn.dsn.as_deref())?;
    let options = doppel::run::CleanupOptions {
        work_dir: args.work_dir,
        drop_new_table: args.drop_new_table,
    };
    let report = doppel::run::cleanup(&config, &args.table, &options).await?;
    if report.removed.is_empty() {
        println!("nothing to clean up for {}", args.table);
    } else {
        for r in &report.removed {
            println!("removed {r}");
        }
    }
    Ok(())
}
