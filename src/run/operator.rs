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
use tokio::sync::watch;

use crate::failure::{FailureKind, fail};
use crate::ops::control::{ControlServer, Controls};
use crate::ops::hooks::{HookEnv, Hooks};
use crate::ops::metrics::{Metrics, MetricsServer};
use crate::ops::progress::Progress;
use crate::ops::registry::{Registration, RunEntry};
use crate::ops::throttle::LiveThrottle;
use crate::plan::Plan;

/// Where a run is: the server and database it migrates in, and its control socket.
pub struct Place {
    /// `user@host:port/db` of the connection.
    pub server: String,
    /// `current_database()`.
    pub database: String,
    /// The control socket's path (`None`: no socket).
    pub socket: Option<PathBuf>,
}

impl Place {
    /// The place of a run connected by `client` with `config`, its socket at `socket`.
    ///
    /// Errors: reading `current_database()` failed.
    pub async fn of(
        client: &tokio_postgres::Client,
        config: &crate::conninfo::ConnInfo,
        socket: Option<PathBuf>,
    ) -> Result<Place> {
        let database: String = client
            .query_one("SELECT current_database()::text", &[])
            .await?
            .get(0);
        Ok(Place {
            server: config.describe(),
            database,
            socket,
        })
    }
}

/// Writes the run's registry file in the work directory (see [`crate::ops::registry`]).
///
/// Errors: the file cannot be written.
fn register(
    place: &Place,
    subject: &Subject,
    socket: &std::path::Path,
    progress: &Progress,
    options: &crate::run::RunOptions,
) -> Result<Registration> {
    let entry = RunEntry {
        pid: std::process::id(),
        server: place.server.clone(),
        database: place.database.clone(),
        schema: subject.schema.clone(),
        table: subject.name.clone(),
        oid: subject.oid,
        socket: std::path::absolute(socket).unwrap_or_else(|_| socket.to_path_buf()),
        metrics: progress
            .snapshot()
            .metrics
            .map(|a| format!("http://{a}/metrics")),
    };
    Registration::write(&options.work_dir, &entry)
}

/// What a run's hooks are told about: the table, the shadow and kept old table's names, the
/// ALTER (or the backfill's assignments).
#[derive(Debug, Clone)]
pub struct Subject {
    /// The table, quoted.
    pub table: String,
    /// The table's schema and name, unquoted, and its OID (the run registry's entry).
    pub schema: String,
    /// The table's name, unquoted.
    pub name: String,
    /// The table's OID.
    pub oid: u32,
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
            schema: plan.original.schema.clone(),
            name: plan.original.name.clone(),
            oid: plan.original.oid,
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
    pub fn table_only(table: &crate::model::catalog::Table, what: &[String]) -> Subject {
        Subject {
            table: table.qualified(),
            schema: table.schema.clone(),
            name: table.name.clone(),
            oid: table.oid,
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
    /// The database the run migrates in.
    database: String,
    progress: Arc<Progress>,
    metrics: Option<MetricsServer>,
    /// The run's registry file (`doppel ctl` finds the socket through it).
    _registration: Option<Registration>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Operator {
    /// Starts the control socket at `socket` (when given) for the run on `subject`, with the
    /// live settings initialised from `options`.
    ///
    /// Starts the metrics endpoint too with `--metrics-listen`.
    ///
    /// Errors: the socket cannot be created, or another run answers on it; the metrics
    /// address cannot be bound.
    pub async fn start(
        subject: Subject,
        progress: Arc<Progress>,
        hooks: Hooks,
        place: Place,
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
        let server = match place.socket.clone() {
            Some(path) => {
                let server =
                    ControlServer::start(&path, controls.clone(), progress.clone()).await?;
                let work_dir = if options.work_dir == std::env::temp_dir() {
                    String::new()
                } else {
                    format!(" --work-dir {}", options.work_dir.display())
                };
                tracing::info!(
                    "control socket: {} (e.g. `doppel ctl --table {}{work_dir} status`)",
                    server.path().display(),
                    subject.table
                );
                Some(server)
            }
            None => None,
        };
        let metrics = match options.metrics_listen {
            Some(addr) => Some(MetricsServer::start(addr, Metrics::new(), progress.clone()).await?),
            None => None,
        };
        let registration = match &server {
            Some(socket) => Some(register(
                &place,
                &subject,
                socket.path(),
                &progress,
                options,
            )?),
            None => None,
        };
        Ok(Operator {
            controls,
            hooks,
            server,
            subject: Arc::new(subject),
            database: place.database,
            progress,
            metrics,
            _registration: registration,
            tasks: Vec::new(),
        })
    }

    /// Runs the `on-failure` hook with the run's exit code (`DOPPEL_EXIT_CODE`) and error
    /// (`DOPPEL_ERROR`); a failure of the hook is logged.
    pub async fn failed(&self, error: &anyhow::Error) {
        let mut env = env_for(&self.subject, &self.database, &self.progress);
        env.exit_code = Some(crate::failure::exit_code(error));
        env.error = Some(format!("{error:#}"));
        match self.hooks.run("on-failure", &env).await {
            Ok(outcome) if outcome.failed() => tracing::warn!("hook on-failure: {outcome}"),
            Ok(_) => {}
            Err(e) => tracing::warn!("hook on-failure: {e:#}"),
        }
    }

    /// The run ended with exit code `code`: the metrics show it, and their endpoint stays up
    /// until a scrape has shown the exit (at most `linger`).
    pub async fn ended(&self, code: u8, linger: std::time::Duration) {
        self.progress
            .update(|s| s.exit = Some((code, crate::failure::exit_class(code))));
        if let Some(metrics) = &self.metrics {
            tracing::info!(
                "run ended (exit {code}); the metrics endpoint http://{}/metrics stays up until a scrape has shown the exit (at most {} s)",
                metrics.addr(),
                linger.as_secs()
            );
            metrics.linger(linger).await;
        }
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
        let database = self.database.clone();
        let progress = self.progress.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.tick().await;
            loop {
                tick.tick().await;
                let env = env_for(&plan, &database, &progress);
                if let Ok(outcome) = hooks.run("on-status", &env).await
                    && outcome.failed()
                {
                    tracing::warn!("hook on-status: {outcome}");
                }
            }
        }));
        let hooks = self.hooks.clone();
        let plan = self.subject.clone();
        let database = self.database.clone();
        let progress = self.progress.clone();
        let mut throttle = throttle;
        self.tasks.push(tokio::spawn(async move {
            let mut was = false;
            loop {
                let now = !throttle.borrow_and_update().reasons.is_empty();
                if now && !was {
                    let env = env_for(&plan, &database, &progress);
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
        let env = env_for(&self.subject, &self.database, &self.progress);
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
                self.controls.postpone_after_failed_hook();
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
pub fn env_for(subject: &Subject, database: &str, progress: &Progress) -> HookEnv {
    let s = progress.snapshot();
    HookEnv {
        table: subject.table.clone(),
        shadow_table: subject.shadow_table.clone(),
        old_table: subject.old_table.clone(),
        alter: subject.alter.clone(),
        phase: s.state_name().to_string(),
        rows_copied: s.rows_copied,
        rows_estimate: s.rows_estimate,
        lag_ms: s.throttle.replica_lag_ms,
        elapsed_s: progress.elapsed().as_secs(),
        eta_s: s.copy_eta().map(|d| d.as_secs()),
        database: database.to_string(),
        // Only while the script is on disk (a failed cutover removes it).
        rollback_script: s.rollback_script.filter(|p| p.exists()),
        exit_code: None,
        error: None,
    }
}
