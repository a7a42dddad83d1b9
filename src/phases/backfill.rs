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
//!
//! Test-only (the `pause-points` feature, see [`crate::pause`]): the race points `chunk-open`
//! and `copying`, and the deliberately broken ordering
//! [`crate::testing::pause::Broken::ApplyDuringCopy`], which runs an applier while the chunks are
//! copied.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::ops::progress::Progress;
use crate::plan::Plan;

/// Backfill settings.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Target duration of one chunk (ms).
    pub chunk_time: Duration,
    /// Sleep after each chunk, as a multiple of its duration (0 = none).
    pub nice_ratio: f64,
    /// Rows in the first chunk.
    pub initial_rows: i64,
    /// Test-only pause points: `chunk-open` (a chunk's statement ran, its transaction is not
    /// committed) and `copying` (a chunk committed); see [`crate::pause`].
    pub pauses: crate::testing::pause::Pauses,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            chunk_time: Duration::from_millis(100),
            nice_ratio: 0.0,
            initial_rows: 1_000,
            pauses: crate::testing::pause::Pauses::default(),
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
    throttle: Option<&crate::ops::throttle::Throttler>,
    controls: Option<&Arc<crate::ops::control::Controls>>,
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
    let during_copy = DuringCopy::start(client, plan).await?;
    // The first error (a worker's or the planner's) ends the copy; the rest is dropped.
    let copied_all = tokio::try_join!(producer, futures_util::future::try_join_all(work));
    if let Some(during_copy) = during_copy {
        during_copy.finish(client, plan).await?;
    }
    copied_all?;
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
    controls: Option<&Arc<crate::ops::control::Controls>>,
    throttle: Option<&crate::ops::throttle::Throttler>,
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
    // Test-only broken ordering (never in a normal build): rows the applier running during the
    // backfill wrote first are kept.
    let conflict = if crate::testing::pause::broken()
        == Some(crate::testing::pause::Broken::ApplyDuringCopy)
    {
        " ON CONFLICT DO NOTHING"
    } else {
        ""
    };
    let sql = |lower: bool, upper: bool| {
        format!("{}{conflict}", p.copy_sql(&table, &shadow, lower, upper))
    };
    let copy_first = worker.prepare(&sql(false, true)).await?;
    let copy_middle = worker.prepare(&sql(true, true)).await?;
    let copy_last = worker.prepare(&sql(true, false)).await?;
    let copy_all = worker.prepare(&sql(false, false)).await?;
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
        let in_range =
            |c: &str| crate::testing::pause::key_in_range(c, lower.as_deref(), upper.as_deref());
        let range = describe_range(&lower, &upper);
        // Test-only: with `chunk-open` armed for this chunk, the chunk runs in an explicit
        // transaction and stops between its statement (its snapshot) and its commit.
        let held_open = options
            .pauses
            .armed("chunk-open")
            .is_some_and(|c| c.is_empty() || in_range(&c));
        let n = if held_open {
            worker.batch_execute("BEGIN").await?;
            let n = match worker.execute(statement, &params).await {
                Ok(n) => n,
                Err(e) => {
                    worker.batch_execute("ROLLBACK").await.ok();
                    return Err(copy_error(e, plan));
                }
            };
            options
                .pauses
                .point_if("chunk-open", &format!("range={range} rows={n}"), in_range)
                .await;
            worker
                .batch_execute("COMMIT")
                .await
                .context("committing a chunk")?;
            n
        } else {
            worker
                .execute(statement, &params)
                .await
                .map_err(|e| copy_error(e, plan))?
        };
        let took = chunk_start.elapsed();
        let total = copied.fetch_add(n, Ordering::Relaxed) + n;
        chunks.fetch_add(1, Ordering::Relaxed);
        progress.update(|s| s.rows_copied = total);
        options
            .pauses
            .point_if(
                "copying",
                &format!("range={range} rows={n} total={total}"),
                in_range,
            )
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

/// `(lo, hi]` of a chunk for pause-point details (`-inf`/`+inf` for open bounds).
fn describe_range(
    lower: &Option<Vec<Option<String>>>,
    upper: &Option<Vec<Option<String>>>,
) -> String {
    let show = |b: &Option<Vec<Option<String>>>, open: &str| match b {
        None => open.to_string(),
        Some(values) => values
            .iter()
            .map(|v| v.clone().unwrap_or_else(|| "NULL".into()))
            .collect::<Vec<_>>()
            .join(","),
    };
    format!("({}, {}]", show(lower, "-inf"), show(upper, "+inf"))
}

/// Test-only broken ordering [`crate::testing::pause::Broken::ApplyDuringCopy`] (never in a normal
/// build): an applier replaying the spool into the shadow while the backfill runs — the
/// races table's lock-free copy and apply (DESIGN.md §2).
struct DuringCopy {
    run: Arc<crate::testing::pause::BrokenRun>,
    applier: crate::phases::apply::Applier,
    index: String,
}

impl DuringCopy {
    /// Starts the applier when the variant is in scope: a unique index on the shadow's key
    /// (the applier's upserts need one), a session of its own, the spool's second reader.
    async fn start(client: &Client, plan: &Plan) -> Result<Option<DuringCopy>> {
        let Some(run) = crate::testing::pause::current()
            .filter(|r| r.variant() == crate::testing::pause::Broken::ApplyDuringCopy)
        else {
            return Ok(None);
        };
        let index = format!("_doppel_{}_during_copy", plan.original.oid);
        client
            .batch_execute(&format!(
                "CREATE UNIQUE INDEX {} ON {} {}",
                crate::sql::ident(&index),
                plan.names.shadow_qualified(),
                plan.projection.target_key_tuple()
            ))
            .await
            .context("creating the key index for the applier during the copy")?;
        let reader = run.take_during_copy_reader().ok_or_else(|| {
            anyhow::anyhow!("no second spool reader for the applier during the copy")
        })?;
        let session = crate::conninfo::connect(run.config()).await?;
        session
            .batch_execute("SET application_name = 'doppel applier (during copy)'")
            .await?;
        let applier =
            crate::phases::apply::Applier::spawn(session, Arc::new(plan.clone()), reader, None)
                .await?;
        applier.resume();
        Ok(Some(DuringCopy {
            run,
            applier,
            index,
        }))
    }

    /// Stops the applier at a transaction boundary, records how far it got (the applier
    /// after the backfill resumes there) and drops the index.
    async fn finish(self, client: &Client, plan: &Plan) -> Result<()> {
        self.applier.pause().await?;
        self.run
            .set_applied_during_copy(self.applier.status().applied);
        self.applier.stop().await?;
        client
            .batch_execute(&format!(
                "DROP INDEX {}.{}",
                crate::sql::ident(&plan.names.schema),
                crate::sql::ident(&self.index)
            ))
            .await
            .context("dropping the key index of the applier during the copy")
    }
}

fn copy_error(e: tokio_postgres::Error, plan: &Plan) -> anyhow::Error {
    let Some(db) = e.as_db_error() else {
        return anyhow::Error::new(e).context("copying a chunk");
    };
    let failed = format!(
        "copying rows of {} into the new schema failed: {}{}",
        plan.original.qualified(),
        db.message(),
        db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
    );
    // Existing rows the new schema rejects (a new CHECK or NOT NULL, a cast that fails): exit
    // 8, as for a constraint build.
    if crate::failure::rejected_by_schema(db) {
        crate::failure::fail(
            crate::failure::FailureKind::Conflict,
            format!(
                "{failed}; the existing rows violate the new schema. Nothing was cut over; the original table is untouched"
            ),
        )
    } else {
        anyhow::anyhow!("{failed}; the original table is untouched")
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
