//! Latency-targeted pacing (`--max-write-latency MS`): doppel measures the write latency the
//! application sees with a probe write of its own every [`PROBE_INTERVAL`], and an adaptive
//! controller slows the copy, the index builds, verification and the apply down to keep it
//! under the target, going as fast as the target allows.
//!
//! # The probe
//!
//! One dedicated session runs `UPDATE doppel.write_probe SET probes = probes + 1 WHERE
//! table_oid = $1` as its own transaction, a single-row HOT update of a small table doppel owns
//! (in the schema `doppel`, beside the checkpoints; one row per migrated table, so concurrent
//! runs on different tables do not collide). It goes the way an application's write goes:
//! a row lock, a heap page, a WAL record and, at commit, the WAL flush under the server's
//! `synchronous_commit`, so it feels what the copy costs the application (CPU, WAL insertion
//! and flush, I/O) plus the network round trip. A logical message (`pg_logical_emit_message`)
//! would need no table but would be decoded into doppel's own stream ten times a second;
//! `pg_stat_statements` needs an extension and reports means over intervals, not the
//! latency now. The table is not in doppel's publication, so the WAL sender filters the
//! probe out. The run removes its row at the end (and drops the table once no run uses it);
//! `doppel cleanup` does the same for a run that died.
//!
//! A probe still in flight counts as a sample as long as it has been waiting, so a probe
//! blocked behind a lock or a stalled WAL flush backs the run off without waiting for it.
//!
//! # The controller
//!
//! AIMD (additive increase, multiplicative decrease: TCP's congestion control, Chiu and
//! Jain 1989) over one number, the *level*: the share of wall time doppel's bulk work may
//! take, in [[`MIN_LEVEL`], 1]. At each sample:
//! - a sample above the target halves the level, at most once per [`COOLDOWN`] (the effect of
//!   a decrease shows after the chunks in flight end);
//! - when the last [`CALM_SAMPLES`] samples are all within the target, the level grows by
//!   [`STEP`] (from the floor to full speed in about 5 s);
//! - otherwise it holds.
//!
//! The level paces, as [`PaceState`] computes from it: the copy workers allowed
//! (`ceil(level × --copy-workers)`), the target chunk time (`level × --chunk-time`, at least
//! [`MIN_CHUNK_TIME`]: shorter bursts), and a pause after each chunk of the copy and of
//! verification and after each apply batch of `took × (1/level − 1)` (so the work takes
//! `level` of the time), at most [`MAX_PAUSE`]. While the latest sample is above the target no
//! new unit of work starts, for at most [`MAX_GATE`] (so a run on a server that is slow without
//! it still moves at the floor's pace). Index builds, single statements, are gated the same
//! way before each one and run without parallel maintenance workers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::conninfo;

/// Time between the starts of two probes.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// The lowest level: doppel works at least 2% of the time.
pub const MIN_LEVEL: f64 = 0.02;
/// Additive increase per calm sample.
pub const STEP: f64 = 0.02;
/// Samples within the target before the level grows.
pub const CALM_SAMPLES: usize = 3;
/// Shortest time between two decreases.
pub const COOLDOWN: Duration = Duration::from_millis(300);
/// Shortest target chunk time under pacing.
pub const MIN_CHUNK_TIME: Duration = Duration::from_millis(10);
/// Longest pause after one unit of work.
pub const MAX_PAUSE: Duration = Duration::from_secs(1);
/// Longest wait for the probe to come back under the target before a unit of work starts.
pub const MAX_GATE: Duration = Duration::from_secs(1);

/// The probe's table, created on first use.
const PROBE_TABLE_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS doppel;
CREATE TABLE IF NOT EXISTS doppel.write_probe (
  table_oid oid PRIMARY KEY,
  probes bigint NOT NULL DEFAULT 0,
  at timestamptz NOT NULL DEFAULT now()) WITH (fillfactor = 20);";

/// What the controller did at its last sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decision {
    /// No sample yet.
    #[default]
    Starting,
    /// The level was halved: the probe was above the target.
    BackOff,
    /// The level grew: the probe stayed within the target.
    SpeedUp,
    /// Unchanged (within a cooldown, or not yet calm for long enough).
    Hold,
}

impl Decision {
    /// `back off`, `speed up`, `hold`, `starting`.
    pub fn name(self) -> &'static str {
        match self {
            Decision::Starting => "starting",
            Decision::BackOff => "back off",
            Decision::SpeedUp => "speed up",
            Decision::Hold => "hold",
        }
    }
}

/// The pacing as the controller left it at its last sample.
#[derive(Debug, Clone, PartialEq)]
pub struct PaceState {
    /// `--max-write-latency` (ms).
    pub target_ms: f64,
    /// The latest sample (ms): a completed probe, or one still in flight that long.
    pub probe_ms: Option<f64>,
    /// The highest of the samples in the last second (ms).
    pub recent_max_ms: Option<f64>,
    /// Share of the time doppel's bulk work may take, in [`MIN_LEVEL`]..=1.
    pub level: f64,
    /// What the last sample decided.
    pub decision: Decision,
    /// Probes completed.
    pub probes: u64,
    /// The probe's session is gone (the run's other sessions fail on their own; pacing stops
    /// holding the work back).
    pub disconnected: bool,
}

impl PaceState {
    fn new(target: Duration) -> PaceState {
        PaceState {
            target_ms: target.as_secs_f64() * 1000.0,
            probe_ms: None,
            recent_max_ms: None,
            level: 1.0,
            decision: Decision::Starting,
            probes: 0,
            disconnected: false,
        }
    }

    /// The latest sample is above the target: no new unit of work should start.
    pub fn over(&self) -> bool {
        !self.disconnected && self.probe_ms.is_some_and(|ms| ms > self.target_ms)
    }

    /// Copy workers allowed out of `max`: `ceil(level × max)`, at least one.
    pub fn workers(&self, max: usize) -> usize {
        ((self.level * max as f64).ceil() as usize).clamp(1, max.max(1))
    }

    /// The target chunk time from the configured one: `level × configured`, at least
    /// [`MIN_CHUNK_TIME`] (never above `configured`).
    pub fn chunk_time(&self, configured: Duration) -> Duration {
        configured
            .mul_f64(self.level)
            .max(MIN_CHUNK_TIME)
            .min(configured)
    }

    /// The pause after a unit of work that took `took`: `took × (1/level − 1)`, at most
    /// [`MAX_PAUSE`].
    pub fn pause_after(&self, took: Duration) -> Duration {
        if self.disconnected || self.level >= 1.0 {
            return Duration::ZERO;
        }
        took.mul_f64(1.0 / self.level.max(MIN_LEVEL) - 1.0)
            .min(MAX_PAUSE)
    }

    /// The status line's part: `Probe: 2.1 ms (max 4.0 ms, target 3.0 ms); Pace: 35% back off`.
    pub fn describe(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        format!(
            "Probe: {} (max {}, target {:.1} ms); Pace: {:.0}% {}",
            ms(self.probe_ms),
            ms(self.recent_max_ms),
            self.target_ms,
            self.level * 100.0,
            if self.disconnected {
                "probe disconnected"
            } else {
                self.decision.name()
            }
        )
    }

    /// The `pacing` member of `status --json`, for `copy_workers` and `chunk_time` configured.
    pub fn to_json(&self, copy_workers: usize, chunk_time: Duration) -> serde_json::Value {
        json!({
            "target_ms": self.target_ms,
            "probe_ms": self.probe_ms,
            "recent_max_ms": self.recent_max_ms,
            "level": self.level,
            "decision": self.decision.name(),
            "copy_workers": self.workers(copy_workers),
            "chunk_time_ms": self.chunk_time(chunk_time).as_millis() as u64,
            "probes": self.probes,
            "disconnected": self.disconnected,
        })
    }
}

/// The AIMD controller (see the module's documentation), apart from the probe so that it can
/// be tested alone.
#[derive(Debug, Clone)]
pub struct Controller {
    state: PaceState,
    recent: VecDeque<(Instant, f64)>,
    last_decrease: Option<Instant>,
}

impl Controller {
    /// A controller for `target`, starting at full speed.
    pub fn new(target: Duration) -> Controller {
        Controller {
            state: PaceState::new(target),
            recent: VecDeque::new(),
            last_decrease: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> &PaceState {
        &self.state
    }

    /// Takes one sample of `ms` at `now`; `completed` is false for a probe still in flight
    /// (it can back off, not speed up). Returns the decision.
    pub fn observe(&mut self, ms: f64, completed: bool, now: Instant) -> Decision {
        let s = &mut self.state;
        s.probe_ms = Some(ms);
        if completed {
            s.probes += 1;
            self.recent.push_back((now, ms));
        }
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(1))
        {
            self.recent.pop_front();
        }
        s.recent_max_ms = self
            .recent
            .iter()
            .map(|(_, v)| *v)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
            .map(|m| m.max(ms));
        let calm = completed
            && self.recent.len() >= CALM_SAMPLES
            && self
                .recent
                .iter()
                .rev()
                .take(CALM_SAMPLES)
                .all(|(_, v)| *v <= s.target_ms);
        s.decision = if ms > s.target_ms {
            if self
                .last_decrease
                .is_none_or(|t| now.duration_since(t) >= COOLDOWN)
            {
                self.last_decrease = Some(now);
                s.level = (s.level / 2.0).max(MIN_LEVEL);
                Decision::BackOff
            } else {
                Decision::Hold
            }
        } else if calm && s.level < 1.0 {
            s.level = (s.level + STEP).min(1.0);
            Decision::SpeedUp
        } else {
            Decision::Hold
        };
        s.decision
    }
}

/// A cloneable view of the pacing, for the phases that yield to it.
#[derive(Debug, Clone)]
pub struct PaceHandle {
    rx: watch::Receiver<PaceState>,
    suspended: Arc<AtomicBool>,
}

impl PaceHandle {
    /// Stops pacing for good, for every holder of the handle: the cutover must not wait for
    /// a paced applier while it holds its lock.
    pub fn suspend(&self) {
        self.suspended.store(true, Ordering::SeqCst);
    }

    fn suspended(&self) -> bool {
        self.suspended.load(Ordering::SeqCst)
    }

    /// The latest state.
    pub fn state(&self) -> PaceState {
        self.rx.borrow().clone()
    }

    /// A receiver of every new state.
    pub fn watch(&self) -> watch::Receiver<PaceState> {
        self.rx.clone()
    }

    /// After a unit of work that took `took`: sleeps [`PaceState::pause_after`], then waits
    /// while the probe is above the target, at most [`MAX_GATE`].
    pub async fn pace(&self, took: Duration) {
        if self.suspended() {
            return;
        }
        let pause = self.state().pause_after(took);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        self.gate(MAX_GATE).await;
    }

    /// Waits while the latest sample is above the target, at most `limit`.
    pub async fn gate(&self, limit: Duration) {
        let mut rx = self.rx.clone();
        let _ = tokio::time::timeout(limit, async {
            while rx.borrow_and_update().over() && !self.suspended() {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Waits until copy worker `index` (from 0) of `max` may take a chunk:
    /// `index < PaceState::workers(max)`.
    pub async fn worker_turn(&self, index: usize, max: usize) {
        let mut rx = self.rx.clone();
        while index >= rx.borrow_and_update().workers(max) && !self.suspended() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The probe and its controller, running.
pub struct Pacer {
    handle: PaceHandle,
    task: JoinHandle<()>,
    table_oid: u32,
}

impl Pacer {
    /// Creates the probe's table and row (see the module's documentation) for the table of
    /// OID `table_oid` and starts probing every [`PROBE_INTERVAL`] toward `target`.
    ///
    /// Errors: a session cannot be opened, or the table cannot be created (the role needs
    /// CREATE on the database, or the schema `doppel` with CREATE on it).
    pub async fn spawn(
        config: &(impl conninfo::ToConnInfo + ?Sized),
        target: Duration,
        table_oid: u32,
    ) -> Result<Pacer> {
        let client = conninfo::connect(config).await?;
        client
            .batch_execute("SET application_name = 'doppel probe'")
            .await?;
        client.batch_execute(PROBE_TABLE_SQL).await.context(
            "creating doppel.write_probe for --max-write-latency (the role needs CREATE on the database, or GRANT CREATE ON SCHEMA doppel)",
        )?;
        client
            .execute(
                "INSERT INTO doppel.write_probe (table_oid) VALUES ($1) ON CONFLICT (table_oid) DO NOTHING",
                &[&table_oid],
            )
            .await
            .context("adding the run's row to doppel.write_probe")?;
        let probe = client
            .prepare("UPDATE doppel.write_probe SET probes = probes + 1, at = clock_timestamp() WHERE table_oid = $1")
            .await?;
        let (tx, rx) = watch::channel(PaceState::new(target));
        let task = tokio::spawn(probe_loop(client, probe, table_oid, target, tx));
        Ok(Pacer {
            handle: PaceHandle {
                rx,
                suspended: Arc::new(AtomicBool::new(false)),
            },
            task,
            table_oid,
        })
    }

    /// A view of the pacing for the phases.
    pub fn handle(&self) -> PaceHandle {
        self.handle.clone()
    }

    /// Stops probing and removes the run's row (and the table once no run uses it) on a
    /// session of its own. A failure to remove is logged, not returned: `doppel cleanup`
    /// removes it too.
    pub async fn finish(self, config: &(impl conninfo::ToConnInfo + ?Sized)) {
        self.task.abort();
        match conninfo::connect(config).await {
            Ok(client) => {
                if let Err(e) = remove_probe(&client, self.table_oid).await {
                    tracing::warn!("could not remove the run's row of doppel.write_probe: {e}");
                }
            }
            Err(e) => tracing::warn!("could not remove the run's row of doppel.write_probe: {e}"),
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Removes the row of the table of OID `table_oid` from `doppel.write_probe`, and drops the
/// table when it is left empty (under a lock taken without waiting: a run starting meanwhile
/// keeps it). Returns whether a row was removed. Errors: a failed query.
pub async fn remove_probe(client: &Client, table_oid: u32) -> Result<bool> {
    let exists: bool = client
        .query_one("SELECT to_regclass('doppel.write_probe') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(false);
    }
    let removed = client
        .execute(
            "DELETE FROM doppel.write_probe WHERE table_oid = $1",
            &[&table_oid],
        )
        .await?;
    // Drops the table only if no run's row is left; another run holding it (its probe's row
    // lock) makes the NOWAIT lock fail, which keeps it.
    let dropped = client
        .batch_execute(
            "BEGIN;
             LOCK TABLE doppel.write_probe IN ACCESS EXCLUSIVE MODE NOWAIT;
             DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM doppel.write_probe) THEN DROP TABLE doppel.write_probe; END IF;
             END $$;
             COMMIT;",
        )
        .await;
    if dropped.is_err() {
        client.batch_execute("ROLLBACK").await.ok();
    }
    Ok(removed > 0)
}

/// Probes every [`PROBE_INTERVAL`] and publishes each sample's state; a probe in flight is
/// sampled at each interval it waits.
async fn probe_loop(
    client: Client,
    probe: tokio_postgres::Statement,
    table_oid: u32,
    target: Duration,
    tx: watch::Sender<PaceState>,
) {
    let mut controller = Controller::new(target);
    loop {
        let started = Instant::now();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&table_oid];
        let update = client.execute(&probe, &params);
        tokio::pin!(update);
        let result = loop {
            tokio::select! {
                r = &mut update => break r,
                _ = tokio::time::sleep(PROBE_INTERVAL) => {
                    controller.observe(ms(started.elapsed()), false, Instant::now());
                    tx.send_replace(controller.state().clone());
                }
            }
        };
        let took = started.elapsed();
        if let Err(e) = result {
            tracing::warn!("the write-latency probe failed: {e}; pacing stops");
            let mut state = controller.state().clone();
            state.disconnected = true;
            tx.send_replace(state);
            return;
        }
        let before = controller.state().level;
        let decision = controller.observe(ms(took), true, Instant::now());
        if decision == Decision::BackOff {
            tracing::debug!(
                probe_ms = ms(took),
                level = controller.state().level,
                was = before,
                "pacing: backing off"
            );
        }
        tx.send_replace(controller.state().clone());
        tokio::time::sleep(PROBE_INTERVAL.saturating_sub(took)).await;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aimd_halves_on_a_slow_sample_and_grows_when_calm() {
        let mut c = Controller::new(Duration::from_millis(10));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(c.observe(50.0, true, at(0)), Decision::BackOff);
        assert_eq!(c.state().level, 0.5);
        // within the cooldown: holds
        assert_eq!(c.observe(50.0, true, at(100)), Decision::Hold);
        assert_eq!(c.observe(50.0, false, at(300)), Decision::BackOff);
        assert_eq!(c.state().level, 0.25);
        // calm only once the last three completed samples are within the target
        assert_eq!(c.observe(5.0, true, at(400)), Decision::Hold);
        assert_eq!(c.observe(5.0, true, at(500)), Decision::Hold);
        assert_eq!(c.observe(5.0, true, at(600)), Decision::SpeedUp);
        assert!((c.state().level - 0.27).abs() < 1e-9);
        for i in 0..100 {
            c.observe(1.0, true, at(700 + i * 100));
        }
        assert_eq!(c.state().level, 1.0);
        for i in 0..20 {
            c.observe(100.0, true, at(20_000 + i * 400));
        }
        assert_eq!(c.state().level, MIN_LEVEL);
    }

    #[test]
    fn the_level_sets_workers_chunk_time_and_pauses() {
        let mut s = PaceState::new(Duration::from_millis(5));
        assert_eq!(s.workers(2), 2);
        assert_eq!(s.pause_after(Duration::from_millis(100)), Duration::ZERO);
        s.level = 0.25;
        assert_eq!(s.workers(2), 1);
        assert_eq!(s.workers(8), 2);
        assert_eq!(
            s.chunk_time(Duration::from_millis(100)),
            Duration::from_millis(25)
        );
        assert_eq!(
            s.pause_after(Duration::from_millis(20)),
            Duration::from_millis(60)
        );
        s.level = MIN_LEVEL;
        assert_eq!(s.chunk_time(Duration::from_millis(100)), MIN_CHUNK_TIME);
        assert_eq!(s.pause_after(Duration::from_millis(100)), MAX_PAUSE);
        s.probe_ms = Some(6.0);
        assert!(s.over());
        assert!(s.describe().contains("Pace: 2%"), "{}", s.describe());
    }
}
