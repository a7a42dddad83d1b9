//! Test-only pause points: a test stops doppel at a named moment (a chunk read but not yet
//! committed, the cutover lock granted, a phase finished) instead of relying on timing luck.
//!
//! Compiled in only with the `pause-points` cargo feature, which the test suite turns on
//! through the crate's dev-dependency on itself (Cargo.toml); a normal `cargo build` has no
//! pause points and [`Pauses::point`] is an empty function.
//!
//! Protocol, scoped to one run by its work directory (`--work-dir`): a test *arms* point
//! `name` by creating the file `<work_dir>/pause/<name>`. When doppel reaches an armed point it
//! writes `<work_dir>/pause/<name>.reached` (containing a detail line, e.g. the chunk's key
//! range) and waits, polling every 5 ms, until the test removes `<work_dir>/pause/<name>`.
//! Arming is one-shot: a point passed while unarmed does not stop.
//!
//! The armed file may hold a *condition* ([`arm_when`]); an empty file matches every passage.
//! `key=N` (the copier's chunk points) matches the chunk whose key range contains the single
//! integer key `N`; `xid=N` (`spooled`, `applied`) matches the passage that handled source
//! transaction `N`.
//!
//! Points: `after-preflight`, `shadow-built`, `catch-up` (backfill and primary key done,
//! applier started), `verifying`, `cutover-locked` (inside the cutover transaction, ACCESS
//! EXCLUSIVE granted, before the renames), and the race points:
//!
//! - `chunk-open` (copier): a chunk's `INSERT .. SELECT` has run — its snapshot is taken and
//!   its rows are inserted — but its transaction has not committed. While this point is armed
//!   for a chunk, that chunk runs inside an explicit transaction, so a test can commit writes
//!   between the chunk's snapshot and its commit (DESIGN.md §2, the races table).
//! - `copying` (copier): a chunk committed.
//! - `spooled` (stream): a source transaction's Commit was appended to the spool (the
//!   transaction is decoded, whether or not it is visible yet: F3).
//! - `applied` (applier): a shadow transaction committed; the detail lists the source
//!   transactions it applied.
//! - `visibility-wait` (applier): a batch waits for a decoded transaction to become visible
//!   before re-reading rows from the original (F3); reached at the first check that finds it
//!   invisible.
//!
//! # Deliberately broken orderings
//!
//! A race test must be known to bite: it runs once against a plausible but wrong ordering and
//! expects a mismatch. [`with_broken`] (only with the `pause-points` feature) runs a migration
//! future with one [`Broken`] variant in scope (a tokio task-local, so parallel in-process
//! runs do not see each other's variant). Without that feature nothing can select a variant:
//! [`broken`] is constantly `None` and every broken branch is dead code.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::phases::capture::spool::SpoolReader;
use pglogrepl::lsn::Lsn;

/// Where a run's pause points are armed (`<work_dir>/pause`). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Pauses {
    #[cfg_attr(not(feature = "pause-points"), allow(dead_code))]
    dir: Option<Arc<PathBuf>>,
}

impl Pauses {
    /// Pause points of the run whose work directory is `work_dir`.
    pub fn new(work_dir: &Path) -> Pauses {
        Pauses {
            dir: Some(Arc::new(work_dir.join("pause"))),
        }
    }

    /// Stops here while `<work_dir>/pause/<name>` exists (only with the `pause-points`
    /// feature), whatever condition it holds; `detail` is written to `<name>.reached` for the
    /// test to read.
    pub async fn point(&self, name: &str, detail: &str) {
        self.point_if(name, detail, |_| true).await
    }

    /// Like [`Pauses::point`], but an armed condition (the file's non-empty content) must
    /// satisfy `matches`.
    #[cfg(feature = "pause-points")]
    pub async fn point_if(&self, name: &str, detail: &str, matches: impl FnOnce(&str) -> bool) {
        let Some(condition) = self.armed(name) else {
            return;
        };
        if !condition.is_empty() && !matches(&condition) {
            return;
        }
        let Some(dir) = &self.dir else { return };
        let armed = dir.join(name);
        tracing::warn!("pause point {name} reached ({detail}); waiting for the test");
        // Written aside and renamed, so a test never reads a half-written detail.
        let reached = dir.join(format!("{name}.reached"));
        let partial = dir.join(format!("{name}.reached.tmp"));
        if std::fs::write(&partial, detail).is_ok() {
            let _ = std::fs::rename(&partial, &reached);
        }
        while armed.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Without the `pause-points` feature: does nothing.
    #[cfg(not(feature = "pause-points"))]
    #[inline]
    pub async fn point_if(&self, _name: &str, _detail: &str, _matches: impl FnOnce(&str) -> bool) {}

    /// The condition point `name` is armed with (`Some("")` when armed without one), or
    /// `None` when it is not armed.
    #[cfg(feature = "pause-points")]
    pub fn armed(&self, name: &str) -> Option<String> {
        let dir = self.dir.as_ref()?;
        std::fs::read_to_string(dir.join(name))
            .ok()
            .map(|c| c.trim().to_string())
    }

    /// Without the `pause-points` feature: never armed.
    #[cfg(not(feature = "pause-points"))]
    #[inline]
    pub fn armed(&self, _name: &str) -> Option<String> {
        None
    }
}

/// Whether `condition` is `key=N` with `N` inside the key range `(lower, upper]` (`None` =
/// unbounded) of a single integer key column. Other conditions and keys never match.
pub fn key_in_range(
    condition: &str,
    lower: Option<&[Option<String>]>,
    upper: Option<&[Option<String>]>,
) -> bool {
    let Some(key) = condition
        .strip_prefix("key=")
        .and_then(|k| k.trim().parse::<i64>().ok())
    else {
        return false;
    };
    let bound = |b: Option<&[Option<String>]>| -> Option<Option<i64>> {
        match b {
            None => Some(None),
            Some([Some(v)]) => v.parse::<i64>().ok().map(Some),
            Some(_) => None,
        }
    };
    match (bound(lower), bound(upper)) {
        (Some(lo), Some(hi)) => lo.is_none_or(|lo| key > lo) && hi.is_none_or(|hi| key <= hi),
        _ => false,
    }
}

/// Whether `condition` is `xid=N` with `N` among `xids`.
pub fn names_xid(condition: &str, xids: &[u32]) -> bool {
    condition
        .strip_prefix("xid=")
        .and_then(|x| x.trim().parse::<u32>().ok())
        .is_some_and(|x| xids.contains(&x))
}

/// Test side: arms point `name` for the run using `work_dir` (any passage stops), and forgets
/// an earlier `<name>.reached`.
pub fn arm(work_dir: &Path, name: &str) -> std::io::Result<()> {
    arm_when(work_dir, name, "")
}

/// Test side: arms point `name` with `condition` (e.g. `key=1500`, `xid=742`; empty: any
/// passage), and forgets an earlier `<name>.reached`.
pub fn arm_when(work_dir: &Path, name: &str, condition: &str) -> std::io::Result<()> {
    let dir = work_dir.join("pause");
    std::fs::create_dir_all(&dir)?;
    match std::fs::remove_file(dir.join(format!("{name}.reached"))) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::write(dir.join(name), condition)
}

/// Test side: the detail written when the run reached `name`, if it has.
pub fn reached(work_dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(work_dir.join("pause").join(format!("{name}.reached"))).ok()
}

/// Test side: waits (polling every 5 ms) until the run reached `name`, and returns the
/// detail; `None` if it has not after `timeout`.
pub async fn wait_reached(
    work_dir: &Path,
    name: &str,
    timeout: std::time::Duration,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(detail) = reached(work_dir, name) {
            return Some(detail);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Test side: lets a run stopped at `name` go on (or disarms `name` if not reached yet).
pub fn release(work_dir: &Path, name: &str) -> std::io::Result<()> {
    match std::fs::remove_file(work_dir.join("pause").join(name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A plausible but wrong ordering, for showing that a race test bites (see the module docs).
/// Selected only by [`with_broken`], which exists only with the `pause-points` feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// The races table's lock-free copy and apply running concurrently (DESIGN.md §2): an
    /// applier replays the stream into the shadow *during* the backfill (the copy inserts
    /// with `ON CONFLICT DO NOTHING`; a temporary unique index on the shadow's key lets both
    /// run), and the applier after the backfill resumes where that one stopped. Its session
    /// comes from the configuration given to [`with_broken`] (application name `doppel
    /// applier (during copy)`).
    ApplyDuringCopy,
    /// An UPDATE whose new row lacks unchanged TOASTed values (pgoutput `u`) is upserted as
    /// a full row: the values not sent become NULL.
    PartialAsFull,
    /// A partial UPDATE of a key absent from the shadow is dropped instead of re-read from
    /// the original (only the sent columns of a present row are set).
    NoReread,
    /// Changes are not collapsed per key: each flush of a batch runs its upserts, then its
    /// partial updates and re-reads, then its deletes, whatever their source order.
    UnorderedBatch,
    /// Neither F3 wait: [`crate::phases::apply::committed_but_not_visible`] reports nothing, so the
    /// backfill need not wait for the transactions the slot's exported snapshot counts as
    /// committed to become visible, and re-reads run without waiting for their event's
    /// transaction to be visible.
    NoVisibilityWait,
}

/// A run under a [`Broken`] variant and the state that variant needs.
#[derive(Debug)]
pub struct BrokenRun {
    variant: Broken,
    config: tokio_postgres::Config,
    during_copy_reader: Mutex<Option<SpoolReader>>,
    applied_during_copy: Mutex<Lsn>,
}

impl BrokenRun {
    /// The variant.
    pub fn variant(&self) -> Broken {
        self.variant
    }

    /// Connection settings for sessions the variant opens by itself.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Keeps a second reader of the spool for the applier that runs during the backfill.
    pub(crate) fn set_during_copy_reader(&self, reader: SpoolReader) {
        if let Ok(mut r) = self.during_copy_reader.lock() {
            *r = Some(reader);
        }
    }

    /// Takes the reader kept by [`BrokenRun::set_during_copy_reader`].
    pub(crate) fn take_during_copy_reader(&self) -> Option<SpoolReader> {
        self.during_copy_reader.lock().ok()?.take()
    }

    /// Records the end of the last transaction the applier during the backfill applied.
    pub(crate) fn set_applied_during_copy(&self, lsn: Lsn) {
        if let Ok(mut l) = self.applied_during_copy.lock() {
            *l = lsn;
        }
    }

    /// The end of the last transaction applied during the backfill ([`Lsn::INVALID`] if
    /// none): the applier after the backfill skips transactions that committed before it.
    pub(crate) fn applied_during_copy(&self) -> Lsn {
        self.applied_during_copy
            .lock()
            .map(|l| *l)
            .unwrap_or(Lsn::INVALID)
    }
}

#[cfg(feature = "pause-points")]
tokio::task_local! {
    static BROKEN: Arc<BrokenRun>;
}

/// Test side: runs `future` (a migration, e.g. `run::run(..)`) with `variant` in scope;
/// `config` is used for the sessions the variant opens by itself. Tasks the migration spawns
/// do not inherit the scope: the applier captures it when it is started.
#[cfg(feature = "pause-points")]
pub async fn with_broken<F: std::future::Future>(
    variant: Broken,
    config: tokio_postgres::Config,
    future: F,
) -> F::Output {
    let run = Arc::new(BrokenRun {
        variant,
        config,
        during_copy_reader: Mutex::new(None),
        applied_during_copy: Mutex::new(Lsn::INVALID),
    });
    BROKEN.scope(run, future).await
}

/// The broken run in scope, if any (always `None` without the `pause-points` feature).
#[cfg(feature = "pause-points")]
pub fn current() -> Option<Arc<BrokenRun>> {
    BROKEN.try_with(|b| b.clone()).ok()
}

/// The broken run in scope: always `None` without the `pause-points` feature.
#[cfg(not(feature = "pause-points"))]
#[inline]
pub fn current() -> Option<Arc<BrokenRun>> {
    None
}

/// The [`Broken`] variant in scope, if any (always `None` without the `pause-points`
/// feature).
pub fn broken() -> Option<Broken> {
    current().map(|r| r.variant)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(v: &str) -> Vec<Option<String>> {
        vec![Some(v.to_string())]
    }

    #[test]
    fn key_conditions_match_half_open_ranges() {
        assert!(key_in_range("key=5", Some(&k("4")), Some(&k("5"))));
        assert!(!key_in_range("key=4", Some(&k("4")), Some(&k("5"))));
        assert!(key_in_range("key=-7", None, Some(&k("0"))));
        assert!(key_in_range("key=99", Some(&k("5")), None));
        assert!(!key_in_range("xid=5", None, None));
        assert!(!key_in_range("key=5", Some(&k("x")), None));
    }

    #[test]
    fn xid_conditions_match_listed_transactions() {
        assert!(names_xid("xid=742", &[740, 742]));
        assert!(!names_xid("xid=741", &[740, 742]));
        assert!(!names_xid("key=742", &[742]));
    }
}
