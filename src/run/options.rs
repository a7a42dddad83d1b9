//! Everything `doppel run` takes, with the CLI's defaults.

use std::path::PathBuf;
use std::time::Duration;

use crate::ops::history::HistoryOptions;
use crate::ops::progress;
use crate::ops::throttle::ThrottleOptions;
use crate::phases::backfill::CopyOptions;

/// Everything `doppel run` takes.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The table, as SQL writes it.
    pub table: String,
    /// `--alter` clauses.
    pub alters: Vec<String>,
    /// False for a dry run (preflight and plan only).
    pub execute: bool,
    /// Backfill settings.
    pub copy: CopyOptions,
    /// Sessions copying chunks at once.
    pub copy_workers: usize,
    /// Sessions applying streamed changes at once (`--apply-workers`): while only the primary
    /// key constrains the shadow, each batch is split by a hash of the key across them
    /// (docs/design.md §2.5). 1: one session.
    pub apply_workers: usize,
    /// Rows per verification chunk (each compared under one short snapshot; throttling and
    /// `nice_ratio` act between chunks).
    pub verify_chunk_rows: i64,
    /// Parallel query workers each verification session may use
    /// (`max_parallel_workers_per_gather`); 0, the default, keeps the comparison to doppel's
    /// own two sessions ([`crate::sql::parallel_workers_sql`]).
    pub verify_parallel_workers: u32,
    /// `maintenance_work_mem` for the index builds (e.g. `1GB`).
    pub maintenance_work_mem: String,
    /// The lock budget of each cutover attempt: all its lock waits together.
    pub lock_timeout: Duration,
    /// The longest a cutover attempt holds its locks, first lock to commit or rollback.
    pub max_lock_hold: Duration,
    /// Cutover attempts.
    pub cutover_retries: u32,
    /// Longest wait for the applier inside the cutover lock.
    pub fence_timeout: Duration,
    /// Directory for the change spool.
    pub work_dir: PathBuf,
    /// Directory for the rollback script.
    pub rollback_dir: PathBuf,
    /// While this file exists, the cutover waits (the shadow is kept caught up).
    pub postpone_cutover_flag_file: Option<PathBuf>,
    /// `logical_decoding_work_mem` of doppel's WAL sender (e.g. `256MB`): the memory the
    /// server may use to decode transactions before spilling them to disk. The backfill's own
    /// chunk transactions pass through the decoder too; above this size they spill, and the
    /// catch-up waits for the spill to be read back.
    pub logical_decoding_work_mem: String,
    /// `--kill-blockers` with its grace period: sessions blocking the cutover lock that long
    /// are cancelled, then terminated. `None`: nobody is killed.
    pub kill_blockers: Option<Duration>,
    /// `--old-snapshot-timeout`: how long the cutover waits, before each attempt, for the
    /// sessions holding a snapshot older than it (docs/design.md §4.6) before it postpones.
    pub old_snapshot_timeout: Duration,
    /// `--kill-old-snapshots` with its grace period (`--kill-blockers-grace`): sessions still
    /// holding an old snapshot after `old_snapshot_timeout` are cancelled, then terminated.
    /// `None`: nobody is killed.
    pub kill_old_snapshots: Option<Duration>,
    /// `--pgbouncer-admin`: PgBouncer admin consoles (`dbname=pgbouncer`) that get
    /// `RECONNECT <database>` right after the cutover commits.
    pub pgbouncer_admin: Vec<crate::conninfo::ConnInfo>,
    /// When to slow down or abort.
    pub throttle: ThrottleOptions,
    /// The control socket's path (default: `<work_dir>/doppel-<oid>.sock`).
    pub control_socket: Option<PathBuf>,
    /// Directory of hook executables (gh-ost's `--hooks-path`).
    pub hooks_dir: Option<PathBuf>,
    /// How progress is shown.
    pub display: progress::Display,
    /// Interval between status lines.
    pub status_interval: Duration,
    /// `--metrics-listen`: serve Prometheus metrics at `http://ADDR/metrics` (port 0: any free
    /// port; `status --json` names it). `None` (the default): no endpoint.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `--metrics-linger`: after the run ends, keep the metrics endpoint up until one more
    /// scrape (so the exit is seen), at most this long.
    pub metrics_linger: Duration,
    /// `--revert-window`: after the cutover commits, keep streaming the new table's changes
    /// back into the kept old table for this long, so `doppel ctl .. revert` loses nothing.
    /// `None` (the default): the run ends at the cutover.
    pub revert_window: Option<Duration>,
    /// `--resumable`: a permanent slot and a durable checkpoint (docs/design.md §2.13), so an
    /// interrupted run can be resumed (`resume`) and transient faults are survived by
    /// reconnecting. Without it the slot is TEMPORARY and any fault ends the run.
    pub resumable: bool,
    /// `--resume`: continue the interrupted resumable run of the same table and ALTER from its
    /// checkpoint (a new run when there is none).
    pub resume: bool,
    /// `--resume-within`: a checkpoint whose run has been down longer than this is refused
    /// for resume (its slot has retained WAL all that time).
    pub resume_within: Duration,
    /// `--reconnect-timeout`: how long a resumable run keeps trying to reconnect after a
    /// transient fault before it stops (keeping its checkpoint).
    pub reconnect_timeout: Duration,
    /// `--max-write-latency`: keep the latency of a probe write (doppel's own, every 100 ms)
    /// under this by pacing the copy, the index builds, verification and the apply
    /// ([`crate::ops::pacing`]). `None` (the default): no pacing.
    pub max_write_latency: Option<Duration>,
    /// On by default (`--no-copy-origin` turns it off): on PostgreSQL 16+, mark the copy
    /// sessions' writes with replication origins and stream with `origin 'none'`, so the WAL
    /// sender does not decode the copied rows ([`crate::phases::origin`], which says when it
    /// is not used: before 16, without the right to the origin functions, or when another
    /// origin exists). Off: the copied rows are decoded and discarded, as before PostgreSQL 16.
    pub copy_origin: bool,
    /// `--strategy shadow`: every clause takes the shadow, even those PostgreSQL can run
    /// directly or by an online recipe (docs/design.md §1.10).
    pub force_shadow: bool,
    /// `--backfill 'column = expression'` (repeatable): the value a column of the new table
    /// takes, computed from the old row by the copy and the applier alike. Implies the shadow.
    pub backfills: Vec<String>,
    /// Where the run is recorded (`doppel.migrations`), or `--no-history`.
    pub history: HistoryOptions,
}

impl RunOptions {
    /// The defaults of `doppel run` (a dry run; spool in the system temp dir, rollback script
    /// in the current directory, status lines every 10 s) for `table` and `alters`.
    pub fn new(table: &str, alters: &[&str]) -> RunOptions {
        RunOptions {
            table: table.to_string(),
            alters: alters.iter().map(|a| a.to_string()).collect(),
            execute: false,
            copy: CopyOptions::default(),
            copy_workers: 2,
            apply_workers: crate::phases::apply::DEFAULT_WORKERS,
            verify_chunk_rows: crate::phases::verify::VERIFY_CHUNK_ROWS,
            verify_parallel_workers: 0,
            maintenance_work_mem: "1GB".into(),
            lock_timeout: Duration::from_millis(200),
            max_lock_hold: Duration::from_millis(500),
            cutover_retries: 10,
            fence_timeout: Duration::from_millis(1000),
            work_dir: std::env::temp_dir(),
            rollback_dir: PathBuf::from("."),
            postpone_cutover_flag_file: None,
            kill_blockers: None,
            old_snapshot_timeout: crate::phases::cutover::OLD_SNAPSHOT_TIMEOUT,
            kill_old_snapshots: None,
            pgbouncer_admin: Vec::new(),
            logical_decoding_work_mem: "256MB".into(),
            throttle: ThrottleOptions::default(),
            control_socket: None,
            hooks_dir: None,
            display: progress::Display::Lines,
            status_interval: Duration::from_secs(10),
            revert_window: None,
            resumable: false,
            resume: false,
            resume_within: Duration::from_secs(3600),
            reconnect_timeout: Duration::from_secs(300),
            max_write_latency: None,
            copy_origin: true,
            metrics_listen: None,
            metrics_linger: Duration::from_secs(30),
            force_shadow: false,
            backfills: Vec::new(),
            history: HistoryOptions::default(),
        }
    }
}
