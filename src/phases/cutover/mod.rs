//! Cutover (docs/design.md §4): the shadow takes the table's name in one transaction under an
//! ACCESS EXCLUSIVE lock held for milliseconds, with a rollback script written first.
//!
//! Each attempt: `SET LOCAL lock_timeout` (default 200 ms) and `LOCK TABLE .. IN ACCESS
//! EXCLUSIVE MODE`. A *waiting* ACCESS EXCLUSIVE request blocks every later reader of the
//! table, so a timed-out attempt rolls back at once and the next one waits with exponential
//! backoff and jitter. Once granted, no change to the original can commit; doppel then
//! re-checks the catalog fingerprint (DDL that ran during the migration would otherwise be
//! lost), commits a fence and waits until the applier has applied it (so every change
//! committed before the lock is in the shadow), re-checks the keys verification deferred, and
//! renames: original → `_doppel_<oid>_old_<name>` (its indexes and identity sequences out of
//! the way), shadow → original name, shadow indexes → their final names, sequence ownership
//! and values moved, foreign keys re-added `NOT VALID` (validated after commit). The lock hold
//! time (grant to commit) is measured and reported.
//!
//! [`Cutover::run`] goes through the steps in this order, one file each:
//!
//! | file | step |
//! |---|---|
//! | `script.rs` | the forward SQL and the rollback script; the script written before any COMMIT, removed if none is sent (§4.4, §4.5) |
//! | `postpone.rs` | waiting while postponed: flag file, control socket, failing `before-cutover` hook (§4) |
//! | `drain.rs` | catch-up rounds before each attempt until the drain under the lock is predicted to fit (§4.1) |
//! | `attempt.rs` | one attempt: the locks one relation at a time within one budget, blockers reported and killed, backoff with jitter (§4.2) |
//! | `budget.rs` | an attempt's limits: the lock budget for all its waits, the bound on its lock hold (§4.2) |
//! | `locked.rs` | under the lock: fingerprint and dependents re-checks, fence and drain, deferred keys, renames, COMMIT (§4.3, §4.4) |
//! | `after_commit.rs` | foreign-key validations and materialized view rebuilds (§4.4) |
//! | `record.rs` | the JSON cutover record (§4.5) |

mod after_commit;
mod attempt;
mod budget;
mod drain;
mod locked;
mod poolers;
mod postpone;
mod record;
mod rollback;
mod script;
mod snapshots;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio_postgres::Client;

use pglogrepl::lsn::Lsn;

use crate::phases::apply::Applier;
use crate::phases::capture::stream::Streamer;
use crate::phases::fence::Fencer;
use crate::plan::Plan;

pub use attempt::{backoff, blockers};
pub use rollback::{SWAPPED_OUT_MARK, snapshot_of_comment, write_rollback};
pub use script::{Script, index_names_in};
pub use snapshots::{Holder, holders};

/// Cutover settings.
#[derive(Debug, Clone)]
pub struct CutoverOptions {
    /// The lock budget of each attempt (`--lock-timeout`, ms; default 200 ms): all of the
    /// attempt's lock waits together (the table, its foreign-key children and referenced
    /// tables, its views and the tables they read) stay within it. The control socket's
    /// `lock-timeout=MS`, when set, takes precedence.
    pub lock_timeout: Duration,
    /// The longest an attempt holds its locks, from the first one granted to the commit or
    /// rollback (`--max-lock-hold`, ms; default 500 ms): past it the running statement is
    /// cancelled and the attempt rolled back and retried. The COMMIT itself, once sent, is
    /// not cut short.
    pub max_lock_hold: Duration,
    /// Attempts before giving up (`--cutover-retries`; exit 5 when they run out).
    pub retries: u32,
    /// Longest wait for the applier inside the lock before the attempt is rolled back
    /// (`--fence-timeout`, ms; default 1000 ms). Half of it is the catch-up target before an
    /// attempt.
    pub fence_timeout: Duration,
    /// Directory the rollback script and the cutover record are written to.
    pub rollback_dir: PathBuf,
    /// While this file exists the cutover waits, keeping the shadow caught up (gh-ost's
    /// `--postpone-cut-over-flag-file`).
    pub postpone_flag_file: Option<PathBuf>,
    /// Live settings from the control socket: `postpone` / `cut-over` and `lock-timeout`.
    pub controls: Option<Arc<crate::ops::control::Controls>>,
    /// The run's test hooks (pause point `cutover-locked`: renames done, not yet committed).
    pub(crate) probe: crate::testing::Probe,
    /// `--kill-blockers`: sessions seen blocking the lock for at least this long (the grace
    /// period, ms) are cancelled (`pg_cancel_backend`); one still blocking at a later attempt
    /// is terminated (`pg_terminate_backend`). `None` (the default) kills nobody.
    pub kill_blockers: Option<Duration>,
    /// Ctrl-C / SIGTERM / `abort` (exit 3): checked while the cutover is postponed, between
    /// attempts and while catching up before one (never inside the lock, where the
    /// transaction rolls back by itself on error).
    pub cancel: crate::cancel::Cancel,
    /// The throttle checker's samples: a critical condition (the panic flag file, ...) aborts
    /// a postponed cutover and stops further attempts (exit 7, or 3 for the panic flag
    /// file). `None`: not watched.
    pub throttle: Option<tokio::sync::watch::Receiver<crate::ops::throttle::ThrottleState>>,
    /// The run's progress: the cutover shows there what it waits for (postponed, a lock and
    /// who blocks it, the drain) and the rollback script's path. `None`: not shown.
    pub progress: Option<Arc<crate::ops::progress::Progress>>,
    /// With a revert window: the statement the cutover transaction also runs to mark the
    /// reverse stream (see `phases::revert`), so the reverse applier applies exactly what
    /// commits after it. `None`: no revert window.
    pub revert_marker: Option<String>,
    /// `--old-snapshot-timeout`: before each attempt, how long doppel waits for the sessions
    /// holding a snapshot older than the cutover to release it (docs/design.md §4.6); past
    /// it the attempt is postponed (exit 5 when the attempts run out) unless
    /// `kill_old_snapshots` is set. Default 60 s.
    pub old_snapshot_timeout: Duration,
    /// `--kill-old-snapshots` with its grace period (`--kill-blockers-grace`, ms): sessions
    /// still holding an old snapshot after `old_snapshot_timeout` are cancelled, then after
    /// the grace terminated. `None` (the default): nobody is killed, the attempt is postponed.
    pub kill_old_snapshots: Option<Duration>,
    /// `--pgbouncer-admin`: PgBouncer admin consoles that get `RECONNECT <database>` right
    /// after the cutover commits. Empty: none.
    pub pgbouncer_admin: Vec<crate::conninfo::ConnInfo>,
}

/// The default `--old-snapshot-timeout` (60 s).
pub const OLD_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Outcome of one cutover attempt, as logged and stored in the cutover record.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// 1-based attempt number.
    pub attempt: u32,
    /// `granted`, `lock timeout` (the attempt's locks were not all granted within its lock
    /// budget), `drain timeout` (the applier did not reach the fence within
    /// `--fence-timeout` under the lock), `lock hold limit` (`--max-lock-hold` was reached
    /// before COMMIT), `old snapshots` (sessions still held a snapshot older than the cutover
    /// after `--old-snapshot-timeout`, the lock was not requested) or `old snapshots under
    /// the lock` (a session that took its snapshot between the wait and the fence still held
    /// it when the lock budget ran out).
    pub outcome: String,
    /// Time spent before the lock request waiting for the sessions holding an older snapshot
    /// (ms; docs/design.md §4.6).
    pub old_snapshot_wait_ms: f64,
    /// The sessions whose old snapshot postponed this attempt (pids).
    pub old_snapshots: Vec<i32>,
    /// Time spent waiting for the locks (ms).
    pub lock_wait_ms: f64,
    /// Time the locks were held, from the first one granted to the commit or rollback (ms;
    /// 0 when none was granted).
    pub lock_held_ms: f64,
    /// Predicted drain under the lock (ms): the last catch-up round trip before locking.
    pub predicted_drain_ms: f64,
    /// Sessions `pg_blocking_pids` reported blocking this attempt's lock request.
    pub blockers: Vec<i32>,
}

/// What the cutover did.
#[derive(Debug, Clone)]
pub struct CutoverReport {
    /// Attempts made (1 = first try).
    pub attempts: u32,
    /// Locks held, from the first one granted to the commit.
    pub lock_held: Duration,
    /// Part of the hold spent waiting for the applier to reach the fence.
    pub fence_wait: Duration,
    /// The rollback script.
    pub rollback_path: PathBuf,
    /// After-commit steps that failed (what, server error): foreign keys re-added NOT VALID
    /// whose validation failed (named by the constraint), and materialized views not rebuilt
    /// on the new table (`materialized view "s"."mv"`; they still read the kept old table).
    pub unvalidated: Vec<(String, String)>,
    /// Every attempt, in order.
    pub history: Vec<Attempt>,
    /// Sessions cancelled or terminated by `--kill-blockers` (`cancelled pid ..: ..`) and
    /// by `--kill-old-snapshots` (`cancelled pid .. (old snapshot)`).
    pub killed: Vec<String>,
    /// The window that remains (docs/design.md §4.6): sessions queued on the cutover's lock
    /// that held a snapshot taken before the fence, with the number of changes the drain
    /// applied after the lock was requested. Empty when there was none.
    pub queued_old_snapshots: Vec<String>,
    /// Row changes the applier applied between the lock request and the fence under the
    /// lock: what a snapshot taken in that interval may miss (0: nothing).
    pub changes_in_window: u64,
    /// `--pgbouncer-admin`: `RECONNECT` sent to each PgBouncer after the commit, or why not.
    pub poolers: Vec<String>,
    /// Where the lock hold went, step by step: fingerprint re-check, dependents re-check,
    /// fence and drain, deferred keys re-check, renames and dependents, commit.
    pub inside_lock: Vec<(&'static str, Duration)>,
    /// The cutover record (JSON: attempts, lock hold, fence wait, killed sessions) written
    /// next to the rollback script after commit.
    pub record_path: PathBuf,
    /// The database the cutover ran in.
    pub database: String,
    /// End of the cutover transaction's commit record in the WAL: every later change to the
    /// table comes after it in the stream. `None` when the stream did not show it within
    /// `--fence-timeout` after the commit (logged).
    pub commit_lsn: Option<Lsn>,
    /// `pg_current_snapshot()` inside the cutover transaction (`xmin:xmax:xip,..`), also in
    /// the kept old table's comment: what the rollback script compares rows against.
    pub snapshot: String,
}

/// One cutover: what it swaps and with what it checks. Build it once the shadow is verified,
/// then call [`Cutover::run`].
pub struct Cutover<'a> {
    /// The plan being run.
    pub plan: &'a Plan,
    /// The swap and rollback SQL ([`Script::build`]).
    pub script: &'a Script,
    /// Emits the fences (before each attempt and under the lock).
    pub fencer: &'a Fencer,
    /// The applier that must reach each fence.
    pub applier: &'a Applier,
    /// The stream feeding the applier, checked while the cutover is postponed: a held
    /// (throttled) applier reads nothing, so it cannot notice that the stream stopped.
    /// `None`: only the applier is checked.
    pub stream: Option<&'a Streamer>,
    /// Keys verification deferred (original key values as text); re-checked under the lock.
    pub unsettled: &'a [Vec<Option<String>>],
    /// The leaf partition (`schema.name`) verification deferred each of `unsettled` from, in
    /// the same order; empty for a plain table. A failed re-check names them.
    pub unsettled_in: &'a [String],
    /// The original's catalog fingerprint taken when the shadow was built.
    pub fingerprint: &'a str,
    /// Settings.
    pub options: CutoverOptions,
    /// A revert (the swap back during the revert window) rather than the cutover: no rollback
    /// script is written and nothing is marked; the record is named `doppel-revert-..`.
    pub revert: bool,
    /// Checked under the lock once the applier has drained (a revert refuses there when a
    /// change could not be written back): an error rolls the attempt back and ends the
    /// cutover with it.
    pub after_drain: Option<&'a (dyn Fn() -> Result<()> + Sync)>,
    /// Row changes received from the stream so far (the write rate the catch-up before each
    /// attempt compares with the applier's). `None`: unknown, the catch-up never gives up.
    pub changes_received: Option<&'a (dyn Fn() -> u64 + Sync)>,
}

impl Cutover<'_> {
    /// Shows `what` the cutover waits for in the run's progress (`None`: nothing).
    fn show_wait(&self, what: Option<crate::model::phase::Wait>) {
        if let Some(progress) = &self.options.progress {
            progress.wait(what);
        }
    }

    /// Runs the cutover on `client` (the connection that takes the lock), with `monitor` (a
    /// second session) watching who blocks the lock request: writes the rollback script,
    /// waits while postponed, logs the sessions that could block, then makes attempts until
    /// one commits; after the commit runs the after-commit steps and writes the cutover
    /// record.
    ///
    /// Errors (the transaction is rolled back and the original is untouched, the rollback
    /// script removed):
    /// - exit 5: every attempt timed out on its lock budget (`--lock-timeout`), on the drain
    ///   under it (`--fence-timeout`) or on the hold limit (`--max-lock-hold`), or the catch-up
    ///   before the attempts found the write rate above the apply rate;
    /// - exit 8: DDL changed the original, or its dependents changed;
    /// - exit 6: a deferred key still differs under the lock;
    /// - exit 3: Ctrl-C, SIGTERM, `abort` or the panic flag file, while postponed or between
    ///   attempts; exit 7: a critical threshold then;
    /// - the applier's class if it failed; exit 1 when a statement failed, or when COMMIT
    ///   itself failed (outcome unknown: the rollback script is kept and the message says to
    ///   check).
    pub async fn run(&self, client: &mut Client, monitor: &Client) -> Result<CutoverReport> {
        // Removes the script on every way out before the COMMIT is sent: nothing was cut over.
        let mut rollback = if self.revert {
            rollback::RollbackFile::unwritten(&self.options.rollback_dir, self.plan, "revert")
        } else {
            rollback::RollbackFile::write(&self.options.rollback_dir, self.plan, self.script)?
        };
        if let Some(progress) = &self.options.progress
            && !self.revert
        {
            let path = std::path::absolute(rollback.path())
                .unwrap_or_else(|_| rollback.path().to_path_buf());
            progress.update(|s| s.rollback_script = Some(path));
        }
        let database: String = client
            .query_one("SELECT current_database()::text", &[])
            .await?
            .get(0);
        let result = self
            .attempts(client, monitor, &mut rollback, database)
            .await;
        self.show_wait(None);
        if result.is_err()
            && !self.revert
            && let Some(progress) = &self.options.progress
        {
            // Nothing was cut over: the script is removed.
            progress.update(|s| s.rollback_script = None);
        }
        result
    }

    /// Waits while postponed, then makes attempts until one commits; after the commit runs
    /// the after-commit steps and writes the cutover record. See [`Cutover::run`].
    async fn attempts(
        &self,
        client: &mut Client,
        monitor: &Client,
        rollback: &mut rollback::RollbackFile,
        database: String,
    ) -> Result<CutoverReport> {
        self.wait_while_postponed().await?;
        for (_, who) in blockers(client, self.plan.original.oid).await? {
            tracing::warn!("before cutover: {who}");
        }
        let mut attempts = attempt::Attempts::start(client, self.options.kill_blockers).await?;
        let committed = loop {
            if let Some(committed) = self
                .attempt(client, monitor, &mut attempts, rollback)
                .await?
            {
                break committed;
            }
        };
        if !self.revert {
            crate::testing::pause_point!(
                self.options.probe,
                "committed",
                self.plan.original.qualified()
            );
        }
        let poolers = poolers::reconnect(&self.options.pgbouncer_admin, &database).await;
        let commit_lsn = match self.revert {
            false => self.commit_lsn(committed.fence).await,
            true => None,
        };
        let unvalidated = self.after_commit(client).await;
        let rollback_path = rollback.path().to_path_buf();
        let mut report = CutoverReport {
            attempts: attempts.made,
            lock_held: committed.lock_held,
            fence_wait: committed.fence_wait,
            record_path: rollback_path.with_extension("json"),
            rollback_path,
            unvalidated,
            history: attempts.history,
            killed: attempts.killer.killed,
            inside_lock: committed.inside,
            queued_old_snapshots: committed.queued.iter().map(|h| h.describe()).collect(),
            changes_in_window: committed.changes_in_window,
            poolers,
            database,
            commit_lsn,
            snapshot: committed.snapshot,
        };
        match record::write(self.plan, &report) {
            Ok(path) => report.record_path = path,
            Err(e) => tracing::warn!("could not store the cutover record: {e:#}"),
        }
        Ok(report)
    }

    /// The cutover's commit LSN: where the applier stood once it applied the fence the
    /// cutover transaction carried (nothing else can commit on the original in between: it
    /// was locked, then renamed). `None`, logged, if that takes longer than `--fence-timeout`.
    async fn commit_lsn(&self, fence: u64) -> Option<Lsn> {
        match self
            .applier
            .wait_fence(fence, self.options.fence_timeout)
            .await
        {
            Ok(()) => Some(self.applier.status().applied),
            Err(e) => {
                tracing::warn!("the cutover committed; its commit LSN is unknown ({e:#})");
                None
            }
        }
    }

    /// Fails when the throttle checker saw a critical condition: exit 7 for a critical
    /// threshold, 3 for the panic flag file.
    fn critical(&self) -> Result<()> {
        match self
            .options
            .throttle
            .as_ref()
            .and_then(|rx| rx.borrow().critical_error())
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
