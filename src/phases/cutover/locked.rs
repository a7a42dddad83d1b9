//! Everything under the ACCESS EXCLUSIVE lock (docs/design.md §4.3 and §4.4), in order, each
//! step timed: fingerprint re-check, dependents re-check, fence and drain, deferred keys
//! re-check, the renames and dependents (then the pause point `cutover-locked`), and the
//! COMMIT.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_postgres::{Client, Transaction};

use super::Cutover;
use super::rollback::RollbackFile;
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
        rollback: &mut RollbackFile,
    ) -> Result<Inside> {
        let plan = self.plan;
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
            return Err(match plan.dependents.partitions_changed(&now) {
                Some(tree) => partitions_changed(plan, &tree),
                None => dependents_changed(plan),
            });
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
        // 4. Deferred keys: those verification could not settle, compared once more.
        let differing = verify::differing_keys(&tx, plan, self.unsettled)
            .await?
            .len();
        if differing != 0 {
            tx.rollback().await.ok();
            return Err(keys_differ(plan, differing));
        }
        laps.lap("deferred keys re-check");
        // The swap (§4.4).
        for statement in &self.script.forward {
            if let Err(e) = tx.batch_execute(statement).await {
                tx.rollback().await.ok();
                return Err(anyhow::Error::new(e).context(format!(
                    "cutover statement failed, rolled back ({statement})"
                )));
            }
        }
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
        laps.lap("renames and dependents");
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
        }))
    }
}

impl Cutover<'_> {
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

/// The dependents re-check failed because the partitions of `tree`, a partitioned table
/// whose foreign key moves through its leaves, changed (exit 8).
fn partitions_changed(plan: &Plan, tree: &str) -> anyhow::Error {
    fail(
        FailureKind::Conflict,
        format!(
            "the partitions of {tree}, whose foreign key references {}, changed during the migration (a partition created, attached or detached, as a partition maintenance job such as pg_partman's does): the cutover would miss the new partition's key; aborting, the original table is untouched. Pause the partition maintenance job and run doppel again",
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
