//! One cutover attempt (docs/design.md §4.2, step 2: take the lock, briefly): the re-checks
//! prepared, the catch-up, `BEGIN; SET LOCAL lock_timeout`, the dependents' locks and `LOCK
//! TABLE .. IN ACCESS EXCLUSIVE MODE` while a monitor session watches who blocks the request;
//! then either the steps under the lock, or, after a timeout, the blockers reported (and
//! killed with `--kill-blockers`) and a backoff with jitter before the next attempt.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_postgres::{Client, Transaction};

use super::budget::Budget;
use super::locked::{Committed, Inside, Locked, Rechecks, RolledBack};
use super::rollback::RollbackFile;
use super::snapshots::{Holder, Waited};
use super::{Attempt, Cutover};
use crate::failure::{FailureKind, fail};
use crate::model::phase::{Blocker, Wait};
use crate::ops::progress::AttemptEvent;

/// How often the monitor session asks `pg_blocking_pids` who blocks the lock request (ms).
const WATCH_INTERVAL: Duration = Duration::from_millis(10);

/// Sessions that hold a lock on `table_oid` or have a transaction open longer than 10 s: the
/// ones that can make the cutover's lock wait. `(pid, description)`, oldest transaction
/// first; doppel's own sessions are left out.
///
/// Errors: the query failed (exit 1).
pub async fn blockers(client: &Client, table_oid: u32) -> Result<Vec<(i32, String)>> {
    let rows = client
        .query(
            "SELECT a.pid, format('pid %s (%s, %s, transaction open %s s%s): %s', a.pid,
                           coalesce(a.usename::text, '?'), a.state,
                           coalesce(extract(epoch FROM now() - a.xact_start)::bigint, 0),
                           CASE WHEN l.mode IS NOT NULL THEN ', holds ' || l.mode ELSE '' END,
                           left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 60))
             FROM pg_stat_activity a
             LEFT JOIN LATERAL (SELECT string_agg(mode, '+') AS mode FROM pg_locks
                                WHERE pid = a.pid AND relation = $1 AND granted) l ON true
             WHERE a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
               AND (l.mode IS NOT NULL OR a.xact_start < now() - interval '10 seconds')
               AND a.application_name NOT LIKE 'doppel%'
             ORDER BY a.xact_start",
            &[&table_oid],
        )
        .await
        .context("listing sessions that could block the cutover")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Backoff before attempt `attempt + 1` after attempt `attempt` (1-based) timed out:
/// 100 ms × 2^(attempt-1), capped at 10 s, with ±50% jitter (so between 50 ms and 15 s).
pub fn backoff(attempt: u32) -> Duration {
    let base = 100u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(7))
        .min(10_000);
    let jitter = rand::random::<u64>() % (base + 1);
    Duration::from_millis(base / 2 + jitter)
}

/// The attempts of one cutover so far.
pub(super) struct Attempts {
    /// The cutover connection's backend pid, whose lock request the monitor watches.
    pid: i32,
    /// Attempts started (the current one's number).
    pub(super) made: u32,
    /// Every finished attempt, in order.
    pub(super) history: Vec<Attempt>,
    /// `--kill-blockers`.
    pub(super) killer: BlockerKiller,
}

impl Attempts {
    /// No attempt yet; reads the cutover connection's pid.
    ///
    /// Errors: the query failed (exit 1).
    pub(super) async fn start(client: &Client, kill_blockers: Option<Duration>) -> Result<Self> {
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        Ok(Attempts {
            pid,
            made: 0,
            history: Vec::new(),
            killer: BlockerKiller::new(kill_blockers),
        })
    }
}

/// Why an attempt's lock requests did not all succeed.
enum NotLocked {
    /// The budget ran out: a request timed out, or nothing was left for the next one.
    TimedOut,
    /// A request failed otherwise.
    Failed(tokio_postgres::Error),
}

/// What one attempt measured before its outcome is known.
struct Tried {
    /// 1-based.
    attempt: u32,
    /// Time spent waiting for the locks.
    lock_wait: Duration,
    /// The drain predicted before locking.
    predicted: Duration,
    /// From the first lock granted to the rollback (zero when none was granted).
    held: Duration,
    /// The wait for older snapshots before the lock request.
    old_wait: Duration,
}

impl Tried {
    /// The attempt as recorded, with its `outcome` and the pids seen `blocking` it.
    fn record(&self, outcome: &str, blocking: Vec<i32>) -> Attempt {
        self.record_old(outcome, blocking, Vec::new())
    }

    /// The attempt as recorded, postponed by the sessions `old` holding an older snapshot.
    fn record_old(&self, outcome: &str, blocking: Vec<i32>, old: Vec<i32>) -> Attempt {
        Attempt {
            attempt: self.attempt,
            outcome: outcome.to_string(),
            lock_wait_ms: self.lock_wait.as_secs_f64() * 1000.0,
            predicted_drain_ms: self.predicted.as_secs_f64() * 1000.0,
            lock_held_ms: self.held.as_secs_f64() * 1000.0,
            blockers: blocking,
            old_snapshot_wait_ms: self.old_wait.as_secs_f64() * 1000.0,
            old_snapshots: old,
        }
    }
}

impl Cutover<'_> {
    /// One attempt (docs/design.md §4.1–§4.4). Returns the committed cutover, or `None`
    /// when the attempt timed out on a lock, on the drain under the lock or on the lock
    /// hold's limit, was rolled back, and the backoff before the next one has been slept.
    ///
    /// Errors: the last of `--cutover-retries` attempts timed out (exit 5; the original is
    /// untouched), the catch-up or the steps under the lock failed (see
    /// [`Cutover::drain_before_attempt`], [`Cutover::inside_the_lock`]: exit 3, 5, 6, 7 or
    /// 8), a lock request failed other than by timeout (exit 1).
    pub(super) async fn attempt(
        &self,
        client: &mut Client,
        monitor: &Client,
        attempts: &mut Attempts,
        rollback: &mut RollbackFile,
    ) -> Result<Option<Committed>> {
        attempts.made += 1;
        let attempt = attempts.made;
        let mut budget = Budget::new(self.lock_timeout(), self.options.max_lock_hold);
        // The re-checks run under the lock, parsed and planned now (on this connection, each
        // attempt): under the lock only their execution remains. Reading the views'
        // definitions locks the tables they read, so it waits at most the lock timeout.
        let Some(rechecks) = self.prepare_rechecks(client, budget.wait).await? else {
            let tried = Tried {
                attempt,
                lock_wait: budget.wait,
                predicted: Duration::ZERO,
                held: Duration::ZERO,
                old_wait: Duration::ZERO,
            };
            self.record(attempts, tried.record("lock timeout", Vec::new()));
            self.lock_timed_out(client, attempts, &tried, &[]).await?;
            return Ok(None);
        };
        // Wait for the transactions whose snapshot the new table could not satisfy (§4.6).
        let old_started = Instant::now();
        let waited = self
            .wait_old_snapshots(client, &mut attempts.killer.killed)
            .await?;
        let old_wait = old_started.elapsed();
        if let Waited::TimedOut(held) = waited {
            let tried = Tried {
                attempt,
                lock_wait: Duration::ZERO,
                predicted: Duration::ZERO,
                held: Duration::ZERO,
                old_wait,
            };
            let pids = held.iter().map(|h| h.pid).collect();
            self.record(
                attempts,
                tried.record_old("old snapshots", Vec::new(), pids),
            );
            return self.postpone_for_old_snapshots(attempt, &held).await;
        }
        // Catch up outside the lock first, so the drain inside it is only the last moments;
        // attempt only when that drain is predicted to fit the budget.
        let predicted = self.drain_before_attempt().await?;
        crate::testing::pause_point!(
            self.options.probe,
            "cutover-attempt",
            self.plan.original.qualified()
        );

        let tx = client.transaction().await?;
        let changes_before = self.applier.status().changes;
        let (locked, blocking) = self
            .request_locks(&tx, monitor, attempts.pid, &mut budget)
            .await;
        let mut tried = Tried {
            attempt,
            lock_wait: budget.waited,
            predicted,
            held: Duration::ZERO,
            old_wait,
        };
        if let Err(not_locked) = locked {
            tx.rollback().await.ok();
            tried.held = budget.first_lock.map(|f| f.elapsed()).unwrap_or_default();
            if let NotLocked::Failed(e) = not_locked {
                return Err(anyhow::Error::new(e).context("locking the table for cutover"));
            }
            self.record(attempts, tried.record("lock timeout", blocking.clone()));
            self.lock_timed_out(client, attempts, &tried, &blocking)
                .await?;
            return Ok(None);
        }
        let locked = Locked {
            monitor,
            lock_pid: attempts.pid,
            changes_before,
            budget: &budget,
        };
        match self
            .inside_the_lock(tx, &rechecks, rollback, &locked)
            .await?
        {
            Inside::Committed(committed) => {
                tried.held = committed.lock_held;
                self.record(attempts, tried.record("granted", Vec::new()));
                committed.log(attempt);
                Ok(Some(committed))
            }
            Inside::RolledBack { why, held } => {
                tried.held = held;
                let old = match &why {
                    RolledBack::OldSnapshots(holders) => holders.iter().map(|h| h.pid).collect(),
                    _ => Vec::new(),
                };
                self.record(attempts, tried.record_old(why.outcome(), Vec::new(), old));
                tracing::warn!(
                    attempt,
                    held_ms = held.as_millis() as u64,
                    "{}; rolled back",
                    why.describe(self)
                );
                if attempt >= self.options.retries {
                    return Err(self.budget_exhausted(attempt, &why));
                }
                tokio::time::sleep(backoff(attempt)).await;
                Ok(None)
            }
        }
    }

    /// After an attempt postponed because the sessions `held` still hold a snapshot older
    /// than the cutover: logs them, then sleeps the backoff (the next attempt waits for them
    /// again, without the lock).
    ///
    /// Errors: that was the last of `--cutover-retries` attempts (exit 5, naming them).
    async fn postpone_for_old_snapshots(
        &self,
        attempt: u32,
        held: &[Holder],
    ) -> Result<Option<Committed>> {
        tracing::warn!(
            attempt,
            "cutover postponed: {} session(s) still hold a snapshot older than the cutover (after --old-snapshot-timeout {}); a transaction holding one would read the new table incompletely: {}",
            held.len(),
            humantime::format_duration(self.options.old_snapshot_timeout),
            held.iter()
                .map(Holder::describe)
                .collect::<Vec<_>>()
                .join("; ")
        );
        if attempt >= self.options.retries {
            return Err(self.old_snapshots_exhausted(held));
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff(attempt)) => {}
            _ = self.options.cancel.cancelled() => {}
        }
        self.options.cancel.check()?;
        Ok(None)
    }

    /// Records a finished attempt, and tells the run's progress (the metrics).
    fn record(&self, attempts: &mut Attempts, attempt: Attempt) {
        if let Some(progress) = &self.options.progress {
            progress.cutover_attempt(&AttemptEvent {
                outcome: attempt.outcome.clone(),
                lock_wait: Duration::from_secs_f64(attempt.lock_wait_ms / 1000.0),
                lock_held: Duration::from_secs_f64(attempt.lock_held_ms / 1000.0),
                blockers: attempt.blockers.len(),
            });
        }
        attempts.history.push(attempt);
    }

    /// The attempt's lock timeout: the live value from the control socket
    /// (`lock-timeout=MS`) if any, else `--lock-timeout` (ms, at least 1).
    fn lock_timeout(&self) -> Duration {
        let options = &self.options;
        options
            .controls
            .as_ref()
            .map(|c| c.lock_timeout())
            .unwrap_or(options.lock_timeout)
            .max(Duration::from_millis(1))
    }

    /// Prepares the re-checks on `client` with `lock_timeout` set to `wait` (the session's
    /// own value is put back). `None` when a lock they need was not granted in time.
    ///
    /// Errors: a statement could not be prepared or the setting not restored (exit 1).
    async fn prepare_rechecks(&self, client: &Client, wait: Duration) -> Result<Option<Rechecks>> {
        let saved: String = client
            .query_one("SELECT current_setting('lock_timeout')", &[])
            .await?
            .get(0);
        client
            .batch_execute(&format!(
                "SET lock_timeout = '{}ms'",
                wait.as_millis().max(1)
            ))
            .await?;
        let prepared = Rechecks::prepare(client, self.plan).await;
        client
            .execute("SELECT set_config('lock_timeout', $1, false)", &[&saved])
            .await
            .context("restoring lock_timeout")?;
        match prepared {
            Ok(rechecks) => Ok(Some(rechecks)),
            Err(e) if super::locked::is_lock_timeout(&e) => {
                tracing::warn!(
                    "reading the dependents' definitions before the attempt waited {} ms for a lock (a session holds one on a table a dependent view reads)",
                    wait.as_millis()
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Takes the attempt's locks ([`Script::locks`](super::Script), the table's among them)
    /// one statement at a time on `tx`, each with what is left of `budget` as its
    /// `lock_timeout`, while `monitor` polls `pg_blocking_pids(pid)` every 10 ms. Returns the
    /// outcome with the pids seen blocking the requests; `budget` holds the time waited and
    /// when the first lock was granted.
    async fn request_locks(
        &self,
        tx: &Transaction<'_>,
        monitor: &Client,
        pid: i32,
        budget: &mut Budget,
    ) -> (std::result::Result<(), NotLocked>, Vec<i32>) {
        let blocking = std::sync::Mutex::new(Vec::<i32>::new());
        self.show_wait(Some(Wait::Lock(Vec::new())));
        // Watch who blocks the requests while they wait (pg_blocking_pids, every 10 ms), and
        // show them.
        let watch = async {
            let mut shown: Vec<Blocker> = Vec::new();
            loop {
                let now = blockers_of(monitor, pid).await;
                if let Ok(mut b) = blocking.lock() {
                    for blocker in &now {
                        if !b.contains(&blocker.pid) {
                            b.push(blocker.pid);
                        }
                    }
                }
                if now != shown {
                    self.show_wait(Some(Wait::Lock(now.clone())));
                    shown = now;
                }
                tokio::time::sleep(WATCH_INTERVAL).await;
            }
        };
        let locks = async {
            for statement in &self.script.locks {
                let left = budget.next_timeout(Instant::now());
                if left < Duration::from_millis(1) {
                    return Err(NotLocked::TimedOut);
                }
                let asked = Instant::now();
                let result = tx
                    .batch_execute(&format!(
                        "SET LOCAL lock_timeout = '{}ms'; {statement}",
                        left.as_millis()
                    ))
                    .await;
                budget.waited += asked.elapsed();
                match result {
                    Ok(()) => {
                        budget.first_lock.get_or_insert_with(Instant::now);
                    }
                    Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == "55P03") => {
                        return Err(NotLocked::TimedOut);
                    }
                    Err(e) => return Err(NotLocked::Failed(e)),
                }
            }
            Ok(())
        };
        let result = tokio::select! {
            r = locks => r,
            never = watch => never,
        };
        self.show_wait(None);
        (result, blocking.into_inner().unwrap_or_default())
    }

    /// After an attempt timed out on a lock (rolled back): logs the likely blockers, lets
    /// `--kill-blockers` act on the pids seen `blocking`, then sleeps the backoff.
    ///
    /// Errors: that was the last of `--cutover-retries` attempts (exit 5).
    async fn lock_timed_out(
        &self,
        client: &Client,
        attempts: &mut Attempts,
        tried: &Tried,
        blocking: &[i32],
    ) -> Result<()> {
        let attempt = tried.attempt;
        let who: Vec<String> = blockers(client, self.plan.original.oid)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(_, w)| w)
            .collect();
        tracing::warn!(
            attempt,
            waited_ms = tried.lock_wait.as_millis() as u64,
            blocking_pids = ?blocking,
            "cutover locks not granted within the attempt's lock budget (lock_timeout {} ms for all its locks together); rolled back. Possible blockers: {}",
            self.lock_timeout().as_millis(),
            if who.is_empty() {
                "none visible".to_string()
            } else {
                who.join("; ")
            }
        );
        attempts.killer.act(client, blocking).await;
        if attempt >= self.options.retries {
            return Err(self.lock_budget_exhausted(attempt));
        }
        tokio::time::sleep(backoff(attempt)).await;
        Ok(())
    }

    /// Every attempt timed out on the lock (exit 5).
    fn lock_budget_exhausted(&self, attempts: u32) -> anyhow::Error {
        fail(
            FailureKind::LockBudget,
            format!(
                "cutover failed: the locks on {} and its dependents were not granted within {} ms (one lock budget per attempt) in {} attempts (long transactions or heavy lock traffic on the table); the original table is untouched. Retry later, raise --lock-timeout / --cutover-retries, or end the blocking sessions (--kill-blockers does it after a grace period)",
                self.plan.original.qualified(),
                self.lock_timeout().as_millis(),
                attempts
            ),
        )
    }

    /// The last attempt was rolled back under the lock (exit 5): `why` says on what.
    fn budget_exhausted(&self, attempts: u32, why: &RolledBack) -> anyhow::Error {
        match why {
            RolledBack::LockTimeout => self.lock_budget_exhausted(attempts),
            RolledBack::OldSnapshots(held) => self.old_snapshots_exhausted(held),
            _ => fail(
                FailureKind::LockBudget,
                format!(
                    "cutover failed after {attempts} attempts: {}; the original table is untouched",
                    why.describe(self)
                ),
            ),
        }
    }
}

/// Sessions blocking backend `pid`'s lock request (`pg_blocking_pids`), with their role,
/// state and transaction age; empty on error.
async fn blockers_of(monitor: &Client, pid: i32) -> Vec<Blocker> {
    let rows = monitor
        .query(
            "SELECT b.pid, coalesce(a.usename::text, '?'), coalesce(a.state, '?'),
                    coalesce(extract(epoch FROM now() - coalesce(a.xact_start, a.backend_start)), 0)::float8
             FROM unnest(pg_blocking_pids($1)) AS b(pid)
             LEFT JOIN pg_stat_activity a ON a.pid = b.pid
             ORDER BY b.pid",
            &[&pid],
        )
        .await;
    match rows {
        Ok(rows) => rows
            .iter()
            .map(|r| Blocker {
                pid: r.get(0),
                user: r.get(1),
                state: r.get(2),
                age: Duration::from_secs_f64(r.get::<_, f64>(3).max(0.0)),
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// `--kill-blockers`: cancels, then terminates, the sessions that block the cutover lock.
pub(super) struct BlockerKiller {
    /// `--kill-blockers-grace`; `None`: kill nobody.
    grace: Option<Duration>,
    /// When each pid was first seen blocking.
    first_seen: HashMap<i32, Instant>,
    /// Pids cancelled so far (terminated if seen blocking again).
    cancelled: HashSet<i32>,
    /// What was done (`cancelled pid ..: ..`, `terminated pid ..: ..`), for the report.
    pub(super) killed: Vec<String>,
}

impl BlockerKiller {
    fn new(grace: Option<Duration>) -> BlockerKiller {
        BlockerKiller {
            grace,
            first_seen: Default::default(),
            cancelled: Default::default(),
            killed: Vec::new(),
        }
    }

    /// After a timed-out attempt: `blocking` are the pids `pg_blocking_pids` reported. A pid
    /// blocking for at least the grace period is cancelled; one already cancelled that still
    /// blocks is terminated. Sessions of doppel itself are never touched.
    async fn act(&mut self, client: &Client, blocking: &[i32]) {
        let Some(grace) = self.grace else { return };
        let now = Instant::now();
        for &pid in blocking {
            let since = *self.first_seen.entry(pid).or_insert(now);
            let (function, verb) = if self.cancelled.contains(&pid) {
                ("pg_terminate_backend", "terminated")
            } else if now.duration_since(since) >= grace {
                ("pg_cancel_backend", "cancelled")
            } else {
                continue;
            };
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {function}(pid), format('pid %s (%s, %s): %s', pid, coalesce(usename::text, '?'), state,
                                left(regexp_replace(coalesce(query, ''), '\\s+', ' ', 'g'), 60))
                         FROM pg_stat_activity
                         WHERE pid = $1 AND application_name NOT LIKE 'doppel%'"
                    ),
                    &[&pid],
                )
                .await;
            match row {
                Ok(Some(r)) if r.get::<_, bool>(0) => {
                    let who: String = r.get(1);
                    tracing::warn!("--kill-blockers: {verb} {who}");
                    self.killed.push(format!("{verb} {who}"));
                    self.cancelled.insert(pid);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("--kill-blockers: could not signal pid {pid}: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..20 {
            let d = backoff(attempt);
            assert!(d <= Duration::from_millis(15_000), "{d:?}");
        }
        assert!(backoff(1) <= Duration::from_millis(150));
        assert!(backoff(5) >= Duration::from_millis(800));
    }
}
