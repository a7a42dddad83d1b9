//! The backend pids of the sessions this process has open, recorded by [`super::connect`] as
//! each session opens and forgotten when its connection ends. The cutover waits for, and
//! `--kill-old-snapshots` ends, other sessions only: doppel's own are left out by their pids,
//! whatever `application_name` they or the application's sessions carry (docs/design.md §4.6).
//!
//! Backend pids are process ids of the server's host; one process of doppel migrates one
//! table of one server, and the test suite's in-process runs share one host, so a pid names
//! one live session at a time.

use std::collections::BTreeSet;
use std::sync::Mutex;

static OWN: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Records `pid` as a session of this process.
pub(super) fn remember(pid: i32) {
    if let Ok(mut own) = OWN.lock() {
        own.insert(pid);
    }
}

/// Forgets `pid` (its connection ended).
pub(super) fn forget(pid: i32) {
    if let Ok(mut own) = OWN.lock() {
        own.remove(&pid);
    }
}

/// The backend pids of the sessions this process has open now, ascending.
pub fn backend_pids() -> Vec<i32> {
    OWN.lock()
        .map(|own| own.iter().copied().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_pids_are_listed_until_forgotten() {
        remember(-7);
        assert!(backend_pids().contains(&-7));
        forget(-7);
        assert!(!backend_pids().contains(&-7));
    }
}
