//! `doppel ctl`: a command to a running migration's control socket.

use std::path::PathBuf;

use clap::Args;
use doppel::conninfo;
use doppel::ops::registry;

use super::args::ConnArgs;

#[derive(Args, Debug)]
#[command(after_help = ctl_help())]
pub(crate) struct CtlArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// The table being migrated: finds the run's socket through the run registry in the work
    /// directory, without a database connection (qualify it, or give --dsn naming the
    /// database, when several runs match).
    #[arg(long, required_unless_present = "control_socket")]
    pub(crate) table: Option<String>,
    /// The control socket's path (instead of finding it from --table).
    #[arg(long)]
    pub(crate) control_socket: Option<PathBuf>,
    /// The run's --work-dir (default: the system temp dir).
    #[arg(long)]
    pub(crate) work_dir: Option<PathBuf>,
    /// The command, e.g. `status`, `status --json` or `chunk-time=200` (listed below).
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) command: Vec<String>,
}

/// The commands, for `doppel ctl --help`: the socket's own `help`.
fn ctl_help() -> String {
    format!(
        "Commands (the control socket's `help`):\n{}",
        doppel::ops::control::help()
            .lines()
            .skip(1)
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    )
}

/// Sends the command and prints the reply; exit 1 when the run answers `error:`.
///
/// Errors: no run is registered for the table (or several are), or nothing answers on the
/// socket.
pub(crate) async fn ctl(args: CtlArgs) -> anyhow::Result<()> {
    let path = match (args.control_socket, args.table) {
        (Some(path), _) => path,
        (None, Some(table)) => {
            let dir = args.work_dir.unwrap_or_else(std::env::temp_dir);
            // The DSN only narrows the database; nothing is connected to.
            let database = match args.conn.dsn.as_deref() {
                Some(dsn) => Some(conninfo::resolve(Some(dsn))?.dbname().to_string()),
                None => None,
            };
            let runs = registry::runs(&dir);
            let run = registry::find(&runs, &table, database.as_deref()).map_err(|e| {
                e.context(format!(
                    "looking for the run in {} (pass --work-dir if it used one, or --control-socket)",
                    dir.display()
                ))
            })?;
            run.socket.clone()
        }
        (None, None) => anyhow::bail!("give --table or --control-socket"),
    };
    let command = args.command.join(" ");
    // A revert answers once the tables are swapped back, or it failed.
    let wait = if command
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("revert")
    {
        std::time::Duration::from_secs(3600)
    } else {
        std::time::Duration::from_secs(30)
    };
    let reply = doppel::ops::control::send_waiting(&path, &command, wait)
        .await
        .map_err(|e| {
            e.context(format!(
                "no doppel run answers on {} (is one running on this table? pass --work-dir if it used one)",
                path.display()
            ))
        })?;
    println!("{}", reply.trim_end());
    if reply.starts_with("error:") {
        std::process::exit(1);
    }
    Ok(())
}
