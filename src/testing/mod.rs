//! Test hooks: pause points that stop a run at a named moment, and the deliberately broken
//! orderings the race tests run against. Both exist only with the `pause-points` cargo
//! feature, which the test suite turns on through the crate's dev-dependency on itself; a
//! release build has neither (the macros below expand to nothing, and [`Probe`] is an empty
//! type).
//!
//! A run carries its hooks in a [`Probe`], captured once when the run starts and handed to
//! the tasks it spawns; nothing in the run's public options selects them. A probe is active
//! only when a test asked for it explicitly:
//!
//! - in-process, by running the migration inside [`scoped`] (with a pause directory, and
//!   optionally a broken ordering);
//! - in a `doppel` child process, through the environment variable [`PAUSE_DIR_VAR`].
//!
//! Pause protocol: a test *arms* point `name` by creating the file `<pause dir>/<name>`
//! ([`arm`], [`arm_when`]). When the run reaches an armed point it writes
//! `<pause dir>/<name>.reached` (a detail line, e.g. the chunk's key range) and waits, polling
//! every 5 ms, until the test removes `<pause dir>/<name>` ([`release`]). Arming is one-shot:
//! a point passed while unarmed does not stop. The armed file may hold a condition: `key=N`
//! (the copier's chunk points) matches the chunk whose key range holds the single integer
//! key `N`, and `block=N` the TID-range chunk (`--chunk-by tid`) holding heap page `N`;
//! `xid=N` (`spooled`, `applied`) the passage that handled source transaction `N`.
//!
//! Points: `after-preflight`, `shadow-built`, `index-built` (a non-unique index of the
//! shadow committed; the detail is its statement), `catch-up` (backfill and primary key done,
//! applier started), `verifying`, `old-snapshots` (before a cutover attempt, the wait for
//! sessions holding an older snapshot lists them; the detail is their pids),
//! `cutover-attempt` (an attempt caught up and about to ask for its locks), `lock-granted`
//! (every lock of the attempt granted, before the steps under them), `cutover-locked`
//! (inside the cutover transaction, every lock granted and the swap done, before COMMIT),
//! `committed` (the cutover committed, before its after-commit steps and record), and the
//! race points:
//!
//! - `chunk-open` (backfill): a chunk's `INSERT .. SELECT` has run (its snapshot is taken and
//!   its rows inserted) but its transaction has not committed. While this point is armed
//!   for a chunk, that chunk runs inside an explicit transaction, so a test can commit writes
//!   between the chunk's snapshot and its commit (docs/design.md §2.2, the races table).
//! - `copying` (backfill): a chunk committed.
//! - `spooled` (capture): a source transaction's Commit was appended to the spool (the
//!   transaction is decoded, whether or not it is visible yet: F3).
//! - `applied` (apply): a shadow transaction committed; the detail lists the source
//!   transactions it applied.
//! - `visibility-wait` (apply): a batch waits for a decoded transaction to become visible
//!   before re-reading rows from the original (F3); reached at the first check that finds it
//!   invisible.
//! - `verify-bound` (verification): the next chunk's upper bound is about to be read, with
//!   the chunk's two transactions open (the control session's holding its lock on the
//!   original); the detail is the next chunk's lower bound.
//! - `verify-except` (verification): a chunk whose differences are too many for the bucket
//!   listing is about to be listed by one statement on the control session, the peer's
//!   transaction already ended; the detail is the shadow (or the compared table).
//! - `apply-shares` (apply, `--apply-workers` > 1): the shares of a parallel batch other
//!   than the first have committed; the first, which records the batch in the checkpoint, has
//!   not (under [`Broken::CheckpointBeforeShares`]: the first has, the others have not).
//!
//! A `doppel` child process takes a broken ordering that needs no session of its own from
//! [`BROKEN_VAR`].

#[cfg(feature = "pause-points")]
mod scope;

#[cfg(feature = "pause-points")]
pub use scope::{
    BROKEN_VAR, Broken, PAUSE_DIR_VAR, arm, arm_when, reached, release, scoped, wait_reached,
};

/// The test hooks of one run. Cheap to clone. Without the `pause-points` feature it is an
/// empty type and every hook is inert.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    #[cfg(feature = "pause-points")]
    pub(crate) scope: Option<std::sync::Arc<scope::Scope>>,
}

impl Probe {
    /// The hooks a test set for the run starting now: the [`scoped`] scope around it, else a
    /// pause directory named by [`PAUSE_DIR_VAR`], else none. Always none without the
    /// feature.
    pub(crate) fn capture() -> Probe {
        #[cfg(feature = "pause-points")]
        {
            Probe {
                scope: scope::Scope::current(),
            }
        }
        #[cfg(not(feature = "pause-points"))]
        {
            Probe {}
        }
    }
}

/// Stops at pause point `$name` while a test holds it armed (see the module docs):
/// `pause_point!(probe, "name", detail)` or, with a condition matcher over the armed text,
/// `pause_point!(probe, "name", detail, |condition| ..)`. The detail is evaluated only when
/// the point is armed. Expands to nothing without the `pause-points` feature.
macro_rules! pause_point {
    ($probe:expr, $name:literal, $detail:expr) => {
        $crate::testing::pause_point!($probe, $name, $detail, |_: &str| true)
    };
    ($probe:expr, $name:literal, $detail:expr, $matches:expr) => {{
        #[cfg(feature = "pause-points")]
        {
            $probe.pause($name, || $detail, $matches).await;
        }
        #[cfg(not(feature = "pause-points"))]
        {
            let _ = (&$probe, &$matches);
        }
    }};
}

/// True when pause point `$name` is armed with a condition `$matches` accepts (an empty
/// condition matches); always false without the `pause-points` feature.
macro_rules! pause_armed {
    ($probe:expr, $name:literal, $matches:expr) => {{
        #[cfg(feature = "pause-points")]
        {
            $probe.armed($name, $matches)
        }
        #[cfg(not(feature = "pause-points"))]
        {
            let _ = (&$probe, &$matches);
            false
        }
    }};
}

/// True when the run executes under the deliberately broken ordering
/// `$crate::testing::Broken::$variant` (race tests only); always false without the
/// `pause-points` feature, so the broken branch is dead code in a release build.
macro_rules! broken {
    ($probe:expr, $variant:ident) => {{
        #[cfg(feature = "pause-points")]
        {
            $probe.broken() == Some($crate::testing::Broken::$variant)
        }
        #[cfg(not(feature = "pause-points"))]
        {
            let _ = &$probe;
            false
        }
    }};
}

pub(crate) use {broken, pause_armed, pause_point};

/// Whether `condition` is `block=N` with heap page `N` inside the TID range `[lower,
/// upper)` (bounds `(page,0)`; no upper bound: to the end). Other conditions never match.
pub(crate) fn block_in_range(
    condition: &str,
    lower: Option<&[Option<String>]>,
    upper: Option<&[Option<String>]>,
) -> bool {
    let Some(block) = condition_value::<i64>(condition, "block=") else {
        return false;
    };
    // `(N,0)` as the TID-range chunks write their bounds.
    let page = |b: Option<&[Option<String>]>| -> Option<i64> {
        match b {
            Some([Some(v)]) => v
                .trim_start_matches('(')
                .split(',')
                .next()
                .and_then(|n| n.parse().ok()),
            _ => None,
        }
    };
    page(lower).is_some_and(|lo| block >= lo) && page(upper).is_none_or(|hi| block < hi)
}

/// Whether `condition` is `key=N` with `N` inside the key range `(lower, upper]` (`None` =
/// unbounded) of a single integer key column. Other conditions and keys never match.
pub(crate) fn key_in_range(
    condition: &str,
    lower: Option<&[Option<String>]>,
    upper: Option<&[Option<String>]>,
) -> bool {
    let Some(key) = condition_value::<i64>(condition, "key=") else {
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
pub(crate) fn names_xid(condition: &str, xids: &[u32]) -> bool {
    condition_value::<u32>(condition, "xid=").is_some_and(|x| xids.contains(&x))
}

/// The number after `prefix` in a pause point's condition (`key=N`, `block=N`, `xid=N`).
fn condition_value<T: std::str::FromStr>(condition: &str, prefix: &str) -> Option<T> {
    condition.strip_prefix(prefix)?.trim().parse().ok()
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
