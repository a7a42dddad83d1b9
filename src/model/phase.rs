//! The phase a run is in: one value feeds the status line, `status --json`, the hooks'
//! `DOPPEL_PHASE`, the progress bars and the per-phase timings of the report.

use std::fmt;

/// A step of `doppel run --execute`, in the order the run takes them (docs/design.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
}

impl Phase {
    /// The state shown by the status line, `status --json` and `DOPPEL_PHASE`: `starting`,
    /// `copying`, `building primary key`, `catching up`, `building indexes`, `verifying`,
    /// `cutover`, `done`, `revert window`, `altering directly`, `backfilling`.
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
        }
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
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.state())
    }
}
