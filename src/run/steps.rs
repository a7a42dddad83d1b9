//! The phases after the setup, one method each, in the order [`Run::phases`] takes them:
//! backfill, primary key and indexes, catch-up, constraints, catch-up again, verify,
//! cutover (docs/design.md §1.4–§1.7).

use crate::sql::WORKING_SESSION;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_postgres::Client;

use super::Run;
use super::setup::Capture;
use super::tasks::{AbortOnDrop, ApplyWatch, Tasks, feed_stream_progress, feed_throttle_progress};
use crate::cancel::Cancel;
use crate::conninfo;
use crate::failure::{FailureKind, fail};
use crate::model::phase::Phase;
use crate::ops::pacing::{PaceHandle, Pacer};
use crate::ops::throttle::{ThrottleOptions, Throttler};
use crate::phases::apply::{Applier, ApplyOptions};
use crate::phases::backfill::{Backfill, ChunkBy, CopyOptions, CopyReport};
use crate::phases::cutover::{Cutover, CutoverOptions, CutoverReport, Script};
use crate::phases::fence::Fencer;
use crate::phases::origin;
use crate::phases::revert;
use crate::phases::shadow;
use crate::phases::tid_chunks;
use crate::phases::verify::{self, VerifyReport};
use crate::plan::Plan;
use crate::sql::literal;
use crate::testing::pause_point;

/// What the phases leave for the report once the cutover committed.
pub(crate) struct Done {
    pub(crate) copy: CopyReport,
    pub(crate) verify: VerifyReport,
    pub(crate) cutover: CutoverReport,
    /// The swap's SQL: a revert runs its reverse statements.
    pub(crate) script: Script,
    /// Row changes applied from the stream.
    pub(crate) applied: u64,
}

/// The throttle checker and the tasks feeding the progress counters (and a resumable run's
/// heartbeat), for the phases' duration.
struct Watchers {
    throttler: Throttler,
    /// `--max-write-latency`: the probe and its controller.
    pacer: Option<Pacer>,
    apply: ApplyWatch,
    _feeds: [AbortOnDrop; 2],
    _pacing_feed: Option<AbortOnDrop>,
    _heartbeat: Option<AbortOnDrop>,
}

impl Run<'_> {
    /// Runs the phases from the backfill to the committed cutover. `setup_started` is when
    /// the setup began (its timing ends once the backfill may start).
    pub(super) async fn phases(
        &mut self,
        capture: &mut Capture,
        setup_started: Instant,
    ) -> Result<Done> {
        let mut watchers = self.start_watchers(capture).await?;
        let done = self.run_phases(capture, &watchers, setup_started).await;
        if let Some(pacer) = watchers.pacer.take() {
            pacer.finish(self.config).await;
        }
        done
    }

    /// The phases in order, with the watchers started (see [`Run::phases`]).
    async fn run_phases(
        &mut self,
        capture: &mut Capture,
        watchers: &Watchers,
        setup_started: Instant,
    ) -> Result<Done> {
        let pace = watchers.pacer.as_ref().map(Pacer::handle);
        let from = capture.resumed.as_ref().map_or(Phase::Copy, |r| r.from);
        let copy = if from <= Phase::Copy {
            self.wait_exported_visible(&capture.exported).await?;
            self.timed(Phase::Setup, setup_started);
            self.save(Phase::Copy).await?;
            let progress = capture.resumed.as_ref().map(|r| r.copy.clone());
            self.backfill(capture, &watchers.throttler, pace.as_ref(), progress)
                .await?
        } else {
            CopyReport::default()
        };
        if from <= Phase::Indexes {
            self.save(Phase::Indexes).await?;
            self.build_indexes(&watchers.throttler, pace.as_ref())
                .await?;
        }
        if from <= Phase::CatchUp {
            self.save(Phase::CatchUp).await?;
        }
        let fencer = self.start_applier(capture, watchers).await?;
        if from <= Phase::Constraints {
            self.save(Phase::Constraints).await?;
            self.build_constraints(&capture.tasks, &watchers.throttler)
                .await?;
        } else {
            let applier = capture.tasks.applier()?;
            applier.set_collapse(!shadow::has_constraining_indexes(&self.plan));
        }
        let since = Instant::now();
        self.save(Phase::CatchUpAfterIndexes).await?;
        self.enter(Phase::CatchUpAfterIndexes);
        catch_up(&capture.tasks, &fencer, &self.cancel, &watchers.throttler).await?;
        self.timed(Phase::CatchUpAfterIndexes, since);
        self.save(Phase::Verify).await?;
        let (verify, peer) = self
            .verify(&capture.tasks, &fencer, &watchers.throttler, pace.as_ref())
            .await?;
        self.save(Phase::Cutover).await?;
        if let Some(pace) = &pace {
            pace.suspend();
        }
        let (cutover, script) = self
            .cutover(capture, &fencer, &peer, &verify, &watchers.throttler)
            .await?;
        let applied = capture.tasks.applier()?.status().changes;
        Ok(Done {
            copy,
            verify,
            cutover,
            script,
            applied,
        })
    }

    /// Starts the throttle checker (wired to the control socket and the hooks) and the tasks
    /// that feed the progress counters from it and from the stream.
    async fn start_watchers(&mut self, capture: &Capture) -> Result<Watchers> {
        let stream = capture
            .tasks
            .streamer
            .as_ref()
            .map(|s| s.watch())
            .ok_or_else(|| anyhow::anyhow!("no stream"))?;
        let apply = ApplyWatch::default();
        let stream_feed = feed_stream_progress(
            self.progress.clone(),
            stream,
            apply.clone(),
            capture.start_lsn,
        );
        let throttle = ThrottleOptions {
            origin_guard: self.created.copy_origins,
            ..self.options.throttle.clone()
        };
        let mut throttler = Throttler::spawn(
            self.config,
            throttle,
            &self.plan.names.slot,
            &self.plan.names.message_prefix,
        )
        .await
        .context("starting the throttle checker")?;
        throttler.abort_on(self.cancel.clone());
        self.operator.drive_throttle(throttler.live());
        self.operator.drive_hooks(throttler.watch());
        let throttle_feed = feed_throttle_progress(self.progress.clone(), throttler.watch());
        let pacer = match self.options.max_write_latency {
            Some(target) => {
                let pacer = Pacer::spawn(self.config, target, self.plan.original.oid)
                    .await
                    .context("starting the write-latency probe (--max-write-latency)")?;
                let feed = super::tasks::feed_pacing_progress(
                    self.progress.clone(),
                    pacer.handle().watch(),
                    self.options.copy_workers,
                    self.options.copy.chunk_time,
                );
                Some((pacer, feed))
            }
            None => None,
        };
        let (pacer, pacing_feed) = pacer.unzip();
        let heartbeat = self.checkpoint.map(|checkpoint| {
            super::tasks::heartbeat(
                self.config.clone(),
                checkpoint,
                self.plan.names.slot.clone(),
                self.progress.clone(),
            )
        });
        Ok(Watchers {
            throttler,
            pacer,
            apply,
            _feeds: [stream_feed, throttle_feed],
            _pacing_feed: pacing_feed,
            _heartbeat: heartbeat,
        })
    }

    /// Records in a resumable run's checkpoint that it entered `phase`.
    async fn save(&self, phase: Phase) -> Result<()> {
        match &self.checkpoint {
            Some(checkpoint) => checkpoint.phase(&self.control, phase).await,
            None => Ok(()),
        }
    }

    /// The backfill (docs/design.md §1.4) in `--copy-workers` sessions of their own;
    /// `resume`: where an interrupted run's backfill stood.
    async fn backfill(
        &mut self,
        capture: &Capture,
        throttler: &Throttler,
        pace: Option<&PaceHandle>,
        resume: Option<crate::phases::checkpoint::CopyProgress>,
    ) -> Result<CopyReport> {
        self.operator.hook("before-copy").await?;
        let since = Instant::now();
        self.progress.update(|s| {
            s.phase = Some(Phase::Copy);
            s.copy_started = Some(Instant::now());
        });
        let mut workers = Vec::new();
        for i in 0..self.options.copy_workers.max(1) {
            let w = conninfo::connect(self.config).await?;
            if self.created.copy_origins {
                origin::set_up_session(&w, self.plan.original.oid, i).await?;
            }
            // Asynchronous commit: a chunk's commit need not wait for its WAL flush. A chunk
            // lost in a server crash is lost with its checkpoint mark (the same transaction),
            // so a resume copies it again; every later commit that depends on it (the
            // cutover's, synchronous) is later in the WAL and flushes it first.
            w.batch_execute(&format!(
                "SET application_name = 'doppel copy'; SET synchronous_commit = off; {WORKING_SESSION}"
            ))
            .await?;
            workers.push(w);
        }
        let tasks = &capture.tasks;
        let copy_options = self
            .within_decoding_memory(self.copy_options(), workers.len())
            .await?;
        let filenode = match copy_options.chunk_by {
            ChunkBy::Tid => {
                Some(tid_chunks::filenode(&self.control, self.plan.original.oid).await?)
            }
            ChunkBy::Key => None,
        };
        let backfill = Backfill {
            plan: &self.plan,
            options: &copy_options,
            progress: &self.progress,
            throttle: Some(throttler),
            pace,
            controls: Some(&self.operator.controls),
            checkpoint: self.checkpoint.as_ref(),
            resume,
            probe: self.probe.clone(),
        };
        let check = || {
            self.cancel.check()?;
            tasks.check()?;
            throttler.check_critical()
        };
        let copy = backfill.run(&self.control, &workers, check).await?;
        if let Some(before) = filenode {
            self.remove_copied_twice(capture, before).await?;
        }
        if self.created.copy_origins {
            for w in &workers {
                w.batch_execute("SELECT pg_replication_origin_session_reset()")
                    .await?;
            }
            origin::drop_all(&self.control, self.plan.original.oid).await?;
        }
        self.progress.update(|s| {
            s.copy_ended = Some(Instant::now());
            s.step = None;
        });
        self.operator.hook("copy-complete").await?;
        self.timed(Phase::Copy, since);
        tracing::info!(
            rows = copy.rows,
            chunks = copy.chunks,
            secs = copy.elapsed.as_secs_f64(),
            "backfill complete"
        );
        Ok(copy)
    }

    /// `copy` with its chunks kept within the WAL sender's `--logical-decoding-work-mem` when
    /// it decodes the copied rows (not under replication origins), so that it does not spill
    /// them to disk ([`crate::phases::backfill::decoded_chunk_rows`]); logged when that bounds
    /// them. Errors: [`crate::phases::backfill::decoded_chunk_cap`]'s.
    async fn within_decoding_memory(
        &self,
        mut copy: CopyOptions,
        workers: usize,
    ) -> Result<CopyOptions> {
        if self.created.copy_origins {
            return Ok(copy);
        }
        let work_mem = &self.options.logical_decoding_work_mem;
        let cap = crate::phases::backfill::decoded_chunk_cap(
            &self.control,
            &self.plan,
            work_mem,
            workers,
        )
        .await?;
        if cap < copy.max_chunk_rows {
            tracing::info!(
                max_chunk_rows = cap,
                "chunks hold at most {cap} rows: the WAL sender decodes the copied rows, and {workers} such chunks at once stay within half of its logical_decoding_work_mem ({work_mem})"
            );
            copy.max_chunk_rows = cap;
        }
        Ok(copy)
    }

    /// The backfill's settings, with `--chunk-by tid` kept only where TID ranges work: a
    /// plain table in a run that is not resumable (else key ranges, logged).
    fn copy_options(&self) -> CopyOptions {
        let mut copy = self.options.copy.clone();
        let why = if self.plan.partitions.is_some() {
            "a partitioned table is copied by key ranges, partition by partition"
        } else if self.checkpoint.is_some() {
            "a resumable run records key ranges in its checkpoint"
        } else {
            return copy;
        };
        if copy.chunk_by == ChunkBy::Tid {
            tracing::warn!("--chunk-by tid is not used: {why}");
            copy.chunk_by = ChunkBy::Key;
        }
        copy
    }

    /// After a TID-range backfill: stops the run if the original was rewritten during it
    /// (`before`: its file node when the copy began), then removes from the shadow the rows of
    /// the keys the stream changed during the copy ([`tid_chunks`]).
    async fn remove_copied_twice(&self, capture: &Capture, before: u32) -> Result<()> {
        tid_chunks::check_not_rewritten(&self.control, &self.plan, before).await?;
        let reader = capture
            .reader
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the spool reader was already taken"))?
            .reopen()?;
        let removal = tid_chunks::remove_copied_twice(
            &self.control,
            &self.plan,
            reader,
            self.options.copy.key_set_size,
            &self.probe,
        );
        let (keys, deleted) = tokio::select! {
            removed = removal => removed?,
            failed = watch_failures(&capture.tasks, &self.cancel) => return Err(failed),
        };
        tracing::info!(
            keys_changed = keys,
            rows_removed = deleted,
            "TID-range backfill: removed the rows of the keys changed during the copy (the applier replays them)"
        );
        Ok(())
    }

    /// The shadow's primary key, then its non-unique indexes: logical decoding is still
    /// working through the backfill's WAL, and the backlog cannot be applied before it has.
    async fn build_indexes(
        &mut self,
        throttler: &Throttler,
        pace: Option<&PaceHandle>,
    ) -> Result<()> {
        let since = Instant::now();
        self.enter(Phase::Indexes);
        let _builds = self.watch_index_builds().await?;
        self.control
            .batch_execute(&format!(
                "SET maintenance_work_mem = {}",
                literal(&self.options.maintenance_work_mem)
            ))
            .await
            .context("setting maintenance_work_mem for the index builds")?;
        if pace.is_some() {
            // Paced: one process per build, leaving the other cores to the application.
            self.control
                .batch_execute("SET max_parallel_maintenance_workers = 0")
                .await?;
        }
        let primary_key = shadow::unbuilt(
            &self.control,
            &self.plan,
            shadow::primary_key_sql(&self.plan),
        )
        .await?;
        for statement in primary_key {
            gate(pace).await;
            run_cancellable(
                self.config,
                &self.control,
                &statement,
                &self.cancel,
                throttler,
            )
            .await
            .context("building the shadow's primary key")?;
        }
        let plain = shadow::unbuilt(
            &self.control,
            &self.plan,
            shadow::plain_index_sql(&self.plan),
        )
        .await?;
        for statement in plain {
            gate(pace).await;
            run_cancellable(
                self.config,
                &self.control,
                &statement,
                &self.cancel,
                throttler,
            )
            .await
            .map_err(|e| index_error(e, &self.plan, &statement))?;
            pause_point!(self.probe, "index-built", statement.clone());
        }
        if pace.is_some() {
            self.control
                .batch_execute("RESET max_parallel_maintenance_workers")
                .await?;
        }
        self.timed(Phase::Indexes, since);
        Ok(())
    }

    /// Shows the control session's index builds in the progress until the returned feed is
    /// dropped.
    async fn watch_index_builds(&self) -> Result<super::tasks::IndexFeed> {
        let pid: i32 = self
            .control
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        super::tasks::feed_index_progress(self.config, pid, self.progress.clone()).await
    }

    /// Starts the applier on the spooled backlog and the fencer, and catches up once.
    async fn start_applier(
        &mut self,
        capture: &mut Capture,
        watchers: &Watchers,
    ) -> Result<Fencer> {
        let since = Instant::now();
        self.enter(Phase::CatchUp);
        let apply_client = conninfo::connect(self.config).await?;
        apply_client
            .batch_execute(&format!(
                "SET application_name = 'doppel applier'; {WORKING_SESSION}"
            ))
            .await?;
        let mut sessions = Vec::new();
        for n in 2..=self.options.apply_workers {
            let client = conninfo::connect(self.config).await?;
            client
                .batch_execute(&format!(
                    "SET application_name = 'doppel applier {n}'; {WORKING_SESSION}"
                ))
                .await?;
            sessions.push(client);
        }
        let reader = capture
            .reader
            .take()
            .ok_or_else(|| anyhow::anyhow!("the spool reader was already taken"))?;
        let applier = Applier::spawn(
            apply_client,
            self.plan.clone(),
            reader,
            ApplyOptions {
                hold: Some(watchers.throttler.watch()),
                pace: watchers.pacer.as_ref().map(Pacer::handle),
                probe: self.probe.clone(),
                checkpoint: self.checkpoint,
                resume_after: capture.resumed.as_ref().and_then(|r| r.applied),
                sessions,
                ..ApplyOptions::default()
            },
        )
        .await?;
        if let Ok(mut w) = watchers.apply.lock() {
            *w = Some(applier.watch());
        }
        capture.tasks.applier = Some(applier);
        let fence_client = conninfo::connect(self.config).await?;
        fence_client
            .batch_execute(&format!(
                "SET application_name = 'doppel fence'; {WORKING_SESSION}"
            ))
            .await?;
        let fencer = Fencer::new(fence_client, &self.plan.names.message_prefix).await?;
        capture.tasks.applier()?.resume();
        pause_point!(self.probe, "catch-up", self.plan.names.shadow.clone());
        catch_up(&capture.tasks, &fencer, &self.cancel, &watchers.throttler).await?;
        self.timed(Phase::CatchUp, since);
        Ok(fencer)
    }

    /// Unique and exclusion indexes and NOT VALID checks, with the applier paused (the spool
    /// absorbs changes), then `VACUUM (ANALYZE)` of the shadow.
    async fn build_constraints(&mut self, tasks: &Tasks, throttler: &Throttler) -> Result<()> {
        let since = Instant::now();
        self.enter(Phase::Constraints);
        let _builds = self.watch_index_builds().await?;
        let applier = tasks.applier()?;
        applier.pause().await?;
        // Unique and exclusion indexes must see writes in source order from now on.
        applier.set_collapse(!shadow::has_constraining_indexes(&self.plan));
        let constraining = shadow::unbuilt(
            &self.control,
            &self.plan,
            shadow::constraining_sql(&self.plan),
        )
        .await?;
        for statement in constraining {
            tasks.check()?;
            run_cancellable(
                self.config,
                &self.control,
                &statement,
                &self.cancel,
                throttler,
            )
            .await
            .map_err(|e| index_error(e, &self.plan, &statement))?;
        }
        let (finish, vacuum) = shadow::finish_sql(&self.plan);
        for statement in finish {
            self.control.batch_execute(&statement).await?;
        }
        applier.resume();
        run_cancellable(self.config, &self.control, &vacuum, &self.cancel, throttler)
            .await
            .context("VACUUM (ANALYZE) of the shadow")?;
        self.timed(Phase::Constraints, since);
        Ok(())
    }

    /// Verification (docs/design.md §1.6) on the control session and a peer session, which
    /// the cutover then uses to watch for blockers.
    async fn verify(
        &mut self,
        tasks: &Tasks,
        fencer: &Fencer,
        throttler: &Throttler,
        pacing: Option<&PaceHandle>,
    ) -> Result<(VerifyReport, Client)> {
        let since = Instant::now();
        self.enter(Phase::Verify);
        let mut peer = conninfo::connect(self.config).await?;
        let parallel = crate::sql::parallel_workers_sql(self.options.verify_parallel_workers);
        // The control session's lock_timeout: the two sessions lock their tables at once
        // under one snapshot, so a lock the peer cannot get must end the wait rather than
        // hold the control session's transaction open behind it (docs/design.md §1.6).
        peer.batch_execute(&format!(
            "SET application_name = 'doppel verify'; SET lock_timeout = '5s'; {WORKING_SESSION}; {parallel}"
        ))
        .await?;
        self.control.batch_execute(&parallel).await?;
        pause_point!(self.probe, "verifying", self.plan.names.shadow.clone());
        let pace = verify::Pace {
            throttle: Some(throttler),
            nice_ratio: self.options.copy.nice_ratio,
            progress: Some(&self.progress),
            pacing,
            probe: Some(&self.probe),
        };
        let applier = tasks.applier()?;
        let report = tokio::select! {
            r = verify::verify(
                &mut self.control,
                &mut peer,
                &self.plan,
                fencer,
                applier,
                self.options.verify_chunk_rows,
                &pace,
            ) => r.map_err(|e| tasks.stream_error_first(e))?,
            _ = self.cancel.cancelled() => return Err(self.aborted("verification")),
        };
        self.control
            .batch_execute(&crate::sql::parallel_workers_sql(0))
            .await?;
        self.timed(Phase::Verify, since);
        tracing::info!(
            chunks = report.chunks,
            rows = report.rows,
            rechecks = report.rechecks,
            deferred_keys = report.unsettled.len(),
            "verification passed"
        );
        Ok((report, peer))
    }

    /// The cutover (docs/design.md §4), once the throttles are clear and the
    /// `before-cutover` hook passed.
    async fn cutover(
        &mut self,
        capture: &mut Capture,
        fencer: &Fencer,
        peer: &Client,
        verify: &VerifyReport,
        throttler: &Throttler,
    ) -> Result<(CutoverReport, Script)> {
        let since = Instant::now();
        self.enter(Phase::Cutover);
        self.cancel.check()?;
        throttler.wait_clear().await?;
        self.operator.hook("before-cutover").await?;
        let script = Script::build(&self.control, &self.plan, self.options.lock_timeout).await?;
        let mut options = self.cutover_options(throttler);
        if self.options.revert_window.is_some() {
            capture.reverse = Some(self.prepare_reverse_stream().await?);
            options.revert_marker = Some(revert::marker_sql(&self.plan));
        }
        let stream = capture
            .tasks
            .streamer
            .as_ref()
            .map(|s| s.watch())
            .ok_or_else(|| anyhow::anyhow!("no stream"))?;
        let changes_received = move || stream.borrow().changes;
        let unsettled_in: Vec<String> = verify
            .partitions
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.name.clone(), p.unsettled))
            .collect();
        // The last critical sample, under the lock once drained: a condition found just
        // before (a replication origin under `origin 'none'`, the panic flag) ends the cutover.
        let critical = || throttler.check_critical();
        let cutover = Cutover {
            plan: &self.plan,
            script: &script,
            fencer,
            applier: capture.tasks.applier()?,
            stream: capture.tasks.streamer.as_ref(),
            unsettled: &verify.unsettled,
            unsettled_in: &unsettled_in,
            fingerprint: &capture.fingerprint,
            options,
            revert: false,
            after_drain: Some(&critical),
            changes_received: Some(&changes_received),
        };
        let report = cutover
            .run(&mut self.control, peer)
            .await
            .map_err(|e| capture.tasks.stream_error_first(e))?;
        self.timed(Phase::Cutover, since);
        Ok((report, script))
    }

    /// The revert window's reverse stream (`--revert-window`), set up before the cutover
    /// commits: its publication (recorded for removal on failure), its TEMPORARY slot and
    /// its consumer (docs/design.md §1.8).
    async fn prepare_reverse_stream(&mut self) -> Result<revert::ReverseStream> {
        self.created.revert_publication = true;
        let replication =
            super::setup::walsender_config(self.config, &self.options.logical_decoding_work_mem);
        revert::ReverseStream::prepare(
            &self.control,
            &replication,
            &self.plan,
            &self.options.work_dir,
            self.probe.clone(),
        )
        .await
    }

    fn cutover_options(&self, throttler: &Throttler) -> CutoverOptions {
        CutoverOptions {
            lock_timeout: self.options.lock_timeout,
            max_lock_hold: self.options.max_lock_hold,
            retries: self.options.cutover_retries,
            fence_timeout: self.options.fence_timeout,
            rollback_dir: self.options.rollback_dir.clone(),
            postpone_flag_file: self.options.postpone_cutover_flag_file.clone(),
            controls: Some(self.operator.controls.clone()),
            probe: self.probe.clone(),
            kill_blockers: self.options.kill_blockers,
            cancel: self.cancel.clone(),
            throttle: Some(throttler.watch()),
            revert_marker: None,
            old_snapshot_timeout: self.options.old_snapshot_timeout,
            kill_old_snapshots: self.options.kill_old_snapshots,
            progress: Some(self.progress.clone()),
            pgbouncer_admin: self.options.pgbouncer_admin.clone(),
        }
    }
}

/// Resolves with the first failure of the run's tasks (the stream) or a cancellation,
/// checked every 200 ms; never resolves while both are fine.
async fn watch_failures(tasks: &Tasks, cancel: &Cancel) -> anyhow::Error {
    loop {
        if let Err(e) = cancel.check().and_then(|()| tasks.check()) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the applier has applied everything committed before now (a fence), checking
/// the tasks, the cancel signal and the critical throttle conditions while it waits.
async fn catch_up(
    tasks: &Tasks,
    fencer: &Fencer,
    cancel: &Cancel,
    throttler: &Throttler,
) -> Result<()> {
    let n = fencer.emit().await?;
    loop {
        cancel.check()?;
        tasks.check()?;
        throttler.check_critical()?;
        if tasks
            .applier()?
            .wait_fence(n, Duration::from_millis(500))
            .await
            .is_ok()
        {
            return Ok(());
        }
    }
}

/// Paced (`--max-write-latency`): waits before a long statement while the probe is above
/// the target, at most 5 s.
async fn gate(pace: Option<&PaceHandle>) {
    if let Some(pace) = pace {
        pace.gate(Duration::from_secs(5)).await;
    }
}

/// Runs one long statement; on cancel, or on a critical throttle condition (the panic flag
/// file, ...), asks the server to cancel it and returns that abort.
async fn run_cancellable(
    config: &conninfo::ConnInfo,
    client: &Client,
    sql: &str,
    cancel: &Cancel,
    throttler: &Throttler,
) -> Result<()> {
    let token = client.cancel_token();
    tokio::select! {
        r = client.batch_execute(sql) => r.map_err(anyhow::Error::new),
        _ = cancel.cancelled() => {
            conninfo::cancel(&token, config).await;
            Err(fail(FailureKind::Aborted, "interrupted: stopping and cleaning up"))
        }
        e = throttler.critical() => {
            conninfo::cancel(&token, config).await;
            Err(e)
        }
    }
}

/// An index or constraint build the existing rows violate is a conflict (exit 8), named
/// with the user's index and constraint names.
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
        Some(msg) => fail(
            FailureKind::Conflict,
            format!(
                "building an index or constraint of the new schema failed: {}; the rows of {} violate it. Nothing was cut over; the original table is untouched. Statement: {statement}",
                shadow::user_names(plan, &msg),
                plan.original.qualified()
            ),
        ),
        None => e.context("building secondary indexes"),
    }
}
