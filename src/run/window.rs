//! The revert window (`--revert-window`, docs/design.md §1.8), once the cutover committed:
//! the run keeps streaming the new table's changes back into the kept old table until the
//! window expires, the operator sends `finalize`, or a `revert` swaps the tables back.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Run;
use crate::conninfo;
use crate::model::phase::Phase;
use crate::ops::progress::WindowView;
use crate::phases::cutover::{CutoverOptions, Script};
use crate::phases::revert::{ReverseStream, RevertOutcome, Window, WindowStatus};

/// How the revert window ended.
#[derive(Debug, Clone)]
pub enum WindowEnd {
    /// `revert` swapped the tables back: the migration is undone.
    Reverted(Box<RevertOutcome>),
    /// Its duration passed.
    Expired,
    /// The operator sent `finalize`.
    Finalized,
    /// Ctrl-C, SIGTERM or `abort` ended it early.
    Interrupted,
    /// It could not open (the reason); the rollback script remains.
    NotOpened(String),
}

/// What the revert window did.
#[derive(Debug, Clone)]
pub struct WindowReport {
    /// How it ended.
    pub end: WindowEnd,
    /// Changes written back into the old table.
    pub applied: u64,
    /// How long it was open.
    pub open_for: Duration,
    /// Keys changed after the cutover that could not be written back, with the reason (a
    /// forced revert lost them; without a revert they only matter to the old table).
    pub rejected: Vec<(Vec<Option<String>>, String)>,
}

/// How often the window's status is refreshed while nothing happens (ms).
const REFRESH: Duration = Duration::from_millis(250);

impl Run<'_> {
    /// Keeps the revert window open for `duration` from now on the reverse `stream`
    /// prepared before the cutover, acting on `revert` and `finalize` from the control
    /// socket; `script` is the cutover's SQL (a revert runs its reverse statements). Never
    /// fails: the cutover has committed; the report says how the window ended. Runs the
    /// `on-revert` or `on-finalize` hook at the end.
    pub(super) async fn revert_window(
        &mut self,
        stream: ReverseStream,
        script: &Script,
        duration: Duration,
    ) -> WindowReport {
        let since = Instant::now();
        self.enter(Phase::RevertWindow);
        let window = match self.open_window(stream, duration).await {
            Ok(opened) => opened,
            Err(e) => return self.not_opened(e, since).await,
        };
        // `doppel ctl --table T` still finds the run: its registry entry names the table,
        // not the OID the cutover changed.
        tracing::info!(
            "revert window open for {}: `doppel ctl --table {} revert` swaps back, `finalize` ends it",
            humantime::format_duration(duration),
            self.plan.original.qualified()
        );
        let end = self.watch_window(&window, script).await;
        let last = window.status();
        self.operator.controls.set_window(false, 0);
        if let Err(e) = window.close(&self.control).await {
            tracing::warn!("closing the revert window: {e:#}");
        }
        self.show_window(&last, None, end_state(&end));
        let hook = match end {
            WindowEnd::Reverted(_) => "on-revert",
            _ => "on-finalize",
        };
        self.operator.hook(hook).await.ok();
        WindowReport {
            end,
            applied: last.applied,
            open_for: since.elapsed(),
            rejected: last.rejected,
        }
    }

    /// Opens the window on the new table (the table's name now points at it).
    async fn open_window(&self, stream: ReverseStream, duration: Duration) -> Result<Window> {
        let new_oid: u32 = self
            .control
            .query_one(
                "SELECT to_regclass($1)::oid",
                &[&self.plan.names.table_qualified()],
            )
            .await
            .context("finding the new table")?
            .get(0);
        Window::open(self.config, &self.plan, new_oid, stream, duration).await
    }

    /// The window could not open: drop its publication, say what remains.
    async fn not_opened(&self, e: anyhow::Error, since: Instant) -> WindowReport {
        tracing::warn!(
            "the cutover committed, but the revert window could not open ({e:#}): only the rollback script remains"
        );
        let drop = format!(
            "DROP PUBLICATION IF EXISTS {}",
            crate::sql::ident(&self.plan.names.revert_publication)
        );
        self.control.batch_execute(&drop).await.ok();
        WindowReport {
            end: WindowEnd::NotOpened(format!("{e:#}")),
            applied: 0,
            open_for: since.elapsed(),
            rejected: Vec::new(),
        }
    }

    /// The window's loop: shows its status, acts on `revert` (a refused or failed revert
    /// keeps the window open and is shown), ends on expiry, `finalize` or cancellation.
    async fn watch_window(&mut self, window: &Window, script: &Script) -> WindowEnd {
        let controls = self.operator.controls.clone();
        let mut refused: Option<String> = None;
        loop {
            let status = window.status();
            controls.set_window(true, status.rejected.len() as u64);
            self.show_window(
                &status,
                Some(window.ends),
                refused.as_deref().unwrap_or("open"),
            );
            if let Some(force) = controls.take_revert_request() {
                self.show_window(&status, Some(window.ends), "reverting");
                match self.revert(window, script, force).await {
                    Ok(outcome) => {
                        controls.finish_revert(format!(
                            "ok: reverted: {} is the original table again (lock held {:.1} ms after {} attempt(s)); the migrated table is kept as {}",
                            self.plan.original.qualified(),
                            outcome.swap.lock_held.as_secs_f64() * 1000.0,
                            outcome.swap.attempts,
                            self.plan.names.shadow_qualified()
                        ));
                        return WindowEnd::Reverted(Box::new(outcome));
                    }
                    Err(e) => {
                        tracing::warn!("revert refused or failed, the window stays open: {e:#}");
                        controls.finish_revert(format!(
                            "error: revert refused or failed, nothing was swapped and the window stays open: {e:#}"
                        ));
                        refused = Some(format!("open; revert refused: {e:#}"));
                        continue;
                    }
                }
            }
            if controls.finalize_requested() {
                return WindowEnd::Finalized;
            }
            if Instant::now() >= window.ends {
                return WindowEnd::Expired;
            }
            let asked =
                controls.wait_until(|c| c.revert_requested().is_some() || c.finalize_requested());
            tokio::select! {
                _ = tokio::time::sleep(REFRESH) => {}
                _ = asked => {}
                _ = self.cancel.cancelled() => return WindowEnd::Interrupted,
            }
        }
    }

    /// One revert attempt: the swap back on the control session, with a monitor session.
    async fn revert(
        &mut self,
        window: &Window,
        script: &Script,
        force: bool,
    ) -> Result<RevertOutcome> {
        let monitor = conninfo::connect(self.config).await?;
        monitor
            .batch_execute("SET application_name = 'doppel monitor'")
            .await?;
        let options = CutoverOptions {
            lock_timeout: self.options.lock_timeout,
            max_lock_hold: self.options.max_lock_hold,
            retries: self.options.cutover_retries,
            fence_timeout: self.options.fence_timeout,
            rollback_dir: self.options.rollback_dir.clone(),
            postpone_flag_file: None,
            controls: None,
            probe: self.probe.clone(),
            kill_blockers: self.options.kill_blockers,
            cancel: self.cancel.clone(),
            throttle: None,
            revert_marker: None,
            old_snapshot_timeout: self.options.old_snapshot_timeout,
            kill_old_snapshots: self.options.kill_old_snapshots,
            progress: None,
            pgbouncer_admin: self.options.pgbouncer_admin.clone(),
        };
        window
            .revert(
                &mut self.control,
                &monitor,
                &self.plan,
                script,
                options,
                force,
            )
            .await
    }

    /// Puts the window's status in the progress counters (status line, `status --json`).
    fn show_window(&self, status: &WindowStatus, ends: Option<Instant>, state: &str) {
        let view = WindowView {
            ends,
            streaming: status.streaming,
            applied: status.applied,
            lag_bytes: status.lag_bytes,
            rejected: status
                .rejected
                .iter()
                .take(20)
                .map(|(key, why)| format!("{key:?}: {why}"))
                .collect(),
            rejected_count: status.rejected.len() as u64,
            broken: status.broken.clone(),
            state: state.to_string(),
        };
        self.progress.update(|s| s.window = Some(view));
    }
}

/// The window's final state as the status shows it.
fn end_state(end: &WindowEnd) -> &'static str {
    match end {
        WindowEnd::Reverted(_) => "reverted",
        WindowEnd::Expired => "expired",
        WindowEnd::Finalized => "finalized",
        WindowEnd::Interrupted => "interrupted",
        WindowEnd::NotOpened(_) => "not opened",
    }
}
