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
    /// A resumable run lost a connection (a server restart, a terminated backend, a
    /// failover) and is reconnecting with backoff, to resume from its checkpoint.
    Reconnecting,
}

/// Every phase, in order (the checkpoint stores [`Phase::key`]).
pub const ALL: [Phase; 11] = [
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
    Phase::Reconnecting,
];

impl Phase {
    /// The state shown by the status line, `status --json` and `DOPPEL_PHASE`: `starting`,
    /// `copying`, `building primary key`, `catching up`, `building indexes`, `verifying`,
    /// `cutover`, `done`, `revert window`, `reconnecting`.
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
            Phase::Reconnecting => "reconnecting",
        }
    }

    /// A stable, unique name for the phase, as the checkpoint stores it: `setup`, `copy`,
    /// `indexes`, `catch-up`, `constraints`, `catch-up-after-indexes`, `verify`, `cutover`,
    /// `done`, `revert-window`, `reconnecting`.
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
            Phase::Reconnecting => "reconnecting",
        }
    }

    /// The phase whose [`Phase::key`] is `key`.
    pub fn from_key(key: &str) -> Option<Phase> {
        ALL.into_iter().find(|p| p.key() == key)
    }

    /// The name of the phase's line in the run's timings: `setup`, `copy`, `primary key +
    /// indexes`, `catch-up`, `unique indexes + vacuum`, `catch-up after indexes`, `verify`,
    /// `cutover`, `done`, `revert window`.
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
            Phase::Reconnecting => "reconnecting",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.state())
    }
}
