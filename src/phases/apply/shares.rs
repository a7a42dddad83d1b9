//! Parallel apply by key hash (`--apply-workers`, docs/design.md §2.5): a collapsed flush
//! holds one operation per key, and while only the primary key constrains the shadow,
//! operations on different keys commute. The flush is therefore split by a hash of the key
//! across the applier's sessions, each applying its share in its own transaction; the batch's
//! transactions commit together at its end, the first session's (which records the checkpoint)
//! last, and progress is published only after all of them committed.
//!
//! A key always lands in the same session within a batch (the hash depends on the key alone),
//! so the flushes of one batch never write one row from two sessions, and no session waits
//! for another's row lock.

use std::hash::{DefaultHasher, Hash, Hasher};

use anyhow::{Context, Result};
use tokio_postgres::Transaction;

use super::changes::{Key, Pending};
use super::exec::Exec;
use super::visibility::wait_visible_pausing;
use crate::testing::{Probe, broken, pause_point};

/// The sessions of one batch, each with its open transaction.
pub(super) struct Shares<'a> {
    pub(super) execs: Vec<Exec<'a>>,
    pub(super) probe: &'a Probe,
}

impl Shares<'_> {
    /// Sends `pending` to the shadow: on one session as is, or split by key hash across all of
    /// them, concurrently (only collapsed changes are ever split: the caller uses one session
    /// whenever collapse is off).
    ///
    /// Errors: any session's statement failed (the batch's transactions then roll back).
    pub(super) async fn flush(&mut self, pending: Pending) -> Result<()> {
        if self.execs.len() == 1 {
            return self.execs[0].flush(pending).await;
        }
        if pending.len() == 0 {
            return Ok(());
        }
        // One visibility wait for every share (visibility is server-wide, docs/design.md §2.6);
        // the shares then carry no transaction to wait for.
        if !broken!(self.probe, NoVisibilityWait) {
            wait_visible_pausing(self.execs[0].tx, &pending.xids, self.probe).await?;
        }
        let parts = split(pending, self.execs.len());
        let results = futures_util::future::join_all(
            self.execs
                .iter_mut()
                .zip(parts)
                .map(|(exec, part)| exec.flush(part)),
        )
        .await;
        results.into_iter().collect()
    }
}

/// The session (of `n`) that applies `key`: a hash of the key's text values. Stable within
/// the process, which is all it needs: shares are committed at the end of each batch.
pub(super) fn share_of(key: &Key, n: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % n.max(1) as u64) as usize
}

/// `pending` (collapsed: one operation per key) as `n` disjoint shares by [`share_of`], with
/// no transaction to wait for (the caller waited for all of them).
pub(super) fn split(pending: Pending, n: usize) -> Vec<Pending> {
    debug_assert!(
        pending.ordered.is_empty(),
        "only collapsed changes are split"
    );
    let mut parts: Vec<Pending> = (0..n).map(|_| Pending::new()).collect();
    for (key, op) in pending.collapsed {
        parts[share_of(&key, n)].collapsed.insert(key, op);
    }
    parts
}

/// Commits a batch's transactions: every share but the first concurrently, then the first,
/// which holds the checkpoint's record of the batch (a resumable run). A crash in between
/// leaves some shares committed and the checkpoint before the batch: the resumed applier
/// replays the batch, which is idempotent (docs/design.md §2.5).
///
/// Errors: a commit failed (a lost session, a deferred constraint).
pub(super) async fn commit(mut txs: Vec<Transaction<'_>>, probe: &Probe) -> Result<()> {
    if txs.is_empty() {
        return Ok(());
    }
    let first = txs.remove(0);
    let shares = txs.len();
    // Test-only broken variant: the first share, with the checkpoint, commits before the others.
    if broken!(probe, CheckpointBeforeShares) {
        first.commit().await.context("committing applied changes")?;
        pause_point!(probe, "apply-shares", format!("shares={}", shares + 1));
        return commit_all(txs).await;
    }
    commit_all(txs).await?;
    if shares > 0 {
        pause_point!(probe, "apply-shares", format!("shares={}", shares + 1));
    }
    first.commit().await.context("committing applied changes")
}

async fn commit_all(txs: Vec<Transaction<'_>>) -> Result<()> {
    futures_util::future::try_join_all(txs.into_iter().map(Transaction::commit))
        .await
        .context("committing applied changes (a share of a parallel apply)")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phases::apply::changes::Op;

    #[test]
    fn a_split_is_disjoint_complete_and_stable() {
        let mut pending = Pending::new();
        for i in 0..1000 {
            pending.push(true, vec![Some(i.to_string())], Op::Delete, 1);
        }
        let parts = split(pending, 4);
        assert_eq!(parts.iter().map(Pending::len).sum::<usize>(), 1000);
        for (n, part) in parts.iter().enumerate() {
            assert!(part.len() > 150, "share {n} has {} keys", part.len());
            assert!(part.xids.is_empty());
            for key in part.collapsed.keys() {
                assert_eq!(share_of(key, 4), n);
            }
        }
        assert_eq!(share_of(&vec![Some("7".into())], 1), 0);
    }
}
