//! A brief step: its statements in one short transaction after the table's lock, taken under
//! `lock_timeout` and retried with backoff (docs/design.md §1.10, the cutover's §4.2 budget).

use std::time::{Duration, Instant};

use anyhow::Result;
use tokio_postgres::Client;

use super::{Direct, StepReport};
use crate::failure::{FailureKind, fail, rejected_by_schema};
use crate::phases::cutover::{backoff, blockers};
use crate::plan::LockMode;

/// SQLSTATE `lock_not_available` (a lock wait ended by `lock_timeout`).
const LOCK_NOT_AVAILABLE: &str = "55P03";

impl Direct<'_> {
    /// Runs `sql` in one transaction after `LOCK TABLE <t> IN <lock> MODE`, each attempt under
    /// `lock_timeout`, until one commits or the attempts run out.
    ///
    /// Errors: exit 5 when every attempt timed out waiting for a lock; exit 8 when a statement
    /// fails on the rows (SQLSTATE classes 22, 23); exit 3 / 7 between attempts on an abort or
    /// a critical threshold; otherwise the server's error.
    pub(super) async fn brief(
        &self,
        client: &mut Client,
        sql: &[String],
        lock: LockMode,
        what: &str,
    ) -> Result<StepReport> {
        let started = Instant::now();
        let retries = self.options.retries.max(1);
        for attempt in 1..=retries {
            if attempt > 1 {
                self.check()?;
                tokio::time::sleep(backoff(attempt - 1)).await;
                self.check()?;
            }
            let timeout = self.lock_timeout();
            match self.attempt(client, sql, lock, timeout).await? {
                Some((lock_wait, held)) => {
                    return Ok(StepReport {
                        what: what.to_string(),
                        lock,
                        attempts: attempt,
                        lock_wait,
                        held,
                        elapsed: started.elapsed(),
                    });
                }
                None => {
                    let who: Vec<String> = blockers(client, self.table.oid)
                        .await
                        .map(|b| b.into_iter().map(|(_, w)| w).collect())
                        .unwrap_or_default();
                    tracing::warn!(
                        "attempt {attempt}/{retries} of `{what}`: {} lock on {} not granted within lock_timeout {} ms{}",
                        lock.sql(),
                        self.table.qualified(),
                        timeout.as_millis(),
                        if who.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "; sessions holding locks or old transactions: {}",
                                who.join("; ")
                            )
                        }
                    );
                }
            }
        }
        Err(fail(
            FailureKind::LockBudget,
            format!(
                "`{what}`: the {} lock on {} was not granted within lock_timeout in {retries} attempt(s); nothing of this step was applied. Find the session that holds the table (pg_locks, pg_stat_activity) and run again",
                lock.sql(),
                self.table.qualified()
            ),
        ))
    }

    /// One attempt: `Some((lock wait, hold))` when it committed, `None` when a lock wait
    /// timed out (rolled back).
    ///
    /// Errors: any other failure (the transaction rolled back).
    async fn attempt(
        &self,
        client: &mut Client,
        sql: &[String],
        lock: LockMode,
        timeout: Duration,
    ) -> Result<Option<(Duration, Duration)>> {
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{}ms'",
            timeout.as_millis().max(1)
        ))
        .await?;
        let asked = Instant::now();
        let locked = tx
            .batch_execute(&format!(
                "LOCK TABLE {} IN {} MODE",
                self.table.qualified(),
                lock.sql()
            ))
            .await;
        let granted = Instant::now();
        if let Err(e) = locked {
            tx.rollback().await.ok();
            return match e.code().map(|c| c.code()) {
                Some(LOCK_NOT_AVAILABLE) => Ok(None),
                _ => Err(anyhow::Error::new(e).context("locking the table")),
            };
        }
        for statement in sql {
            if let Err(e) = tx.batch_execute(statement).await {
                tx.rollback().await.ok();
                if e.code().map(|c| c.code()) == Some(LOCK_NOT_AVAILABLE) {
                    return Ok(None);
                }
                return Err(statement_error(e, statement, &self.table.qualified()));
            }
        }
        tx.commit().await?;
        Ok(Some((granted - asked, granted.elapsed())))
    }
}

/// A failed statement: rows the change rejects are a conflict (exit 8).
fn statement_error(e: tokio_postgres::Error, statement: &str, table: &str) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) if rejected_by_schema(db) => fail(
            FailureKind::Conflict,
            format!(
                "`{statement}` failed: the rows of {table} do not allow it: {}{}; it was rolled back",
                db.message(),
                db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
            ),
        ),
        Some(db) => anyhow::anyhow!("`{statement}` failed: {}; it was rolled back", db.message()),
        None => anyhow::Error::new(e).context(format!("running `{statement}`")),
    }
}
