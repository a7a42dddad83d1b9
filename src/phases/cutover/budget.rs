//! The limits of one cutover attempt (docs/design.md §4.2): one lock budget for all its lock
//! waits, and a bound on how long it holds its locks. Used by `attempt.rs` (the lock
//! requests) and `locked.rs` (the steps under the lock).

use std::time::{Duration, Instant};

/// The two limits of one attempt (docs/design.md §4.2): all of its lock waits together
/// stay within `wait` (`--lock-timeout`), and its locks are held, from the first one granted
/// to the commit or rollback, for at most `hold` (`--max-lock-hold`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    /// `--lock-timeout` (or the control socket's `lock-timeout=MS`): the attempt's lock waits
    /// together.
    pub(super) wait: Duration,
    /// `--max-lock-hold`.
    hold: Duration,
    /// Time spent in lock requests so far.
    pub(super) waited: Duration,
    /// When the first lock was granted (its statement returned).
    pub(super) first_lock: Option<Instant>,
}

impl Budget {
    /// A fresh budget: `wait` for the waits, `hold` for the hold.
    pub(super) fn new(wait: Duration, hold: Duration) -> Budget {
        Budget {
            wait,
            hold,
            waited: Duration::ZERO,
            first_lock: None,
        }
    }

    /// What is left of the wait budget.
    pub(super) fn wait_left(&self) -> Duration {
        self.wait.saturating_sub(self.waited)
    }

    /// When the hold must end (`None` before the first lock).
    pub(super) fn hold_deadline(&self) -> Option<Instant> {
        self.first_lock.map(|first| first + self.hold)
    }

    /// The `lock_timeout` for the next lock request: what is left of the wait budget, and of
    /// the hold once a lock is held; zero when nothing is left.
    pub(super) fn next_timeout(&self, now: Instant) -> Duration {
        match self.hold_deadline() {
            Some(deadline) => self
                .wait_left()
                .min(deadline.saturating_duration_since(now)),
            None => self.wait_left(),
        }
    }
}
