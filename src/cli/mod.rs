//! The subcommands, one file each: `run`, `backfill`, `demo`, `cleanup`, `ctl`, `verify`,
//! `history`; `args` holds the flags they share (connection, tuning, throttles, history,
//! output).

mod args;
mod backfill;
mod cleanup;
mod ctl;
mod demo;
mod history;
mod run;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use doppel::cancel::Cancel;

use args::LogFormat;

/// Online ALTER TABLE for PostgreSQL: shadow table, chunked backfill, logical replication
/// catch-up, verification, and a cutover under a lock held for milliseconds.
#[derive(Parser, Debug)]
#[command(name = "doppel", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub(crate) log_format: LogFormat,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Migrate a table (a dry run unless --execute is given): each clause run directly, by
    /// PostgreSQL's online recipe, or through the shadow table, whichever locks least.
    Run(Box<run::RunArgs>),
    /// Fill a column in place with a batched UPDATE in primary-key chunks (throttled,
    /// resumable), then validate (a dry run unless --execute is given).
    Backfill(Box<backfill::BackfillArgs>),
    /// List the runs and backfills recorded in the history table.
    History(history::HistoryCliArgs),
    /// Run a real online migration on a throwaway local cluster, with a concurrent writer.
    Demo(demo::DemoArgs),
    /// Remove what an interrupted run left behind (slot, publication, shadow table).
    Cleanup(cleanup::CleanupArgs),
    /// Send a command to a running migration's control socket (`status`, `status --json`,
    /// `throttle`, `no-throttle`, `chunk-time=MS`, `max-replica-lag=MS`,
    /// `max-retained-wal=BYTES`, `lock-timeout=MS`, `postpone`, `cut-over`, `abort`, `revert`,
    /// `revert --force`, `finalize`, `help`; `KEY=?` reads a value).
    Ctl(ctl::CtlArgs),
    /// Compare a table with its run's shadow (during a run) or with the kept old table (after
    /// the cutover, --against) chunk by chunk, as the verify phase does. Exit 0: equal;
    /// 6: rows differ (listed).
    Verify(verify::VerifyArgs),
}

/// Whether log lines get ANSI colours: only on a terminal, and never with `NO_COLOR` set
/// (to anything but the empty string, <https://no-color.org>).
fn colours(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Cancels on Ctrl-C or SIGTERM.
fn install_signals() -> Cancel {
    let (tx, cancel) = Cancel::new();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::warn!("signal received: stopping and cleaning up");
        tx.send_replace(true);
        std::mem::forget(tx);
    });
    cancel
}

/// Parses the command line, runs the subcommand, and maps its error to the exit code
/// (`doppel::failure::exit_code`), printing the error on stderr.
pub(crate) async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let cancel = install_signals();
    let result = match cli.command {
        Command::Run(args) => run::run(*args, &cancel).await,
        Command::Backfill(args) => backfill::backfill(*args, &cancel).await,
        Command::History(args) => history::history(args).await,
        Command::Demo(args) => demo::demo(args, &cancel).await,
        Command::Cleanup(args) => cleanup::cleanup(args).await,
        Command::Ctl(args) => ctl::ctl(args).await,
        Command::Verify(args) => verify::verify(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(doppel::failure::exit_code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(!colours(false, None));
        assert!(!colours(true, Some("1".into())));
        assert!(colours(true, Some("".into())));
    }
}
