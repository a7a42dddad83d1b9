//! Everything under the ACCESS EXCLUSIVE lock (docs/design.md §4.3 and §4.4), in order, each
//! step timed: fingerprint re-check, dependents re-check, fence and drain, deferred keys
//! re-check, the renames and dependents (then the pause point `cutover-locked`), and the
//! COMMIT.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_postgres::{Client, Transaction};

use super::Cutover;
use super::budget::Budget;
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
    /// For a partitioned table: [`crate::dependents::MEMBERS_WITH_DEPENDENTS_SQL`] of its
    /// tree, planned (the members' own dependents are read again with `dependents`).
    members: Option<tokio_postgres::Statement>,
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
        // With the OID written in and run once, so the server plans it now, once (as the
        // fingerprint, `catalog::PreparedFingerprint`), not under the lock.
        let members = match &plan.partitions {
            Some(tree) => {
                let sql = crate::dependents::MEMBERS_WITH_DEPENDENTS_SQL
                    .replace("$1", &tree.root_oid.to_string());
                let statement = client
                    .prepare(&sql)
                    .await
                    .context("preparing the partitions' dependents re-check")?;
                client
                    .query(&statement, &[])
                    .await
                    .context("reading what is bound to the partitions")?;
                Some(statement)
            }
            None => None,
        };
        Ok(Rechecks {
            fingerprint,
            dependents,
            members,
        })
    }
}

/// How an attempt that got its locks ended, when it did not fail.
pub(super) enum Inside {
    /// The cutover committed.
    Committed(Committed),
    /// The transaction was rolled back and the attempt may be retried: `why`, after
    /// holding the locks for `held`.
    RolledBack {
        /// What ran out.
        why: RolledBack,
        /// From the first lock granted to the rollback.
        held: Duration,
    },
}

/// Why an attempt that got its locks was rolled back, to be retried.
pub(super) enum RolledBack {
    /// The applier did not reach the fence within `--fence-timeout` (the error says why).
    DrainTimeout(anyhow::Error),
    /// A statement under the lock waited for another lock past what was left of the
    /// attempt's lock budget.
    LockTimeout,
    /// The locks were held for `--max-lock-hold` before COMMIT could be sent; the running
    /// statement was cancelled.
    HoldLimit,
    /// These sessions (not queued on the lock) held a snapshot taken before the fence until
    /// the lock budget ran out (docs/design.md §4.6).
    OldSnapshots(Vec<Holder>),
}

/// What the steps under the lock need from the attempt that took it.
pub(super) struct Locked<'c> {
    /// A session outside the cutover transaction, to read `pg_stat_activity` afresh.
    pub(super) monitor: &'c Client,
    /// The cutover session's backend pid (whose lock the queued sessions wait for).
    pub(super) lock_pid: i32,
    /// The applier's applied change count just before the locks were requested.
    pub(super) changes_before: u64,
    /// When the first lock was granted and what is left of the attempt's lock budget.
    pub(super) budget: &'c Budget,
}

impl RolledBack {
    /// The attempt's outcome in the cutover record: `drain timeout`, `lock timeout`, `lock
    /// hold limit`.
    pub(super) fn outcome(&self) -> &'static str {
        match self {
            RolledBack::DrainTimeout(_) => "drain timeout",
            RolledBack::LockTimeout => "lock timeout",
            RolledBack::HoldLimit => "lock hold limit",
            RolledBack::OldSnapshots(_) => "old snapshots under the lock",
        }
    }

    /// What happened, for the log and the final error.
    pub(super) fn describe(&self, cutover: &Cutover<'_>) -> String {
        match self {
            RolledBack::DrainTimeout(e) => format!(
                "the applier did not drain the last changes within --fence-timeout ({} ms) under the lock ({e})",
                cutover.options.fence_timeout.as_millis()
            ),
            RolledBack::LockTimeout => {
                "a statement under the lock waited for another lock past the attempt's lock budget (--lock-timeout)".to_string()
            }
            RolledBack::HoldLimit => format!(
                "the locks were held for --max-lock-hold ({} ms) before the swap could commit",
                cutover.options.max_lock_hold.as_millis()
            ),
            RolledBack::OldSnapshots(held) => format!(
                "{} session(s) took a snapshot before the fence and still held it when the lock budget ran out: {}",
                held.len(),
                held.iter()
                    .map(Holder::describe)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }
}

/// Whether `e` is (caused by) the server's `lock_timeout` (SQLSTATE 55P03).
pub(super) fn is_lock_timeout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<tokio_postgres::Error>()
            .and_then(|e| e.as_db_error())
            .is_some_and(|d| d.code().code() == "55P03")
    })
}

/// The hold's limit under the lock: the deadline and how to cancel the running statement.
struct Hold {
    deadline: Instant,
    token: tokio_postgres::CancelToken,
}

impl Hold {
    /// What is left until the deadline.
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Runs the server statement(s) `work` until the deadline; past it, cancels the
    /// statement on the server and returns `None` (the caller rolls back).
    async fn bounded<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        match tokio::time::timeout_at(self.deadline.into(), work).await {
            Ok(done) => Some(done),
            Err(_) => {
                self.token.cancel_query(tokio_postgres::NoTls).await.ok();
                None
            }
        }
    }
}

/// What the steps under the lock end with.
enum Steps {
    /// Ready to commit.
    Ready(Ready),
    /// Roll back and retry.
    Retry(RolledBack),
}

/// The steps under the lock done, ready to commit.
struct Ready {
    /// The fence the transaction carries.
    fence: u64,
    /// The transaction's snapshot.
    snapshot: String,
    /// The fence wait.
    fence_wait: Duration,
    /// Sessions queued on the lock with a snapshot taken before the fence (§4.6).
    queued: Vec<Holder>,
    /// Row changes applied between the lock request and the fence.
    changes_in_window: u64,
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
    /// Runs the steps under the lock on `tx`, which holds every lock of the attempt
    /// (docs/design.md §4.3, §4.4), and commits. `rechecks` were prepared before the locks;
    /// `locked.budget` says when the first lock was granted and what is left of the lock
    /// budget (the `lock_timeout` of the statements under the lock); the monitor session of
    /// `locked` re-checks the old snapshots after the fence (§4.6). Just before COMMIT is sent,
    /// the rollback script is kept (`rollback`). Past `--max-lock-hold` from the first lock,
    /// the running statement is cancelled and the attempt rolled back.
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
        locked: &Locked<'_>,
    ) -> Result<Inside> {
        let plan = self.plan;
        let budget = locked.budget;
        crate::testing::pause_point!(
            self.options.probe,
            "lock-granted",
            plan.original.qualified()
        );
        let first_lock = budget.first_lock.unwrap_or_else(Instant::now);
        let hold = Hold {
            deadline: budget
                .hold_deadline()
                .unwrap_or(first_lock + self.options.max_lock_hold),
            token: tx.cancel_token(),
        };
        let mut laps = Laps::new(first_lock);
        laps.lap("locks");
        let steps = self
            .steps_under_lock(&tx, rechecks, rollback, &hold, &mut laps, locked)
            .await;
        let ready = match steps {
            Ok(Steps::Ready(ready)) if Instant::now() < hold.deadline => ready,
            Ok(Steps::Ready(..)) => {
                tx.rollback().await.ok();
                return Ok(rolled_back(RolledBack::HoldLimit, first_lock));
            }
            Ok(Steps::Retry(why)) => {
                tx.rollback().await.ok();
                return Ok(rolled_back(why, first_lock));
            }
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
            fence: ready.fence,
            snapshot: ready.snapshot,
            lock_held: first_lock.elapsed(),
            fence_wait: ready.fence_wait,
            inside: laps.inside,
            queued: ready.queued,
            changes_in_window: ready.changes_in_window,
        }))
    }

    /// The steps under the lock before COMMIT, each server statement bounded by the hold's
    /// deadline: the lock budget's rest as `lock_timeout`, the fingerprint and dependents
    /// re-checks, the fence and drain, the deferred keys, the swap and the marks.
    ///
    /// Errors: as [`Cutover::inside_the_lock`]; the caller rolls back.
    async fn steps_under_lock(
        &self,
        tx: &Transaction<'_>,
        rechecks: &Rechecks,
        rollback: &RollbackFile,
        hold: &Hold,
        laps: &mut Laps,
        locked: &Locked<'_>,
    ) -> Result<Steps> {
        let plan = self.plan;
        let budget = locked.budget;
        let retry = |why| Ok(Steps::Retry(why));
        // A lock a statement below still has to wait for counts against the same budget.
        let rest = format!(
            "SET LOCAL lock_timeout = '{}ms'",
            budget.wait_left().as_millis().max(1)
        );
        let Some(set) = hold.bounded(tx.batch_execute(&rest)).await else {
            return retry(RolledBack::HoldLimit);
        };
        set?;
        // 1-3 at once: the fingerprint and dependents re-checks on the cutover session
        // while the applier drains to the fence on its own. A re-check that fails or asks
        // for a retry ends the wait for the drain at once: the locks are not held for it.
        let catalog = self.recheck_catalog(tx, rechecks, hold);
        let drain = self.drain_to_fence(hold);
        tokio::pin!(catalog, drain);
        let mut drained = None;
        let checked = loop {
            tokio::select! {
                checked = &mut catalog => break checked,
                done = &mut drain, if drained.is_none() => drained = Some(done),
            }
        };
        if let Some(why) = checked? {
            return retry(why);
        }
        let drained = match drained {
            Some(done) => done,
            None => drain.await,
        };
        let fence_wait = match drained? {
            Ok(waited) => waited,
            Err(why) => return retry(why),
        };
        if let Some(check) = self.after_drain {
            check()?;
        }
        laps.lap("re-checks, fence and drain");
        // Sessions that took their snapshot before the fence (§4.6), checked on the monitor
        // session while this one re-checks the deferred keys and runs the swap.
        let left = self
            .options
            .fence_timeout
            .saturating_sub(budget.first_lock.map(|f| f.elapsed()).unwrap_or_default())
            .min(hold.left());
        let (rechecked, swapped) = tokio::join!(
            recheck(locked.monitor, locked.lock_pid, plan.original.oid, left),
            self.swap(tx, hold, laps)
        );
        if let Some(why) = swapped? {
            return retry(why);
        }
        let queued = match rechecked? {
            Rechecked::Clear { queued } => queued,
            Rechecked::Held(held) => return retry(RolledBack::OldSnapshots(held)),
        };
        laps.lap("old snapshots re-check");
        let changes_in_window = self
            .applier
            .status()
            .changes
            .saturating_sub(locked.changes_before);
        warn_window(&queued, changes_in_window);
        // COMMIT is never cut short by a statement timeout.
        match hold
            .bounded(tx.batch_execute("SET LOCAL statement_timeout = 0"))
            .await
        {
            None => return retry(RolledBack::HoldLimit),
            Some(done) => done?,
        }
        let (fence, snapshot) = match self.revert {
            false => match hold.bounded(self.mark(tx, rollback)).await {
                None => return retry(RolledBack::HoldLimit),
                Some(marked) => marked?,
            },
            true => (0, String::new()),
        };
        laps.lap("mark");
        Ok(Steps::Ready(Ready {
            fence,
            snapshot,
            fence_wait,
            queued,
            changes_in_window,
        }))
    }

    /// Under the lock, on the cutover session: 1. the fingerprint re-check (DDL that ran
    /// during the migration is not on the shadow), 2. the dependents re-check (the swap would
    /// recreate stale definitions), the table's, then its partitions' own
    /// ([`members_changed`]). `Some(why)`: roll back and retry.
    ///
    /// Errors: the definition, the dependents (a partition's included) or the partition tree
    /// changed (exit 8).
    async fn recheck_catalog(
        &self,
        tx: &Transaction<'_>,
        rechecks: &Rechecks,
        hold: &Hold,
    ) -> Result<Option<RolledBack>> {
        let plan = self.plan;
        let Some(current) = hold.bounded(rechecks.fingerprint.compute(tx)).await else {
            return Ok(Some(RolledBack::HoldLimit));
        };
        if current? != self.fingerprint {
            return Err(definition_changed(plan));
        }
        let Some(now) = hold.bounded(rechecks.dependents.read(tx)).await else {
            return Ok(Some(RolledBack::HoldLimit));
        };
        match now {
            Err(e) if is_lock_timeout(&e) => return Ok(Some(RolledBack::LockTimeout)),
            Err(e) => return Err(e),
            Ok(now) if now != plan.dependents => {
                return Err(match plan.dependents.partitions_changed(&now) {
                    Some(tree) => partitions_changed(plan, &tree),
                    None => dependents_changed(plan),
                });
            }
            Ok(_) => {}
        }
        // The same for what is bound to single members of a partitioned table.
        let Some(members) = hold.bounded(members_changed(tx, rechecks, plan)).await else {
            return Ok(Some(RolledBack::HoldLimit));
        };
        match members {
            Err(e) if is_lock_timeout(&e) => Ok(Some(RolledBack::LockTimeout)),
            Err(e) => Err(e),
            Ok(Some(member)) => Err(member_dependents_changed(plan, &member)),
            Ok(None) => Ok(None),
        }
    }

    /// Under the lock: 3. the fence, emitted on the fence session; every change committed
    /// before the lock is applied once the applier reaches it. `Ok(waited)` once it did,
    /// `Err(why)` to roll back and retry (the hold's deadline or `--fence-timeout` passed).
    ///
    /// Errors: the fence could not be emitted, or the applier failed (its class).
    async fn drain_to_fence(&self, hold: &Hold) -> Result<Result<Duration, RolledBack>> {
        let n = self.fencer.emit().await?;
        let fence_started = Instant::now();
        let drained = tokio::time::timeout_at(
            hold.deadline.into(),
            self.applier.wait_fence(n, self.options.fence_timeout),
        )
        .await;
        match drained {
            Err(_) => Ok(Err(RolledBack::HoldLimit)),
            Ok(Err(e)) => {
                self.applier.check()?;
                Ok(Err(RolledBack::DrainTimeout(e)))
            }
            Ok(Ok(())) => Ok(Ok(fence_started.elapsed())),
        }
    }

    /// Under the lock, after the fence: re-checks the keys verification deferred, then runs
    /// the swap's statements (§4.4) on `tx`, each bounded by the hold's deadline, timing both
    /// into `laps`. `Some(why)`: roll back and retry. Does not roll back: the caller does on
    /// any error.
    ///
    /// Errors: a deferred key still differs (exit 6), a statement failed (exit 1).
    async fn swap(
        &self,
        tx: &Transaction<'_>,
        hold: &Hold,
        laps: &mut Laps,
    ) -> Result<Option<RolledBack>> {
        let plan = self.plan;
        // 4. Deferred keys: those verification could not settle, compared once more.
        let Some(differing) = hold
            .bounded(verify::differing_keys(tx, plan, self.unsettled))
            .await
        else {
            return Ok(Some(RolledBack::HoldLimit));
        };
        let differing = differing?;
        if !differing.is_empty() {
            return Err(keys_differ(
                plan,
                &differing,
                self.unsettled,
                self.unsettled_in,
            ));
        }
        laps.lap("deferred keys re-check");
        for statement in &self.script.forward {
            // The server enforces the deadline too (statement_timeout, what is left of the
            // hold), without the cancel request's round trips.
            let bounded = format!(
                "SET LOCAL statement_timeout = '{}ms'; {statement}",
                hold.left().as_millis().max(1)
            );
            match hold.bounded(tx.batch_execute(&bounded)).await {
                None => return Ok(Some(RolledBack::HoldLimit)),
                Some(Ok(())) => {}
                Some(Err(e)) => match e.as_db_error().map(|d| d.code().code()) {
                    Some("55P03") => return Ok(Some(RolledBack::LockTimeout)),
                    Some("57014") => return Ok(Some(RolledBack::HoldLimit)),
                    _ => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "cutover statement failed, rolled back ({statement})"
                        )));
                    }
                },
            }
        }
        laps.lap("renames and dependents");
        Ok(None)
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

/// An attempt rolled back for `why`, its locks held since `first_lock`.
fn rolled_back(why: RolledBack, first_lock: Instant) -> Inside {
    Inside::RolledBack {
        why,
        held: first_lock.elapsed(),
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
    let what = match plan.partitions {
        Some(_) => {
            "a partition created, attached or detached, as a partition maintenance job such as pg_partman's does, an index, constraint, trigger, grant or other DDL"
        }
        None => "an index, constraint, trigger, grant or other DDL",
    };
    let fix = match plan.partitions {
        Some(_) => "Pause the partition maintenance job and run doppel again",
        None => "Run doppel again",
    };
    fail(
        FailureKind::Conflict,
        format!(
            "the definition of {} changed during the migration ({what}): the shadow does not carry it; aborting, the original table is untouched. {fix}",
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

/// Under the lock, for a partitioned table: whether what is bound to single members of its
/// tree changed since preflight (`plan.member_dependents`): another member has a dependent
/// now (or one has none left), or one member's dependents read differently. `Some(member)`
/// names the member (`"schema"."name"`) when they changed; `None` for a plain table. One
/// query, then one read (two round trips) per member that has dependents.
///
/// Errors: a catalog query failed.
async fn members_changed(
    tx: &Transaction<'_>,
    rechecks: &Rechecks,
    plan: &Plan,
) -> Result<Option<String>> {
    let (Some(statement), Some(tree)) = (&rechecks.members, &plan.partitions) else {
        return Ok(None);
    };
    let with: Vec<u32> = tx
        .query(statement, &[])
        .await
        .context("reading what is bound to the partitions")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let had: Vec<u32> = plan
        .member_dependents
        .iter()
        .map(|m| m.dependents.table_oid)
        .collect();
    if let Some(oid) = with
        .iter()
        .find(|o| !had.contains(o))
        .or_else(|| had.iter().find(|o| !with.contains(o)))
    {
        let name = tree
            .members
            .iter()
            .find(|m| m.oid == *oid)
            .map_or_else(|| oid.to_string(), |m| m.qualified());
        return Ok(Some(name));
    }
    for m in &plan.member_dependents {
        let now = rechecks
            .dependents
            .read_of(tx, m.dependents.table_oid)
            .await?;
        if now != m.dependents {
            return Ok(Some(tree.members[m.position].qualified()));
        }
    }
    Ok(None)
}

/// The dependents re-check of the partition `member` failed (exit 8).
fn member_dependents_changed(plan: &Plan, member: &str) -> anyhow::Error {
    fail(
        FailureKind::Conflict,
        format!(
            "a view, trigger, policy, foreign key, publication or statistics object bound to the partition {member} of {} changed during the migration: the cutover would put back the old definition or leave the new one on the old partition; aborting, the original table is untouched. Run doppel again",
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

/// The deferred keys `differing` still differ under the lock (exit 6); the message names
/// the leaf partitions they were deferred from (`unsettled_in`, parallel to `unsettled`).
fn keys_differ(
    plan: &Plan,
    differing: &[Vec<Option<String>>],
    unsettled: &[Vec<Option<String>>],
    unsettled_in: &[String],
) -> anyhow::Error {
    let mut partitions: Vec<&str> = Vec::new();
    for (key, partition) in unsettled.iter().zip(unsettled_in) {
        if differing.contains(key) && !partitions.contains(&partition.as_str()) {
            partitions.push(partition);
        }
    }
    let located = if partitions.is_empty() {
        String::new()
    } else {
        format!(" (in partition {})", partitions.join(", partition "))
    };
    fail(
        FailureKind::Verification,
        format!(
            "verification failed under the cutover lock: {} row(s) differ between {} and the shadow{located}; refusing to cut over, the original table is untouched",
            differing.len(),
            plan.original.qualified()
        ),
    )
}
