//! One migration, phase by phase (docs/design.md §1): preflight → shadow → publication + slot
//! → backfill → primary key → catch-up → secondary indexes → verify → cutover.
//!
//! [`run`] checks and plans, choosing each clause's strategy (docs/design.md §1.10): a plan
//! with no clause that needs the shadow runs its direct and online steps on the table itself
//! (`direct.rs`); otherwise, with `--execute`, it builds a [`Run`], which owns everything one
//! migration needs (settings, plan, the control session, cancellation, progress, the
//! operator's socket and hooks, the test probe, and what it created) and takes the phases in
//! order, one method each, the way gh-ost's `Migrator` and spirit's `Runner` do.
//!
//! Every failure path before the cutover commits, Ctrl-C and SIGTERM included, stops the
//! stream (a TEMPORARY slot disappears with its connection), drops the publication and the
//! shadow, and leaves the original table untouched. After the cutover commits nothing is
//! dropped: the original survives as `_doppel_<oid>_old_<name>` with a rollback script.

mod backfill;
mod cleanup;
mod created;
mod deadlock;
mod direct;
mod history;
pub mod operator;
mod options;
mod reconnect;
mod report;
mod resume;
mod setup;
mod steps;
mod tasks;
mod window;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::cancel::Cancel;
use crate::conninfo;
use crate::failure::{Check, FailureKind, Refusal, Refused, fail};
use crate::model::phase::Phase;
use crate::ops::hooks::Hooks;
use crate::ops::progress::Progress;
use crate::plan::{Migration, Plan};
use crate::preflight;
use crate::testing::Probe;

pub use backfill::{BackfillOptions, BackfillOutcome, BackfillPlan, BackfillReport, backfill};
pub use cleanup::{CleanupOptions, CleanupReport, cleanup};
pub use direct::AlterReport;
pub use options::RunOptions;
pub use report::{Outcome, RunReport, render_migration, render_plan, render_steps};
pub use resume::Finished;
pub use window::{WindowEnd, WindowReport};

use created::Created;
use operator::Operator;
use tasks::AbortOnDrop;

/// First key of doppel's advisory locks (`'dop'`); the second is the table's OID.
pub const ADVISORY_LOCK_CLASS: i32 = 0x0064_6f70;

/// Runs a migration (or, without `options.execute`, a dry run: preflight and the plan): the
/// direct and online steps on the table itself, or the shadow migration, as preflight chose
/// per clause (docs/design.md §1.10). An executed run is recorded in the history table
/// (`options.history`).
///
/// Errors: a preflight refusal (exit 2), an abort (3), a lost stream (4), an exhausted
/// cutover or lock budget (5), a verification mismatch (6), a critical threshold (7), a change
/// the migration cannot follow or rows the new schema rejects (8), anything else (1); see
/// [`crate::failure`]. On any error before the cutover commits, everything the shadow
/// migration created is removed and the original is untouched; direct steps that completed
/// stay (the error says which), an unfinished online recipe is removed.
pub async fn run(
    config: &(impl conninfo::ToConnInfo + ?Sized),
    options: &RunOptions,
    cancel: &Cancel,
) -> Result<Outcome> {
    let config = &*config.to_conn_info();
    let started = Instant::now();
    let hooks = Hooks::new(options.hooks_dir.clone())?;
    if options.resume
        && options.execute
        && let Some(finished) = resume::finish_committed(config, options).await?
    {
        return Ok(Outcome::Finished(Box::new(finished)));
    }
    let planned = match plan_and_lock(config, options).await {
        Ok((control, migration)) => {
            refuse_revert_window(&migration, options).map(|()| (control, migration))
        }
        Err(e) => Err(e),
    };
    let (control, mut migration) = match planned {
        Ok(planned) => planned,
        Err(e) => {
            if options.execute {
                history::refused(config, options, &e).await;
            }
            return Err(e);
        }
    };
    let saved = match migration.shadow_plan() {
        Some(plan) => resume::checkpoint_for(&control, plan, options).await?,
        None => None,
    };
    if options.resumable {
        let warnings = match migration.shadow_plan() {
            Some(plan) => retention_warning(&control, plan).await?,
            None => vec![
                "--resumable has no effect: every clause runs on the table itself (short steps, no shadow to keep); after a failure, run doppel again".to_string(),
            ],
        };
        migration.warnings.extend(warnings);
    }
    migration
        .warnings
        .extend(deadlock::warning(&control, options).await?);
    if !options.execute {
        return Ok(Outcome::Planned(Box::new(migration)));
    }
    if let Some(plan) = migration.shadow_plan() {
        for line in &plan.compatibility {
            tracing::warn!("application compatibility: {line}");
        }
    }
    let record = history::begin(config, options, &migration).await;
    let start = Start {
        control,
        hooks,
        saved,
        started,
    };
    let result = execute(config, options, start, migration, cancel).await;
    history::finish(record, &result).await;
    result
}

/// What [`execute`] starts from: the control session holding the table's advisory lock, the
/// hooks, a resumable run's checkpoint to resume from, and when the run started.
struct Start {
    control: Client,
    hooks: Hooks,
    saved: Option<crate::phases::checkpoint::Saved>,
    started: Instant,
}

/// Runs the migration: its direct steps, or its shadow migration (resumed from `saved`
/// when there is a checkpoint).
async fn execute(
    config: &conninfo::ConnInfo,
    options: &RunOptions,
    start: Start,
    migration: Migration,
    cancel: &Cancel,
) -> Result<Outcome> {
    let Start {
        mut control,
        hooks,
        saved,
        started,
    } = start;
    let Migration {
        original,
        clauses,
        direct,
        shadow,
        ..
    } = migration;
    if let Some(plan) = shadow {
        let mut run = Run::start(config, options, control, *plan, hooks, cancel, started).await?;
        run.resume = saved;
        let result = run.execute().await;
        return match run.finish(result).await? {
            Outcome::Migrated(mut report) => {
                report.clauses = clauses;
                Ok(Outcome::Migrated(report))
            }
            other => Ok(other),
        };
    }
    let plan = direct.unwrap_or_default();
    let run = direct::DirectRun {
        config,
        options,
        table: &original,
        plan: &plan,
        hooks: &hooks,
        cancel,
    };
    let report = run.run(&mut control).await?;
    // The OID the table has now (a `RENAME TO` clause changes its name, not its OID).
    let kept: bool = control
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_class WHERE oid = $1)",
            &[&original.oid],
        )
        .await?
        .get(0);
    let oid_after = match kept {
        true => original.oid,
        false => crate::model::catalog::resolve(&control, &original.qualified()).await?,
    };
    Ok(Outcome::Altered(Box::new(direct::AlterReport {
        original,
        clauses,
        direct: report,
        oid_after,
        total: started.elapsed(),
    })))
}

/// What a resumable run's permanent slot may retain while doppel is down, as a plan line,
/// with a warning when `max_slot_wal_keep_size` is unlimited (`-1`: the slot can fill the
/// primary's disk).
async fn retention_warning(control: &Client, plan: &Plan) -> Result<Vec<String>> {
    let keep: String = control
        .query_one("SELECT current_setting('max_slot_wal_keep_size')", &[])
        .await?
        .get(0);
    let slot = &plan.names.slot;
    Ok(vec![if keep == "-1" {
        format!(
            "resumable run: while doppel is down its permanent slot {slot} retains WAL without limit, because max_slot_wal_keep_size is -1 (unlimited): a run left down can fill the primary's pg_wal. Set a bound, e.g. ALTER SYSTEM SET max_slot_wal_keep_size = '100GB'; SELECT pg_reload_conf(); (past it the slot is invalidated and the run must start over), and resume or clean up promptly"
        )
    } else {
        format!(
            "resumable run: while doppel is down its permanent slot {slot} retains WAL, up to max_slot_wal_keep_size = {keep} (past it the slot is invalidated and the run must start over)"
        )
    }])
}

/// Preflight on a new control session, then the table's advisory lock (held by that session
/// for the whole run: one run per table).
async fn plan_and_lock(
    config: &conninfo::ConnInfo,
    options: &RunOptions,
) -> Result<(Client, Migration)> {
    let mut control = conninfo::connect(config).await.map_err(pooler_refusal)?;
    control
        .batch_execute(&format!(
            "SET application_name = 'doppel'; SET lock_timeout = '5s'; {}",
            crate::sql::WORKING_SESSION
        ))
        .await?;
    durable_commits(&control).await?;
    // An interrupted resumable run's objects are not leftovers: the checkpoint check after
    // preflight says how to resume it or remove it.
    let resuming = options.resume || resume::has_checkpoint(&control, &options.table).await?;
    let request = preflight::Request {
        table: &options.table,
        alters: &options.alters,
        backfills: &options.backfills,
        force_shadow: options.force_shadow,
        resuming,
    };
    let migration = preflight::plan(&mut control, &request).await?;
    if migration.shadow.is_some() {
        // The replication connection's settings (startup options included), opened once
        // now: a pooler in the way, or a server refusing it, stops the run before anything
        // exists.
        conninfo::probe_replication(&config.with_exact_output())
            .await
            .map_err(pooler_refusal)
            .context("opening a replication connection")?;
    }
    lock_table(
        &control,
        migration.original.oid,
        &migration.original.qualified(),
    )
    .await?;
    Ok((control, migration))
}

/// On a server whose `synchronous_commit` is `off`, the control session commits with
/// `local`: its checkpoint records and the cutover's commit are flushed to the WAL before
/// doppel goes on, so a server crash cannot lose a step doppel already acted on (a resume then
/// finds the phase it reached). Any other setting is kept (`on` and `remote_*` also wait for
/// synchronous standbys, as the DBA chose).
///
/// Errors: the settings cannot be read or set.
async fn durable_commits(control: &Client) -> Result<()> {
    let setting: String = control
        .query_one("SELECT current_setting('synchronous_commit')", &[])
        .await?
        .get(0);
    if setting == "off" {
        control
            .batch_execute("SET synchronous_commit = local")
            .await?;
    }
    Ok(())
}

/// Takes the table's advisory lock on `control` ([`Check::ConcurrentRun`] when another run
/// holds it).
///
/// Errors: the refusal, or a failed query.
pub(crate) async fn lock_table(control: &Client, oid: u32, table: &str) -> Result<()> {
    let locked: bool = control
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2::oid::int)",
            &[&ADVISORY_LOCK_CLASS, &oid],
        )
        .await?
        .get(0);
    if !locked {
        return Err(Refused::from(Refusal::without_fix(
            Check::ConcurrentRun,
            format!(
                "another doppel run holds the lock on {table} (advisory lock {ADVISORY_LOCK_CLASS}, {oid}): one run per table at a time"
            ),
        ))
        .into());
    }
    Ok(())
}

/// The table's estimated rows, shown from the start: `reltuples`, or for a table never
/// analysed (`reltuples` -1) or partitioned the planner's estimate from its size (over the
/// partitions); 0 when neither is known.
async fn rows_estimate(control: &Client, plan: &Plan) -> u64 {
    if plan.original.rows_estimate >= 0 && plan.partitions.is_none() {
        return plan.original.rows_estimate as u64;
    }
    // A partitioned table's own estimate is not its partitions' (docs/design.md §1.14).
    let explain = format!(
        "EXPLAIN (FORMAT JSON) SELECT 1 FROM {}{}",
        plan.projection.only(),
        plan.names.table_qualified()
    );
    match control.simple_query(&explain).await {
        Ok(messages) => messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
                _ => None,
            })
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
            .and_then(|plan| plan[0]["Plan"]["Plan Rows"].as_f64())
            .map_or(0, |rows| rows.max(0.0) as u64),
        Err(e) => {
            tracing::debug!("no planner estimate of the table's rows: {e}");
            0
        }
    }
}

/// Refuses `--revert-window` ([`Check::RevertWindow`]) when a changed column takes a `USING`
/// or `--backfill` expression (a revert would write back the plain conversion of the new
/// value, which need not be what the column held before), or when no clause takes the shadow
/// (there is no cutover to revert).
fn refuse_revert_window(migration: &Migration, options: &RunOptions) -> Result<()> {
    if options.revert_window.is_none() {
        return Ok(());
    }
    if migration.shadow.is_none() {
        return Err(Refused(vec![Refusal::new(
            Check::RevertWindow,
            "--revert-window: no clause of this ALTER takes the shadow, so there is no cutover to revert",
            "run without --revert-window (or with --strategy shadow)",
        )])
        .into());
    }
    let using = migration.shadow_plan().and_then(|plan| {
        plan.alter
            .usings
            .first()
            .map(|u| ("USING expression", u.column.clone()))
            .or_else(|| {
                plan.alter
                    .backfills
                    .iter()
                    .find(|b| plan.original.column(&b.column).is_some())
                    .map(|b| ("--backfill expression", b.column.clone()))
            })
    });
    let Some((what, column)) = using else {
        return Ok(());
    };
    Err(Refused(vec![Refusal::new(
        Check::RevertWindow,
        format!(
            "--revert-window cannot invert the {what} of column {column:?}: a revert would write back the plain conversion of the new value, not what the column held"
        ),
        "run without --revert-window (the rollback script remains, and refuses when writes made after the cutover would be lost), or without the expression",
    )])
    .into())
}

/// `err` as a [`Check::Pooler`] refusal when it is PgBouncer's answer; unchanged otherwise.
fn pooler_refusal(err: anyhow::Error) -> anyhow::Error {
    match conninfo::pgbouncer_answer(&err) {
        Some(answer) => Refused::from(Refusal::new(
            Check::Pooler,
            format!(
                "the DSN points at a connection pooler: PgBouncer answered \"{answer}\". doppel holds session state (an advisory lock, SET LOCAL lock_timeout in the cutover transaction, an exported snapshot) and opens a logical replication connection, none of which a pooler carries"
            ),
            "connect doppel directly to the PostgreSQL server (the host and port the pooler itself connects to); the application can keep using the pooler during the cutover (README: Cutting over behind a connection pooler)",
        ))
        .into(),
        None => err,
    }
}

/// One executing migration: what it was given, what it owns, and what it created so far.
pub struct Run<'a> {
    config: &'a conninfo::ConnInfo,
    options: &'a RunOptions,
    plan: Arc<Plan>,
    /// The control session: holds the advisory lock, creates and drops doppel's objects,
    /// builds the indexes and takes the cutover lock.
    control: Client,
    /// The caller's signal or the operator's `abort`.
    cancel: Cancel,
    progress: Arc<Progress>,
    operator: Operator,
    /// The run's test hooks (inert in a normal build).
    probe: Probe,
    created: Created,
    /// A resumable run's checkpoint, once written (or found, resuming).
    checkpoint: Option<crate::phases::checkpoint::Checkpoint>,
    /// The checkpoint to resume from (`--resume`), until the setup takes it.
    resume: Option<crate::phases::checkpoint::Saved>,
    /// The caller's signal (SIGINT, SIGTERM) stopped the run: a resumable run then keeps its
    /// checkpoint (a host shutting down must not lose the copy), where the operator's
    /// `abort` removes everything.
    signalled: Arc<std::sync::atomic::AtomicBool>,
    /// The control session's backend pid (a reconnect terminates it if the server still
    /// has it).
    control_pid: i32,
    /// Wall time of each phase so far, in order.
    timings: Vec<(Phase, Duration)>,
    started: Instant,
    /// Forwards the caller's cancel signal into the run's own.
    _forward_cancel: AbortOnDrop,
}

impl<'a> Run<'a> {
    /// Starts the operator's side (control socket, hooks) and wires cancellation: the run
    /// stops on the caller's signal or on the operator's `abort`.
    ///
    /// Errors: the control socket cannot be created, or another run answers on it.
    async fn start(
        config: &'a conninfo::ConnInfo,
        options: &'a RunOptions,
        control: Client,
        plan: Plan,
        hooks: Hooks,
        cancel: &Cancel,
        started: Instant,
    ) -> Result<Run<'a>> {
        let plan = Arc::new(plan);
        let progress = Progress::new();
        let control_pid: i32 = control
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        let security = conninfo::security(&control, config).await?;
        tracing::info!("sessions: {} ({security})", config.describe());
        progress.update(|s| s.session_security = Some(security.to_string()));
        let estimate = rows_estimate(&control, &plan).await;
        progress.update(|s| s.rows_estimate = estimate);
        let socket = options.control_socket.clone().unwrap_or_else(|| {
            crate::ops::control::default_path(&options.work_dir, plan.original.oid)
        });
        let place = operator::Place::of(&control, config, Some(socket)).await?;
        let mut operator = Operator::start(
            operator::Subject::of(&plan),
            progress.clone(),
            hooks,
            place,
            options,
        )
        .await?;
        let (abort, internal) = Cancel::new();
        operator.drive_abort(abort.clone());
        let outer = cancel.clone();
        let signalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = signalled.clone();
        let forward = AbortOnDrop(tokio::spawn(async move {
            outer.cancelled().await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            abort.send_replace(true);
        }));
        Ok(Run {
            config,
            options,
            plan,
            control,
            cancel: internal,
            progress,
            operator,
            probe: Probe::capture(),
            created: Created::default(),
            checkpoint: None,
            resume: None,
            signalled,
            control_pid,
            timings: Vec::new(),
            started,
            _forward_cancel: forward,
        })
    }

    /// Runs the start-up hooks and every phase; returns the report once the cutover
    /// committed (or, when a reconnect found it committed, what finishing it did).
    async fn execute(&mut self) -> Result<Outcome> {
        self.operator.hook("on-startup").await?;
        self.operator.hook("on-preflight-ok").await?;
        self.progress.update(|s| s.phase = Some(Phase::Setup));
        let _reporter = AbortOnDrop(crate::ops::progress::spawn_reporter(
            self.progress.clone(),
            self.options.display,
            self.options.status_interval,
        ));
        crate::testing::pause_point!(
            self.probe,
            "after-preflight",
            self.plan.original.qualified()
        );
        let (done, mut capture) = match self.until_cutover().await? {
            reconnect::Reached::CutOver(reached) => *reached,
            reconnect::Reached::FoundCommitted(finished) => {
                self.created.cut_over = true;
                return Ok(Outcome::Finished(finished));
            }
        };
        if let Err(e) = capture.tasks.shutdown().await {
            // The cutover committed; a late stream error does not undo it.
            tracing::warn!("stopping the stream after cutover: {e:#}");
        }
        self.created.cut_over = true;
        self.operator.hook("after-cutover").await.ok();
        self.after_cutover().await;
        let window = match (capture.reverse.take(), self.options.revert_window) {
            (Some(stream), Some(duration)) => {
                Some(self.revert_window(stream, &done.script, duration).await)
            }
            _ => None,
        };
        Ok(Outcome::Migrated(Box::new(RunReport {
            plan: (*self.plan).clone(),
            copy: done.copy,
            verify: done.verify,
            cutover: done.cutover,
            applied_changes: done.applied,
            phases: std::mem::take(&mut self.timings),
            total: self.started.elapsed(),
            window,
            clauses: Vec::new(),
        })))
    }

    /// Sets up (or resumes) and runs the phases up to the committed cutover. On any error
    /// the stream and the applier are stopped (and a revert window's reverse stream).
    async fn attempt(&mut self) -> Result<(steps::Done, setup::Capture)> {
        let setup_started = Instant::now();
        let mut capture = match self.resume.take() {
            Some(saved) => self.resume_capture(saved).await?,
            None => self.set_up().await?,
        };
        match self.phases(&mut capture, setup_started).await {
            Ok(done) => Ok((done, capture)),
            Err(e) => {
                if let Some(reverse) = capture.reverse.take() {
                    reverse.stop().await.ok();
                }
                if let Err(stop) = capture.tasks.shutdown().await {
                    tracing::debug!("stopping the stream after a failure: {stop:#}");
                }
                Err(e)
            }
        }
    }

    /// The committed cutover's loose ends: doppel's publication and spool. A failure here is
    /// reported, not returned, so the exit status says the table was migrated.
    async fn after_cutover(&mut self) {
        let drop_publication = format!(
            "DROP PUBLICATION IF EXISTS {}",
            crate::sql::ident(&self.plan.names.publication)
        );
        if let Err(e) = self.control.batch_execute(&drop_publication).await {
            tracing::warn!(
                "the cutover committed, but dropping doppel's publication failed ({e}); drop it with `{drop_publication}` or `doppel cleanup --table {}`",
                self.plan.original.qualified()
            );
        }
        if let Some(path) = self.created.spool.take() {
            std::fs::remove_file(path).ok();
        }
        if self.checkpoint.is_some() {
            self.remove_resumable_state().await;
        }
        self.progress.update(|s| s.phase = Some(Phase::Done));
    }

    /// After the cutover of a resumable run: drops its permanent slot (its stream has
    /// stopped) and removes its checkpoint. A failure is reported with what to run.
    async fn remove_resumable_state(&mut self) {
        let slot = self.plan.names.slot.clone();
        let dropped = async {
            resume::wait_slot_inactive(&self.control, &slot).await?;
            resume::drop_slot(&self.control, &slot).await?;
            crate::phases::checkpoint::Checkpoint::remove(&self.control, self.plan.original.oid)
                .await
        }
        .await;
        if let Err(e) = dropped {
            tracing::warn!(
                "the cutover committed, but removing the resumable run's slot {slot} or checkpoint failed ({e:#}): run `doppel cleanup --table {}` (or SELECT pg_drop_replication_slot('{slot}')): the slot retains WAL",
                self.plan.original.qualified()
            );
        }
    }

    /// Runs the success or failure hook; after a failure before the cutover, removes what
    /// the run created, unless a resumable run keeps it for `--resume` ([`Run::keeps`]).
    async fn finish(self, result: Result<Outcome>) -> Result<Outcome> {
        match result {
            Ok(outcome) => {
                self.operator.hook("on-success").await.ok();
                self.operator.ended(0, self.options.metrics_linger).await;
                Ok(outcome)
            }
            Err(e) => {
                self.operator.failed(&e).await;
                if self.created.cut_over {
                    // Nothing to remove: the migration is in place.
                } else if self.keeps(&e) {
                    tracing::warn!(
                        "the run stopped; it is resumable: its shadow, its replication slot {} (which retains WAL until it is resumed or removed) and its checkpoint are kept. Continue it with the same command plus --resume, or remove it with `doppel cleanup --table {}`",
                        self.plan.names.slot,
                        self.plan.original.qualified()
                    );
                } else {
                    self.remove_created().await;
                }
                let code = crate::failure::exit_code(&e);
                self.operator.ended(code, self.options.metrics_linger).await;
                Err(e)
            }
        }
    }

    /// Whether a failed resumable run keeps its state for `--resume`: on a signal, a
    /// connection it could not re-establish, a lost stream, an exhausted cutover budget, a
    /// full disk, a refused resume or an unexpected error (exit 1); not on the operator's
    /// abort, a verification mismatch, a critical threshold or a conflict, which end the
    /// migration.
    fn keeps(&self, e: &anyhow::Error) -> bool {
        if self.checkpoint.is_none() {
            return false;
        }
        if self.signalled.load(std::sync::atomic::Ordering::SeqCst) {
            return true;
        }
        match crate::failure::kind_of(e) {
            Some(kind) => kind.keeps_resumable_state(),
            None => true,
        }
    }

    /// Removes what the failed run created, logging what was removed or why it could not be.
    async fn remove_created(&self) {
        match self.created.remove(&self.control, &self.plan).await {
            Ok(list) if !list.is_empty() => tracing::info!("cleaned up: {}", list.join(", ")),
            Ok(_) => {}
            Err(ce) => tracing::error!(
                "cleanup after failure also failed: {ce:#}; run `doppel cleanup --table {}`",
                self.plan.original.qualified()
            ),
        }
    }

    /// Enters `phase`: the status line, `status --json` and the hooks show it.
    fn enter(&self, phase: Phase) {
        self.progress.update(|s| s.phase = Some(phase));
    }

    /// Records the wall time of `phase`, which began at `since`.
    fn timed(&mut self, phase: Phase, since: Instant) {
        self.timings.push((phase, since.elapsed()));
    }

    /// The abort error for a run cancelled `during` a phase.
    fn aborted(&self, during: &str) -> anyhow::Error {
        fail(
            FailureKind::Aborted,
            format!("interrupted during {during}: cleaning up"),
        )
    }
}
