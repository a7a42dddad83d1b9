//! Everything under the ACCESS EXCLUSIVE lock (docs/design.md §4.3 and §4.4), in order, each
//! step timed: fingerprint re-check, dependents re-check, fence and drain, deferred keys
//! re-check, the renames and dependents (then the pause point `cutover-locked`), and the
//! COMMIT.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_postgres::{Client, Transaction};

use super::Cutover;
use super::rollback::RollbackFile;
use super::snapshots::{Holder, Rechecked, recheck};
use crate::failure::{FailureKind, fail};
use crate::model::catalog;
use crate::phases::verify;
use crate::plan::Plan;

/// The re-checks run under the lock (docs/design.md §4.1), parsed and planned before the
/// lock is requested, on the cutover connection, so that only their execution remains under
/// the lock.
pub(super) struct Rechecks {
    fingerprint: catalog::PreparedFingerprint,
    dependents: crate::dependents::Prepared,
}

impl Rechecks {
    /// Prepares the catalog fingerprint query and the dependents re-read on `client`.
    ///
    /// Errors: a statement could not be prepared (exit 1).
    pub(super) async fn prepare(client: &Client, plan: &Plan) -> Result<Rechecks> {
        let fingerprint = catalog::PreparedFingerprint::new(client, plan.original.oid).await?;
        let dependents =
            crate::dependents::Prepared::new(client, plan.original.oid, &plan.names.publication)
                .await?;
        Ok(Rechecks {
            fingerprint,
            dependents,
        })
    }
}

/// How an attempt that got the lock ended, when it did not fail.
pub(super) enum Inside {
    /// The cutover committed.
    Committed(Committed),
    /// The applier did not reach the fence within `--fence-timeout`; the transaction was
    /// rolled back and the attempt may be retried. The error says why.
    DrainTimeout(anyhow::Error),
    /// These sessions (not queued on the lock) held a snapshot taken before the fence until
    /// the lock budget ran out; the transaction was rolled back (docs/design.md §4.6).
    OldSnapshots(Vec<Holder>),
}

/// What the steps under the lock need from the attempt that took it.
pub(super) struct Locked<'c> {
    /// A session outside the cutover transaction, to read `pg_stat_activity` afresh.
    pub(super) monitor: &'c Client,
    /// The cutover session's backend pid (whose lock the queued sessions wait for).
    pub(super) lock_pid: i32,
    /// The applier's applied change count just before the lock was requested.
    pub(super) changes_before: u64,
}

/// A committed cutover's lock hold, and what marks it.
pub(super) struct Committed {
    /// The fence number the cutover transaction itself carried: once the applier reached
    /// it, its applied position is the cutover's commit LSN.
    pub(super) fence: u64,
    /// `pg_current_snapshot()` inside the cutover transaction: a row of the new table whose
    /// `xmin` this snapshot does not see was written after the cutover (the rollback script's
    /// check, docs/design.md §4.5).
    pub(super) snapshot: String,
    /// From grant to commit.
    pub(super) lock_held: Duration,
    /// Part of the hold spent waiting for the applier to reach the fence.
    pub(super) fence_wait: Duration,
    /// The hold, step by step.
    pub(super) inside: Vec<(&'static str, Duration)>,
    /// Sessions queued on the lock that held a snapshot taken before the fence: the window
    /// that remains (docs/design.md §4.6).
    pub(super) queued: Vec<Holder>,
    /// Row changes applied between the lock request and the fence.
    pub(super) changes_in_window: u64,
}

impl Committed {
    /// Logs the commit of attempt `attempt` with the lock hold (ms) and its steps.
    pub(super) fn log(&self, attempt: u32) {
        tracing::info!(
            attempt,
            lock_held_ms = self.lock_held.as_secs_f64() * 1000.0,
            "cutover committed; inside the lock: {}",
            self.inside
                .iter()
                .map(|(step, d)| format!("{step} {:.1} ms", d.as_secs_f64() * 1000.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// Times the steps under the lock: each lap is the time since the previous one (the first
/// since the grant).
struct Laps {
    inside: Vec<(&'static str, Duration)>,
    mark: Instant,
}

impl Laps {
    fn new(granted: Instant) -> Laps {
        Laps {
            inside: Vec::new(),
            mark: granted,
        }
    }

    /// Step `name` ended now.
    fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.inside.push((name, now - self.mark));
        self.mark = now;
    }
}

impl Cutover<'_> {
    /// Runs the steps under the lock on `tx`, which holds it (docs/design.md §4.3, §4.4), and
    /// commits. `rechecks` were prepared before the lock. Just before COMMIT is sent, the
    /// rollback script is kept (`rollback`).
    ///
    /// Errors, each after rolling back (the original is untouched): the fingerprint or the
    /// dependents changed (exit 8), a deferred key still differs (exit 6), the applier
    /// failed (its class), a query or cutover statement failed (exit 1). A failed COMMIT
    /// (exit 1) leaves the outcome unknown; the message says to check before using the
    /// rollback script.
    pub(super) async fn inside_the_lock(
        &self,
        tx: Transaction<'_>,
        rechecks: &Rechecks,
        locked: &Locked<'_>,
        rollback: &mut RollbackFile,
    ) -> Result<Inside> {
        let plan = self.plan;
        crate::testing::pause_point!(
            self.options.probe,
            "lock-granted",
            plan.original.qualified()
        );
        let granted = Instant::now();
        let mut laps = Laps::new(granted);
        // 1. Fingerprint re-check: DDL that ran during the migration is not on the shadow.
        let current = rechecks.fingerprint.compute(&tx).await?;
        laps.lap("fingerprint re-check");
        if current != self.fingerprint {
            tx.rollback().await.ok();
            return Err(definition_changed(plan));
        }
        // 2. Dependents re-check: the swap would recreate stale definitions.
        let now = rechecks.dependents.read(&tx).await?;
        if now != plan.dependents {
            tx.rollback().await.ok();
            return Err(dependents_changed(plan));
        }
        laps.lap("dependents re-check");
        // 3. Fence: every change committed before the lock is applied once it is.
        let n = self.fencer.emit().await?;
        let fence_started = Instant::now();
        if let Err(e) = self.applier.wait_fence(n, self.options.fence_timeout).await {
            tx.rollback().await.ok();
            self.applier.check()?;
            return Ok(Inside::DrainTimeout(e));
        }
        let fence_wait = fence_started.elapsed();
        if let Some(check) = self.after_drain
            && let Err(e) = check()
        {
            tx.rollback().await.ok();
            return Err(e);
        }
        laps.lap("fence and drain");
        // Sessions that took their snapshot before the fence (§4.6), checked on the monitor
        // session while this one re-checks the deferred keys and renames.
        let left = self.options.fence_timeout.saturating_sub(granted.elapsed());
        let old_snapshots = async {
            let started = Instant::now();
            let r = recheck(locked.monitor, locked.lock_pid, plan.original.oid, left).await;
            (r, started.elapsed())
        };
        let ((rechecked, recheck_took), swapped) =
            tokio::join!(old_snapshots, self.swap(&tx, &mut laps));
        let queued = match (rechecked, swapped) {
            (Ok(Rechecked::Clear { queued }), Ok(())) => queued,
            (Ok(Rechecked::Held(held)), Ok(())) => {
                tx.rollback().await.ok();
                return Ok(Inside::OldSnapshots(held));
            }
            (Err(e), _) | (_, Err(e)) => {
                tx.rollback().await.ok();
                return Err(e);
            }
        };
        laps.lap("old snapshots re-check");
        let changes_in_window = self
            .applier
            .status()
            .changes
            .saturating_sub(locked.changes_before);
        warn_window(&queued, changes_in_window);
        tracing::debug!(
            "old snapshots re-check took {:.1} ms alongside the swap",
            recheck_took.as_secs_f64() * 1000.0
        );
        let marked = match self.revert {
            false => self.mark(&tx, rollback).await,
            true => Ok((0, String::new())),
        };
        let (fence, snapshot) = match marked {
            Ok(mark) => mark,
            Err(e) => {
                tx.rollback().await.ok();
                return Err(e);
            }
        };
        crate::testing::pause_point!(
            self.options.probe,
            "cutover-locked",
            plan.original.qualified()
        );
        laps.lap("mark");
        // From here the cutover may have committed even if COMMIT reports an error.
        rollback.keep();
        tx.commit().await.with_context(|| {
            format!(
                "committing the cutover (its outcome is unknown: check whether {} is the new table before using the rollback script {})",
                plan.original.qualified(),
                rollback.path().display()
            )
        })?;
        laps.lap("commit");
        Ok(Inside::Committed(Committed {
            fence,
            snapshot,
            lock_held: granted.elapsed(),
            fence_wait,
            inside: laps.inside,
            queued,
            changes_in_window,
        }))
    }
}

impl Cutover<'_> {
    /// Under the lock, after the fence: re-checks the keys verification deferred, then runs
    /// the swap's statements (§4.4) on `tx`, timing both into `laps`. Does not roll back: the
    /// caller does on any error.
    ///
    /// Errors: a deferred key still differs (exit 6), a statement failed (exit 1).
    async fn swap(&self, tx: &Transaction<'_>, laps: &mut Laps) -> Result<()> {
        // 4. Deferred keys: those verification could not settle, compared once more.
        let differing = verify::differing_keys(tx, self.plan, self.unsettled)
            .await?
            .len();
        if differing != 0 {
            return Err(keys_differ(self.plan, differing));
        }
        laps.lap("deferred keys re-check");
        for statement in &self.script.forward {
            tx.batch_execute(statement).await.map_err(|e| {
                anyhow::Error::new(e).context(format!(
                    "cutover statement failed, rolled back ({statement})"
                ))
            })?;
        }
        laps.lap("renames and dependents");
        Ok(())
    }

    /// Marks the cutover inside its transaction: a fence message (so the stream shows where
    /// it committed), the revert window's marker when there is one, and the kept old table's
    /// comment with the transaction's snapshot and the rollback script's path. Returns the
    /// fence number and the snapshot.
    ///
    /// Errors: a statement failed (the caller rolls back).
    async fn mark(&self, tx: &Transaction<'_>, rollback: &RollbackFile) -> Result<(u64, String)> {
        let (fence, message) = self.fencer.reserve();
        let row = tx
            .query_one(&format!("{message}, pg_current_snapshot()::text"), &[])
            .await
            .context("marking the cutover")?;
        let snapshot: String = row.get(1);
        if let Some(marker) = &self.options.revert_marker {
            tx.batch_execute(marker)
                .await
                .context("marking the reverse stream")?;
        }
        tx.batch_execute(&super::rollback::kept_comment_sql(
            self.plan,
            &snapshot,
            rollback.path(),
        ))
        .await
        .context("commenting the kept old table")?;
        Ok((fence, snapshot))
    }
}

/// Logs the window that remains (docs/design.md §4.6): the sessions `queued` on the lock
/// holding a snapshot taken before the fence, when the drain applied `changes` after the
/// lock request (with none applied, a snapshot taken after the request sees the new table
/// complete).
fn warn_window(queued: &[Holder], changes: u64) {
    if queued.is_empty() {
        return;
    }
    let who = queued
        .iter()
        .map(Holder::describe)
        .collect::<Vec<_>>()
        .join("; ");
    if changes == 0 {
        tracing::info!(
            "{} session(s) queued on the cutover lock hold a snapshot taken before the fence; no change was applied after the lock request, so they read the new table complete: {who}",
            queued.len()
        );
    } else {
        tracing::warn!(
            "{} session(s) queued on the cutover lock hold a snapshot taken before the fence while the drain applied {changes} change(s): one in a REPEATABLE READ or SERIALIZABLE transaction whose snapshot predates those changes' application reads the new table without them (READ COMMITTED statements take a new snapshot and are not affected): {who}",
            queued.len()
        );
    }
}

/// The fingerprint re-check failed (exit 8).
fn definition_changed(plan: &Plan) -> anyhow::Error {
    fail(
        FailureKind::Conflict,
        format!(
            "the definition of {} changed during the migration (an index, constraint, trigger, grant or other DDL): the shadow does not carry it; aborting, the original table is untouched. Run doppel again",
            plan.original.qualified()
        ),
    )
}

/// The dependents re-check failed (exit 8).
fn dependents_changed(plan: &Plan) -> anyhow::Error {
    fail(
        FailureKind::Conflict,
        format!(
            "a view, trigger, policy, foreign key or publication bound to {} changed during the migration: the cutover would put back the old definition; aborting, the original table is untouched. Run doppel again",
            plan.original.qualified()
        ),
    )
}

/// `differing` deferred keys still differ under the lock (exit 6).
fn keys_differ(plan: &Plan, differing: usize) -> anyhow::Error {
    fail(
        FailureKind::Verification,
        format!(
            "verification failed under the cutover lock: {differing} row(s) differ between {} and the shadow; refusing to cut over, the original table is untouched",
            plan.original.qualified()
        ),
    )
}
