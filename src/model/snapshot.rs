//! A PostgreSQL snapshot (`pg_current_snapshot()`, `pg_snapshot` text `xmin:xmax:xip,..`) and
//! the visibility questions the run asks of it: which commits another snapshot counts that
//! this one does not see yet (docs/design.md §1.3 and §2.6, fact F3).

use anyhow::{Result, anyhow};

/// A snapshot with 64-bit transaction ids (`FullTransactionId`, PostgreSQL 13+).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Lowest transaction id still running; every id below it is finished.
    pub xmin: u64,
    /// One past the highest completed id; every id at or above it is invisible.
    pub xmax: u64,
    /// Ids between `xmin` and `xmax` that were in progress when the snapshot was taken.
    pub xip: Vec<u64>,
}

/// `pg_snapshot` text: `xmin:xmax:xip1,xip2,..` ([`Snapshot::parse`] reads it back).
impl std::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let xip: Vec<String> = self.xip.iter().map(u64::to_string).collect();
        write!(f, "{}:{}:{}", self.xmin, self.xmax, xip.join(","))
    }
}

impl Snapshot {
    /// Parses `pg_snapshot` text `xmin:xmax:xip1,xip2,..`.
    ///
    /// Errors: text of another shape.
    pub fn parse(text: &str) -> Result<Snapshot> {
        let mut parts = text.split(':');
        let bad = || anyhow!("unexpected pg_snapshot text {text:?}");
        let xmin: u64 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let xmax: u64 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let xip = parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u64>().map_err(|_| bad()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Snapshot { xmin, xmax, xip })
    }

    /// Whether the finished transaction `xid` (64-bit) is visible in this snapshot.
    pub fn sees(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.xip.contains(&xid))
    }

    /// Whether the finished transaction with the recent 32-bit id `xid` (as pgoutput sends
    /// it) is visible in this snapshot.
    pub fn sees_xid32(&self, xid: u32) -> bool {
        self.sees(widen_xid(xid, self.xmax))
    }

    /// Transactions that this snapshot counts as committed but that are not visible to the
    /// newer snapshot `current` yet: in `current`'s in-progress list, or at or above its
    /// `xmax` (a transaction still in the ProcArray has not advanced the latest completed
    /// id, so a new snapshot's `xmax` can stop at or below it). A slot's exported snapshot
    /// can count a commit that is in WAL but not yet visible (docs/design.md §1.3, F3); the
    /// backfill waits until this is empty. Sorted, without duplicates.
    pub fn committed_but_not_visible(&self, current: &Snapshot) -> Vec<u64> {
        let counted = |x: &u64| *x < self.xmax && !self.xip.contains(x);
        let mut pending: Vec<u64> = current.xip.iter().copied().filter(counted).collect();
        pending.extend((current.xmax..self.xmax).filter(counted));
        pending.sort_unstable();
        pending.dedup();
        pending
    }
}

/// The 64-bit id of a recent 32-bit `xid`, relative to a snapshot's `xmax` (the epoch of the
/// nearest id at or below `xmax`).
pub fn widen_xid(xid: u32, xmax: u64) -> u64 {
    let epoch = xmax >> 32;
    let candidate = (epoch << 32) | u64::from(xid);
    if candidate > xmax && epoch > 0 {
        candidate - (1 << 32)
    } else {
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(xmin: u64, xmax: u64, xip: &[u64]) -> Snapshot {
        Snapshot {
            xmin,
            xmax,
            xip: xip.to_vec(),
        }
    }

    #[test]
    fn snapshot_text_parses() {
        assert_eq!(
            Snapshot::parse("724:730:725,727").unwrap(),
            snap(724, 730, &[725, 727])
        );
        assert_eq!(Snapshot::parse("10:10:").unwrap(), snap(10, 10, &[]));
        assert!(Snapshot::parse("x").is_err());
    }

    #[test]
    fn exported_commits_not_yet_visible_are_found() {
        // PostgreSQL 14: the writer (739) is committed in the exported snapshot, and a new
        // snapshot's xmax stops at it because it has not left the ProcArray.
        let exported = snap(739, 740, &[]);
        assert_eq!(
            exported.committed_but_not_visible(&snap(739, 739, &[])),
            vec![739]
        );
        assert!(
            exported
                .committed_but_not_visible(&snap(740, 740, &[]))
                .is_empty()
        );
        // In the in-progress list; 705 was in progress for the exported snapshot too.
        let exported = snap(700, 750, &[705]);
        assert_eq!(
            exported.committed_but_not_visible(&snap(700, 760, &[705, 720, 755])),
            vec![720]
        );
    }

    #[test]
    fn visibility_follows_xmin_xmax_and_the_in_progress_list() {
        let s = snap(100, 110, &[105]);
        assert!(s.sees(99));
        assert!(s.sees(104));
        assert!(!s.sees(105));
        assert!(!s.sees(110));
        assert!(s.sees_xid32(104));
    }

    #[test]
    fn xids_widen_into_the_right_epoch() {
        assert_eq!(widen_xid(5, 10), 5);
        let xmax = (3u64 << 32) | 100;
        assert_eq!(widen_xid(50, xmax), (3 << 32) | 50);
        assert_eq!(
            widen_xid(u32::MAX - 1, xmax),
            (2 << 32) | u64::from(u32::MAX - 1)
        );
    }
}
