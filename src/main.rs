//! The `doppel` command line: a thin layer over the library (see `doppel::migration`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use doppel::cancel::Cancel;
use doppel::ops::progress::Display;
use doppel::ops::throttle::ThrottleOptions;
use doppel::phases::backfill::CopyOptions;
use doppel::phases::cutover;
use doppel::run::{self, Outcome, RunOptions};
use doppel::{conninfo, demo};

/// Online ALTER TABLE for PostgreSQL: shadow table, chunked backfill, logical replication
/// catch-up, verification, and a cutover under a lock held for milliseconds.
#[derive(Parser, Debug)]
#[command(name = "doppel", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Migrate a table (a dry run unless --execute is given).
    Run(RunArgs),
    /// Run a real online migration on a throwaway local cluster, with a concurrent writer.
    Demo(DemoArgs),
    /// Remove what an interrupted run left behind (slot, publication, shadow table).
    Cleanup(CleanupArgs),
    /// Send a command to a running migration's control socket (`status`, `throttle`,
    /// `no-throttle`, `chunk-time=MS`, `max-replica-lag=MS`, `lock-timeout=MS`, `postpone`,
    /// `cut-over`, `abort`, `help`; `key=?` reads a value).
    Ctl(CtlArgs),
    /// Compare a table with its run's shadow (during a run) or with the kept old table (after
    /// the cutover, --against) chunk by chunk, as the verify phase does. Exit 0: equal;
    /// 6: rows differ (listed).
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
struct VerifyArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The table: during a run the original (compared with `_doppel_<oid>_new_<name>`), after
    /// the cutover the new table (compared with --against).
    #[arg(long)]
    table: String,
    /// The old table kept by the cutover (`_doppel_<oid>_old_<name>`): its columns are
    /// projected onto the new table's by name.
    #[arg(long)]
    against: Option<String>,
    /// The run's --alter clauses (repeatable), only for their USING expressions; without them
    /// each old value is cast to the new column's type.
    #[arg(long = "alter")]
    alters: Vec<String>,
    /// Rows per chunk.
    #[arg(long, default_value_t = doppel::phases::verify::VERIFY_CHUNK_ROWS)]
    chunk_rows: i64,
    /// Re-checks of a differing key before it is reported (a live stream applies changes a
    /// moment after they commit).
    #[arg(long, default_value_t = doppel::phases::verify::RECHECKS)]
    rechecks: usize,
    /// Pause before each re-check, in ms.
    #[arg(long, default_value_t = 1000)]
    recheck_interval: u64,
    /// Differing keys listed at most.
    #[arg(long, default_value_t = 100)]
    max_keys: usize,
}

#[derive(Args, Debug)]
struct CtlArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The table being migrated (finds the socket `<work dir>/doppel-<oid>.sock`).
    #[arg(long, required_unless_present = "control_socket")]
    table: Option<String>,
    /// The control socket's path (instead of finding it from --table).
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// The run's --work-dir (default: the system temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The command, e.g. `status` or `chunk-time=200`.
    #[arg(required = true, num_args = 1..)]
    command: Vec<String>,
}

#[derive(Args, Debug)]
struct ConnArgs {
    /// Connection string: URI (postgres://user@host:5432/db) or key=value pairs. Without it,
    /// PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE are used, as libpq does.
    #[arg(long)]
    dsn: Option<String>,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The table, written as SQL writes it: orders, public.orders, '"Sales Data"."Order-Lines"'.
    #[arg(long)]
    table: String,
    /// A clause of ALTER TABLE, e.g. "ALTER COLUMN customer_id TYPE bigint" (repeatable).
    #[arg(long = "alter", required = true)]
    alters: Vec<String>,
    /// Perform the migration. Without it doppel only checks and prints the plan.
    #[arg(long)]
    execute: bool,
    #[command(flatten)]
    tuning: TuningArgs,
}

#[derive(Args, Debug, Clone)]
struct TuningArgs {
    /// Target duration of one backfill chunk, in ms.
    #[arg(long, default_value_t = 100)]
    chunk_time: u64,
    /// Sleep this many times each chunk's duration after it, backfill and verification chunks
    /// alike (gh-ost's --nice-ratio).
    #[arg(long, default_value_t = 0.0)]
    nice_ratio: f64,
    /// Sessions copying chunks at once.
    #[arg(long, default_value_t = 2)]
    copy_workers: usize,
    /// Rows per verification chunk: each is compared under one short snapshot, and the
    /// throttles and --nice-ratio act between chunks.
    #[arg(long, default_value_t = doppel::phases::verify::VERIFY_CHUNK_ROWS)]
    verify_chunk_rows: i64,
    /// maintenance_work_mem for building the shadow's indexes.
    #[arg(long, default_value = "1GB")]
    maintenance_work_mem: String,
    /// lock_timeout of each cutover attempt, in ms.
    #[arg(long, default_value_t = 200)]
    lock_timeout: u64,
    /// Cutover attempts before giving up.
    #[arg(long, default_value_t = 10)]
    cutover_retries: u32,
    /// Longest wait, in ms, for the last changes to be applied while the cutover lock is held.
    #[arg(long, default_value_t = 1000)]
    fence_timeout: u64,
    /// Directory for the change spool (default: the system temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// While this file exists doppel keeps the shadow caught up and does not cut over;
    /// remove it to cut over (gh-ost's --postpone-cut-over-flag-file).
    #[arg(long)]
    postpone_cutover_flag_file: Option<PathBuf>,
    /// Cancel (pg_cancel_backend), then terminate (pg_terminate_backend), the sessions that
    /// block the cutover lock once they have blocked it for --kill-blockers-grace. Off by
    /// default: without it doppel only reports them and retries.
    #[arg(long)]
    kill_blockers: bool,
    /// logical_decoding_work_mem of doppel's WAL sender: server memory for decoding before
    /// transactions spill to disk (the backfill's own chunks are decoded too).
    #[arg(long, default_value = "256MB")]
    logical_decoding_work_mem: String,
    /// Grace period, in ms, before --kill-blockers cancels a blocking session.
    #[arg(long, default_value_t = 2000)]
    kill_blockers_grace: u64,
    /// Throttle while a standby's replay lag exceeds this many ms (pg_stat_replication, and
    /// the heartbeat on each --throttle-replica).
    #[arg(long)]
    max_replica_lag: Option<u64>,
    /// Throttle while a standby's replay position trails the primary by more bytes of WAL.
    #[arg(long)]
    max_replica_lag_bytes: Option<u64>,
    /// A standby to measure heartbeat lag on (DSN; repeatable).
    #[arg(long = "throttle-replica")]
    throttle_replicas: Vec<String>,
    /// Throttle while doppel's replication slot retains more bytes of WAL.
    #[arg(long)]
    max_retained_wal: Option<u64>,
    /// Abort (and clean up) when doppel's slot retains more bytes of WAL.
    #[arg(long)]
    critical_retained_wal: Option<u64>,
    /// Throttle while more client sessions than this are running a statement.
    #[arg(long)]
    max_active_backends: Option<i64>,
    /// Throttle while this query returns a positive number (or true).
    #[arg(long)]
    throttle_query: Option<String>,
    /// Abort (and clean up) when this query returns a positive number.
    #[arg(long)]
    critical_query: Option<String>,
    /// Throttle while this file exists.
    #[arg(long)]
    throttle_flag_file: Option<PathBuf>,
    /// Abort (and clean up) as soon as this file exists.
    #[arg(long)]
    panic_flag_file: Option<PathBuf>,
    /// Control socket path (default: `<work dir>/doppel-<table oid>.sock`).
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// Directory of hook executables named after phases (on-startup, on-preflight-ok,
    /// before-copy, copy-complete, on-throttled, before-cutover, after-cutover, on-success,
    /// on-failure, on-status).
    #[arg(long)]
    hooks_dir: Option<PathBuf>,
    /// Directory for the rollback script (default: the current directory).
    #[arg(long, default_value = ".")]
    rollback_dir: PathBuf,
    /// Progress display: bars on a TTY, status lines otherwise.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 10)]
    status_interval: u64,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Rows in the demo table.
    #[arg(long, default_value_t = 1_000_000)]
    rows: i64,
    #[command(flatten)]
    tuning: TuningArgs,
}

#[derive(Args, Debug)]
struct CleanupArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The table whose leftovers to remove.
    #[arg(long)]
    table: String,
    /// The interrupted run's --work-dir: also remove its change spool files and control
    /// socket there.
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ProgressMode {
    Auto,
    Bars,
    Lines,
}

fn run_options(
    table: String,
    alters: Vec<String>,
    execute: bool,
    t: &TuningArgs,
) -> anyhow::Result<RunOptions> {
    let display = match t.progress {
        ProgressMode::Bars => Display::Bars,
        ProgressMode::Lines => Display::Lines,
        ProgressMode::Auto if std::io::stderr().is_terminal() => Display::Bars,
        ProgressMode::Auto => Display::Lines,
    };
    let mut replicas = Vec::new();
    for dsn in &t.throttle_replicas {
        replicas.push(conninfo::resolve(Some(dsn))?);
    }
    Ok(RunOptions {
        table,
        alters,
        execute,
        copy: CopyOptions {
            chunk_time: Duration::from_millis(t.chunk_time.max(1)),
            nice_ratio: t.nice_ratio.max(0.0),
            ..CopyOptions::default()
        },
        copy_workers: t.copy_workers.max(1),
        verify_chunk_rows: t.verify_chunk_rows.max(1),
        maintenance_work_mem: t.maintenance_work_mem.clone(),
        lock_timeout: Duration::from_millis(t.lock_timeout.max(1)),
        cutover_retries: t.cutover_retries.max(1),
        fence_timeout: Duration::from_millis(t.fence_timeout.max(1)),
        work_dir: t.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        rollback_dir: t.rollback_dir.clone(),
        postpone_cutover_flag_file: t.postpone_cutover_flag_file.clone(),
        logical_decoding_work_mem: t.logical_decoding_work_mem.clone(),
        kill_blockers: t
            .kill_blockers
            .then(|| Duration::from_millis(t.kill_blockers_grace)),
        throttle: ThrottleOptions {
            max_replica_lag: t.max_replica_lag.map(Duration::from_millis),
            max_replica_lag_bytes: t.max_replica_lag_bytes,
            replicas,
            max_retained_wal: t.max_retained_wal,
            critical_retained_wal: t.critical_retained_wal,
            max_active_backends: t.max_active_backends,
            throttle_query: t.throttle_query.clone(),
            critical_query: t.critical_query.clone(),
            throttle_flag_file: t.throttle_flag_file.clone(),
            panic_flag_file: t.panic_flag_file.clone(),
        },
        control_socket: t.control_socket.clone(),
        hooks_dir: t.hooks_dir.clone(),
        display,
        status_interval: Duration::from_secs(t.status_interval.max(1)),
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let cancel = install_signals();
    let result = match cli.command {
        Command::Run(args) => run(args, &cancel).await,
        Command::Demo(args) => {
            let options = demo::DemoOptions {
                rows: args.rows,
                run: match run_options(String::new(), Vec::new(), true, &args.tuning) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return ExitCode::from(2);
                    }
                },
            };
            demo::run(&options, &cancel).await.map(|r| {
                println!(
                    "demo complete: {} rows migrated online in {:.1} s, lock held {:.1} ms, writer worst latency {:.1} ms, {} writer errors, {} mismatched rows",
                    r.rows,
                    r.migration.as_secs_f64(),
                    r.lock_held.as_secs_f64() * 1000.0,
                    r.writer.max_latency.as_secs_f64() * 1000.0,
                    r.writer.errors,
                    r.mismatches
                );
            })
        }
        Command::Cleanup(args) => cleanup(args).await,
        Command::Ctl(args) => ctl(args).await,
        Command::Verify(args) => verify(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(doppel::failure::exit_code(&e))
        }
    }
}

async fn run(args: RunArgs, cancel: &Cancel) -> anyhow::Result<()> {
    let config = conninfo::resolve(args.conn.dsn.as_deref())?;
    tracing::info!("connecting to {}", conninfo::describe(&config));
    let options = run_options(args.table, args.alters, args.execute, &args.tuning)?;
    match run::run(&config, &options, cancel).await? {
        Outcome::Planned(plan) => {
            let client = conninfo::connect(&config).await?;
            let script = cutover::Script::build(&client, &plan, options.lock_timeout).await?;
            println!("{}", run::render_plan(&plan, &script));
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

async fn cleanup(args: CleanupArgs) -> anyhow::Result<()> {
    let config = conninfo::resolve(args.conn.dsn.as_deref())?;
    let report = run::cleanup(&config, &args.table, args.work_dir.as_deref()).await?;
    if report.removed.is_empty() {
        println!("nothing to clean up for {}", args.table);
    } else {
        for r in &report.removed {
            println!("removed {r}");
        }
    }
    Ok(())
}

/// `doppel verify`: prints chunks, rows and the keys that still differ; exit 6 when any do.
async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    use doppel::phases::verify::{CheckOptions, KeyDifference, check, describe_key};
    let config = conninfo::resolve(args.conn.dsn.as_deref())?;
    let options = CheckOptions {
        against: args.against,
        alters: args.alters,
        chunk_rows: args.chunk_rows,
        rechecks: args.rechecks,
        recheck_interval: Duration::from_millis(args.recheck_interval),
        max_keys: args.max_keys,
        ..CheckOptions::new(&args.table)
    };
    let report = check(&config, &options).await?;
    println!(
        "compared {} with {}: {} chunks, {} rows ({} in {}), {} re-checks",
        report.source,
        report.target,
        report.chunks,
        report.rows,
        report.target_rows,
        report.target,
        report.rechecks
    );
    println!("columns compared: {}", report.compared_columns.join(", "));
    if !report.target_only_columns.is_empty() {
        println!(
            "not compared (only in {}): {}",
            report.target,
            report.target_only_columns.join(", ")
        );
    }
    if !report.source_only_columns.is_empty() {
        println!(
            "not compared (only in {}): {}",
            report.source,
            report.source_only_columns.join(", ")
        );
    }
    if report.equal() {
        println!("equal");
        return Ok(());
    }
    println!(
        "differing keys ({}{}):",
        report.differing.len(),
        if report.truncated {
            ", more not listed"
        } else {
            ""
        }
    );
    for (key, how) in &report.differing {
        let how = match how {
            KeyDifference::Values => "values differ".to_string(),
            KeyDifference::MissingFromTarget => format!("only in {}", report.source),
            KeyDifference::OnlyInTarget => format!("only in {}", report.target),
        };
        println!("  {}: {how}", describe_key(key));
    }
    println!("not equal");
    Err(doppel::failure::fail(
        doppel::failure::FailureKind::Verification,
        format!(
            "{} and {} differ in {} chunk(s) ({} key(s) listed{}) after {} re-check(s)",
            report.source,
            report.target,
            report.differing_chunks,
            report.differing.len(),
            if report.truncated {
                ", more not listed"
            } else {
                ""
            },
            args.rechecks
        ),
    ))
}

async fn ctl(args: CtlArgs) -> anyhow::Result<()> {
    let path = match (args.control_socket, args.table) {
        (Some(path), _) => path,
        (None, Some(table)) => {
            let config = conninfo::resolve(args.conn.dsn.as_deref())?;
            let client = conninfo::connect(&config).await?;
            let oid = doppel::model::catalog::resolve(&client, &table).await?;
            doppel::ops::control::default_path(
                &args.work_dir.unwrap_or_else(std::env::temp_dir),
                oid,
            )
        }
        (None, None) => anyhow::bail!("give --table or --control-socket"),
    };
    let reply = doppel::ops::control::send(&path, &args.command.join(" "))
        .await
        .map_err(|e| e.context(format!("no doppel run answers on {} (is one running on this table? pass --work-dir if it used one)", path.display())))?;
    println!("{}", reply.trim_end());
    if reply.starts_with("error:") {
        std::process::exit(1);
    }
    Ok(())
}
