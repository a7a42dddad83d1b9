//! Progress the way DBAs expect it: indicatif bars for the backfill (rows, rate, ETA) and the
//! stream lag on a TTY, a gh-ost-like status line every interval otherwise:
//!
//! `Copy: 466600/752865 62.0%; Applied: 1520; Backlog: 3.1 MiB; Time: 2m40s(total), 2m11s(copy); streamer: 0/1A2B3C4; Lag: 0.01s; State: copying; ETA: 1m19s`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::model::phase::Phase;

/// Shared progress counters, updated by the phases and read by the reporter.
#[derive(Debug)]
pub struct Progress {
    inner: Mutex<State>,
    started: Instant,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Current phase; `None` before the first (shown as `starting`).
    pub phase: Option<Phase>,
    /// Rows copied by the backfill.
    pub rows_copied: u64,
    /// Estimated rows in the original (`reltuples`; 0 when unknown).
    pub rows_estimate: u64,
    /// Rows of the original compared with the shadow by the verify phase so far.
    pub rows_verified: u64,
    /// Row changes applied from the stream.
    pub applied: u64,
    /// Bytes received from the stream but not yet applied.
    pub backlog_bytes: u64,
    /// Latest LSN received from the stream, as text.
    pub stream_lsn: String,
    /// Stream lag: server WAL position minus applied position, in bytes.
    pub lag_bytes: u64,
    /// When the backfill started and ended.
    pub copy_started: Option<Instant>,
    /// When the backfill ended.
    pub copy_ended: Option<Instant>,
    /// Active throttle reasons (empty when not throttled).
    pub throttled: String,
    /// Worst replica lag seen by the throttler (ms), when it measures one.
    pub replica_lag_ms: Option<u64>,
    /// How the control session is protected (`TLSv1.3 (..), server certificate verified
    /// ..` or `not encrypted`), once connected.
    pub session_security: Option<String>,
    /// How the replication connection is protected, once connected.
    pub replication_security: Option<String>,
    /// The revert window, once it is open (`--revert-window`).
    pub window: Option<WindowView>,
    /// A resumable run: bytes of WAL its permanent slot retains on the primary
    /// (`pg_current_wal_lsn() - restart_lsn`), sampled every 10 s.
    pub retained_wal_bytes: Option<u64>,
    /// `--max-write-latency`: the probe's latency and the pacing decision, with the copy
    /// settings they scale (`--copy-workers`, `--chunk-time`).
    pub pacing: Option<PacingView>,
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
}

impl Progress {
    /// New counters, clock starting now.
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress {
            inner: Mutex::new(State::default()),
            started: Instant::now(),
        })
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

    /// The gh-ost-style status line.
    pub fn status_line(&self) -> String {
        let s = self.snapshot();
        let pct = if s.rows_estimate > 0 {
            (s.rows_copied as f64 * 100.0 / s.rows_estimate as f64).min(100.0)
        } else {
            0.0
        };
        let copy_time = match (s.copy_started, s.copy_ended) {
            (Some(a), Some(b)) => b - a,
            (Some(a), None) => a.elapsed(),
            _ => Duration::ZERO,
        };
        let eta = match (s.copy_started, s.copy_ended) {
            (Some(a), None) if s.rows_copied > 0 && s.rows_estimate > s.rows_copied => {
                let rate = s.rows_copied as f64 / a.elapsed().as_secs_f64().max(0.001);
                format_duration(Duration::from_secs_f64(
                    (s.rows_estimate - s.rows_copied) as f64 / rate,
                ))
            }
            (Some(_), None) => "-".to_string(),
            _ => "0s".to_string(),
        };
        let phase = match (&s.phase, &s.window) {
            (Some(Phase::Verify), _) => {
                format!("verifying {}/{} rows", s.rows_verified, s.rows_copied)
            }
            (Some(Phase::RevertWindow), Some(w)) => w.describe(),
            _ => s.state_name().to_string(),
        };
        let state = match (s.phase.is_none(), s.throttled.is_empty()) {
            (true, _) => "starting".to_string(),
            (false, true) => phase,
            (false, false) => format!("{phase} (throttled: {})", s.throttled),
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
        format!(
            "Copy: {}/{} {:.1}%; Applied: {}; Backlog: {}; Time: {}(total), {}(copy); streamer: {}; Lag: {}; State: {}; ETA: {}{retained}{pacing}",
            s.rows_copied,
            s.rows_estimate,
            pct,
            s.applied,
            format_bytes(s.backlog_bytes),
            format_duration(self.elapsed()),
            format_duration(copy_time),
            if s.stream_lsn.is_empty() {
                "-"
            } else {
                &s.stream_lsn
            },
            format_bytes(s.lag_bytes),
            state,
            eta
        )
    }
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
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {msg:12} [{bar:40}] {pos}/{len} rows {per_sec} ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                loop {
                    let s = progress.snapshot();
                    bar.set_length(s.rows_estimate.max(s.rows_copied));
                    bar.set_position(s.rows_copied);
                    let throttled = if s.throttled.is_empty() {
                        String::new()
                    } else {
                        format!(" throttled: {}", s.throttled)
                    };
                    bar.set_message(format!(
                        "{} applied={} lag={}{throttled}",
                        s.state_name(),
                        s.applied,
                        format_bytes(s.lag_bytes)
                    ));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
