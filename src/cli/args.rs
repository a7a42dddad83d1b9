//! Flags shared by several subcommands: the connection, the tuning of a run, the log format
//! and the progress display (the demo takes only a few of them, see `demo.rs`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use doppel::conninfo;
use doppel::ops::history::HistoryOptions;
use doppel::ops::progress::Display;
use doppel::ops::throttle::ThrottleOptions;
use doppel::phases::backfill::{ChunkBy, CopyOptions};
use doppel::run::RunOptions;

#[derive(Args, Debug)]
pub(crate) struct ConnArgs {
    /// Connection string: URI (postgres://user@host:5432/db) or key=value pairs. Without it,
    /// PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE are used, as libpq does.
    #[arg(long)]
    pub(crate) dsn: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct TuningArgs {
    /// Target duration of one backfill chunk, in ms.
    #[arg(long, default_value_t = 100)]
    pub(crate) chunk_time: u64,
    /// Sleep this many times each chunk's duration after it, backfill and verification chunks
    /// alike (gh-ost's --nice-ratio).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) nice_ratio: f64,
    /// Sessions copying chunks at once.
    #[arg(long, default_value_t = 2)]
    pub(crate) copy_workers: usize,
    /// How the backfill divides the table: `key` (primary-key ranges, read through the
    /// index) or `tid` (ranges of heap pages read in physical order by a TID Range Scan; the
    /// rows of keys changed during the copy are removed from the shadow and replayed from the
    /// stream). `tid` is used on a plain table in a run that is not --resumable (otherwise
    /// key ranges, with a warning); a VACUUM FULL or CLUSTER of the table during the copy
    /// stops the run (exit 8).
    #[arg(long, value_enum, default_value_t = ChunkByArg::Key)]
    pub(crate) chunk_by: ChunkByArg,
    /// Sessions applying streamed changes at once: while only the primary key constrains the
    /// shadow, each batch is split by a hash of the key across them.
    #[arg(long, default_value_t = doppel::phases::apply::DEFAULT_WORKERS)]
    pub(crate) apply_workers: usize,
    /// Rows per verification chunk: each is compared under one short snapshot, and the
    /// throttles and --nice-ratio act between chunks.
    #[arg(long, default_value_t = doppel::phases::verify::VERIFY_CHUNK_ROWS)]
    pub(crate) verify_chunk_rows: i64,
    /// Parallel query workers each of the two verification sessions may use
    /// (max_parallel_workers_per_gather). 0 keeps the comparison to those two sessions:
    /// parallel workers come from the pool the application's queries share, and on a busy
    /// server they made the writers' latency many times worse. Raise it on an idle server
    /// with cores to spare.
    #[arg(long, default_value_t = 0)]
    pub(crate) verify_parallel_workers: u32,
    /// maintenance_work_mem for building the shadow's indexes.
    #[arg(long, default_value = "1GB")]
    pub(crate) maintenance_work_mem: String,
    /// Lock budget of each cutover attempt, in ms: all its lock waits together (the table,
    /// its foreign-key children and referenced tables, its views and the tables they read).
    #[arg(long, default_value_t = 200)]
    pub(crate) lock_timeout: u64,
    /// Longest time, in ms, a cutover attempt holds its locks (first lock to commit or
    /// rollback); past it the attempt rolls back and is retried.
    #[arg(long, default_value_t = 500)]
    pub(crate) max_lock_hold: u64,
    /// Cutover attempts before giving up.
    #[arg(long, default_value_t = 10)]
    pub(crate) cutover_retries: u32,
    /// Longest wait, in ms, for the last changes to be applied while the cutover lock is held.
    #[arg(long, default_value_t = 1000)]
    pub(crate) fence_timeout: u64,
    /// Directory for the change spool (default: the system temp dir).
    #[arg(long)]
    pub(crate) work_dir: Option<PathBuf>,
    /// While this file exists doppel keeps the shadow caught up and does not cut over;
    /// remove it to cut over (gh-ost's --postpone-cut-over-flag-file).
    #[arg(long)]
    pub(crate) postpone_cutover_flag_file: Option<PathBuf>,
    /// Cancel (pg_cancel_backend), then terminate (pg_terminate_backend), the sessions that
    /// block the cutover lock once they have blocked it for --kill-blockers-grace. Off by
    /// default: without it doppel only reports them and retries.
    #[arg(long)]
    pub(crate) kill_blockers: bool,
    /// How long the cutover waits, before each attempt, for sessions holding a snapshot older
    /// than the cutover (a transaction that would read the new table incompletely) to end
    /// (e.g. `60s`, `10m`); past it the attempt is postponed, exit 5 after the retries.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub(crate) old_snapshot_timeout: Duration,
    /// Cancel (pg_cancel_backend), then after --kill-blockers-grace terminate, the sessions
    /// still holding a snapshot older than the cutover after --old-snapshot-timeout. Off by
    /// default: doppel postpones the cutover and names them.
    #[arg(long)]
    pub(crate) kill_old_snapshots: bool,
    /// A PgBouncer admin console (DSN with dbname=pgbouncer, a user in admin_users; repeatable):
    /// right after the cutover commits doppel sends it `RECONNECT <database>`, so pooled
    /// server connections, and the statements prepared on them, are replaced as they are
    /// released.
    #[arg(long = "pgbouncer-admin")]
    pub(crate) pgbouncer_admin: Vec<String>,
    /// logical_decoding_work_mem of doppel's WAL sender: server memory for decoding before
    /// transactions spill to disk (the backfill's own chunks are decoded too).
    #[arg(long, default_value = "256MB")]
    pub(crate) logical_decoding_work_mem: String,
    /// Grace period, in ms, before --kill-blockers cancels a blocking session.
    #[arg(long, default_value_t = 2000)]
    pub(crate) kill_blockers_grace: u64,
    #[command(flatten)]
    pub(crate) throttle: ThrottleArgs,
    /// Control socket path (default: `<work dir>/doppel-<table oid>.sock`).
    #[arg(long)]
    pub(crate) control_socket: Option<PathBuf>,
    /// Directory of hook executables named after phases (on-startup, on-preflight-ok,
    /// before-copy, copy-complete, on-throttled, before-cutover, after-cutover, on-success,
    /// on-failure, on-status).
    #[arg(long)]
    pub(crate) hooks_dir: Option<PathBuf>,
    /// Directory for the rollback script and the cutover record.
    #[arg(long, default_value = ".")]
    pub(crate) rollback_dir: PathBuf,
    /// Progress display: bars on a TTY, status lines otherwise.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub(crate) progress: ProgressMode,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 10)]
    pub(crate) status_interval: u64,
    /// After the cutover, keep streaming the new table's changes back into the kept old
    /// table for this long (e.g. `30m`, `2h`), so `doppel ctl --table T revert` swaps back
    /// without losing a write (`finalize` ends it early). Off by default: doppel exits once
    /// the cutover commits.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) revert_window: Option<Duration>,
    /// Keep a durable checkpoint and a permanent replication slot, so that an interrupted
    /// run continues with --resume and transient faults (a server restart, a terminated
    /// backend, a failover) are survived by reconnecting. The slot retains WAL while doppel
    /// is down: see --resume-within and max_slot_wal_keep_size.
    #[arg(long)]
    pub(crate) resumable: bool,
    /// Continue the interrupted --resumable run of this table with the same --alter clauses
    /// from its checkpoint (implies --resumable; a new run when there is no checkpoint).
    #[arg(long)]
    pub(crate) resume: bool,
    /// Refuse to resume a run that has been down longer than this (e.g. `1h`, `6h`): its slot
    /// retained WAL all that time.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    pub(crate) resume_within: Duration,
    /// How long a --resumable run keeps reconnecting after a transient fault (a dropped
    /// connection, a server restart) before it stops, keeping its checkpoint.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub(crate) reconnect_timeout: Duration,
    /// Keep the application's write latency under this many ms: doppel times a write of its
    /// own (a one-row UPDATE of doppel.write_probe) every 100 ms and slows the copy, the index
    /// builds, verification and the apply while it is above (additive increase,
    /// multiplicative decrease). Off by default.
    #[arg(long, value_name = "MS")]
    pub(crate) max_write_latency: Option<f64>,
    /// The default, kept for scripts: the copy sessions write under replication origins and
    /// the stream asks for origin 'none' (see --no-copy-origin).
    #[arg(long, overrides_with = "no_copy_origin")]
    pub(crate) copy_origin: bool,
    /// Decode the copied rows in the WAL sender and discard them, instead of marking the copy
    /// sessions with replication origins and streaming with origin 'none'. The origins are
    /// used by default where they can be (PostgreSQL 16+, superuser or EXECUTE on the origin
    /// functions, no other origin on the server but those of other databases' subscriptions):
    /// they save the WAL sender 30-55% of its CPU and the run 3-10% of its time (10M rows,
    /// PostgreSQL 18), but a replication origin created during the run (a subscription in this
    /// database) aborts it (exit 7). Use this flag when one may be.
    #[arg(long, overrides_with = "copy_origin")]
    pub(crate) no_copy_origin: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9187 (port 0: any free
    /// port, logged and shown by `status --json`).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    /// Seconds the metrics endpoint stays up after the run ends, until one more scrape has
    /// seen the exit (doppel_exit_code).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub(crate) metrics_linger: u64,
}

/// Where runs are recorded (`doppel run`, `doppel backfill`, `doppel history`).
#[derive(Args, Debug, Clone)]
pub(crate) struct HistoryArgs {
    /// Do not record this run in the history table.
    #[arg(long)]
    pub(crate) no_history: bool,
    /// The history table, `schema.table` (created on first use).
    #[arg(long, default_value = "doppel.migrations")]
    pub(crate) history_table: String,
}

impl HistoryArgs {
    /// The library's history options.
    ///
    /// Errors: a `--history-table` that is not `schema.table`.
    pub(crate) fn options(&self) -> anyhow::Result<HistoryOptions> {
        let mut options = HistoryOptions::parse(&self.history_table)?;
        options.enabled = !self.no_history;
        Ok(options)
    }
}

/// `--strategy`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StrategyChoice {
    /// Per clause, the least-locking strategy: direct, online recipe or shadow.
    Auto,
    /// The shadow-table migration for every clause.
    Shadow,
}

/// When to slow down or abort: the throttles and critical thresholds every run has (`doppel
/// run`, `doppel backfill`).
#[derive(Args, Debug, Clone)]
pub(crate) struct ThrottleArgs {
    /// Throttle while a standby's replay lag exceeds this many ms (pg_stat_replication, and
    /// the heartbeat on each --throttle-replica).
    #[arg(long)]
    pub(crate) max_replica_lag: Option<u64>,
    /// Throttle while a standby's replay position trails the primary by more bytes of WAL.
    #[arg(long)]
    pub(crate) max_replica_lag_bytes: Option<u64>,
    /// A standby to measure heartbeat lag on (DSN; repeatable).
    #[arg(long = "throttle-replica")]
    pub(crate) throttle_replicas: Vec<String>,
    /// Throttle while doppel's replication slot retains more bytes of WAL.
    #[arg(long)]
    pub(crate) max_retained_wal: Option<u64>,
    /// Abort (and clean up) when doppel's slot retains more bytes of WAL.
    #[arg(long)]
    pub(crate) critical_retained_wal: Option<u64>,
    /// Throttle while more client sessions than this are running a statement.
    #[arg(long)]
    pub(crate) max_active_backends: Option<i64>,
    /// Throttle while this query returns a positive number (or true).
    #[arg(long)]
    pub(crate) throttle_query: Option<String>,
    /// Abort (and clean up) when this query returns a positive number.
    #[arg(long)]
    pub(crate) critical_query: Option<String>,
    /// Throttle while this file exists.
    #[arg(long)]
    pub(crate) throttle_flag_file: Option<PathBuf>,
    /// Abort (and clean up) as soon as this file exists.
    #[arg(long)]
    pub(crate) panic_flag_file: Option<PathBuf>,
}

impl ThrottleArgs {
    /// The library's throttle options.
    ///
    /// Errors: a `--throttle-replica` DSN that does not parse.
    pub(crate) fn options(&self) -> anyhow::Result<ThrottleOptions> {
        let mut replicas = Vec::new();
        for dsn in &self.throttle_replicas {
            replicas.push(conninfo::resolve(Some(dsn))?);
        }
        Ok(ThrottleOptions {
            max_replica_lag: self.max_replica_lag.map(Duration::from_millis),
            max_replica_lag_bytes: self.max_replica_lag_bytes,
            replicas,
            max_retained_wal: self.max_retained_wal,
            critical_retained_wal: self.critical_retained_wal,
            max_active_backends: self.max_active_backends,
            throttle_query: self.throttle_query.clone(),
            critical_query: self.critical_query.clone(),
            throttle_flag_file: self.throttle_flag_file.clone(),
            panic_flag_file: self.panic_flag_file.clone(),
            origin_guard: false,
        })
    }
}

/// `--chunk-by`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunkByArg {
    Key,
    Tid,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub(crate) enum ProgressMode {
    Auto,
    Bars,
    Lines,
}

/// How progress is shown for `--progress`: bars on a terminal for `auto`.
pub(crate) fn display(mode: ProgressMode) -> Display {
    match mode {
        ProgressMode::Bars => Display::Bars,
        ProgressMode::Lines => Display::Lines,
        ProgressMode::Auto if std::io::stderr().is_terminal() => Display::Bars,
        ProgressMode::Auto => Display::Lines,
    }
}

/// The library's run options from the command line's.
///
/// Errors: a `--throttle-replica` or `--pgbouncer-admin` DSN that does not parse.
pub(crate) fn run_options(
    table: String,
    alters: Vec<String>,
    execute: bool,
    t: &TuningArgs,
) -> anyhow::Result<RunOptions> {
    let display = display(t.progress);
    let mut pgbouncer_admin = Vec::new();
    for dsn in &t.pgbouncer_admin {
        pgbouncer_admin.push(conninfo::resolve(Some(dsn))?);
    }
    Ok(RunOptions {
        table,
        alters,
        execute,
        copy: CopyOptions {
            chunk_time: Duration::from_millis(t.chunk_time.max(1)),
            nice_ratio: t.nice_ratio.max(0.0),
            chunk_by: match t.chunk_by {
                ChunkByArg::Key => ChunkBy::Key,
                ChunkByArg::Tid => ChunkBy::Tid,
            },
            ..CopyOptions::default()
        },
        copy_workers: t.copy_workers.max(1),
        apply_workers: t.apply_workers.max(1),
        verify_chunk_rows: t.verify_chunk_rows.max(1),
        verify_parallel_workers: t.verify_parallel_workers,
        maintenance_work_mem: t.maintenance_work_mem.clone(),
        lock_timeout: Duration::from_millis(t.lock_timeout.max(1)),
        max_lock_hold: Duration::from_millis(t.max_lock_hold.max(1)),
        cutover_retries: t.cutover_retries.max(1),
        fence_timeout: Duration::from_millis(t.fence_timeout.max(1)),
        work_dir: t.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        rollback_dir: t.rollback_dir.clone(),
        postpone_cutover_flag_file: t.postpone_cutover_flag_file.clone(),
        logical_decoding_work_mem: t.logical_decoding_work_mem.clone(),
        kill_blockers: t
            .kill_blockers
            .then(|| Duration::from_millis(t.kill_blockers_grace)),
        old_snapshot_timeout: t.old_snapshot_timeout,
        kill_old_snapshots: t
            .kill_old_snapshots
            .then(|| Duration::from_millis(t.kill_blockers_grace)),
        pgbouncer_admin,
        throttle: t.throttle.options()?,
        control_socket: t.control_socket.clone(),
        hooks_dir: t.hooks_dir.clone(),
        display,
        status_interval: Duration::from_secs(t.status_interval.max(1)),
        revert_window: t.revert_window,
        resumable: t.resumable || t.resume,
        resume: t.resume,
        resume_within: t.resume_within,
        reconnect_timeout: t.reconnect_timeout,
        max_write_latency: t
            .max_write_latency
            .filter(|ms| *ms > 0.0)
            .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
        copy_origin: t.copy_origin || !t.no_copy_origin,
        metrics_listen: t.metrics_listen,
        metrics_linger: Duration::from_secs(t.metrics_linger),
        ..RunOptions::new("", &[])
    })
}
