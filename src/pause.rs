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
//! Points: `after-preflight`, `shadow-built`, `copying` (first chunk committed),
//! `catch-up` (backfill and primary key done, applier started), `verifying`,
//! `cutover-locked` (inside the cutover transaction, ACCESS EXCLUSIVE granted, before the
//! renames), plus the race points of the copier and applier documented where they stand.

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// feature); `detail` is written to `<name>.reached` for the test to read.
    #[cfg(feature = "pause-points")]
    pub async fn point(&self, name: &str, detail: &str) {
        let Some(dir) = &self.dir else { return };
        let armed = dir.join(name);
        if !armed.exists() {
            return;
        }
        tracing::warn!("pause point {name} reached ({detail}); waiting for the test");
        let _ = std::fs::write(dir.join(format!("{name}.reached")), detail);
        while armed.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Without the `pause-points` feature: does nothing.
    #[cfg(not(feature = "pause-points"))]
    #[inline]
    pub async fn point(&self, _name: &str, _detail: &str) {}
}

/// Test side: arms point `name` for the run using `work_dir`.
pub fn arm(work_dir: &Path, name: &str) -> std::io::Result<()> {
    let dir = work_dir.join("pause");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), b"")
}

/// Test side: the detail written when the run reached `name`, if it has.
pub fn reached(work_dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(work_dir.join("pause").join(format!("{name}.reached"))).ok()
}

/// Test side: lets a run stopped at `name` go on.
pub fn release(work_dir: &Path, name: &str) -> std::io::Result<()> {
    match std::fs::remove_file(work_dir.join("pause").join(name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
