//! The phase a run is in: one value feeds the status line, `status --json`, the hooks'
//! `DOPPEL_PHASE`, the progress bars and the per-phase timings of the report.

use std::fmt;

/// A step of `doppel run --execute`, in the order the run takes them (docs/design.md §1);
/// phases compare in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Publication, shadow table, replication slot and spool being set up.
    Setup,
    /// The backfill: existing rows copied in chunks while the stream is spooled.
    Copy,
    /// The shadow's primary key and non-unique indexes being built.
    Indexes,
    /// The applier replaying the spooled backlog until a fence is reached.
    CatchUp,
    /// Unique and exclusion indexes, constraints and `VACUUM (ANALYZE)` of the shadow.
    Constraints,
    /// The applier catching up with what arrived while the constraints were built.
    CatchUpAfterIndexes,
    /// Original and shadow compared chunk by chunk.
    Verify,
    /// Waiting for, and taking, the cutover lock; the swap.
    Cutover,
    /// The cutover committed; the run is finishing.
    Done,
    /// After the cutover, changes to the new table are streamed back into the kept old table
    /// so that a revert loses nothing (`--revert-window`).
    RevertWindow,
    /// The direct and online steps, on the table itself (docs/design.md §1.10).
    Direct,
    /// `doppel backfill`: the batched UPDATE in primary-key chunks.
    Backfill,
    /// A resumable run lost a connection (a server restart, a terminated backend, a
    /// failover) and is reconnecting with backoff, to resume from its checkpoint.
    Reconnecting,
}

/// Every phase, in order (the checkpoint stores [`Phase::key`]).
pub const ALL: [Phase; 13] = [
    Phase::Setup,
    Phase::Copy,
    Phase::Indexes,
    Phase::CatchUp,
    Phase::Constraints,
    Phase::CatchUpAfterIndexes,
    Phase::Verify,
    Phase::Cutover,
    Phase::Done,
    Phase::RevertWindow,
    Phase::Direct,
    Phase::Backfill,
    Phase::Reconnecting,
];

impl Phase {
    /// The state shown by the status line, `status --json` and `DOPPEL_PHASE`: `starting`,
    /// `copying`, `building primary key`, `catching up`, `building indexes`, `verifying`,
    /// `cutover`, `done`, `revert window`, `altering directly`, `backfilling`, `reconnecting`.
    pub fn state(self) -> &'static str {
        match self {
            Phase::Setup => "starting",
            Phase::Copy => "copying",
            Phase::Indexes => "building primary key",
            Phase::CatchUp | Phase::CatchUpAfterIndexes => "catching up",
            Phase::Constraints => "building indexes",
            Phase::Verify => "verifying",
            Phase::Cutover => "cutover",
            Phase::Done => "done",
            Phase::RevertWindow => "revert window",
            Phase::Direct => "altering directly",
            Phase::Backfill => "backfilling",
            Phase::Reconnecting => "reconnecting",
        }
    }

    /// A stable, unique name for the phase, as the checkpoint stores it: `setup`, `copy`,
    /// `indexes`, `catch-up`, `constraints`, `catch-up-after-indexes`, `verify`, `cutover`,
    /// `done`, `revert-window`, `direct`, `backfill`, `reconnecting`.
    pub fn key(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Copy => "copy",
            Phase::Indexes => "indexes",
            Phase::CatchUp => "catch-up",
            Phase::Constraints => "constraints",
            Phase::CatchUpAfterIndexes => "catch-up-after-indexes",
            Phase::Verify => "verify",
            Phase::Cutover => "cutover",
            Phase::Done => "done",
            Phase::RevertWindow => "revert-window",
            Phase::Direct => "direct",
            Phase::Backfill => "backfill",
            Phase::Reconnecting => "reconnecting",
        }
    }

    /// The phase whose [`Phase::key`] is `key`.
    pub fn from_key(key: &str) -> Option<Phase> {
        ALL.into_iter().find(|p| p.key() == key)
    }

    /// The name of the phase's line in the run's timings: `setup`, `copy`, `primary key +
    /// indexes`, `catch-up`, `unique indexes + vacuum`, `catch-up after indexes`, `verify`,
    /// `cutover`, `done`, `revert window`, `direct steps`, `backfill`.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Copy => "copy",
            Phase::Indexes => "primary key + indexes",
            Phase::CatchUp => "catch-up",
            Phase::Constraints => "unique indexes + vacuum",
            Phase::CatchUpAfterIndexes => "catch-up after indexes",
            Phase::Verify => "verify",
            Phase::Cutover => "cutover",
            Phase::Done => "done",
            Phase::RevertWindow => "revert window",
            Phase::Direct => "direct steps",
            Phase::Backfill => "backfill",
            Phase::Reconnecting => "reconnecting",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.state())
    }
}

/// Why the cutover is postponed (docs/design.md §4, before step 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Postponement {
    /// `--postpone-cutover-flag-file` exists.
    FlagFile(std::path::PathBuf),
    /// `postpone` on the control socket.
    Operator,
    /// The `before-cutover` hook failed (lifted by `cut-over` on the control socket).
    HookFailed,
}

impl fmt::Display for Postponement {
    /// `flag file F`, `ctl postpone`, `before-cutover hook failed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Postponement::FlagFile(path) => write!(f, "flag file {}", path.display()),
            Postponement::Operator => f.write_str("ctl postpone"),
            Postponement::HookFailed => f.write_str("before-cutover hook failed"),
        }
    }
}

/// A session that blocks a cutover attempt's lock request (`pg_blocking_pids`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    /// Its backend pid.
    pub pid: i32,
    /// Its role (`?` when unknown).
    pub user: String,
    /// Its `pg_stat_activity.state` (`active`, `idle in transaction`, ...; `?` when unknown).
    pub state: String,
    /// How long its transaction has been open (whole seconds).
    pub age: std::time::Duration,
}

impl fmt::Display for Blocker {
    /// `pid 4242: alice, idle in transaction, 12s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {}: {}, {}, {}",
            self.pid,
            self.user,
            self.state,
            humantime::format_duration(std::time::Duration::from_secs(self.age.as_secs()))
        )
    }
}

/// What a run waits for within its phase, shown after the phase by the status line,
/// `status --json`, the bars and the metrics (the throttle reasons are shown the same way,
/// from the throttle checker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// The cutover is postponed.
    Postponed(Postponement),
    /// A cutover attempt waits for its locks; the sessions seen blocking it so far.
    Lock(Vec<Blocker>),
    /// Catching up before a cutover attempt: row changes received and not yet applied.
    Draining {
        /// Changes behind.
        behind: u64,
    },
    /// Before a cutover attempt: the sessions holding a snapshot older than the cutover
    /// (docs/design.md §4.6), waited for within `--old-snapshot-timeout`.
    OldSnapshots(Vec<Blocker>),
}

impl Wait {
    /// The kind, as `status --json` and the metrics label it: `postponed`, `lock`,
    /// `draining`, `old_snapshots`.
    pub fn kind(&self) -> &'static str {
        match self {
            Wait::Postponed(_) => "postponed",
            Wait::Lock(_) => "lock",
            Wait::Draining { .. } => "draining",
            Wait::OldSnapshots(_) => "old_snapshots",
        }
    }
}

impl fmt::Display for Wait {
    /// `postponed (flag file F | ctl postpone | before-cutover hook failed)`, `waiting for
    /// lock (blocked by pid N: user, state, age)`, `draining (N changes behind)`, `waiting
    /// for N session(s) holding a snapshot older than the cutover (pid N: user, state, age)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wait::Postponed(by) => write!(f, "postponed ({by})"),
            Wait::Lock(blockers) if blockers.is_empty() => f.write_str("waiting for lock"),
            Wait::Lock(blockers) => {
                let who: Vec<String> = blockers.iter().map(Blocker::to_string).collect();
                write!(f, "waiting for lock (blocked by {})", who.join("; "))
            }
            Wait::Draining { behind } => write!(f, "draining ({behind} changes behind)"),
            Wait::OldSnapshots(holders) => {
                let who: Vec<String> = holders.iter().map(Blocker::to_string).collect();
                write!(
                    f,
                    "waiting for {} session(s) holding a snapshot older than the cutover ({})",
                    holders.len(),
                    who.join("; ")
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn waits_read_as_what_doppel_waits_for() {
        let flag = Wait::Postponed(Postponement::FlagFile("/run/doppel/hold".into()));
        assert_eq!(flag.to_string(), "postponed (flag file /run/doppel/hold)");
        assert_eq!(
            Wait::Postponed(Postponement::Operator).to_string(),
            "postponed (ctl postpone)"
        );
        assert_eq!(
            Wait::Postponed(Postponement::HookFailed).to_string(),
            "postponed (before-cutover hook failed)"
        );
        let blocked = Wait::Lock(vec![Blocker {
            pid: 4242,
            user: "alice".into(),
            state: "idle in transaction".into(),
            age: Duration::from_millis(72_400),
        }]);
        assert_eq!(
            blocked.to_string(),
            "waiting for lock (blocked by pid 4242: alice, idle in transaction, 1m 12s)"
        );
        assert_eq!(Wait::Lock(Vec::new()).to_string(), "waiting for lock");
        assert_eq!(
            Wait::Draining { behind: 1520 }.to_string(),
            "draining (1520 changes behind)"
        );
        assert_eq!(blocked.kind(), "lock");
        let old = Wait::OldSnapshots(vec![Blocker {
            pid: 4711,
            user: "app".into(),
            state: "idle in transaction".into(),
            age: Duration::from_secs(35),
        }]);
        assert_eq!(
            old.to_string(),
            "waiting for 1 session(s) holding a snapshot older than the cutover (pid 4711: app, idle in transaction, 35s)"
        );
        assert_eq!(old.kind(), "old_snapshots");
    }
}
