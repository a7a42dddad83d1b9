//! The migration, phase by phase (DESIGN.md §1): preflight → shadow → publication + slot →
//! backfill → primary key → catch-up → secondary indexes → verify → cutover → cleanup.
//!
//! This module only sequences the phases and owns what they create: every failure path, and
//! Ctrl-C / SIGTERM, stops the stream (a TEMPORARY slot disappears with its connection), drops
//! the publication and the shadow, and leaves the original table untouched. After the cutover
//! commits nothing is dropped: the original survives as `_doppel_<oid>_old_<name>` with a
//! rollback script.

pub mod operator;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::cancel::Cancel;
use crate::conninfo;
use crate::model::catalog;
use crate::ops::progress::{self, Progress};
use crate::phases::apply::{self, Applier};
use crate::phases::backfill::{self, CopyOptions, CopyReport};
use crate::phases::capture::spool;
use crate::phases::capture::stream::Streamer;
use crate::phases::cutover::{self, CutoverOptions, CutoverReport};
use crate::phases::fence::Fencer;
use crate::phases::shadow;
use crate::phases::verify::{self, VerifyReport};
use crate::plan::{Plan, Rewrite};
use crate::preflight;
use crate::sql::{ident, literal};
use pglogrepl::client::ReplicationClient;
use pglogrepl::lsn::Lsn;

/// First key of doppel's advisory locks (`'dop'`); the second is the table's OID.
pub const ADVISORY_LOCK_CLASS: i32 = 0x0064_6f70;

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
    /// Rows per verification chunk (each compared under one short snapshot; throttling and
    /// `nice_ratio` act between chunks).
    pub verify_chunk_rows: i64,
    /// `maintenance_work_mem` for the index builds (e.g. `1GB`).
    pub maintenance_work_mem: String,
    /// `lock_timeout` per cutover attempt.
    pub lock_timeout: Duration,
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
    /// When to slow down or abort.
    pub throttle: crate::ops::throttle::ThrottleOptions,
    /// The control socket's path (default: `<work_dir>/doppel-<oid>.sock`).
    pub control_socket: Option<PathBuf>,
    /// Directory of hook executables (gh-ost's `--hooks-path`).
    pub hooks_dir: Option<PathBuf>,
    /// How progress is shown.
    pub display: progress::Display,
    /// Interval between status lines.
    pub status_interval: Duration,
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
            verify_chunk_rows: crate::phases::verify::VERIFY_CHUNK_ROWS,
            maintenance_work_mem: "1GB".into(),
            lock_timeout: Duration::from_millis(200),
            cutover_retries: 10,
            fence_timeout: Duration::from_millis(1000),
            work_dir: std::env::temp_dir(),
            rollback_dir: PathBuf::from("."),
            postpone_cutover_flag_file: None,
            kill_blockers: None,
            logical_decoding_work_mem: "256MB".into(),
            throttle: crate::ops::throttle::ThrottleOptions::default(),
            control_socket: None,
            hooks_dir: None,
            display: progress::Display::Lines,
            status_interval: Duration::from_secs(10),
        }
    }
}

/// What a completed migration did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The plan that ran.
    pub plan: Plan,
    /// Backfill figures.
    pub copy: CopyReport,
    /// Verification figures.
    pub verify: VerifyReport,
    /// Cutover figures.
    pub cutover: CutoverReport,
    /// Row changes applied from the stream.
    pub applied_changes: u64,
    /// Wall time of each phase, in order.
    pub phases: Vec<(&'static str, Duration)>,
    /// Whole run.
    pub total: Duration,
}

/// The result of `run`.
#[derive(Debug)]
pub enum Outcome {
    /// A dry run: the plan, nothing created.
    Planned(Box<Plan>),
    /// The migration completed and verified.
    Migrated(Box<RunReport>),
}

/// What this run created, so a failure can remove exactly that.
#[derive(Default)]
struct Created {
    publication: bool,
    shadow: bool,
    cut_over: bool,
    spool: Option<PathBuf>,
}

/// Renders the dry-run plan for a DBA: checks passed, warnings, the shadow DDL, the phases,
/// the cutover and rollback SQL.
pub fn render_plan(plan: &Plan, script: &cutover::Script) -> String {
    let mut out = String::new();
    let t = &plan.original;
    out.push_str(&format!(
        "doppel plan for {} (oid {}, about {} rows, {} with indexes and TOAST)\n",
        t.qualified(),
        t.oid,
        t.rows_estimate.max(0),
        progress::format_bytes(t.total_bytes.max(0) as u64)
    ));
    out.push_str(&format!(
        "ALTER: {}\n",
        plan.alter
            .statements
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    ));
    out.push_str(match plan.rewrite {
        Rewrite::Rewrite => "cost if run directly: full table rewrite under ACCESS EXCLUSIVE\n",
        Rewrite::ScanUnderLock => {
            "cost if run directly: a scan or index build under its lock (no rewrite)\n"
        }
        Rewrite::MetadataOnly => "cost if run directly: metadata-only (no rewrite)\n",
    });
    out.push_str("preflight: all checks passed\n");
    for w in &plan.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out.push_str(&format!(
        "\nphases:\n  1. create publication {} FOR TABLE {} and TEMPORARY logical slot {} (pgoutput)\n  2. create shadow {} (no indexes; autovacuum off)\n  3. backfill in primary-key chunks (time-sized), streaming changes to a local spool\n  4. build the primary key, apply the spooled changes, build {} secondary index(es)/constraint(s), VACUUM (ANALYZE)\n  5. verify counts and hashes chunk by chunk\n  6. cutover under ACCESS EXCLUSIVE with lock_timeout, then keep {} as {}\n",
        plan.names.publication,
        t.qualified(),
        plan.names.slot,
        plan.names.shadow_qualified(),
        shadow::plain_index_sql(plan).len() + shadow::constraining_sql(plan).len(),
        t.qualified(),
        plan.names.old_qualified()
    ));
    out.push_str("\nshadow DDL:\n");
    for s in shadow::create_sql(plan) {
        out.push_str(&format!("  {s};\n"));
    }
    out.push_str("\nafter the backfill:\n");
    for s in shadow::primary_key_sql(plan)
        .into_iter()
        .chain(shadow::plain_index_sql(plan))
        .chain(shadow::constraining_sql(plan))
    {
        out.push_str(&format!("  {s};\n"));
    }
    out.push_str(
        "\ncutover (one transaction, after LOCK TABLE .. IN ACCESS EXCLUSIVE MODE and a fence):\n",
    );
    for s in &script.forward {
        out.push_str(&format!("  {s};\n"));
    }
    out.push_str("\nrollback script (written to disk before the cutover commits):\n");
    for line in script.rollback.lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

/// Runs a migration (or, without `execute`, a dry run). On any error before the cutover
/// commits, everything created is removed and the original is untouched.
pub async fn run(
    config: &tokio_postgres::Config,
    options: &RunOptions,
    cancel: &Cancel,
) -> Result<Outcome> {
    let started = Instant::now();
    let hooks = crate::ops::hooks::Hooks::new(options.hooks_dir.clone())?;
    let mut control = conninfo::connect(config).await?;
    control
        .batch_execute("SET application_name = 'doppel'; SET lock_timeout = '5s'")
        .await?;
    let plan = preflight::run(&mut control, &options.table, &options.alters).await?;
    let locked: bool = control
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2::oid::int)",
            &[&ADVISORY_LOCK_CLASS, &plan.original.oid],
        )
        .await?
        .get(0);
    if !locked {
        return Err(preflight::Refused(vec![format!(
            "another doppel run holds the lock on {} (advisory lock {}, {}): one run per table at a time",
            plan.original.qualified(),
            ADVISORY_LOCK_CLASS,
            plan.original.oid
        )])
        .into());
    }
    if !options.execute {
        return Ok(Outcome::Planned(Box::new(plan)));
    }
    let plan = Arc::new(plan);
    let progress = Progress::new();
    let socket = options
        .control_socket
        .clone()
        .unwrap_or_else(|| crate::ops::control::default_path(&options.work_dir, plan.original.oid));
    let mut operator =
        operator::Operator::start(plan.clone(), progress.clone(), hooks, Some(socket), options)
            .await?;
    // The run stops on the caller's signal or on the operator's `abort`.
    let (abort, internal) = Cancel::new();
    operator.drive_abort(abort.clone());
    let forward = AbortOnDrop(tokio::spawn({
        let outer = cancel.clone();
        async move {
            outer.cancelled().await;
            abort.send_replace(true);
        }
    }));
    let mut created = Created::default();
    let result = async {
        operator.hook("on-startup").await?;
        operator.hook("on-preflight-ok").await?;
        execute(
            config,
            &mut control,
            plan.clone(),
            options,
            &internal,
            &mut created,
            started,
            &progress,
            &mut operator,
        )
        .await
    }
    .await;
    drop(forward);
    match result {
        Ok(report) => {
            operator.hook("on-success").await.ok();
            Ok(Outcome::Migrated(Box::new(report)))
        }
        Err(e) => {
            operator.hook("on-failure").await.ok();
            if !created.cut_over {
                let removed = cleanup_created(&control, &plan, &created).await;
                match removed {
                    Ok(list) if !list.is_empty() => {
                        tracing::info!("cleaned up: {}", list.join(", "))
                    }
                    Ok(_) => {}
                    Err(ce) => tracing::error!(
                        "cleanup after failure also failed: {ce:#}; run `doppel cleanup --table {}`",
                        plan.original.qualified()
                    ),
                }
            }
            Err(e)
        }
    }
}

async fn cleanup_created(control: &Client, plan: &Plan, created: &Created) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    // The TEMPORARY slot is dropped by the server once its connection is gone; wait for it so
    // that a failed run returns only when nothing of it is left.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let slot_left: bool = control
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[&plan.names.slot],
            )
            .await?
            .get(0);
        if !slot_left {
            break;
        }
        if Instant::now() > deadline {
            removed.push(format!(
                "(replication slot {} still present: run doppel cleanup)",
                plan.names.slot
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if created.publication {
        control
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                ident(&plan.names.publication)
            ))
            .await?;
        removed.push(format!("publication {}", plan.names.publication));
    }
    if created.shadow {
        control
            .batch_execute(&shadow::drop_sql(&plan.names.schema, &plan.names.shadow))
            .await?;
        removed.push(format!("shadow table {}", plan.names.shadow_qualified()));
    }
    if let Some(path) = &created.spool {
        std::fs::remove_file(path).ok();
    }
    Ok(removed)
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    config: &tokio_postgres::Config,
    control: &mut Client,
    plan: Arc<Plan>,
    options: &RunOptions,
    cancel: &Cancel,
    created: &mut Created,
    started: Instant,
    progress: &Arc<Progress>,
    operator: &mut operator::Operator,
) -> Result<RunReport> {
    let progress = progress.clone();
    progress.update(|s| {
        s.rows_estimate = plan.original.rows_estimate.max(0) as u64;
        s.phase = "starting".into();
    });
    let reporter =
        progress::spawn_reporter(progress.clone(), options.display, options.status_interval);
    let _reporter = AbortOnDrop(reporter);
    let mut phases: Vec<(&'static str, Duration)> = Vec::new();
    let table_q = plan.original.qualified();
    let pauses = crate::testing::pause::Pauses::new(&options.work_dir);
    pauses.point("after-preflight", &table_q).await;

    // Publication first, then the shadow, then the slot (DESIGN.md §1.3).
    let phase = Instant::now();
    control
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR TABLE {table_q}",
            ident(&plan.names.publication)
        ))
        .await
        .context("creating the publication")?;
    created.publication = true;
    {
        let tx = control.transaction().await?;
        for statement in shadow::create_sql(&plan) {
            tx.batch_execute(&statement)
                .await
                .with_context(|| format!("creating the shadow table: {statement}"))?;
        }
        tx.commit().await?;
    }
    created.shadow = true;
    pauses.point("shadow-built", &plan.names.shadow).await;
    let fingerprint = catalog::fingerprint(&*control, plan.original.oid).await?;

    let mut replication = ReplicationClient::connect(&walsender_config(
        config,
        &options.logical_decoding_work_mem,
    ))
    .await
    .context("opening the replication connection")?;
    let slot = replication
        .create_logical_slot(&plan.names.slot, true)
        .await
        .context("creating the logical replication slot")?;
    let snapshot_name = slot
        .snapshot_name
        .clone()
        .ok_or_else(|| anyhow!("the server exported no snapshot with the slot"))?;
    let exported = {
        let tx = control
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await?;
        tx.batch_execute(&format!(
            "SET TRANSACTION SNAPSHOT {}",
            literal(&snapshot_name)
        ))
        .await
        .context("importing the slot's exported snapshot")?;
        let text: String = tx
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await?
            .get(0);
        tx.commit().await?;
        apply::parse_snapshot(&text)?
    };
    let stream = replication
        .start_logical_replication(
            &plan.names.slot,
            slot.consistent_point,
            &plan.names.publication,
            true,
        )
        .await
        .context("starting replication")?;
    std::fs::create_dir_all(&options.work_dir).with_context(|| {
        format!(
            "cannot create the work directory {}",
            options.work_dir.display()
        )
    })?;
    let spool_path = options.work_dir.join(format!(
        "doppel-{}-{}.spool",
        plan.original.oid,
        std::process::id()
    ));
    let (writer, reader) = spool::create(&spool_path)?;
    created.spool = Some(spool_path);
    let streamer = Streamer::spawn(stream, writer);
    let guard = TaskGuard {
        streamer: Some(streamer),
        applier: None,
    };
    let result = run_phases(
        config,
        control,
        &plan,
        options,
        cancel,
        &progress,
        guard,
        reader,
        exported,
        slot.consistent_point,
        &fingerprint,
        &mut phases,
        phase,
        operator,
    )
    .await;
    let (copy, verify, cutover, applied) = result?;
    created.cut_over = true;
    operator.hook("after-cutover").await.ok();
    // The cutover has committed: from here a failure is reported, not returned, so the exit
    // status says the table was migrated.
    let drop_publication = format!(
        "DROP PUBLICATION IF EXISTS {}",
        ident(&plan.names.publication)
    );
    if let Err(e) = control.batch_execute(&drop_publication).await {
        tracing::warn!(
            "the cutover committed, but dropping doppel's publication failed ({e}); drop it with `{drop_publication}` or `doppel cleanup --table {}`",
            plan.original.qualified()
        );
    }
    if let Some(path) = created.spool.take() {
        std::fs::remove_file(path).ok();
    }
    progress.update(|s| s.phase = "done".into());
    Ok(RunReport {
        plan: (*plan).clone(),
        copy,
        verify,
        cutover,
        applied_changes: applied,
        phases,
        total: started.elapsed(),
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Owns the stream consumer and the applier; stops both on every exit path.
struct TaskGuard {
    streamer: Option<Streamer>,
    applier: Option<Applier>,
}

impl TaskGuard {
    fn check(&self) -> Result<()> {
        if let Some(s) = &self.streamer {
            s.check()?;
        }
        if let Some(a) = &self.applier {
            a.check()?;
        }
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<()> {
        let mut first_error = None;
        if let Some(a) = self.applier.take()
            && let Err(e) = a.stop().await
        {
            first_error.get_or_insert(e);
        }
        if let Some(s) = self.streamer.take()
            && let Err(e) = s.stop().await
        {
            first_error.get_or_insert(e);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

type PhaseResult = (CopyReport, VerifyReport, CutoverReport, u64);

#[allow(clippy::too_many_arguments)]
async fn run_phases(
    config: &tokio_postgres::Config,
    control: &mut Client,
    plan: &Arc<Plan>,
    options: &RunOptions,
    cancel: &Cancel,
    progress: &Arc<Progress>,
    mut guard: TaskGuard,
    reader: spool::SpoolReader,
    exported: (u64, u64, Vec<u64>),
    start_lsn: Lsn,
    fingerprint: &str,
    phases: &mut Vec<(&'static str, Duration)>,
    setup_started: Instant,
    operator: &mut operator::Operator,
) -> Result<PhaseResult> {
    let result = phases_inner(
        config,
        control,
        plan,
        options,
        cancel,
        progress,
        &mut guard,
        reader,
        exported,
        start_lsn,
        fingerprint,
        phases,
        setup_started,
        operator,
    )
    .await;
    let stopped = guard.shutdown().await;
    match (result, stopped) {
        (Ok(r), Ok(())) => Ok(r),
        (Ok(r), Err(e)) => {
            // The cutover committed; a late stream error does not undo it.
            tracing::warn!("stopping the stream after cutover: {e:#}");
            Ok(r)
        }
        (Err(e), _) => Err(e),
    }
}

#[allow(clippy::too_many_arguments)]
async fn phases_inner(
    config: &tokio_postgres::Config,
    control: &mut Client,
    plan: &Arc<Plan>,
    options: &RunOptions,
    cancel: &Cancel,
    progress: &Arc<Progress>,
    guard: &mut TaskGuard,
    reader: spool::SpoolReader,
    exported: (u64, u64, Vec<u64>),
    start_lsn: Lsn,
    fingerprint: &str,
    phases: &mut Vec<(&'static str, Duration)>,
    setup_started: Instant,
    operator: &mut operator::Operator,
) -> Result<PhaseResult> {
    let stream_status = guard
        .streamer
        .as_ref()
        .map(|s| s.watch())
        .ok_or_else(|| anyhow!("no stream"))?;
    // Keep the progress counters fed from the stream and (once it exists) the applier.
    let apply_watch: Arc<std::sync::Mutex<Option<watch::Receiver<apply::ApplyStatus>>>> =
        Arc::new(std::sync::Mutex::new(None));
    let _sync = AbortOnDrop(tokio::spawn({
        let progress = progress.clone();
        let stream_status = stream_status.clone();
        let apply_watch = apply_watch.clone();
        async move {
            loop {
                let applied = apply_watch
                    .lock()
                    .ok()
                    .and_then(|w| w.as_ref().map(|r| r.borrow().clone()));
                let stream = stream_status.borrow().clone();
                progress.update(|s| {
                    s.stream_lsn = stream.received.to_string();
                    let head = stream.received.max(stream.server_wal_end);
                    let done = applied
                        .as_ref()
                        .map(|a| a.applied)
                        .unwrap_or(start_lsn)
                        .max(start_lsn);
                    s.lag_bytes = head.bytes_since(done);
                    s.backlog_bytes = stream.received.bytes_since(done);
                    if let Some(a) = &applied {
                        s.applied = a.changes;
                    }
                });
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }));

    let mut throttler = crate::ops::throttle::Throttler::spawn(
        config,
        options.throttle.clone(),
        &plan.names.slot,
        &plan.names.message_prefix,
    )
    .await
    .context("starting the throttle checker")?;
    throttler.abort_on(cancel.clone());
    operator.drive_throttle(throttler.live());
    operator.drive_hooks(throttler.watch());
    let _throttle_progress = AbortOnDrop(tokio::spawn({
        let progress = progress.clone();
        let mut rx = throttler.watch();
        async move {
            loop {
                let (reasons, lag) = {
                    let s = rx.borrow_and_update();
                    (s.reasons.join("; "), s.replica_lag_ms)
                };
                progress.update(|s| {
                    s.throttled = reasons;
                    s.replica_lag_ms = lag;
                });
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
    }));

    // F3 (DESIGN.md §1.3): transactions the exported snapshot sees as committed must be
    // visible to the copier's own snapshots before the first chunk.
    wait_exported_visible(control, &exported).await?;
    phases.push(("setup", setup_started.elapsed()));

    // Backfill.
    let pauses = crate::testing::pause::Pauses::new(&options.work_dir);
    operator.hook("before-copy").await?;
    let phase = Instant::now();
    progress.update(|s| {
        s.phase = "copying".into();
        s.copy_started = Some(Instant::now());
    });
    let copy = {
        let check = || {
            cancel.check()?;
            guard.check()?;
            throttler.check_critical()?;
            Ok(())
        };
        let mut workers = Vec::new();
        for _ in 0..options.copy_workers.max(1) {
            let w = conninfo::connect(config).await?;
            w.batch_execute("SET application_name = 'doppel copy'")
                .await?;
            workers.push(w);
        }
        let copy_options = CopyOptions {
            pauses: pauses.clone(),
            ..options.copy.clone()
        };
        backfill::backfill(
            control,
            &workers,
            plan,
            &copy_options,
            progress,
            Some(&throttler),
            Some(&operator.controls),
            check,
        )
        .await?
    };
    progress.update(|s| s.copy_ended = Some(Instant::now()));
    operator.hook("copy-complete").await?;
    phases.push(("copy", phase.elapsed()));
    tracing::info!(
        rows = copy.rows,
        chunks = copy.chunks,
        secs = copy.elapsed.as_secs_f64(),
        "backfill complete"
    );

    // Primary key, then the backlog.
    let phase = Instant::now();
    progress.update(|s| s.phase = "building primary key".into());
    control
        .batch_execute(&format!(
            "SET maintenance_work_mem = {}",
            literal(&options.maintenance_work_mem)
        ))
        .await
        .context("setting maintenance_work_mem for the index builds")?;
    for statement in shadow::primary_key_sql(plan) {
        run_cancellable(control, &statement, cancel, &throttler)
            .await
            .context("building the shadow's primary key")?;
    }
    // Non-unique indexes now: logical decoding is still working through the backfill's WAL,
    // and the backlog cannot be applied before it has.
    for statement in shadow::plain_index_sql(plan) {
        run_cancellable(control, &statement, cancel, &throttler)
            .await
            .map_err(|e| index_error(e, plan, &statement))?;
    }
    phases.push(("primary key + indexes", phase.elapsed()));
    let phase = Instant::now();
    progress.update(|s| s.phase = "catching up".into());
    let apply_client = conninfo::connect(config).await?;
    apply_client
        .batch_execute("SET application_name = 'doppel applier'")
        .await?;
    let applier =
        Applier::spawn(apply_client, plan.clone(), reader, Some(throttler.watch())).await?;
    if let Ok(mut w) = apply_watch.lock() {
        *w = Some(applier.watch());
    }
    guard.applier = Some(applier);
    let fence_client = conninfo::connect(config).await?;
    fence_client
        .batch_execute("SET application_name = 'doppel fence'")
        .await?;
    let fencer = Fencer::new(fence_client, &plan.names.message_prefix).await?;
    let applier_ref = |g: &TaskGuard| -> Result<()> { g.check() };
    if let Some(a) = guard.applier.as_ref() {
        a.resume();
    }
    pauses.point("catch-up", &plan.names.shadow).await;
    catch_up(guard, &fencer, cancel, &throttler).await?;
    phases.push(("catch-up", phase.elapsed()));

    // Unique and exclusion indexes and NOT VALID checks, with the applier paused (the spool
    // absorbs changes).
    let phase = Instant::now();
    progress.update(|s| s.phase = "building indexes".into());
    if let Some(a) = guard.applier.as_ref() {
        a.pause().await?;
        // Unique and exclusion indexes must see writes in source order from now on.
        a.set_collapse(!shadow::has_constraining_indexes(plan));
    }
    for statement in shadow::constraining_sql(plan) {
        applier_ref(guard)?;
        run_cancellable(control, &statement, cancel, &throttler)
            .await
            .map_err(|e| index_error(e, plan, &statement))?;
    }
    let (finish, vacuum) = shadow::finish_sql(plan);
    for statement in finish {
        control.batch_execute(&statement).await?;
    }
    if let Some(a) = guard.applier.as_ref() {
        a.resume();
    }
    run_cancellable(control, &vacuum, cancel, &throttler)
        .await
        .context("VACUUM (ANALYZE) of the shadow")?;
    phases.push(("unique indexes + vacuum", phase.elapsed()));
    let phase = Instant::now();
    progress.update(|s| s.phase = "catching up".into());
    catch_up(guard, &fencer, cancel, &throttler).await?;
    phases.push(("catch-up after indexes", phase.elapsed()));

    // Verify.
    let phase = Instant::now();
    progress.update(|s| s.phase = "verifying".into());
    let applier = guard
        .applier
        .as_ref()
        .ok_or_else(|| anyhow!("no applier"))?;
    let mut peer = conninfo::connect(config).await?;
    peer.batch_execute("SET application_name = 'doppel verify'")
        .await?;
    pauses.point("verifying", &plan.names.shadow).await;
    let pace = verify::Pace {
        throttle: Some(&throttler),
        nice_ratio: options.copy.nice_ratio,
        progress: Some(progress),
    };
    let verify = tokio::select! {
        r = verify::verify(
            control,
            &mut peer,
            plan,
            &fencer,
            applier,
            options.verify_chunk_rows,
            &pace,
        ) => r.map_err(|e| stream_error_first(guard, e))?,
        _ = cancel.cancelled() => return Err(crate::failure::fail(crate::failure::FailureKind::Aborted, "interrupted during verification: cleaning up")),
    };
    phases.push(("verify", phase.elapsed()));
    tracing::info!(
        chunks = verify.chunks,
        rows = verify.rows,
        rechecks = verify.rechecks,
        deferred_keys = verify.unsettled.len(),
        "verification passed"
    );

    // Cutover.
    let phase = Instant::now();
    progress.update(|s| s.phase = "cutover".into());
    cancel.check()?;
    throttler.wait_clear().await?;
    operator.hook("before-cutover").await?;
    let script = cutover::script(control, plan, options.lock_timeout).await?;
    let cut = cutover::run(
        control,
        &peer,
        plan,
        &script,
        &fencer,
        applier,
        &verify.unsettled,
        fingerprint,
        &CutoverOptions {
            lock_timeout: options.lock_timeout,
            retries: options.cutover_retries,
            fence_timeout: options.fence_timeout,
            rollback_dir: options.rollback_dir.clone(),
            postpone_flag_file: options.postpone_cutover_flag_file.clone(),
            controls: Some(operator.controls.clone()),
            pauses: pauses.clone(),
            kill_blockers: options.kill_blockers,
            cancel: cancel.clone(),
            throttle: Some(throttler.watch()),
        },
    )
    .await
    .map_err(|e| stream_error_first(guard, e))?;
    phases.push(("cutover", phase.elapsed()));
    let applied = applier.status().changes;
    Ok((copy, verify, cut, applied))
}

/// When a phase fails because the applier stopped, the cause is often the stream that fed it
/// (a terminated WAL sender): report that error (exit code 4) rather than its consequence.
fn stream_error_first(guard: &TaskGuard, e: anyhow::Error) -> anyhow::Error {
    match guard.streamer.as_ref().map(|s| s.check()) {
        Some(Err(stream)) => stream.context(format!("{e:#}")),
        _ => e,
    }
}

/// Waits until the applier has applied everything committed before now (a fence), checking
/// the tasks and the cancel signal while it waits.
async fn catch_up(
    guard: &TaskGuard,
    fencer: &Fencer,
    cancel: &Cancel,
    throttler: &crate::ops::throttle::Throttler,
) -> Result<()> {
    let n = fencer.emit().await?;
    loop {
        cancel.check()?;
        guard.check()?;
        throttler.check_critical()?;
        let applier = guard
            .applier
            .as_ref()
            .ok_or_else(|| anyhow!("no applier"))?;
        match applier.wait_fence(n, Duration::from_millis(500)).await {
            Ok(()) => return Ok(()),
            Err(_) => continue,
        }
    }
}

/// Runs one long statement; on cancel, or on a critical throttle condition (the panic flag
/// file, ...), asks the server to cancel it and returns that abort.
async fn run_cancellable(
    client: &Client,
    sql: &str,
    cancel: &Cancel,
    throttler: &crate::ops::throttle::Throttler,
) -> Result<()> {
    let token = client.cancel_token();
    tokio::select! {
        r = client.batch_execute(sql) => r.map_err(anyhow::Error::new),
        _ = cancel.cancelled() => {
            token.cancel_query(tokio_postgres::NoTls).await.ok();
            Err(crate::failure::fail(crate::failure::FailureKind::Aborted, "interrupted: stopping and cleaning up"))
        }
        e = throttler.critical() => {
            token.cancel_query(tokio_postgres::NoTls).await.ok();
            Err(e)
        }
    }
}

fn index_error(e: anyhow::Error, plan: &Plan, statement: &str) -> anyhow::Error {
    let db = e
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
        .map(|d| {
            format!(
                "{}{}",
                d.message(),
                d.detail().map(|x| format!(" ({x})")).unwrap_or_default()
            )
        });
    match db {
        Some(msg) => crate::failure::fail(
            crate::failure::FailureKind::Conflict,
            format!(
                "building an index or constraint of the new schema failed: {}; the rows of {} violate it. Nothing was cut over; the original table is untouched. Statement: {statement}",
                shadow::user_names(plan, &msg),
                plan.original.qualified()
            ),
        ),
        None => e.context("building secondary indexes"),
    }
}

/// Waits until every transaction the exported snapshot sees as committed is visible to new
/// snapshots on `client` (its commit can be flushed before it leaves the ProcArray). Such a
/// transaction can be in the new snapshot's in-progress list or at or above its `xmax`
/// ([`apply::committed_but_not_visible`]); PostgreSQL 15 waits for it before exporting the
/// snapshot, 14 and 18 do not (tests/decoded_before_visible.rs).
async fn wait_exported_visible(client: &Client, exported: &(u64, u64, Vec<u64>)) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text: String = client
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await?
            .get(0);
        let current = apply::parse_snapshot(&text)?;
        let pending = apply::committed_but_not_visible(exported, &current);
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "transactions {pending:?} committed before the slot was created but are still not visible after 60 s (a synchronous standby not acknowledging?)"
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What `doppel cleanup` found and removed.
#[derive(Debug, Clone, Default)]
pub struct CleanupReport {
    /// Objects removed, described.
    pub removed: Vec<String>,
}

/// Removes what an interrupted run on `table` left behind: the shadow table, the publication
/// and an inactive slot named after the table's OID, and, given the run's `work_dir`, its
/// change spool files (`doppel-<oid>-<pid>.spool`) and control socket (`doppel-<oid>.sock`).
/// Refuses while a run holds the table's advisory lock.
///
/// Errors: the table does not exist, a run is active on it, a slot is in use, or a DROP or
/// file removal failed.
pub async fn cleanup(
    config: &tokio_postgres::Config,
    table: &str,
    work_dir: Option<&std::path::Path>,
) -> Result<CleanupReport> {
    let client = conninfo::connect(config).await?;
    let oid = catalog::resolve(&client, table).await?;
    let t = catalog::inspect(&client, oid).await?;
    let names = crate::model::names::Names::new(&t.schema, &t.name, oid);
    let free: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2::oid::int)",
            &[&ADVISORY_LOCK_CLASS, &oid],
        )
        .await?
        .get(0);
    if !free {
        bail!(
            "a doppel run is active on {} (it holds the advisory lock): stop it first (Ctrl-C cleans up by itself)",
            t.qualified()
        );
    }
    let mut report = CleanupReport::default();
    let slots = client
        .query(
            "SELECT slot_name::text, active, active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&names.slot],
        )
        .await?;
    for s in slots {
        let (name, active, pid): (String, bool, Option<i32>) = (s.get(0), s.get(1), s.get(2));
        if active {
            bail!(
                "replication slot {name} is in use by pid {}: stop that process first",
                pid.unwrap_or(0)
            );
        }
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[&name])
            .await?;
        report.removed.push(format!("replication slot {name}"));
    }
    let has_pub: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&names.publication],
        )
        .await?
        .get(0);
    if has_pub {
        client
            .batch_execute(&format!("DROP PUBLICATION {}", ident(&names.publication)))
            .await?;
        report
            .removed
            .push(format!("publication {}", names.publication));
    }
    let has_shadow: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&names.shadow_qualified()],
        )
        .await?
        .get(0);
    if has_shadow {
        client
            .batch_execute(&shadow::drop_sql(&names.schema, &names.shadow))
            .await?;
        report
            .removed
            .push(format!("shadow table {}", names.shadow_qualified()));
    }
    if let Some(dir) = work_dir {
        let spool_prefix = format!("doppel-{oid}-");
        let socket = format!("doppel-{oid}.sock");
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the work directory {}", dir.display()))?;
        let mut files: Vec<_> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                (name.starts_with(&spool_prefix) && name.ends_with(".spool")) || name == socket
            })
            .map(|e| e.path())
            .collect();
        files.sort();
        for path in files {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            let what = if path.extension().is_some_and(|x| x == "sock") {
                "control socket"
            } else {
                "change spool"
            };
            report.removed.push(format!("{what} {}", path.display()));
        }
    }
    Ok(report)
}

/// The replication connection's configuration: `config` plus the exact-output settings
/// ([`conninfo::EXACT_OUTPUT_OPTIONS`]: the WAL sender formats streamed values with them) and
/// `-c logical_decoding_work_mem=<work_mem>` in the startup options, so the WAL sender decodes
/// the backfill's chunk transactions in memory instead of spilling them to disk.
fn walsender_config(config: &tokio_postgres::Config, work_mem: &str) -> tokio_postgres::Config {
    let mut config = conninfo::with_exact_output(config);
    let setting = format!("-c logical_decoding_work_mem={}", work_mem.replace(' ', ""));
    let options = match config.get_options() {
        Some(existing) if !existing.is_empty() => format!("{existing} {setting}"),
        _ => setting,
    };
    config.options(&options);
    config
}
