//! The operator's side of a run: the control socket and its live settings, the hooks, and the
//! glue that connects them to the phases (gh-ost's conventions, see `control` and `hooks`).
//!
//! One [`Operator`] exists per executing run. It starts the control socket once the table's
//! advisory lock is held (so two runs cannot race for one path), forwards the operator's
//! `throttle` / `max-replica-lag` to the throttler and `abort` to the run's cancel signal,
//! runs `on-status` every minute, and builds each hook's `DOPPEL_*` environment.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use tokio::sync::watch;

use crate::failure::{FailureKind, fail};
use crate::ops::control::{ControlServer, Controls, StatusSource};
use crate::ops::hooks::{HookEnv, Hooks};
use crate::ops::progress::Progress;
use crate::ops::throttle::LiveThrottle;
use crate::plan::Plan;

/// The status the control socket reports: the progress counters and the throttle reasons.
struct Status(Arc<Progress>);

impl StatusSource for Status {
    fn status_line(&self) -> String {
        self.0.status_line()
    }

    fn status_json(&self) -> serde_json::Value {
        let mut value = StatusSource::status_json(&*self.0);
        let throttled = self.0.snapshot().throttled;
        if let Some(object) = value.as_object_mut() {
            object.insert("throttled".into(), json!(!throttled.is_empty()));
            object.insert("throttle_reasons".into(), json!(throttled));
        }
        value
    }
}

/// What a run's hooks are told about: the table, the shadow and kept old table's names, the
/// ALTER (or the backfill's assignments).
#[derive(Debug, Clone)]
pub struct Subject {
    /// The table, quoted.
    pub table: String,
    /// The shadow table, quoted (empty without one).
    pub shadow_table: String,
    /// The name the cutover keeps the old table under, quoted (empty without a shadow).
    pub old_table: String,
    /// The ALTER's clauses joined with `; ` (or the backfill's assignments).
    pub alter: String,
}

impl Subject {
    /// The subject of a shadow migration.
    pub fn of(plan: &Plan) -> Subject {
        Subject {
            table: plan.original.qualified(),
            shadow_table: plan.names.shadow_qualified(),
            old_table: plan.names.old_qualified(),
            alter: plan
                .alter
                .statements
                .iter()
                .map(|a| a.text.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    /// The subject of a run without a shadow (direct steps, `doppel backfill`).
    pub fn table_only(table: &str, what: &[String]) -> Subject {
        Subject {
            table: table.to_string(),
            shadow_table: String::new(),
            old_table: String::new(),
            alter: what.join("; "),
        }
    }
}

/// Controls, socket and hooks of one run.
pub struct Operator {
    /// Live settings (shared with the control socket).
    pub controls: Arc<Controls>,
    hooks: Hooks,
    server: Option<ControlServer>,
    subject: Arc<Subject>,
    progress: Arc<Progress>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Operator {
    /// Starts the control socket at `socket` (when given) for the run on `subject`, with the
    /// live settings initialised from `options`.
    ///
    /// Errors: the socket cannot be created, or another run answers on it.
    pub async fn start(
        subject: Subject,
        progress: Arc<Progress>,
        hooks: Hooks,
        socket: Option<PathBuf>,
        options: &crate::run::RunOptions,
    ) -> Result<Operator> {
        let controls = Controls::new(
            options.copy.chunk_time.as_millis() as u64,
            options
                .throttle
                .max_replica_lag
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            options.lock_timeout.as_millis() as u64,
            false,
        );
        controls.set_max_retained_wal(options.throttle.max_retained_wal.unwrap_or(0));
        let server = match socket {
            Some(path) => {
                let server = ControlServer::start(
                    &path,
                    controls.clone(),
                    Arc::new(Status(progress.clone())),
                )
                .await?;
                tracing::info!(
                    "control socket: {} (e.g. `doppel ctl --table {} status`)",
                    server.path().display(),
                    subject.table
                );
                Some(server)
            }
            None => None,
        };
        Ok(Operator {
            controls,
            hooks,
            server,
            subject: Arc::new(subject),
            progress,
            tasks: Vec::new(),
        })
    }

    /// The control socket's path, if it runs.
    pub fn socket(&self) -> Option<&std::path::Path> {
        self.server.as_ref().map(|s| s.path())
    }

    /// Forwards the operator's throttle settings to the throttler.
    pub fn drive_throttle(&mut self, live: Arc<LiveThrottle>) {
        let controls = self.controls.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut changes = controls.subscribe();
            loop {
                live.forced.store(
                    controls.throttle_forced(),
                    std::sync::atomic::Ordering::SeqCst,
                );
                live.max_replica_lag_ms.store(
                    controls.max_replica_lag_ms(),
                    std::sync::atomic::Ordering::SeqCst,
                );
                live.max_retained_wal.store(
                    controls.max_retained_wal(),
                    std::sync::atomic::Ordering::SeqCst,
                );
                if changes.changed().await.is_err() {
                    return;
                }
            }
        }));
    }

    /// Fires `cancel` when the operator sends `abort`.
    pub fn drive_abort(&mut self, cancel: watch::Sender<bool>) {
        let controls = self.controls.clone();
        self.tasks.push(tokio::spawn(async move {
            controls.aborted().await;
            tracing::warn!("abort requested on the control socket: stopping and cleaning up");
            cancel.send_replace(true);
        }));
    }

    /// Runs the `on-status` hook every minute and `on-throttled` when throttling starts.
    pub fn drive_hooks(
        self: &mut Operator,
        throttle: watch::Receiver<crate::ops::throttle::ThrottleState>,
    ) {
        if self.hooks.dir().is_none() {
            return;
        }
        let hooks = self.hooks.clone();
        let plan = self.subject.clone();
        let progress = self.progress.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.tick().await;
            loop {
                tick.tick().await;
                let env = env_for(&plan, &progress);
                if let Ok(outcome) = hooks.run("on-status", &env).await
                    && outcome.failed()
                {
                    tracing::warn!("hook on-status: {outcome}");
                }
            }
        }));
        let hooks = self.hooks.clone();
        let plan = self.subject.clone();
        let progress = self.progress.clone();
        let mut throttle = throttle;
        self.tasks.push(tokio::spawn(async move {
            let mut was = false;
            loop {
                let now = !throttle.borrow_and_update().reasons.is_empty();
                if now && !was {
                    let env = env_for(&plan, &progress);
                    if let Ok(outcome) = hooks.run("on-throttled", &env).await
                        && outcome.failed()
                    {
                        tracing::warn!("hook on-throttled: {outcome}");
                    }
                }
                was = now;
                if throttle.changed().await.is_err() {
                    return;
                }
            }
        }));
    }

    /// Runs hook `name`. A failure of `on-startup`, `on-preflight-ok` or `before-copy` aborts
    /// the run (exit 3); `before-cutover` failing postpones the cutover until the operator sends
    /// `cut-over`; other failures are logged.
    pub async fn hook(&self, name: &str) -> Result<()> {
        let env = env_for(&self.subject, &self.progress);
        let outcome = self.hooks.run(name, &env).await?;
        if !outcome.failed() {
            return Ok(());
        }
        match name {
            "on-startup" | "on-preflight-ok" | "before-copy" => Err(fail(
                FailureKind::Aborted,
                format!(
                    "hook {name} failed ({outcome}): aborting; the original table is untouched"
                ),
            )),
            "before-cutover" => {
                self.controls.postpone();
                tracing::warn!(
                    "hook before-cutover failed ({outcome}): cutover postponed; send `cut-over` on the control socket to proceed"
                );
                Ok(())
            }
            _ => {
                tracing::warn!("hook {name}: {outcome}");
                Ok(())
            }
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The `DOPPEL_*` environment for a hook, from the run's subject and the progress counters.
pub fn env_for(subject: &Subject, progress: &Progress) -> HookEnv {
    let s = progress.snapshot();
    let eta_s = match (s.copy_started, s.copy_ended) {
        (Some(a), None) if s.rows_copied > 0 && s.rows_estimate > s.rows_copied => {
            let rate = s.rows_copied as f64 / a.elapsed().as_secs_f64().max(0.001);
            Some(((s.rows_estimate - s.rows_copied) as f64 / rate) as u64)
        }
        (Some(_), Some(_)) => Some(0),
        _ => None,
    };
    HookEnv {
        table: subject.table.clone(),
        shadow_table: subject.shadow_table.clone(),
        old_table: subject.old_table.clone(),
        alter: subject.alter.clone(),
        phase: s.state_name().to_string(),
        rows_copied: s.rows_copied,
        rows_estimate: s.rows_estimate,
        lag_ms: s.replica_lag_ms,
        elapsed_s: progress.elapsed().as_secs(),
        eta_s,
    }
}
