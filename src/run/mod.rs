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
mod direct;
mod history;
pub mod operator;
mod options;
mod report;
mod setup;
mod steps;
mod tasks;
mod window;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
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
    config: &tokio_postgres::Config,
    options: &RunOptions,
    cancel: &Cancel,
) -> Result<Outcome> {
    let started = Instant::now();
    let hooks = Hooks::new(options.hooks_dir.clone())?;
    let planned = match plan_and_lock(config, options).await {
        Ok((control, migration)) => {
            refuse_revert_window(&migration, options).map(|()| (control, migration))
        }
        Err(e) => Err(e),
    };
    let (control, migration) = match planned {
        Ok(planned) => planned,
        Err(e) => {
            if options.execute {
                history::refused(config, options, &e).await;
            }
            return Err(e);
        }
    };
    if !options.execute {
        return Ok(Outcome::Planned(Box::new(migration)));
    }
    let record = history::begin(config, options, &migration).await;
    let result = execute(config, options, control, migration, hooks, cancel, started).await;
    history::finish(record, &result).await;
    result
}

/// Runs the migration: its direct steps, or its shadow migration.
async fn execute(
    config: &tokio_postgres::Config,
    options: &RunOptions,
    mut control: Client,
    migration: Migration,
    hooks: Hooks,
    cancel: &Cancel,
    started: Instant,
) -> Result<Outcome> {
    let Migration {
        original,
        clauses,
        direct,
        shadow,
        ..
    } = migration;
    if let Some(plan) = shadow {
        let mut run = Run::start(config, options, control, *plan, hooks, cancel, started).await?;
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

/// Preflight on a new control session, then the table's advisory lock (held by that session
/// for the whole run: one run per table).
async fn plan_and_lock(
    config: &tokio_postgres::Config,
    options: &RunOptions,
) -> Result<(Client, Migration)> {
    let mut control = conninfo::connect(config).await?;
    control
        .batch_execute("SET application_name = 'doppel'; SET lock_timeout = '5s'")
        .await?;
    let request = preflight::Request {
        table: &options.table,
        alters: &options.alters,
        backfills: &options.backfills,
        force_shadow: options.force_shadow,
    };
    let migration = preflight::plan(&mut control, &request).await?;
    lock_table(
        &control,
        migration.original.oid,
        &migration.original.qualified(),
    )
    .await?;
    Ok((control, migration))
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

/// One executing migration: what it was given, what it owns, and what it created so far.
pub struct Run<'a> {
    config: &'a tokio_postgres::Config,
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
        config: &'a tokio_postgres::Config,
        options: &'a RunOptions,
        control: Client,
        plan: Plan,
        hooks: Hooks,
        cancel: &Cancel,
        started: Instant,
    ) -> Result<Run<'a>> {
        let plan = Arc::new(plan);
        let progress = Progress::new();
        let socket = options.control_socket.clone().unwrap_or_else(|| {
            crate::ops::control::default_path(&options.work_dir, plan.original.oid)
        });
        let mut operator = Operator::start(
            operator::Subject::of(&plan),
            progress.clone(),
            hooks,
            Some(socket),
            options,
        )
        .await?;
        let (abort, internal) = Cancel::new();
        operator.drive_abort(abort.clone());
        let outer = cancel.clone();
        let forward = AbortOnDrop(tokio::spawn(async move {
            outer.cancelled().await;
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
            timings: Vec::new(),
            started,
            _forward_cancel: forward,
        })
    }

    /// Runs the start-up hooks and every phase; returns the report once the cutover
    /// committed.
    async fn execute(&mut self) -> Result<RunReport> {
        self.operator.hook("on-startup").await?;
        self.operator.hook("on-preflight-ok").await?;
        self.progress.update(|s| {
            s.rows_estimate = self.plan.original.rows_estimate.max(0) as u64;
            s.phase = Some(Phase::Setup);
        });
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
        let setup_started = Instant::now();
        let mut capture = self.set_up().await?;
        let result = self.phases(&mut capture, setup_started).await;
        let stopped = capture.tasks.shutdown().await;
        let done = match (result, stopped) {
            (Ok(done), Ok(())) => done,
            (Ok(done), Err(e)) => {
                // The cutover committed; a late stream error does not undo it.
                tracing::warn!("stopping the stream after cutover: {e:#}");
                done
            }
            (Err(e), _) => {
                if let Some(reverse) = capture.reverse.take() {
                    reverse.stop().await.ok();
                }
                return Err(e);
            }
        };
        self.created.cut_over = true;
        self.operator.hook("after-cutover").await.ok();
        self.after_cutover().await;
        let window = match (capture.reverse.take(), self.options.revert_window) {
            (Some(stream), Some(duration)) => {
                Some(self.revert_window(stream, &done.script, duration).await)
            }
            _ => None,
        };
        Ok(RunReport {
            plan: (*self.plan).clone(),
            copy: done.copy,
            verify: done.verify,
            cutover: done.cutover,
            applied_changes: done.applied,
            phases: std::mem::take(&mut self.timings),
            total: self.started.elapsed(),
            window,
            clauses: Vec::new(),
        })
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
        self.progress.update(|s| s.phase = Some(Phase::Done));
    }

    /// Runs the success or failure hook; after a failure before the cutover, removes what
    /// the run created.
    async fn finish(self, result: Result<RunReport>) -> Result<Outcome> {
        match result {
            Ok(report) => {
                self.operator.hook("on-success").await.ok();
                Ok(Outcome::Migrated(Box::new(report)))
            }
            Err(e) => {
                self.operator.hook("on-failure").await.ok();
                if !self.created.cut_over {
                    self.remove_created().await;
                }
                Err(e)
            }
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
