//! Old snapshots (docs/design.md §4.6): the sessions whose snapshot is older than the fence
//! and could still read the table after the swap. The new table's rows were written by
//! doppel's own transactions (the copy's chunks, the applier's batches); a snapshot taken
//! before the fence under the cutover lock does not see all of them, so a transaction holding
//! one that reads the table after the swap would see a partly filled or stale new table.
//!
//! Two checks, as `CREATE INDEX CONCURRENTLY` waits for older transactions (each session is
//! identified by its virtual transaction id, from `pg_locks`, and the `backend_xmin` of its
//! oldest snapshot, from `pg_stat_activity`):
//!
//! 1. before each attempt, without any lock: every session of the database holding a
//!    snapshot now is waited for until its transaction ends or its oldest snapshot is
//!    released, within `--old-snapshot-timeout`; past it the attempt is postponed (or, with
//!    `--kill-old-snapshots`, those sessions are cancelled, then terminated);
//! 2. under the lock, once the drain reached the fence: sessions holding a snapshot taken
//!    since the first check (the window) are waited for within what is left of
//!    `--fence-timeout`, else the attempt rolls back and the next one waits for them without
//!    the lock. Sessions queued on the cutover's own lock are left out (waiting for them
//!    would deadlock) and counted: the window that remains.
//!
//! doppel's own sessions are left out by their backend pids (`conninfo::own_backend_pids`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_postgres::Client;

use super::Cutover;
use crate::failure::{FailureKind, fail};

/// How often the first check looks again while it waits (ms).
const POLL: Duration = Duration::from_millis(20);
/// How often the check under the lock looks again (ms).
const POLL_LOCKED: Duration = Duration::from_millis(2);
/// How long a terminated session may take to go away before the attempt gives up on it.
const TERMINATE_WAIT: Duration = Duration::from_secs(10);

/// The sessions of the current database (other than doppel's and the querying one) that hold
/// a snapshot: client backends and background workers, not autovacuum, WAL senders or
/// parallel workers (whose leader holds the same snapshot). Sessions holding a lock on the
/// table are left out: they block the cutover's lock until their transaction ends, which the
/// lock attempts (`--lock-timeout`, `--kill-blockers`) handle. `$1`: doppel's own pids; `$2`:
/// the cutover session's pid, to tell the sessions queued on its lock (NULL: none asked);
/// `$3`: the table's OID. The last column compares `backend_xmin` with the `xmax` of the
/// query's own snapshot.
const HOLDERS_SQL: &str = "
SELECT a.pid, l.virtualxid, a.backend_xmin::text,
       coalesce(a.usename::text, '?'), coalesce(a.state, '?'),
       coalesce(extract(epoch FROM clock_timestamp() - a.xact_start), 0)::float8,
       left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 80),
       CASE WHEN $2::int IS NULL THEN false ELSE $2::int = ANY (pg_blocking_pids(a.pid)) END,
       age(a.backend_xmin) > age(h.horizon)
FROM pg_stat_activity a
CROSS JOIN (SELECT (pg_snapshot_xmax(pg_current_snapshot())::text::numeric % 4294967296)::text::xid
            AS horizon) h
JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'virtualxid' AND l.granted
               AND l.virtualxid = l.virtualtransaction
WHERE a.datname = current_database()
  AND a.backend_xmin IS NOT NULL
  AND a.pid <> pg_backend_pid()
  AND NOT (a.pid = ANY ($1::int[]))
  AND a.backend_type NOT IN ('autovacuum worker', 'walsender', 'parallel worker')
  AND NOT EXISTS (SELECT 1 FROM pg_locks tl
                  WHERE tl.pid = a.pid AND tl.locktype = 'relation' AND tl.relation = $3::oid
                    AND tl.granted)
ORDER BY a.xact_start, a.pid";

/// A session holding a snapshot, as seen at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    /// Backend pid.
    pub pid: i32,
    /// Its virtual transaction id (`backend/local`): the transaction holding the snapshot.
    pub vxid: String,
    /// `backend_xmin`: the xmin of its oldest snapshot.
    pub xmin: String,
    /// Role name.
    pub user: String,
    /// `pg_stat_activity.state` (`active`, `idle in transaction`, ...).
    pub state: String,
    /// How long its transaction has been open (s).
    pub age_s: f64,
    /// Its current or last statement, whitespace folded, at most 80 characters.
    pub query: String,
    /// Waiting for a lock the cutover session holds or requests.
    pub queued: bool,
    /// Its `backend_xmin` precedes the `xmax` of the snapshot of the query that listed it:
    /// its snapshot may not see a transaction that had completed when the list was taken
    /// (false: it certainly sees all of them).
    pub before_horizon: bool,
}

impl Holder {
    /// `pid 123 (alice, idle in transaction, transaction open 35 s): SELECT ..`.
    pub fn describe(&self) -> String {
        format!(
            "pid {} ({}, {}, transaction open {:.0} s): {}",
            self.pid, self.user, self.state, self.age_s, self.query
        )
    }

    /// Whether `other` is the same session still in the same transaction holding the same
    /// oldest snapshot. A changed `backend_xmin` means the snapshot seen first was released
    /// (a READ COMMITTED session between statements); an equal one is taken as the same
    /// snapshot, which can only make the wait longer, never shorter.
    fn same_snapshot(&self, other: &Holder) -> bool {
        self.pid == other.pid && self.vxid == other.vxid && self.xmin == other.xmin
    }
}

/// The sessions holding a snapshot now (see [`HOLDERS_SQL`]), oldest transaction first.
/// `lock_pid`: the cutover session, whose lock queue marks [`Holder::queued`]; `table_oid`:
/// the table whose lock holders are left out.
///
/// Errors: the query failed (exit 1).
pub async fn holders(
    client: &Client,
    lock_pid: Option<i32>,
    table_oid: u32,
) -> Result<Vec<Holder>> {
    let own = crate::conninfo::own_backend_pids();
    let rows = client
        .query(HOLDERS_SQL, &[&own, &lock_pid, &table_oid])
        .await
        .context("listing the sessions that hold a snapshot")?;
    Ok(rows
        .iter()
        .map(|r| Holder {
            pid: r.get(0),
            vxid: r.get(1),
            xmin: r.get(2),
            user: r.get(3),
            state: r.get(4),
            age_s: r.get(5),
            query: r.get(6),
            queued: r.get(7),
            before_horizon: r.get(8),
        })
        .collect())
}

/// Of the sessions `seen` first, those that still hold that snapshot in `now` (with their
/// current state and age).
pub fn still_held(seen: &[Holder], now: &[Holder]) -> Vec<Holder> {
    now.iter()
        .filter(|n| seen.iter().any(|s| s.same_snapshot(n)))
        .cloned()
        .collect()
}

/// How the wait before an attempt ended.
pub(super) enum Waited {
    /// No older snapshot is held any more.
    Cleared,
    /// These sessions still hold theirs after `--old-snapshot-timeout` (and, with
    /// `--kill-old-snapshots`, after being cancelled and terminated).
    TimedOut(Vec<Holder>),
}

/// How the check under the lock ended.
pub(super) enum Rechecked {
    /// No session outside the lock queue holds a snapshot taken before the fence. The ones
    /// queued on the lock with such a snapshot are listed: the window that remains.
    Clear {
        /// Sessions queued on the cutover's lock holding a snapshot taken before the fence.
        queued: Vec<Holder>,
    },
    /// These sessions took a snapshot before the fence and still hold it.
    Held(Vec<Holder>),
}

impl Cutover<'_> {
    /// Before an attempt (docs/design.md §4.6): waits until no session of the database
    /// holds a snapshot that it held when the wait began, within `--old-snapshot-timeout`,
    /// naming them in the log and the status. With `--kill-old-snapshots` the ones left then
    /// are cancelled and, after `--kill-blockers-grace`, terminated.
    ///
    /// Errors: Ctrl-C / SIGTERM / `abort` (exit 3), a critical throttle condition (exit 7,
    /// or 3), the applier failed (its class), a query failed (exit 1).
    pub(super) async fn wait_old_snapshots(
        &self,
        client: &Client,
        killed: &mut Vec<String>,
    ) -> Result<Waited> {
        let seen = holders(client, None, self.plan.original.oid).await?;
        if seen.is_empty() {
            return Ok(Waited::Cleared);
        }
        let held = self
            .wait_released(client, &seen, self.options.old_snapshot_timeout)
            .await?;
        if held.is_empty() {
            return Ok(Waited::Cleared);
        }
        let Some(grace) = self.options.kill_old_snapshots else {
            return Ok(Waited::TimedOut(held));
        };
        signal(client, &held, "pg_cancel_backend", "cancelled", killed).await;
        let held = self.wait_released(client, &held, grace).await?;
        if held.is_empty() {
            return Ok(Waited::Cleared);
        }
        signal(client, &held, "pg_terminate_backend", "terminated", killed).await;
        let held = self.wait_released(client, &held, TERMINATE_WAIT).await?;
        match held.is_empty() {
            true => Ok(Waited::Cleared),
            false => Ok(Waited::TimedOut(held)),
        }
    }

    /// Polls until none of `seen` holds its snapshot any more, or `limit` passes; returns
    /// those still holding it. Logs and shows them in the status while it waits.
    async fn wait_released(
        &self,
        client: &Client,
        seen: &[Holder],
        limit: Duration,
    ) -> Result<Vec<Holder>> {
        let deadline = Instant::now() + limit;
        let mut shown: Vec<i32> = Vec::new();
        loop {
            self.options.cancel.check()?;
            self.critical()?;
            self.applier.check()?;
            let held = still_held(seen, &holders(client, None, self.plan.original.oid).await?);
            let pids: Vec<i32> = held.iter().map(|h| h.pid).collect();
            if pids != shown {
                self.show_waiting(&held);
                if !pids.is_empty() {
                    crate::testing::pause_point!(
                        self.options.probe,
                        "old-snapshots",
                        format!("{pids:?}")
                    );
                }
                shown = pids;
            }
            if held.is_empty() || Instant::now() >= deadline {
                self.show_waiting(&[]);
                return Ok(held);
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = self.options.cancel.cancelled() => {}
            }
        }
    }

    /// Logs the sessions the cutover waits for and shows them as the run's wait in the
    /// status (nothing: the wait is over).
    fn show_waiting(&self, held: &[Holder]) {
        if held.is_empty() {
            self.show_wait(None);
            return;
        }
        tracing::warn!(
            "cutover waits (--old-snapshot-timeout {}) for {} session(s) holding a snapshot older than the cutover: {}",
            humantime::format_duration(self.options.old_snapshot_timeout),
            held.len(),
            held.iter()
                .map(Holder::describe)
                .collect::<Vec<_>>()
                .join("; ")
        );
        let blockers = held
            .iter()
            .map(|h| crate::model::phase::Blocker {
                pid: h.pid,
                user: h.user.clone(),
                state: h.state.clone(),
                age: Duration::from_secs_f64(h.age_s.max(0.0)),
            })
            .collect();
        self.show_wait(Some(crate::model::phase::Wait::OldSnapshots(blockers)));
    }

    /// The last attempt was postponed by old snapshots (exit 5), naming them.
    pub(super) fn old_snapshots_exhausted(&self, held: &[Holder]) -> anyhow::Error {
        fail(
            FailureKind::LockBudget,
            format!(
                "cutover failed: after {} attempts, sessions still hold a snapshot older than the cutover after --old-snapshot-timeout {} each: {}. A transaction holding such a snapshot would read the new table incompletely after the swap; the original table is untouched. End them, raise --old-snapshot-timeout, or run with --kill-old-snapshots",
                self.options.retries,
                humantime::format_duration(self.options.old_snapshot_timeout),
                held.iter()
                    .map(Holder::describe)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        )
    }
}

/// Under the lock, once the drain reached the fence (docs/design.md §4.6): the sessions whose
/// snapshot may not see the fence's application (their `backend_xmin` precedes the `xmax` of
/// a snapshot taken now) took it before the fence. Those queued on the cutover's lock are
/// returned (waiting for them would deadlock); the others are waited for within `budget`.
/// `lock_pid` is the cutover session; `monitor` a session outside the cutover transaction
/// (each of its statements reads the activity afresh).
///
/// Errors: a query failed (exit 1).
pub(super) async fn recheck(
    monitor: &Client,
    lock_pid: i32,
    table_oid: u32,
    budget: Duration,
) -> Result<Rechecked> {
    let deadline = Instant::now() + budget;
    let first = holders(monitor, Some(lock_pid), table_oid).await?;
    let (queued, mut held): (Vec<Holder>, Vec<Holder>) = first
        .into_iter()
        .filter(|h| h.before_horizon)
        .partition(|h| h.queued);
    while !held.is_empty() {
        if Instant::now() >= deadline {
            return Ok(Rechecked::Held(held));
        }
        tokio::time::sleep(POLL_LOCKED).await;
        held = still_held(&held, &holders(monitor, Some(lock_pid), table_oid).await?);
    }
    Ok(Rechecked::Clear { queued })
}

/// `--kill-old-snapshots`: calls `function` (`pg_cancel_backend`, `pg_terminate_backend`)
/// on each session of `held` that is still in the same transaction, logging and recording
/// (`verb pid ..: ..`) each one signalled.
async fn signal(
    client: &Client,
    held: &[Holder],
    function: &str,
    verb: &str,
    killed: &mut Vec<String>,
) {
    for h in held {
        let row = client
            .query_opt(
                &format!(
                    "SELECT {function}(l.pid) FROM pg_locks l
                     WHERE l.pid = $1 AND l.locktype = 'virtualxid' AND l.virtualxid = $2 AND l.granted"
                ),
                &[&h.pid, &h.vxid],
            )
            .await;
        match row {
            Ok(Some(r)) if r.get::<_, bool>(0) => {
                let what = format!("{verb} {} (old snapshot)", h.describe());
                tracing::warn!("--kill-old-snapshots: {what}");
                killed.push(what);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("--kill-old-snapshots: could not signal pid {}: {e}", h.pid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(pid: i32, vxid: &str, xmin: &str) -> Holder {
        Holder {
            pid,
            vxid: vxid.into(),
            xmin: xmin.into(),
            user: "u".into(),
            state: "idle in transaction".into(),
            age_s: 1.0,
            query: "SELECT 1".into(),
            queued: false,
            before_horizon: true,
        }
    }

    #[test]
    fn a_snapshot_is_held_until_its_transaction_or_its_xmin_changes() {
        let seen = vec![holder(1, "3/7", "100"), holder(2, "4/9", "101")];
        // Same transaction, same xmin: still held. Pid 2 moved on to a new transaction.
        let now = vec![holder(1, "3/7", "100"), holder(2, "4/10", "105")];
        assert_eq!(still_held(&seen, &now), vec![holder(1, "3/7", "100")]);
        // A new snapshot in the same transaction (READ COMMITTED): released.
        assert!(still_held(&seen, &[holder(1, "3/7", "104")]).is_empty());
        // A session that was not holding one at first is not waited for.
        assert!(still_held(&seen, &[holder(3, "5/1", "90")]).is_empty());
    }

    #[test]
    fn a_holder_is_described_with_pid_user_state_age_and_query() {
        assert_eq!(
            holder(42, "3/7", "100").describe(),
            "pid 42 (u, idle in transaction, transaction open 1 s): SELECT 1"
        );
    }
}
