//! `doppel backfill` (docs/design.md §1.12): a batched `UPDATE` of the table itself in
//! primary-key chunks, the expand/contract way of filling a new column while the
//! application runs.
//!
//! Each chunk is one short transaction:
//!
//! ```sql
//! UPDATE ONLY t AS src SET c = (<expression>)
//! WHERE (key) > (lo) AND (key) <= (hi) [AND (<where>)]
//!   AND src.c IS DISTINCT FROM CAST((<expression>) AS <type of c>)
//! ```
//!
//! so a chunk run again changes nothing (idempotent: no new row version, no WAL), and the
//! expression is evaluated on the row's current version (READ COMMITTED re-evaluates `SET`
//! on a row updated concurrently). Chunks are sized by time like the copy's (`--chunk-time`,
//! changeable live with `ctl chunk-time=`), paced by `--nice-ratio`, held while throttled,
//! and retried with backoff on a serialization failure, a deadlock or a row-lock wait longer
//! than `--lock-timeout`. With a checkpoint statement (the run's history row), each chunk's
//! upper key is recorded in the chunk's own transaction, so a run that stops — killed, aborted
//! — resumes after the last chunk that committed, and never redoes one. The report
//! (`report.rs`) validates the result: rows still matching `--where`, rows whose value differs
//! from the expression, orphans of a foreign-key column.

mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::cancel::Cancel;
use crate::failure::{FailureKind, fail, rejected_by_schema};
use crate::model::assignment::Assignment;
use crate::model::catalog::Table;
use crate::model::phase::Phase;
use crate::model::projection::{KeyColumn, Projection};
use crate::ops::control::Controls;
use crate::ops::progress::Progress;
use crate::ops::throttle::Throttler;
use crate::phases::backfill::next_chunk_rows;
use crate::phases::cutover::backoff;
use crate::sql::ident;

pub use report::{ColumnCheck, Validation, validate};

/// A chunk's key bound: one text value per key column.
pub type Key = Vec<Option<String>>;

/// SQLSTATEs a chunk is retried on: serialization failure, deadlock, lock wait timeout.
const RETRIED: [&str; 3] = ["40001", "40P01", "55P03"];

/// What to update.
#[derive(Debug, Clone)]
pub struct UpdateSpec {
    /// The table.
    pub table: Table,
    /// The assignments, `column = expression` over the row (`src`).
    pub sets: Vec<Assignment>,
    /// Only rows matching this predicate (`--where`).
    pub filter: Option<String>,
}

impl UpdateSpec {
    /// The key-range helper: a projection with the table's primary key only.
    fn keys(&self) -> Projection {
        let key = self
            .table
            .pk_columns
            .iter()
            .filter_map(|name| self.table.column(name))
            .map(|c| KeyColumn {
                source: c.clone(),
                target: c.clone(),
                relation_position: 0,
            })
            .collect();
        Projection {
            columns: Vec::new(),
            key,
            relation: Vec::new(),
            has_identity: false,
            text_hashed: Vec::new(),
            partitioned: self.table.relkind == 'p',
        }
    }

    /// `CAST((<expression>) AS <type>)` of an assignment.
    fn value(&self, a: &Assignment) -> String {
        let type_sql = self
            .table
            .column(&a.column)
            .map(|c| c.type_sql.as_str())
            .unwrap_or("text");
        format!("CAST(({}) AS {type_sql})", a.expression)
    }

    /// The predicate of the rows an assignment leaves different from its expression.
    fn differs(&self) -> String {
        let parts: Vec<String> = self
            .sets
            .iter()
            .map(|a| {
                format!(
                    "src.{} IS DISTINCT FROM {}",
                    ident(&a.column),
                    self.value(a)
                )
            })
            .collect();
        format!("({})", parts.join(" OR "))
    }

    /// The chunk's `UPDATE`; parameters as [`Projection::source_range`].
    pub fn update_sql(&self, has_lower: bool, has_upper: bool) -> String {
        let sets: Vec<String> = self
            .sets
            .iter()
            .map(|a| format!("{} = ({})", ident(&a.column), a.expression))
            .collect();
        let filter = self
            .filter
            .as_ref()
            .map(|w| format!(" AND ({w})"))
            .unwrap_or_default();
        format!(
            "UPDATE {}{} AS src SET {} WHERE {}{filter} AND {}",
            self.keys().only(),
            self.table.qualified(),
            sets.join(", "),
            self.keys().source_range(has_lower, has_upper),
            self.differs()
        )
    }

    /// The rows of a chunk (for progress): `count(*)` over the same range.
    fn count_sql(&self, has_lower: bool) -> String {
        format!(
            "SELECT count(*) FROM {}{} AS src WHERE {}",
            self.keys().only(),
            self.table.qualified(),
            self.keys().source_range(has_lower, false)
        )
    }
}

/// How the chunks run.
#[derive(Debug, Clone)]
pub struct UpdateOptions {
    /// Target duration of a chunk.
    pub chunk_time: Duration,
    /// Sleep after each chunk, as a multiple of its duration.
    pub nice_ratio: f64,
    /// Rows in the first chunk.
    pub initial_rows: i64,
    /// `lock_timeout` of a chunk (its wait for row locks the application holds).
    pub lock_timeout: Duration,
    /// Attempts of one chunk before giving up.
    pub retries: u32,
}

impl Default for UpdateOptions {
    fn default() -> Self {
        UpdateOptions {
            chunk_time: Duration::from_millis(100),
            nice_ratio: 0.0,
            initial_rows: 1_000,
            lock_timeout: Duration::from_millis(200),
            retries: 10,
        }
    }
}

/// What the chunks did.
#[derive(Debug, Clone, Default)]
pub struct UpdateReport {
    /// Rows in the chunks this run went through.
    pub rows_examined: u64,
    /// Rows it changed.
    pub rows_changed: u64,
    /// Chunks committed.
    pub chunks: u64,
    /// Chunk attempts retried (serialization failures, deadlocks, lock timeouts).
    pub retries: u64,
    /// The key this run started after (a resumed run), if any.
    pub resumed_after: Option<Key>,
    /// Wall time.
    pub elapsed: Duration,
}

/// One batched update.
pub struct BatchUpdate<'a> {
    /// What to update.
    pub spec: &'a UpdateSpec,
    /// Chunking and retries.
    pub options: &'a UpdateOptions,
    /// The status line's counters.
    pub progress: &'a Progress,
    /// Held between chunks while throttled.
    pub throttle: Option<&'a Throttler>,
    /// Live `chunk-time=`.
    pub controls: Option<&'a Arc<Controls>>,
    /// Abort between chunks.
    pub cancel: Cancel,
    /// A statement run in each chunk's transaction with one parameter, the JSON checkpoint
    /// (`{"resume_after": key, "rows_changed": n, ...}`) as text.
    pub checkpoint: Option<String>,
    /// Start after this key (a resumed run).
    pub resume_after: Option<Key>,
}

impl BatchUpdate<'_> {
    /// Runs the chunks on `client` until the last key.
    ///
    /// Errors: exit 3 on abort, 7 on a critical threshold; exit 8 when the rows reject a
    /// value (SQLSTATE classes 22, 23: a NOT NULL, a CHECK, a foreign key, a failing cast);
    /// a chunk still failing after its retries; any other query failure.
    pub async fn run(&self, client: &mut Client) -> Result<UpdateReport> {
        let started = Instant::now();
        let keys = self.spec.keys();
        let table = self.spec.table.qualified();
        let first = client
            .prepare(&keys.chunk_boundary_sql(&table, false))
            .await?;
        let next = client
            .prepare(&keys.chunk_boundary_sql(&table, true))
            .await?;
        let statements = Statements {
            closed_first: client.prepare(&self.spec.update_sql(false, true)).await?,
            closed: client.prepare(&self.spec.update_sql(true, true)).await?,
            open_first: client.prepare(&self.spec.update_sql(false, false)).await?,
            open: client.prepare(&self.spec.update_sql(true, false)).await?,
            count_all: client.prepare(&self.spec.count_sql(false)).await?,
            count_rest: client.prepare(&self.spec.count_sql(true)).await?,
        };
        let mut report = UpdateReport {
            resumed_after: self.resume_after.clone(),
            ..UpdateReport::default()
        };
        let mut lower = self.resume_after.clone();
        let mut rows = self.options.initial_rows;
        self.progress.update(|s| {
            s.phase = Some(Phase::Backfill);
            s.copy_started = Some(Instant::now());
        });
        loop {
            self.cancel.check()?;
            if let Some(t) = self.throttle {
                t.check_critical()?;
                t.wait_clear().await?;
            }
            let upper: Option<Key> = {
                let mut params: Vec<&(dyn ToSql + Sync)> = vec![&rows];
                if let Some(lo) = &lower {
                    params.extend(lo.iter().map(|v| v as &(dyn ToSql + Sync)));
                }
                let statement = if lower.is_some() { &next } else { &first };
                client
                    .query_opt(statement, &params)
                    .await
                    .context("finding the next chunk boundary")?
                    .map(|row| (0..keys.key.len()).map(|i| row.get(i)).collect())
            };
            let chunk_started = Instant::now();
            let examined = match &upper {
                Some(_) => rows as u64,
                None => statements.count(client, lower.as_ref()).await?,
            };
            let changed = self
                .chunk(
                    client,
                    &statements,
                    lower.as_ref(),
                    upper.as_ref(),
                    &mut report,
                )
                .await?;
            let took = chunk_started.elapsed();
            // The last chunk is counted before its update: rows inserted meanwhile count too.
            report.rows_examined += examined.max(changed);
            report.rows_changed += changed;
            report.chunks += 1;
            self.progress.update(|s| {
                s.rows_copied = report.rows_examined;
                s.step = Some(format!(
                    "{} row(s) changed in {} chunk(s)",
                    report.rows_changed, report.chunks
                ));
            });
            let Some(upper) = upper else { break };
            let target = self
                .controls
                .map(|c| c.chunk_time())
                .unwrap_or(self.options.chunk_time);
            rows = next_chunk_rows(rows, took, target);
            if self.options.nice_ratio > 0.0 {
                tokio::time::sleep(took.mul_f64(self.options.nice_ratio)).await;
            }
            lower = Some(upper);
        }
        self.progress
            .update(|s| s.copy_ended = Some(Instant::now()));
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// One chunk `(lower, upper]` in its own transaction (with the checkpoint), retried on
    /// the [`RETRIED`] SQLSTATEs; returns the rows changed.
    async fn chunk(
        &self,
        client: &mut Client,
        statements: &Statements,
        lower: Option<&Key>,
        upper: Option<&Key>,
        report: &mut UpdateReport,
    ) -> Result<u64> {
        let statement = statements.update(lower.is_some(), upper.is_some());
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        for bound in [lower, upper].into_iter().flatten() {
            params.extend(bound.iter().map(|v| v as &(dyn ToSql + Sync)));
        }
        let retries = self.options.retries.max(1);
        for attempt in 1..=retries {
            let tx = client.transaction().await?;
            tx.batch_execute(&format!(
                "SET LOCAL lock_timeout = '{}ms'",
                self.options.lock_timeout.as_millis().max(1)
            ))
            .await?;
            let result = match tx.execute(statement, &params).await {
                Ok(n) => match &self.checkpoint {
                    Some(sql) => {
                        let point = serde_json::json!({
                            "resume_after": upper,
                            "rows_changed": report.rows_changed + n,
                            "chunks": report.chunks + 1,
                        });
                        tx.execute(sql.as_str(), &[&point.to_string()])
                            .await
                            .map(|_| n)
                    }
                    None => Ok(n),
                },
                Err(e) => Err(e),
            };
            match result {
                Ok(n) => {
                    tx.commit().await?;
                    return Ok(n);
                }
                Err(e) => {
                    tx.rollback().await.ok();
                    let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                    if RETRIED.contains(&code.as_str()) && attempt < retries {
                        report.retries += 1;
                        tracing::warn!("chunk attempt {attempt} failed ({e}); retrying");
                        tokio::time::sleep(backoff(attempt)).await;
                        self.cancel.check()?;
                        continue;
                    }
                    return Err(chunk_error(e, &self.spec.table.qualified()));
                }
            }
        }
        unreachable!("the last attempt returns")
    }
}

/// A chunk that failed for good: rows the new value breaks are a conflict (exit 8).
fn chunk_error(e: tokio_postgres::Error, table: &str) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) if rejected_by_schema(db) => fail(
            FailureKind::Conflict,
            format!(
                "updating a chunk of {table} failed: {}{}; that chunk was rolled back, the chunks before it stay (run again to resume after them)",
                db.message(),
                db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
            ),
        ),
        _ => anyhow::Error::new(e).context(format!(
            "updating a chunk of {table} (the chunks before it stay; run again to resume after them)"
        )),
    }
}

/// The prepared statements of one run.
struct Statements {
    closed_first: Statement,
    closed: Statement,
    open_first: Statement,
    open: Statement,
    count_all: Statement,
    count_rest: Statement,
}

impl Statements {
    fn update(&self, has_lower: bool, has_upper: bool) -> &Statement {
        match (has_lower, has_upper) {
            (false, true) => &self.closed_first,
            (true, true) => &self.closed,
            (false, false) => &self.open_first,
            (true, false) => &self.open,
        }
    }

    /// Rows from `lower` to the end.
    async fn count(&self, client: &Client, lower: Option<&Key>) -> Result<u64> {
        let row = match lower {
            None => client.query_one(&self.count_all, &[]).await?,
            Some(lo) => {
                let params: Vec<&(dyn ToSql + Sync)> =
                    lo.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                client.query_one(&self.count_rest, &params).await?
            }
        };
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }
}
