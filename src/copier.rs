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
//! by the stream, which the applier replays after the whole backfill. One session plans the
//! ranges; `--copy-workers` sessions copy them concurrently.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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
    /// Test-only pause points (`copying`: the first chunk committed).
    pub pauses: crate::pause::Pauses,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            chunk_time: Duration::from_millis(500),
            nice_ratio: 0.0,
            initial_rows: 1_000,
            pauses: crate::pause::Pauses::default(),
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

/// A key range `(lower, upper]` to copy; `None` bounds are open.
type Range = (Option<Vec<Option<String>>>, Option<Vec<Option<String>>>);

/// Copies every row of the original into the shadow. `client` plans the chunks (index-only
/// boundary scans); each of `workers` (one session each) copies ranges as they come, so
/// `workers.len()` chunks run at once. `check` is called between chunks and stops the copy
/// with its error (cancellation, a failed stream); while `throttle` reports a reason, no new
/// chunk starts.
#[allow(clippy::too_many_arguments)]
pub async fn backfill(
    client: &Client,
    workers: &[Client],
    plan: &Plan,
    options: &CopyOptions,
    progress: &Arc<Progress>,
    throttle: Option<&crate::throttle::Throttler>,
    controls: Option<&Arc<crate::control::Controls>>,
    check: impl Fn() -> Result<()>,
) -> Result<CopyReport> {
    let table = plan.original.qualified();
    let p = &plan.projection;
    let first_boundary = client
        .prepare(&p.chunk_boundary_sql(&table, false))
        .await
        .context("preparing the chunk boundary query")?;
    let next_boundary = client.prepare(&p.chunk_boundary_sql(&table, true)).await?;
    let started = Instant::now();
    let rows_target = Arc::new(AtomicI64::new(options.initial_rows));
    let copied = Arc::new(AtomicU64::new(0));
    let chunks = Arc::new(AtomicU64::new(0));
    let (tx, rx) = tokio::sync::mpsc::channel::<Range>(workers.len().max(1));
    let rx = Arc::new(tokio::sync::Mutex::new(rx));

    let producer = async {
        let mut lower: Option<Vec<Option<String>>> = None;
        loop {
            check()?;
            if let Some(t) = throttle {
                t.wait_clear().await?;
            }
            let rows = rows_target.load(Ordering::Relaxed);
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
            let last = upper.is_none();
            if tx.send((lower.clone(), upper.clone())).await.is_err() {
                break;
            }
            if last {
                break;
            }
            lower = upper;
        }
        drop(tx);
        Ok::<(), anyhow::Error>(())
    };
    let work = workers.iter().map(|worker| {
        let rx = rx.clone();
        let rows_target = rows_target.clone();
        let copied = copied.clone();
        let chunks = chunks.clone();
        async move {
            copy_ranges(
                worker,
                controls,
                throttle,
                plan,
                options,
                progress,
                &rx,
                &rows_target,
                &copied,
                &chunks,
            )
            .await
        }
    });
    // The first error (a worker's or the planner's) ends the copy; the rest is dropped.
    tokio::try_join!(producer, futures_util::future::try_join_all(work))?;
    Ok(CopyReport {
        rows: copied.load(Ordering::Relaxed),
        chunks: chunks.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

/// One copy worker: takes ranges until the producer is done.
#[allow(clippy::too_many_arguments)]
async fn copy_ranges(
    worker: &Client,
    controls: Option<&Arc<crate::control::Controls>>,
    throttle: Option<&crate::throttle::Throttler>,
    plan: &Plan,
    options: &CopyOptions,
    progress: &Arc<Progress>,
    rx: &tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Range>>,
    rows_target: &AtomicI64,
    copied: &AtomicU64,
    chunks: &AtomicU64,
) -> Result<()> {
    let table = plan.original.qualified();
    let shadow = plan.names.shadow_qualified();
    let p = &plan.projection;
    let copy_first = worker
        .prepare(&p.copy_sql(&table, &shadow, false, true))
        .await?;
    let copy_middle = worker
        .prepare(&p.copy_sql(&table, &shadow, true, true))
        .await?;
    let copy_last = worker
        .prepare(&p.copy_sql(&table, &shadow, true, false))
        .await?;
    let copy_all = worker
        .prepare(&p.copy_sql(&table, &shadow, false, false))
        .await?;
    loop {
        let next = rx.lock().await.recv().await;
        let Some((lower, upper)) = next else {
            return Ok(());
        };
        // A range planned before the throttle started waits too.
        if let Some(t) = throttle {
            t.wait_clear().await?;
        }
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
        let chunk_start = Instant::now();
        let rows_planned = rows_target.load(Ordering::Relaxed);
        let n = worker
            .execute(statement, &params)
            .await
            .map_err(|e| copy_error(e, plan))?;
        let took = chunk_start.elapsed();
        let total = copied.fetch_add(n, Ordering::Relaxed) + n;
        chunks.fetch_add(1, Ordering::Relaxed);
        progress.update(|s| s.rows_copied = total);
        options
            .pauses
            .point("copying", &format!("{total} rows copied"))
            .await;
        tracing::debug!(rows = n, ms = took.as_millis() as u64, "chunk copied");
        if upper.is_some() {
            // The target chunk time can be changed at runtime on the control socket.
            let target = controls
                .map(|c| c.chunk_time())
                .unwrap_or(options.chunk_time);
            rows_target.store(
                next_chunk_rows(rows_planned, took, target),
                Ordering::Relaxed,
            );
        }
        if options.nice_ratio > 0.0 {
            tokio::time::sleep(took.mul_f64(options.nice_ratio)).await;
        }
    }
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
