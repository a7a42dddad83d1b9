//! Progress the way DBAs expect it: indicatif bars for the backfill (rows, rate, ETA) and the
//! stream lag on a TTY, a gh-ost-like status line every interval otherwise:
//!
//! `Copy: 466600/752865 62.0%; Applied: 1520; Backlog: 3.1 MiB; Time: 2m40s(total), 2m11s(copy); streamer: 0/1A2B3C4; Lag: 0.01s; State: copying; ETA: 1m19s`

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use serde_json::json;

use crate::model::phase::{Phase, Wait};
use crate::ops::throttle::ThrottleState;

/// Shared progress counters, updated by the phases and read by the reporter.
pub struct Progress {
    inner: Mutex<State>,
    started: Instant,
    /// Recent samples of the counters, for the rates (see [`Progress::sample`]).
    samples: Mutex<VecDeque<Sample>>,
    /// Who is told of each event (the metrics' histograms and counters).
    observer: Mutex<Option<Arc<dyn Observer>>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("state", &self.snapshot())
            .finish_non_exhaustive()
    }
}

/// One cutover (or revert) attempt, as its events report it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEvent {
    /// `granted`, `lock timeout`, `drain timeout` or `lock hold limit`.
    pub outcome: String,
    /// Time spent waiting for the locks.
    pub lock_wait: Duration,
    /// Time the locks were held, first lock to commit or rollback (zero if none was).
    pub lock_held: Duration,
    /// Sessions seen blocking its lock requests.
    pub blockers: usize,
}

/// What is told of each event as it happens (the counters only give totals).
pub trait Observer: Send + Sync {
    /// A backfill chunk was copied in `took`.
    fn chunk(&self, took: Duration);
    /// A cutover attempt ended.
    fn attempt(&self, attempt: &AttemptEvent);
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Current phase; `None` before the first (shown as `starting`).
    pub phase: Option<Phase>,
    /// What the phase waits for, when it waits (the cutover: postponed, a lock, the drain).
    pub waiting: Option<Wait>,
    /// Rows copied by the backfill.
    pub rows_copied: u64,
    /// Estimated rows in the original (`reltuples`, or the planner's estimate for a table
    /// never analysed; 0 when unknown).
    pub rows_estimate: u64,
    /// Rows of the original compared with the shadow by the verify phase so far.
    pub rows_verified: u64,
    /// Row changes applied from the stream.
    pub applied: u64,
    /// Row changes received from the stream (inserts, updates, deletes).
    pub received: u64,
    /// Bytes received from the stream but not yet applied.
    pub backlog_bytes: u64,
    /// Latest LSN received from the stream, as text.
    pub stream_lsn: String,
    /// Stream lag: server WAL position minus applied position, in bytes.
    pub lag_bytes: u64,
    /// Stream lag in time (ms): how long ago the last applied transaction committed, while
    /// changes wait to be applied; 0 when caught up; `None` before anything was applied.
    pub lag_ms: Option<u64>,
    /// Bytes in the change spool file.
    pub spool_bytes: u64,
    /// When the backfill started.
    pub copy_started: Option<Instant>,
    /// When the backfill ended.
    pub copy_ended: Option<Instant>,
    /// Chunks copied by the backfill.
    pub chunks: u64,
    /// How long the last chunk took.
    pub last_chunk: Option<Duration>,
    /// The throttle checker's last sample: the active reasons (empty when not throttled),
    /// the replica lag, the retained WAL and the other measured values.
    pub throttle: ThrottleState,
    /// The index being built on the shadow, from `pg_stat_progress_create_index`.
    pub index: Option<IndexBuild>,
    /// The rollback script, once written (absolute path).
    pub rollback_script: Option<PathBuf>,
    /// How the control session is protected (`TLSv1.3 (..), server certificate verified
    /// ..` or `not encrypted`), once connected.
    pub session_security: Option<String>,
    /// How the replication connection is protected, once connected.
    pub replication_security: Option<String>,
    /// A resumable run: bytes of WAL its permanent slot retains on the primary
    /// (`pg_current_wal_lsn() - restart_lsn`), sampled every 10 s.
    pub retained_wal_bytes: Option<u64>,
    /// `--max-write-latency`: the probe's latency and the pacing decision, with the copy
    /// settings they scale (`--copy-workers`, `--chunk-time`).
    pub pacing: Option<PacingView>,
    /// The revert window, once it is open (`--revert-window`).
    pub window: Option<WindowView>,
    /// Where the metrics are served (`--metrics-listen`), once they are.
    pub metrics: Option<std::net::SocketAddr>,
    /// The run's exit code once it ended (0: migrated), with its class (`migrated`,
    /// `internal`, `refused`, `aborted`, `stream lost`, `lock budget`, `verification`,
    /// `critical`, `conflict`).
    pub exit: Option<(u8, &'static str)>,
    /// The direct step running, or the backfill's progress (`step 2/3: VALIDATE ..`); while a
    /// partitioned table is copied or verified, the partition (`partition public.p3, 4 of
    /// 25`).
    pub step: Option<String>,
}

/// The pacing as the status shows it.
#[derive(Debug, Clone)]
pub struct PacingView {
    /// The controller's last state.
    pub state: crate::ops::pacing::PaceState,
    /// `--copy-workers`.
    pub copy_workers: usize,
    /// `--chunk-time`.
    pub chunk_time: Duration,
}

/// An index build on the shadow, as `pg_stat_progress_create_index` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexBuild {
    /// The index (empty until the server names it).
    pub name: String,
    /// The build's phase (`building index: scanning table`, ...).
    pub phase: String,
    /// Work done, in `unit`s.
    pub done: u64,
    /// Work to do, in `unit`s (0 when the phase does not say).
    pub total: u64,
    /// `blocks` or `tuples`.
    pub unit: &'static str,
}

/// The revert window as the status shows it.
#[derive(Debug, Clone, Default)]
pub struct WindowView {
    /// When it closes by itself.
    pub ends: Option<Instant>,
    /// The cutover's marker came through: changes made after it are being written back.
    pub streaming: bool,
    /// Changes written back into the kept old table.
    pub applied: u64,
    /// Reverse stream lag: WAL not yet written back (bytes).
    pub lag_bytes: u64,
    /// Keys changed after the cutover that could not be written back (a revert would lose
    /// them), with the reasons of the first ones.
    pub rejected: Vec<String>,
    /// How many keys could not be written back.
    pub rejected_count: u64,
    /// Why a revert is no longer possible, when the reverse stream failed.
    pub broken: Option<String>,
    /// `open`, `reverting`, `reverted`, `finalized`, `expired`, `interrupted`, or `revert
    /// refused: <why>` (the last revert request's refusal).
    pub state: String,
}

impl WindowView {
    /// A revert loses nothing now.
    pub fn lossless(&self) -> bool {
        self.rejected_count == 0 && self.broken.is_none()
    }

    /// The status line's state: `revert window (12m3s left; 52 changes written back, lag
    /// 1.2 KiB; lossless)`.
    pub fn describe(&self) -> String {
        let left = self
            .ends
            .map(|e| format_duration(e.saturating_duration_since(Instant::now())))
            .unwrap_or_else(|| "-".into());
        let quality = match (&self.broken, self.rejected_count) {
            (Some(why), _) => format!("revert no longer possible: {why}"),
            (None, 0) => "lossless".to_string(),
            (None, n) => format!("revert is no longer lossless: {n} key(s) cannot be written back"),
        };
        format!(
            "revert window {} ({left} left; {} change(s) written back, lag {}; {quality})",
            self.state,
            self.applied,
            format_bytes(self.lag_bytes)
        )
    }

    /// The window as the `window` member of `status --json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "state": self.state,
            "seconds_left": self
                .ends
                .map(|e| e.saturating_duration_since(Instant::now()).as_secs()),
            "streaming": self.streaming,
            "applied": self.applied,
            "lag_bytes": self.lag_bytes,
            "lossless": self.lossless(),
            "rejected_count": self.rejected_count,
            "rejected": self.rejected,
            "broken": self.broken,
        })
    }
}

impl State {
    /// The phase's state name (`starting` before the first phase).
    pub fn state_name(&self) -> &'static str {
        self.phase.map_or("starting", Phase::state)
    }

    /// The active throttle reasons, joined by `; ` (empty when not throttled).
    pub fn throttled(&self) -> String {
        self.throttle.describe()
    }

    /// Row changes received and not yet applied.
    pub fn behind(&self) -> u64 {
        self.received.saturating_sub(self.applied)
    }

    /// What the run does and waits for, as the status line's `State:` shows it: the phase
    /// (`verifying N/M rows`, the revert window's state), then what it waits for and the
    /// throttle: `cutover, postponed (flag file F)`, `cutover, waiting for lock (blocked by
    /// pid N: user, state, age)`, `cutover, draining (N changes behind)`, `copying,
    /// throttled (reason)`.
    pub fn state_text(&self) -> String {
        let mut text = match (&self.phase, &self.window) {
            (None, _) => "starting".to_string(),
            (Some(Phase::Verify), _) => {
                let mut text =
                    format!("verifying {}/{} rows", self.rows_verified, self.rows_copied);
                if let Some(step) = &self.step {
                    text.push_str(&format!(" ({step})"));
                }
                text
            }
            (Some(Phase::RevertWindow), Some(w)) => w.describe(),
            (Some(Phase::Direct | Phase::Backfill | Phase::Copy), _) if self.step.is_some() => {
                format!(
                    "{} ({})",
                    self.state_name(),
                    self.step.as_deref().unwrap_or_default()
                )
            }
            _ => self.state_name().to_string(),
        };
        if let Some(wait) = &self.waiting {
            text.push_str(&format!(", {wait}"));
        }
        if !self.throttle.reasons.is_empty() {
            text.push_str(&format!(", throttled ({})", self.throttled()));
        }
        text
    }

    /// Time spent copying so far (zero before the backfill).
    fn copy_time(&self) -> Duration {
        match (self.copy_started, self.copy_ended) {
            (Some(a), Some(b)) => b - a,
            (Some(a), None) => a.elapsed(),
            _ => Duration::ZERO,
        }
    }

    /// Estimated time until the backfill completes: `None` while it cannot be estimated,
    /// zero once it is done.
    pub fn copy_eta(&self) -> Option<Duration> {
        match (self.copy_started, self.copy_ended) {
            (Some(a), None) if self.rows_copied > 0 && self.rows_estimate > self.rows_copied => {
                let rate = self.rows_copied as f64 / a.elapsed().as_secs_f64().max(0.001);
                Some(Duration::from_secs_f64(
                    (self.rows_estimate - self.rows_copied) as f64 / rate,
                ))
            }
            (Some(_), Some(_)) => Some(Duration::ZERO),
            _ => None,
        }
    }
}

/// One sample of the counters the rates are computed from.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    copied: u64,
    applied: u64,
    received: u64,
    verified: u64,
}

/// How long the rates look back.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Recent rates, over the last 10 s, in whole units per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    /// Rows copied by the backfill per second.
    pub copy_rows: u64,
    /// Row changes applied per second.
    pub apply_changes: u64,
    /// Row changes received from the stream per second (the write rate on the table).
    pub write_changes: u64,
    /// Rows verified per second.
    pub verify_rows: u64,
}

impl Progress {
    /// New counters, clock starting now.
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress {
            inner: Mutex::new(State::default()),
            started: Instant::now(),
            samples: Mutex::new(VecDeque::new()),
            observer: Mutex::new(None),
        })
    }

    /// Tells `observer` of every event from now on (one observer; a second replaces it).
    pub fn observe(&self, observer: Arc<dyn Observer>) {
        if let Ok(mut o) = self.observer.lock() {
            *o = Some(observer);
        }
    }

    fn observer(&self) -> Option<Arc<dyn Observer>> {
        self.observer.lock().ok().and_then(|o| o.clone())
    }

    /// Records a cutover attempt's end.
    pub fn cutover_attempt(&self, attempt: &AttemptEvent) {
        if let Some(o) = self.observer() {
            o.attempt(attempt);
        }
    }

    /// Updates the counters under the lock.
    pub fn update(&self, f: impl FnOnce(&mut State)) {
        if let Ok(mut s) = self.inner.lock() {
            f(&mut s);
        }
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> State {
        self.inner.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records that `what` is what the run waits for now (`None`: it no longer waits).
    pub fn wait(&self, what: Option<Wait>) {
        self.update(|s| s.waiting = what);
    }

    /// Records a copied chunk: `took` its duration, `total` the rows copied so far.
    pub fn chunk_copied(&self, took: Duration, total: u64) {
        self.update(|s| {
            s.rows_copied = total;
            s.chunks += 1;
            s.last_chunk = Some(took);
        });
        if let Some(o) = self.observer() {
            o.chunk(took);
        }
    }

    /// Takes a sample of the counters for [`Progress::rates`]; called every few hundred ms
    /// while the run goes on.
    pub fn sample(&self) {
        let s = self.snapshot();
        let now = Instant::now();
        if let Ok(mut samples) = self.samples.lock() {
            samples.push_back(Sample {
                at: now,
                copied: s.rows_copied,
                applied: s.applied,
                received: s.received,
                verified: s.rows_verified,
            });
            while samples
                .front()
                .is_some_and(|f| now.duration_since(f.at) > RATE_WINDOW)
            {
                samples.pop_front();
            }
        }
    }

    /// The rates over the samples of the last 10 s (zero until two samples exist).
    pub fn rates(&self) -> Rates {
        let Ok(samples) = self.samples.lock() else {
            return Rates::default();
        };
        let (Some(first), Some(last)) = (samples.front(), samples.back()) else {
            return Rates::default();
        };
        let secs = last.at.duration_since(first.at).as_secs_f64();
        if secs <= 0.0 {
            return Rates::default();
        }
        let per_s = |a: u64, b: u64| (b.saturating_sub(a) as f64 / secs) as u64;
        Rates {
            copy_rows: per_s(first.copied, last.copied),
            apply_changes: per_s(first.applied, last.applied),
            write_changes: per_s(first.received, last.received),
            verify_rows: per_s(first.verified, last.verified),
        }
    }

    /// The gh-ost-style status line.
    pub fn status_line(&self) -> String {
        let s = self.snapshot();
        let pct = if s.rows_estimate > 0 {
            (s.rows_copied as f64 * 100.0 / s.rows_estimate as f64).min(100.0)
        } else {
            0.0
        };
        let eta = match (s.copy_eta(), s.copy_started) {
            (Some(eta), _) => format_duration(eta),
            (None, Some(_)) => "-".to_string(),
            (None, None) => "0s".to_string(),
        };
        let retained = s
            .retained_wal_bytes
            .map(|b| format!("; Retained WAL: {}", format_bytes(b)))
            .unwrap_or_default();
        let pacing = s
            .pacing
            .as_ref()
            .map(|p| format!("; {}", p.state.describe()))
            .unwrap_or_default();
        let label = if s.phase == Some(Phase::Backfill) {
            "Backfill"
        } else {
            "Copy"
        };
        format!(
            "{label}: {}/{} {:.1}%; Applied: {}; Backlog: {}; Time: {}(total), {}(copy); streamer: {}; Lag: {}; State: {}; ETA: {}{retained}{pacing}",
            s.rows_copied,
            s.rows_estimate,
            pct,
            s.applied,
            format_bytes(s.backlog_bytes),
            format_duration(self.elapsed()),
            format_duration(s.copy_time()),
            if s.stream_lsn.is_empty() {
                "-"
            } else {
                &s.stream_lsn
            },
            format_bytes(s.lag_bytes),
            s.state_text(),
            eta
        )
    }

    /// The status as JSON (`status --json`): the counters, the rates, what the run waits for
    /// and the throttle, the index build, the revert window, and the status line.
    pub fn status_json(&self) -> serde_json::Value {
        let s = self.snapshot();
        let rates = self.rates();
        let waiting = s.waiting.as_ref().map(wait_json);
        json!({
            "phase": s.state_name(),
            "state": s.state_text(),
            "waiting": waiting,
            "postponed": matches!(s.waiting, Some(Wait::Postponed(_))),
            "throttled": !s.throttle.reasons.is_empty(),
            "throttle_reasons": s.throttled(),
            "throttle": s.throttle.reasons.iter().map(|r| json!({"reason": r.kind, "text": r.text})).collect::<Vec<_>>(),
            "rows_copied": s.rows_copied,
            "rows_estimate": s.rows_estimate,
            "rows_verified": s.rows_verified,
            "chunks": s.chunks,
            "last_chunk_ms": s.last_chunk.map(|d| d.as_millis() as u64),
            "applied": s.applied,
            "received": s.received,
            "behind": s.behind(),
            "backlog_bytes": s.backlog_bytes,
            "stream_lsn": s.stream_lsn,
            "lag_bytes": s.lag_bytes,
            "lag_ms": s.lag_ms,
            "spool_bytes": s.spool_bytes,
            "retained_wal_bytes": s.retained_wal_bytes.or(s.throttle.retained_wal),
            "replica_lag_ms": s.throttle.replica_lag_ms,
            "rates": {
                "copy_rows_per_s": rates.copy_rows,
                "apply_changes_per_s": rates.apply_changes,
                "write_changes_per_s": rates.write_changes,
                "verify_rows_per_s": rates.verify_rows,
            },
            "index": s.index.as_ref().map(|i| json!({
                "name": i.name, "phase": i.phase, "done": i.done, "total": i.total, "unit": i.unit,
            })),
            "elapsed_s": self.elapsed().as_secs_f64(),
            "copy_s": s.copy_time().as_secs_f64(),
            "eta_s": s.copy_eta().map(|d| d.as_secs()),
            "rollback_script": s.rollback_script.as_ref().map(|p| p.display().to_string()),
            "metrics": s.metrics.map(|a| format!("http://{a}/metrics")),
            "line": self.status_line(),
            "window": s.window.as_ref().map(|w| w.to_json()),
            "pacing": s
                .pacing
                .as_ref()
                .map(|p| p.state.to_json(p.copy_workers, p.chunk_time)),
            "connections": {
                "sessions": s.session_security,
                "replication": s.replication_security,
            },
        })
    }
}

/// What the run waits for, as the `waiting` member of `status --json`.
fn wait_json(wait: &Wait) -> serde_json::Value {
    let mut value = json!({ "kind": wait.kind(), "text": wait.to_string() });
    match wait {
        Wait::Postponed(by) => {
            value["by"] = json!(by.to_string());
        }
        Wait::Lock(blockers) | Wait::OldSnapshots(blockers) => {
            value["blockers"] = blockers
                .iter()
                .map(|b| {
                    json!({"pid": b.pid, "user": b.user, "state": b.state, "age_s": b.age.as_secs()})
                })
                .collect();
        }
        Wait::Draining { behind } => {
            value["behind"] = json!(behind);
        }
    }
    value
}

/// `2m40s`-style duration.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}h{}m{}s", secs / 3600, (secs % 3600) / 60, secs % 60)
    } else if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// `3.1 MiB`-style size.
pub fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// indicatif bars on stderr (a TTY).
    Bars,
    /// A status line through `tracing` every interval.
    Lines,
}

/// What the progress bar shows in a phase: the phase's own measure, so no phase shows
/// another's stale 100%.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarView {
    /// Which measure: `copy`, `index`, `apply`, `verify`, or `none` (a spinner).
    pub measure: &'static str,
    /// Done so far.
    pub position: u64,
    /// Of how much (0 for a spinner).
    pub length: u64,
    /// The unit (`rows`, `blocks`, `tuples`, `changes`).
    pub unit: &'static str,
    /// The state text after the bar.
    pub message: String,
}

/// The bar for `state`: copy rows (against the estimate) while copying, the index build's
/// blocks or tuples while building indexes, the applied changes against those received while
/// catching up, the rows verified against those copied while verifying, a spinner otherwise.
pub fn bar_view(state: &State) -> BarView {
    let message = state.state_text();
    let (measure, position, length, unit) = match state.phase {
        Some(Phase::Copy) => (
            "copy",
            state.rows_copied,
            state.rows_estimate.max(state.rows_copied),
            "rows",
        ),
        Some(Phase::Indexes | Phase::Constraints) => match &state.index {
            Some(i) => ("index", i.done, i.total.max(i.done), i.unit),
            None => ("none", 0, 0, ""),
        },
        Some(Phase::CatchUp | Phase::CatchUpAfterIndexes) => (
            "apply",
            state.applied,
            state.received.max(state.applied),
            "changes",
        ),
        Some(Phase::Verify) => (
            "verify",
            state.rows_verified,
            state.rows_copied.max(state.rows_verified),
            "rows",
        ),
        _ => ("none", 0, 0, ""),
    };
    let message = match (&state.index, measure) {
        (Some(i), "index") => format!("{message}: {} ({})", i.name, i.phase),
        _ => message,
    };
    BarView {
        measure,
        position,
        length,
        unit,
        message,
    }
}

/// The bar's style for a measure: a bar with counts, an integer rate and the ETA, or a
/// spinner.
fn bar_style(view: &BarView) -> ProgressStyle {
    let rate = |state: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{}/s", state.per_sec() as u64);
    };
    let template = if view.measure == "none" {
        "{spinner} {elapsed_precise} {msg}".to_string()
    } else {
        format!(
            "{{spinner}} [{{bar:40}}] {{pos}}/{{len}} {} {{rate}} ETA {{eta}} {{msg}}",
            view.unit
        )
    };
    ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("rate", rate)
        .progress_chars("=> ")
}

/// Runs the reporter until the returned handle is aborted.
pub fn spawn_reporter(
    progress: Arc<Progress>,
    display: Display,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        match display {
            Display::Lines => loop {
                tokio::time::sleep(interval).await;
                tracing::info!("{}", progress.status_line());
            },
            Display::Bars => {
                let bar = ProgressBar::new(0);
                let mut shown: (&str, &str) = ("", "");
                loop {
                    let view = bar_view(&progress.snapshot());
                    if (view.measure, view.unit) != shown {
                        // A new measure: its own style, rate and ETA from zero.
                        bar.set_style(bar_style(&view));
                        bar.reset();
                        shown = (view.measure, view.unit);
                    }
                    bar.set_length(view.length);
                    bar.set_position(view.position);
                    bar.set_message(view.message);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::phase::Postponement;
    use crate::ops::throttle::Reason;

    #[test]
    fn status_line_has_gh_ost_fields() {
        let p = Progress::new();
        p.update(|s| {
            s.rows_copied = 50;
            s.rows_estimate = 200;
            s.phase = Some(Phase::Copy);
        });
        let line = p.status_line();
        assert!(
            line.starts_with("Copy: 50/200 25.0%; Applied: 0;"),
            "{line}"
        );
        assert!(line.contains("State: copying"));
        p.update(|s| {
            s.phase = Some(Phase::Verify);
            s.rows_verified = 25;
        });
        assert!(
            p.status_line().contains("State: verifying 25/50 rows;"),
            "{}",
            p.status_line()
        );
        assert_eq!(format_bytes(3 * 1024 * 1024 + 100_000), "3.1 MiB");
        assert_eq!(format_duration(Duration::from_secs(160)), "2m40s");
    }

    #[test]
    fn a_partitioned_copy_and_verification_name_their_partition() {
        let p = Progress::new();
        p.update(|s| {
            s.phase = Some(Phase::Copy);
            s.step = Some("partition public.p3, 4 of 25".into());
        });
        assert_eq!(
            p.snapshot().state_text(),
            "copying (partition public.p3, 4 of 25)"
        );
        p.update(|s| {
            s.phase = Some(Phase::Verify);
            s.rows_verified = 10;
            s.rows_copied = 40;
        });
        assert_eq!(
            p.snapshot().state_text(),
            "verifying 10/40 rows (partition public.p3, 4 of 25)"
        );
    }

    #[test]
    fn the_state_names_what_the_run_waits_for() {
        let p = Progress::new();
        p.update(|s| {
            s.phase = Some(Phase::Cutover);
            s.waiting = Some(Wait::Postponed(Postponement::FlagFile("/tmp/hold".into())));
        });
        assert!(
            p.status_line()
                .contains("State: cutover, postponed (flag file /tmp/hold);"),
            "{}",
            p.status_line()
        );
        let json = p.status_json();
        assert_eq!(json["postponed"], true);
        assert_eq!(json["waiting"]["kind"], "postponed");
        assert_eq!(json["waiting"]["by"], "flag file /tmp/hold");
        p.update(|s| {
            s.phase = Some(Phase::Copy);
            s.waiting = None;
            s.throttle.reasons = vec![Reason {
                kind: "flag_file",
                text: "throttle flag file /tmp/t exists".into(),
            }];
        });
        assert!(
            p.status_line()
                .contains("State: copying, throttled (throttle flag file /tmp/t exists);"),
            "{}",
            p.status_line()
        );
        let json = p.status_json();
        assert_eq!(json["postponed"], false);
        assert_eq!(json["throttled"], true);
        assert_eq!(json["throttle"][0]["reason"], "flag_file");
    }

    #[test]
    fn each_phase_has_its_own_bar_and_none_stays_at_a_stale_100_percent() {
        let mut s = State {
            phase: Some(Phase::Copy),
            rows_copied: 40,
            rows_estimate: 100,
            ..State::default()
        };
        let copy = bar_view(&s);
        assert_eq!(
            (copy.measure, copy.position, copy.length),
            ("copy", 40, 100)
        );
        // The copy is done; building an index shows the build, not the copy's 100%.
        s.rows_copied = 100;
        s.phase = Some(Phase::Indexes);
        assert_eq!(bar_view(&s).measure, "none", "no build reported yet");
        s.index = Some(IndexBuild {
            name: "t_pkey".into(),
            phase: "building index: scanning table".into(),
            done: 3,
            total: 12,
            unit: "blocks",
        });
        let index = bar_view(&s);
        assert_eq!(
            (index.measure, index.position, index.length),
            ("index", 3, 12)
        );
        assert!(index.message.contains("t_pkey"), "{}", index.message);
        s.phase = Some(Phase::CatchUp);
        s.received = 500;
        s.applied = 120;
        let apply = bar_view(&s);
        assert_eq!(
            (apply.measure, apply.position, apply.length),
            ("apply", 120, 500)
        );
        s.phase = Some(Phase::Verify);
        s.rows_verified = 30;
        let verify = bar_view(&s);
        assert_eq!(
            (verify.measure, verify.position, verify.length),
            ("verify", 30, 100)
        );
        s.phase = Some(Phase::Cutover);
        assert_eq!(bar_view(&s).measure, "none");
    }

    #[test]
    fn rates_are_whole_units_per_second_over_recent_samples() {
        let p = Progress::new();
        assert_eq!(p.rates(), Rates::default());
        p.sample();
        std::thread::sleep(Duration::from_millis(200));
        p.update(|s| {
            s.rows_copied = 1000;
            s.received = 50;
        });
        p.sample();
        let r = p.rates();
        assert!(r.copy_rows > 1000 && r.copy_rows <= 5000, "{r:?}");
        assert!(r.write_changes > 0 && r.write_changes <= 250, "{r:?}");
        assert_eq!(r.apply_changes, 0);
    }
}
