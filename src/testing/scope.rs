//! The test side of the hooks (only with the `pause-points` feature): the scope a test sets
//! around a run, the pause-point files, and the broken orderings.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pglogrepl::lsn::Lsn;

use super::Probe;

/// Environment variable naming the pause directory of a `doppel` child process. Unset: the
/// process has no pause points.
pub const PAUSE_DIR_VAR: &str = "DOPPEL_PAUSE_DIR";

/// A plausible but wrong ordering, for showing that a race test bites: a race test runs once
/// against it and expects a mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// The races table's lock-free copy and apply running concurrently (docs/design.md
    /// §2.2): an applier replays the stream into the shadow *during* the backfill (the copy
    /// inserts with `ON CONFLICT DO NOTHING`; a temporary unique index on the shadow's key
    /// lets both run), and the applier after the backfill resumes where that one stopped.
    /// Its session comes from the configuration given to [`scoped`] (application name
    /// `doppel applier (during copy)`).
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
    /// Neither F3 wait: the backfill does not wait for the transactions the slot's exported
    /// snapshot counts as committed to become visible, and re-reads run without waiting for
    /// their event's transaction to be visible.
    NoVisibilityWait,
    /// A parallel apply (`--apply-workers` > 1) commits the share that records the batch in
    /// the checkpoint first, then the other shares: a crash in between leaves a checkpoint
    /// that counts changes the shadow lacks, and the resumed run skips them. Selected in a
    /// doppel process by [`BROKEN_VAR`] (it needs no session of its own).
    CheckpointBeforeShares,
    /// A TID-range backfill (`--chunk-by tid`) keeps the keys it may have copied twice: the
    /// rows of the keys the stream changed during the copy are not removed before the
    /// primary key is built ([`crate::phases::tid_chunks`]).
    NoTidDedupe,
    /// Verification reads the next chunk's upper bound on the peer session, inside the
    /// transaction in which it hashed the shadow's side, while the control session's
    /// transaction holds its lock on the original: a lock request on the original queued in
    /// between waits in a cycle through doppel that the server's deadlock detector cannot
    /// see ([`crate::phases::verify`]).
    BoundOnPeer,
}

/// The environment variable that selects a broken ordering needing no configuration in a
/// doppel process started by a test (test builds only): `CheckpointBeforeShares`.
pub const BROKEN_VAR: &str = "DOPPEL_TEST_BROKEN";

/// What a test set for one run.
#[derive(Debug)]
pub(crate) struct Scope {
    pause_dir: Option<PathBuf>,
    broken: Option<Broken>,
    config: Option<tokio_postgres::Config>,
    applied_during_copy: Mutex<Lsn>,
    /// A second reader of the spool (type-erased: the spool is a phase, above this module).
    during_copy_reader: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

tokio::task_local! {
    static SCOPE: Arc<Scope>;
}

impl Scope {
    /// The scope of the task starting a run: [`scoped`]'s, else one from [`PAUSE_DIR_VAR`].
    pub(crate) fn current() -> Option<Arc<Scope>> {
        if let Ok(scope) = SCOPE.try_with(Arc::clone) {
            return Some(scope);
        }
        let dir = std::env::var_os(PAUSE_DIR_VAR)?;
        let broken = match std::env::var(BROKEN_VAR).as_deref() {
            Ok("CheckpointBeforeShares") => Some(Broken::CheckpointBeforeShares),
            _ => None,
        };
        Some(Arc::new(Scope {
            pause_dir: Some(PathBuf::from(dir)),
            broken,
            config: None,
            applied_during_copy: Mutex::new(Lsn::INVALID),
            during_copy_reader: Mutex::new(None),
        }))
    }
}

/// Runs `future` (a migration) with pause points armed through files in `pause_dir` (when
/// given) and, when given, the broken ordering `broken`, whose own sessions connect with
/// `config`. Tasks the migration spawns do not inherit the scope: the run captures it when it
/// starts and hands it to them.
pub async fn scoped<F: Future>(
    pause_dir: Option<&Path>,
    broken: Option<(Broken, tokio_postgres::Config)>,
    future: F,
) -> F::Output {
    let (broken, config) = match broken {
        Some((b, c)) => (Some(b), Some(c)),
        None => (None, None),
    };
    let scope = Arc::new(Scope {
        pause_dir: pause_dir.map(Path::to_path_buf),
        broken,
        config,
        applied_during_copy: Mutex::new(Lsn::INVALID),
        during_copy_reader: Mutex::new(None),
    });
    SCOPE.scope(scope, future).await
}

impl Probe {
    fn pause_dir(&self) -> Option<&Path> {
        self.scope.as_ref()?.pause_dir.as_deref()
    }

    /// The condition point `name` is armed with (`Some("")` when armed without one).
    fn condition(&self, name: &str) -> Option<String> {
        let dir = self.pause_dir()?;
        std::fs::read_to_string(dir.join(name))
            .ok()
            .map(|c| c.trim().to_string())
    }

    /// Whether `name` is armed with a condition `matches` accepts (or none).
    pub(crate) fn armed(&self, name: &str, matches: impl FnOnce(&str) -> bool) -> bool {
        self.condition(name)
            .is_some_and(|c| c.is_empty() || matches(&c))
    }

    /// Stops at `name` while it is armed (see the module docs of `testing`).
    pub(crate) async fn pause(
        &self,
        name: &str,
        detail: impl FnOnce() -> String,
        matches: impl FnOnce(&str) -> bool,
    ) {
        if !self.armed(name, matches) {
            return;
        }
        let Some(dir) = self.pause_dir() else { return };
        let detail = detail();
        tracing::warn!("pause point {name} reached ({detail}); waiting for the test");
        // Written aside and renamed, so a test never reads a half-written detail.
        let reached = dir.join(format!("{name}.reached"));
        let partial = dir.join(format!("{name}.reached.tmp"));
        if std::fs::write(&partial, &detail).is_ok() {
            let _ = std::fs::rename(&partial, &reached);
        }
        let armed = dir.join(name);
        while armed.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The broken ordering of the run, if a test chose one.
    pub(crate) fn broken(&self) -> Option<Broken> {
        self.scope.as_ref()?.broken
    }

    /// Connection settings for sessions a broken ordering opens by itself.
    pub(crate) fn broken_config(&self) -> Option<&tokio_postgres::Config> {
        self.scope.as_ref()?.config.as_ref()
    }

    /// Records the end of the last transaction the applier during the backfill applied
    /// ([`Broken::ApplyDuringCopy`]).
    pub(crate) fn set_applied_during_copy(&self, lsn: Lsn) {
        if let Some(scope) = &self.scope
            && let Ok(mut l) = scope.applied_during_copy.lock()
        {
            *l = lsn;
        }
    }

    /// Keeps a second spool reader for the applier during the backfill.
    pub(crate) fn keep_during_copy_reader<R: Send + 'static>(&self, reader: R) {
        if let Some(scope) = &self.scope
            && let Ok(mut r) = scope.during_copy_reader.lock()
        {
            *r = Some(Box::new(reader));
        }
    }

    /// Takes the reader kept by [`Probe::keep_during_copy_reader`].
    pub(crate) fn take_during_copy_reader<R: 'static>(&self) -> Option<R> {
        let boxed = self
            .scope
            .as_ref()?
            .during_copy_reader
            .lock()
            .ok()?
            .take()?;
        boxed.downcast::<R>().ok().map(|r| *r)
    }

    /// The end of the last transaction applied during the backfill ([`Lsn::INVALID`] if
    /// none): the applier after the backfill skips transactions that committed before it.
    pub(crate) fn applied_during_copy(&self) -> Lsn {
        self.scope
            .as_ref()
            .and_then(|s| s.applied_during_copy.lock().ok().map(|l| *l))
            .unwrap_or(Lsn::INVALID)
    }
}

/// Test side: arms point `name` in `pause_dir` (any passage stops) and forgets an earlier
/// `<name>.reached`.
pub fn arm(pause_dir: &Path, name: &str) -> std::io::Result<()> {
    arm_when(pause_dir, name, "")
}

/// Test side: arms point `name` in `pause_dir` with `condition` (e.g. `key=1500`,
/// `xid=742`; empty: any passage) and forgets an earlier `<name>.reached`.
pub fn arm_when(pause_dir: &Path, name: &str, condition: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(pause_dir)?;
    match std::fs::remove_file(pause_dir.join(format!("{name}.reached"))) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::write(pause_dir.join(name), condition)
}

/// Test side: the detail written when the run reached `name`, if it has.
pub fn reached(pause_dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(pause_dir.join(format!("{name}.reached"))).ok()
}

/// Test side: waits (polling every 5 ms) until the run reached `name`, and returns the
/// detail; `None` if it has not after `timeout`.
pub async fn wait_reached(pause_dir: &Path, name: &str, timeout: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(detail) = reached(pause_dir, name) {
            return Some(detail);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Test side: lets a run stopped at `name` go on (or disarms `name` if not reached yet).
pub fn release(pause_dir: &Path, name: &str) -> std::io::Result<()> {
    match std::fs::remove_file(pause_dir.join(name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
