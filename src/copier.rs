//! The backfill: existing rows copied into the shadow in primary-key chunks, each chunk one
//! short server-side statement (`INSERT INTO shadow .. SELECT <projection> FROM ONLY t AS src
//! WHERE key IN (lo, hi]`) in its own transaction, so no snapshot lives longer than one chunk
//! (DESIGN.md §1.4, invariant I4).
//!
//! Chunks are sized by time, not rows (spirit's approach): each chunk's row count is scaled
//! by `target / measured duration`, at most doubling or halving per step. After each chunk the
//! copier sleeps `nice_ratio × chunk duration` (gh-ost's `--nice-ratio`).
//!
//! The chunk boundary is found by an index scan (`ORDER BY key OFFSET n-1 LIMIT 1`), then the
//! range is copied by its own statement: rows that enter the range after its copy are carried
//! by the stream, which the applier replays after the whole backfill.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::plan::Plan;
use crate::progress::Progress;

/// Backfill settings.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Target duration of one chunk (ms).
    pub chunk_time: Duration,
    /// Sleep after each chunk, as a multiple of its duration (0 = none).
    pub nice_ratio: f64,
    /// Rows in the first chunk.
    pub initial_rows: i64,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            chunk_time: Duration::from_millis(500),
            nice_ratio: 0.0,
            initial_rows: 1_000,
        }
    }
}

/// What the backfill did.
#[derive(Debug, Clone, Default)]
pub struct CopyReport {
    /// Rows inserted into the shadow.
    pub rows: u64,
    /// Chunks copied.
    pub chunks: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// The next chunk size (rows) after a chunk of `rows` took `took`: scaled toward `target`,
/// at most ×2 or ÷2 per step, within [100, 5,000,000].
pub fn next_chunk_rows(rows: i64, took: Duration, target: Duration) -> i64 {
    let took = took.as_secs_f64().max(0.000_1);
    let factor = (target.as_secs_f64() / took).clamp(0.5, 2.0);
    ((rows as f64 * factor) as i64).clamp(100, 5_000_000)
}

/// Copies every row of the original into the shadow. `check` is called between chunks and
/// stops the copy with its error (cancellation, a failed stream).
pub async fn backfill(
    client: &Client,
    plan: &Plan,
    options: &CopyOptions,
    progress: &Arc<Progress>,
    mut check: impl FnMut() -> Result<()>,
) -> Result<CopyReport> {
    let table = plan.original.qualified();
    let shadow = plan.names.shadow_qualified();
    let p = &plan.projection;
    let first_boundary = client
        .prepare(&p.chunk_boundary_sql(&table, false))
        .await
        .context("preparing the chunk boundary query")?;
    let next_boundary = client.prepare(&p.chunk_boundary_sql(&table, true)).await?;
    let copy_first = client
        .prepare(&p.copy_sql(&table, &shadow, false, true))
        .await?;
    let copy_middle = client
        .prepare(&p.copy_sql(&table, &shadow, true, true))
        .await?;
    let copy_last = client
        .prepare(&p.copy_sql(&table, &shadow, true, false))
        .await?;
    let copy_all = client
        .prepare(&p.copy_sql(&table, &shadow, false, false))
        .await?;

    let started = Instant::now();
    let mut report = CopyReport::default();
    let mut rows = options.initial_rows;
    let mut lower: Option<Vec<Option<String>>> = None;
    loop {
        check()?;
        let chunk_start = Instant::now();
        let boundary = match &lower {
            None => client.query_opt(&first_boundary, &[&rows]).await,
            Some(lo) => {
                let mut params: Vec<&(dyn ToSql + Sync)> = vec![&rows];
                params.extend(lo.iter().map(|v| v as &(dyn ToSql + Sync)));
                client.query_opt(&next_boundary, &params).await
            }
        }
        .context("finding the next chunk boundary")?;
        let upper: Option<Vec<Option<String>>> =
            boundary.map(|row| (0..p.key.len()).map(|i| row.get(i)).collect());
        let statement = match (&lower, &upper) {
            (None, Some(_)) => &copy_first,
            (Some(_), Some(_)) => &copy_middle,
            (Some(_), None) => &copy_last,
            (None, None) => &copy_all,
        };
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if let Some(lo) = &lower {
            params.extend(lo.iter().map(|v| v as &(dyn ToSql + Sync)));
        }
        if let Some(hi) = &upper {
            params.extend(hi.iter().map(|v| v as &(dyn ToSql + Sync)));
        }
        let copied = client
            .execute(statement, &params)
            .await
            .map_err(|e| copy_error(e, plan))?;
        let took = chunk_start.elapsed();
        report.rows += copied;
        report.chunks += 1;
        progress.update(|s| s.rows_copied = report.rows);
        tracing::debug!(rows = copied, ms = took.as_millis() as u64, "chunk copied");
        if upper.is_none() {
            break;
        }
        rows = next_chunk_rows(rows, took, options.chunk_time);
        lower = upper;
        if options.nice_ratio > 0.0 {
            tokio::time::sleep(took.mul_f64(options.nice_ratio)).await;
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

fn copy_error(e: tokio_postgres::Error, plan: &Plan) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) => anyhow::anyhow!(
            "copying rows of {} into the new schema failed: {}{}; the original table is untouched",
            plan.original.qualified(),
            db.message(),
            db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
        ),
        None => anyhow::Error::new(e).context("copying a chunk"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_follows_time_within_bounds() {
        let target = Duration::from_millis(500);
        assert_eq!(
            next_chunk_rows(1000, Duration::from_millis(250), target),
            2000
        );
        assert_eq!(
            next_chunk_rows(1000, Duration::from_millis(1), target),
            2000
        );
        assert_eq!(next_chunk_rows(1000, Duration::from_secs(5), target), 500);
        assert_eq!(next_chunk_rows(150, Duration::from_secs(5), target), 100);
        assert_eq!(
            next_chunk_rows(1000, Duration::from_millis(400), target),
            1250
        );
    }
}
