//! Prometheus metrics (`--metrics-listen ADDR`): the run's progress, rates, lag, throttle,
//! cutover attempts and lock holds, the revert window and the exit, served in Prometheus'
//! text format at `http://ADDR/metrics`.
//!
//! The values come from the same [`Progress`] the status line and `status --json` read: each
//! scrape refreshes the gauges from one snapshot of it, so a scrape and `status --json` taken
//! while nothing moves agree. Events the counters cannot give (each chunk's duration, each
//! cutover attempt's outcome, lock wait and hold) reach the histograms and counters as they
//! happen ([`Observer`]). Every run has its own registry (no process-wide state), built with
//! the `prometheus` crate; the endpoint is served by `axum`.
//!
//! Units follow Prometheus' conventions: seconds, bytes, rows, changes; `_total` for counters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::sync::watch;

use crate::model::phase::Phase;
use crate::ops::progress::{AttemptEvent, Observer, Progress, State};
use crate::ops::throttle::REASON_KINDS;

/// Every phase's state name, the values of `doppel_phase{phase}`.
const PHASES: [&str; 9] = [
    "starting",
    "copying",
    "building primary key",
    "catching up",
    "building indexes",
    "verifying",
    "cutover",
    "done",
    "revert window",
];

/// The kinds of wait, the values of `doppel_waiting{what}`.
const WAITS: [&str; 4] = ["postponed", "lock", "draining", "old_snapshots"];

/// The attempt outcomes, the values of `doppel_cutover_attempts_total{outcome}`.
const OUTCOMES: [&str; 6] = [
    "granted",
    "lock timeout",
    "drain timeout",
    "lock hold limit",
    "old snapshots",
    "old snapshots under the lock",
];

/// The plain gauges, name and help; each set from the progress at each scrape.
const INT_GAUGES: [(&str, &str); 27] = [
    ("doppel_rows_copied", "Rows copied by the backfill"),
    (
        "doppel_rows_estimate",
        "Estimated rows of the table (reltuples, or the planner's estimate)",
    ),
    (
        "doppel_rows_verified",
        "Rows of the original compared with the shadow by verification",
    ),
    ("doppel_chunks_copied", "Backfill chunks copied"),
    (
        "doppel_changes_applied",
        "Row changes applied from the stream to the shadow",
    ),
    (
        "doppel_changes_received",
        "Row changes received from the stream (written to the table)",
    ),
    (
        "doppel_changes_behind",
        "Row changes received and not yet applied",
    ),
    (
        "doppel_copy_rows_per_second",
        "Rows copied per second over the last 10 s",
    ),
    (
        "doppel_apply_changes_per_second",
        "Row changes applied per second over the last 10 s",
    ),
    (
        "doppel_write_changes_per_second",
        "Row changes received per second over the last 10 s (the write rate on the table)",
    ),
    (
        "doppel_verify_rows_per_second",
        "Rows verified per second over the last 10 s",
    ),
    (
        "doppel_replication_lag_bytes",
        "Server WAL position minus the applied position, in bytes",
    ),
    (
        "doppel_backlog_bytes",
        "Bytes received from the stream and not yet applied",
    ),
    (
        "doppel_spool_bytes",
        "Size of the change spool file in bytes",
    ),
    (
        "doppel_retained_wal_bytes",
        "WAL retained by doppel's replication slot, in bytes",
    ),
    (
        "doppel_replica_lag_bytes",
        "Most bytes of WAL a streaming standby's replay trails by",
    ),
    (
        "doppel_active_backends",
        "Client sessions running a statement (with --max-active-backends)",
    ),
    (
        "doppel_cutover_blockers",
        "Sessions blocking the cutover attempt's lock requests now",
    ),
    (
        "doppel_index_build_done",
        "Work done by the index build on the shadow (blocks or tuples, pg_stat_progress_create_index)",
    ),
    (
        "doppel_index_build_total",
        "Work to do by the index build on the shadow (blocks or tuples)",
    ),
    (
        "doppel_revert_window_open",
        "1 while the revert window is open",
    ),
    (
        "doppel_revert_window_changes_written_back",
        "Changes made after the cutover written back into the old table",
    ),
    (
        "doppel_revert_window_lossless",
        "1 while a revert would lose no write",
    ),
    (
        "doppel_revert_window_rejected_keys",
        "Keys changed after the cutover that could not be written back",
    ),
    (
        "doppel_revert_window_lag_bytes",
        "WAL of the new table not yet written back, in bytes",
    ),
    (
        "doppel_revert_window_seconds_left",
        "Seconds until the revert window closes by itself",
    ),
    (
        "doppel_exit_code",
        "The run's exit code once it ended (-1 while it runs)",
    ),
];

/// The plain gauges with fractional values, name and help.
const FLOAT_GAUGES: [(&str, &str); 3] = [
    (
        "doppel_replication_lag_seconds",
        "How long ago the last applied transaction committed, while changes wait; 0 when caught up",
    ),
    (
        "doppel_replica_lag_seconds",
        "Worst replay or heartbeat lag of the watched standbys, in seconds",
    ),
    ("doppel_elapsed_seconds", "Seconds since the run started"),
];

/// The gauges refreshed from the progress at each scrape.
struct Gauges {
    ints: HashMap<&'static str, IntGauge>,
    floats: HashMap<&'static str, Gauge>,
    phase: IntGaugeVec,
    waiting: IntGaugeVec,
    throttled: IntGaugeVec,
    query_value: GaugeVec,
    exit_class: IntGaugeVec,
}
/// The run's metrics: a registry of its own, the gauges refreshed at each scrape, the
/// histograms and counters fed by events.
pub struct Metrics {
    registry: Registry,
    gauges: Gauges,
    chunk_seconds: Histogram,
    attempts: IntCounterVec,
    lock_wait_seconds: Histogram,
    lock_hold_seconds: Histogram,
    blockers_seen: IntCounter,
}

/// Registers a collector (its name is fixed and unique, so registration cannot fail).
fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("a metric of doppel's registry is registered once");
    c
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("valid metric"))
}

fn gauge(r: &Registry, name: &str, help: &str) -> Gauge {
    register(r, Gauge::new(name, help).expect("valid metric"))
}

fn int_gauge_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
    )
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        r,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid"),
    )
}

impl Gauges {
    fn new(r: &Registry) -> Gauges {
        Gauges {
            ints: INT_GAUGES
                .iter()
                .map(|(name, help)| (*name, int_gauge(r, name, help)))
                .collect(),
            floats: FLOAT_GAUGES
                .iter()
                .map(|(name, help)| (*name, gauge(r, name, help)))
                .collect(),
            phase: int_gauge_vec(
                r,
                "doppel_phase",
                "1 for the phase the run is in, 0 for the others",
                "phase",
            ),
            waiting: int_gauge_vec(
                r,
                "doppel_waiting",
                "1 while the run waits for this: the cutover postponed, a cutover attempt's locks, the catch-up before an attempt",
                "what",
            ),
            throttled: int_gauge_vec(
                r,
                "doppel_throttled",
                "1 while this reason throttles the run",
                "reason",
            ),
            query_value: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "doppel_probe_value",
                        "The value the throttle or critical query returned",
                    ),
                    &["query"],
                )
                .expect("valid metric"),
            ),
            exit_class: int_gauge_vec(
                r,
                "doppel_exit",
                "1 for the class the run ended with",
                "class",
            ),
        }
    }

    /// Sets the plain gauge `name` (one of [`INT_GAUGES`]) to `value`.
    fn set(&self, name: &str, value: u64) {
        self.set_signed(name, i64::try_from(value).unwrap_or(i64::MAX));
    }

    fn set_signed(&self, name: &str, value: i64) {
        match self.ints.get(name) {
            Some(g) => g.set(value),
            None => debug_assert!(false, "{name} is not in INT_GAUGES"),
        }
    }

    /// Sets the fractional gauge `name` (one of [`FLOAT_GAUGES`]) to `value`.
    fn set_float(&self, name: &str, value: f64) {
        match self.floats.get(name) {
            Some(g) => g.set(value),
            None => debug_assert!(false, "{name} is not in FLOAT_GAUGES"),
        }
    }
}

impl Metrics {
    /// A new registry with every metric, at zero (`doppel_exit_code` at -1).
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let gauges = Gauges::new(&registry);
        gauges.set_signed("doppel_exit_code", -1);
        let chunk_seconds = histogram(
            &registry,
            "doppel_chunk_duration_seconds",
            "Duration of each backfill chunk",
            vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        );
        let lock_buckets = vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
        ];
        let lock_wait_seconds = histogram(
            &registry,
            "doppel_lock_wait_seconds",
            "Time each cutover attempt waited for its locks",
            lock_buckets.clone(),
        );
        let lock_hold_seconds = histogram(
            &registry,
            "doppel_lock_hold_seconds",
            "Time each cutover attempt held its locks, first lock to commit or rollback",
            lock_buckets,
        );
        let attempts = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "doppel_cutover_attempts_total",
                    "Cutover attempts, by outcome",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
        );
        let blockers_seen = register(
            &registry,
            IntCounter::new(
                "doppel_cutover_blockers_seen_total",
                "Blocking sessions seen by the cutover attempts (each attempt counts its own)",
            )
            .expect("valid metric"),
        );
        for outcome in OUTCOMES {
            attempts.with_label_values(&[outcome]);
        }
        for class in (0..=8).map(crate::failure::exit_class) {
            gauges.exit_class.with_label_values(&[class]).set(0);
        }
        for phase in PHASES {
            gauges.phase.with_label_values(&[phase]).set(0);
        }
        for what in WAITS {
            gauges.waiting.with_label_values(&[what]).set(0);
        }
        for kind in REASON_KINDS {
            gauges.throttled.with_label_values(&[kind]).set(0);
        }
        Arc::new(Metrics {
            registry,
            gauges,
            chunk_seconds,
            attempts,
            lock_wait_seconds,
            lock_hold_seconds,
            blockers_seen,
        })
    }

    /// Sets the gauges from a snapshot of `progress`, with its recent rates and elapsed time.
    /// Returns whether the snapshot had the run's exit (`doppel_exit_code` is then set).
    pub fn refresh(&self, progress: &Progress) -> bool {
        let s = progress.snapshot();
        let g = &self.gauges;
        let current = s.state_name();
        for phase in PHASES {
            g.phase
                .with_label_values(&[phase])
                .set(i64::from(phase == current));
        }
        let waiting = s.waiting.as_ref().map(|w| w.kind());
        for what in WAITS {
            g.waiting
                .with_label_values(&[what])
                .set(i64::from(waiting == Some(what)));
        }
        g.set("doppel_rows_copied", s.rows_copied);
        g.set("doppel_rows_estimate", s.rows_estimate);
        g.set("doppel_rows_verified", s.rows_verified);
        g.set("doppel_chunks_copied", s.chunks);
        g.set("doppel_changes_applied", s.applied);
        g.set("doppel_changes_received", s.received);
        g.set("doppel_changes_behind", s.behind());
        let rates = progress.rates();
        g.set("doppel_copy_rows_per_second", rates.copy_rows);
        g.set("doppel_apply_changes_per_second", rates.apply_changes);
        g.set("doppel_write_changes_per_second", rates.write_changes);
        g.set("doppel_verify_rows_per_second", rates.verify_rows);
        g.set("doppel_replication_lag_bytes", s.lag_bytes);
        g.set_float(
            "doppel_replication_lag_seconds",
            s.lag_ms.map_or(0.0, |ms| ms as f64 / 1000.0),
        );
        g.set("doppel_backlog_bytes", s.backlog_bytes);
        g.set("doppel_spool_bytes", s.spool_bytes);
        self.refresh_throttle(&s);
        let blockers = match &s.waiting {
            Some(crate::model::phase::Wait::Lock(b)) => b.len(),
            _ => 0,
        };
        g.set("doppel_cutover_blockers", blockers as u64);
        g.set(
            "doppel_index_build_done",
            s.index.as_ref().map_or(0, |i| i.done),
        );
        g.set(
            "doppel_index_build_total",
            s.index.as_ref().map_or(0, |i| i.total),
        );
        self.refresh_window(&s);
        g.set_float("doppel_elapsed_seconds", progress.elapsed().as_secs_f64());
        if let Some((code, class)) = s.exit {
            g.set("doppel_exit_code", u64::from(code));
            g.exit_class.with_label_values(&[class]).set(1);
        }
        s.exit.is_some()
    }

    /// The throttle: each reason kind 0/1, the measured values.
    fn refresh_throttle(&self, s: &State) {
        let g = &self.gauges;
        let t = &s.throttle;
        for kind in REASON_KINDS {
            let on = t.reasons.iter().any(|r| r.kind == kind);
            g.throttled.with_label_values(&[kind]).set(i64::from(on));
        }
        g.set(
            "doppel_retained_wal_bytes",
            s.retained_wal_bytes.or(t.retained_wal).unwrap_or(0),
        );
        g.set_float(
            "doppel_replica_lag_seconds",
            t.replica_lag_ms.map_or(0.0, |ms| ms as f64 / 1000.0),
        );
        g.set("doppel_replica_lag_bytes", t.replica_lag_bytes.unwrap_or(0));
        g.set_signed("doppel_active_backends", t.active_backends.unwrap_or(0));
        if let Some(v) = t.throttle_query_value {
            g.query_value.with_label_values(&["throttle"]).set(v);
        }
        if let Some(v) = t.critical_query_value {
            g.query_value.with_label_values(&["critical"]).set(v);
        }
    }

    /// The revert window's state.
    fn refresh_window(&self, s: &State) {
        let g = &self.gauges;
        let open = matches!(s.phase, Some(Phase::RevertWindow))
            && s.window.as_ref().is_some_and(|w| w.ends.is_some());
        g.set("doppel_revert_window_open", u64::from(open));
        if let Some(w) = &s.window {
            g.set("doppel_revert_window_changes_written_back", w.applied);
            g.set("doppel_revert_window_lossless", u64::from(w.lossless()));
            g.set("doppel_revert_window_rejected_keys", w.rejected_count);
            g.set("doppel_revert_window_lag_bytes", w.lag_bytes);
            let left = w
                .ends
                .map(|e| e.saturating_duration_since(std::time::Instant::now()));
            g.set(
                "doppel_revert_window_seconds_left",
                left.map_or(0, |d| d.as_secs()),
            );
        }
    }

    /// The metrics in Prometheus' text format, refreshed from `progress`.
    pub fn render(&self, progress: &Progress) -> String {
        self.render_showing_exit(progress).0
    }

    /// [`Metrics::render`], and whether the text shows the run's exit (`doppel_exit_code`
    /// set): the endpoint lingers after the run until a scrape has seen it.
    fn render_showing_exit(&self, progress: &Progress) -> (String, bool) {
        let shows_exit = self.refresh(progress);
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!("encoding the metrics: {e}");
        }
        (String::from_utf8(out).unwrap_or_default(), shows_exit)
    }

    /// The names of every metric family registered, exported or not yet (a labelled one
    /// appears once it has a value): for checks that a dashboard uses only those.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        names.push("doppel_probe_value".to_string());
        names.sort();
        names.dedup();
        names
    }
}

impl Observer for Metrics {
    fn chunk(&self, took: Duration) {
        self.chunk_seconds.observe(took.as_secs_f64());
    }

    fn attempt(&self, attempt: &AttemptEvent) {
        self.attempts
            .with_label_values(&[attempt.outcome.as_str()])
            .inc();
        self.lock_wait_seconds
            .observe(attempt.lock_wait.as_secs_f64());
        if !attempt.lock_held.is_zero() {
            self.lock_hold_seconds
                .observe(attempt.lock_held.as_secs_f64());
        }
        self.blockers_seen.inc_by(attempt.blockers as u64);
    }
}

/// The HTTP endpoint serving a run's metrics at `/metrics`. Stops when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    /// The accept loop, taken by [`MetricsServer::linger`] to await its graceful end.
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Aborts the accept loop when the server is dropped.
    abort: tokio::task::AbortHandle,
    /// Becomes `true` once a scrape's body showed the run's exit (`doppel_exit_code` >= 0).
    exit_scraped: watch::Receiver<bool>,
    /// Set to `true` to stop accepting connections and finish the responses under way.
    shutdown: watch::Sender<bool>,
}

impl MetricsServer {
    /// Binds `addr` (port 0: any free port) and serves `metrics` of `progress` there; tells
    /// `progress` where (`status --json` shows it) and makes `metrics` observe its events.
    ///
    /// Errors: the address cannot be bound (in use, not local, no permission).
    pub async fn start(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        progress: Arc<Progress>,
    ) -> Result<MetricsServer> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-listen {addr}"))?;
        let addr = listener.local_addr()?;
        progress.observe(metrics.clone());
        progress.update(|s| s.metrics = Some(addr));
        let (seen, exit_scraped) = watch::channel(false);
        let seen = Arc::new(seen);
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let (metrics, progress, seen) = (metrics.clone(), progress.clone(), seen.clone());
                async move {
                    let (body, shows_exit) = metrics.render_showing_exit(&progress);
                    if shows_exit {
                        seen.send_replace(true);
                    }
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        );
        let (shutdown, mut stop) = watch::channel(false);
        let task = tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::warn!("the metrics endpoint stopped: {e}");
            }
        });
        tracing::info!("metrics: http://{addr}/metrics");
        Ok(MetricsServer {
            addr,
            abort: task.abort_handle(),
            task: std::sync::Mutex::new(Some(task)),
            exit_scraped,
            shutdown,
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Keeps serving until a scrape has seen the run's exit, or `at_most` passed: the run
    /// ended, and a scraper should see how (`doppel_exit_code`). A scrape whose body was
    /// rendered before the exit was recorded does not count. Then stops accepting connections
    /// and waits (up to 1 s) for the responses under way to be written, so the process does
    /// not exit in the middle of the last one.
    pub async fn linger(&self, at_most: Duration) {
        let mut seen = self.exit_scraped.clone();
        let _ = tokio::time::timeout(at_most, seen.wait_for(|s| *s)).await;
        self.shutdown.send_replace(true);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::throttle::Reason;

    #[test]
    fn the_text_format_carries_the_progress_and_the_events() {
        let metrics = Metrics::new();
        let progress = Progress::new();
        progress.observe(metrics.clone());
        progress.update(|s| {
            s.phase = Some(Phase::Copy);
            s.rows_estimate = 1000;
            s.throttle.reasons = vec![Reason {
                kind: "replica_lag",
                text: "standby s1 replay lag 1200 ms > 1000 ms".into(),
            }];
            s.throttle.retained_wal = Some(4096);
        });
        progress.chunk_copied(Duration::from_millis(80), 250);
        progress.cutover_attempt(&AttemptEvent {
            outcome: "lock timeout".into(),
            lock_wait: Duration::from_millis(200),
            lock_held: Duration::from_millis(30),
            blockers: 2,
        });
        let text = metrics.render(&progress);
        for line in [
            "doppel_phase{phase=\"copying\"} 1",
            "doppel_phase{phase=\"cutover\"} 0",
            "doppel_rows_copied 250",
            "doppel_rows_estimate 1000",
            "doppel_throttled{reason=\"replica_lag\"} 1",
            "doppel_throttled{reason=\"operator\"} 0",
            "doppel_retained_wal_bytes 4096",
            "doppel_chunk_duration_seconds_count 1",
            "doppel_cutover_attempts_total{outcome=\"lock timeout\"} 1",
            "doppel_cutover_attempts_total{outcome=\"granted\"} 0",
            "doppel_lock_hold_seconds_count 1",
            "doppel_cutover_blockers_seen_total 2",
            "doppel_exit_code -1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        progress.update(|s| s.exit = Some((5, "lock budget")));
        let text = metrics.render(&progress);
        assert!(text.contains("doppel_exit_code 5"), "{text}");
        assert!(
            text.contains("doppel_exit{class=\"lock budget\"} 1"),
            "{text}"
        );
    }

    /// `GET /metrics` on `addr`: the body, or the connection's error.
    async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: doppel\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    }

    /// The endpoint lingers until a scrape shows the exit: a scrape rendered before the exit
    /// was recorded (here: while `linger` already waits) does not end it, and the scrape that
    /// ends it receives its whole response. Fails if any scrape ended the linger (the race
    /// that left a scraper with `doppel_exit_code -1` and a closed port).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_endpoint_lingers_until_a_scrape_has_shown_the_exit() {
        let progress = Progress::new();
        let server = Arc::new(
            MetricsServer::start(
                "127.0.0.1:0".parse().unwrap(),
                Metrics::new(),
                progress.clone(),
            )
            .await
            .unwrap(),
        );
        let addr = server.addr();
        let mut lingering = {
            let server = server.clone();
            tokio::spawn(async move { server.linger(Duration::from_secs(60)).await })
        };
        let before = scrape(addr).await.unwrap();
        assert!(before.contains("doppel_exit_code -1"), "{before}");
        let again = scrape(addr)
            .await
            .expect("still served after a scrape without the exit");
        assert!(again.contains("doppel_exit_code -1"), "{again}");
        // A negative: the linger must not end within half a second of those scrapes.
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut lingering)
                .await
                .is_err(),
            "a scrape without the exit ended the linger"
        );
        progress.update(|s| s.exit = Some((0, "migrated")));
        let last = scrape(addr).await.unwrap();
        assert!(last.contains("doppel_exit_code 0"), "{last}");
        assert!(last.contains("doppel_exit{class=\"migrated\"} 1"), "{last}");
        tokio::time::timeout(Duration::from_secs(10), lingering)
            .await
            .expect("the linger ends after the scrape that showed the exit")
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the endpoint stops accepting after the linger"
        );
    }
}
