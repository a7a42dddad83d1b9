//! Helpers shared by the test modules.
//!
//! Here: what needs doppel's API — the options of a test run ([`options`], [`Tune`]), a run
//! in-process with its pause points ([`run_paused`], [`pause_dir`]) and the forced-race
//! harness ([`race`]). The helpers that need nothing of doppel live in `doppel-testkit` and
//! are re-exported here, so a test names every shared helper `common::…`: private clusters
//! ([`cluster`]), polling ([`wait_until`]), processes ([`pid_alive`]), one-line queries
//! ([`scalar`]) and doppel's objects seen from outside ([`shadow_rows`],
//! [`assert_no_doppel_objects`]).

pub mod locks;
pub mod race;
pub mod tree_writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::run::{Outcome, RunOptions};

/// A private cluster with default options (each test starts its own).
pub use doppel_testkit::cluster::private as cluster;
/// A private cluster with the given options.
pub use doppel_testkit::cluster::private_with as cluster_with;
pub use doppel_testkit::objects::{
    assert_no_doppel_objects, shadow_name, shadow_rows, wait_copying,
};
pub use doppel_testkit::poll::{wait_until, wait_until_async};
pub use doppel_testkit::process::{pid_alive, processes_mentioning};
pub use doppel_testkit::sql::{fails, oid_of, scalar, text};

/// The options of an executing test run of `table` with `alters`: the spool, the rollback
/// script and the pause points under `dir`; the shadow strategy for every clause (these tests
/// exercise the shadow migration, whatever its ALTER); everything else as `doppel run`'s
/// defaults. [`Tune`] adjusts them (`strategy_auto` for the per-clause strategy).
///
/// [`APPLY_WORKERS_VAR`] set to N runs every such test with `--apply-workers N` (the parallel
/// apply forced under the race and oracle tests).
pub fn options(dir: &Path, table: &str, alters: &[&str]) -> RunOptions {
    RunOptions {
        execute: true,
        apply_workers: apply_workers_override()
            .unwrap_or(RunOptions::new(table, alters).apply_workers),
        work_dir: dir.to_path_buf(),
        rollback_dir: dir.to_path_buf(),
        force_shadow: true,
        ..RunOptions::new(table, alters)
    }
}

/// The environment variable that forces `--apply-workers` in [`options`] (e.g.
/// `DOPPEL_TEST_APPLY_WORKERS=4 cargo test --test suite races::`).
pub const APPLY_WORKERS_VAR: &str = "DOPPEL_TEST_APPLY_WORKERS";

/// [`APPLY_WORKERS_VAR`]'s value, when set to a positive number.
pub fn apply_workers_override() -> Option<usize> {
    std::env::var(APPLY_WORKERS_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
}

/// The knobs tests turn on [`options`], chained:
/// `common::options(dir, "t", &[ALTER]).copy_workers(1).chunk_time(Duration::ZERO)`.
pub trait Tune {
    /// Sessions copying chunks at once.
    fn copy_workers(self, workers: usize) -> Self;
    /// Sessions applying streamed changes at once.
    fn apply_workers(self, workers: usize) -> Self;
    /// The target duration of a chunk (zero: every chunk has the minimum of 100 rows).
    fn chunk_time(self, target: Duration) -> Self;
    /// Rows in the first chunk.
    fn initial_rows(self, rows: i64) -> Self;
    /// The pause after each chunk, as a multiple of its duration.
    fn nice_ratio(self, ratio: f64) -> Self;
    /// Cutover attempts.
    fn cutover_retries(self, attempts: u32) -> Self;
    /// The longest wait for the applier inside the cutover lock.
    fn fence_timeout(self, timeout: Duration) -> Self;
    /// The interval between status lines.
    fn status_interval(self, interval: Duration) -> Self;
    /// The control socket's path.
    fn control_socket(self, path: PathBuf) -> Self;
    /// A revert window of `window` after the cutover.
    fn revert_window(self, window: Duration) -> Self;
    /// A backfill slowed down so events can land while it copies: one copy worker, 100-row
    /// chunks of 5 ms, and a pause of `nice_ratio` times each chunk's duration after it.
    fn slow(self, nice_ratio: f64) -> Self;
    /// The per-clause strategy of `doppel run` (direct, online or shadow), not the forced
    /// shadow of [`options`].
    fn strategy_auto(self) -> Self;
    /// `--backfill` assignments.
    fn backfills(self, assignments: &[&str]) -> Self;
}

impl Tune for RunOptions {
    fn copy_workers(mut self, workers: usize) -> Self {
        self.copy_workers = workers;
        self
    }

    fn apply_workers(mut self, workers: usize) -> Self {
        self.apply_workers = workers;
        self
    }

    fn chunk_time(mut self, target: Duration) -> Self {
        self.copy.chunk_time = target;
        self
    }

    fn initial_rows(mut self, rows: i64) -> Self {
        self.copy.initial_rows = rows;
        self
    }

    fn nice_ratio(mut self, ratio: f64) -> Self {
        self.copy.nice_ratio = ratio;
        self
    }

    fn cutover_retries(mut self, attempts: u32) -> Self {
        self.cutover_retries = attempts;
        self
    }

    fn fence_timeout(mut self, timeout: Duration) -> Self {
        self.fence_timeout = timeout;
        self
    }

    fn status_interval(mut self, interval: Duration) -> Self {
        self.status_interval = interval;
        self
    }

    fn control_socket(mut self, path: PathBuf) -> Self {
        self.control_socket = Some(path);
        self
    }

    fn revert_window(mut self, window: Duration) -> Self {
        self.revert_window = Some(window);
        self
    }

    fn slow(self, nice_ratio: f64) -> Self {
        self.copy_workers(1)
            .chunk_time(Duration::from_millis(5))
            .initial_rows(100)
            .nice_ratio(nice_ratio)
    }

    fn strategy_auto(mut self) -> Self {
        self.force_shadow = false;
        self
    }

    fn backfills(mut self, assignments: &[&str]) -> Self {
        self.backfills = assignments.iter().map(|a| a.to_string()).collect();
        self
    }
}

/// The pause directory of a test run whose work directory is `work_dir`: pause points of the
/// run are armed and reached there (`doppel::testing`).
pub fn pause_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("pause")
}

/// `doppel::run::run` in-process, with its pause points armed through
/// `pause_dir(options.work_dir)`.
pub async fn run_paused(
    config: &tokio_postgres::Config,
    options: &RunOptions,
    cancel: &Cancel,
) -> anyhow::Result<Outcome> {
    let dir = pause_dir(&options.work_dir);
    doppel::testing::scoped(Some(&dir), None, doppel::run::run(config, options, cancel)).await
}
