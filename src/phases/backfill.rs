//! The backfill: existing rows copied into the shadow in primary-key chunks, each chunk one
//! short server-side statement (`INSERT INTO shadow .. SELECT <projection> FROM ONLY t AS src
//! WHERE key IN (lo, hi]`) in its own transaction, so no snapshot lives longer than one chunk
//! (docs/design.md §1.4, invariant I4).
//!
//! A partitioned table is copied partition by partition (issue 15, docs/design.md §1.14):
//! each leaf partition is chunked by the primary key on its own (its part of the primary key
//! index) and its rows go straight into the shadow leaf of the same bound
//! ([`crate::phases::shadow::pairs`]); the checkpoint records each chunk's partition.
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
//! In a resumable run (`--resumable`, docs/design.md §2.13) the planner records each chunk in
//! the checkpoint before queueing it, and each chunk's transaction marks it done with its
//! rows: a resumed backfill copies again only the chunks queued and not committed (at most
//! one in flight per worker), then plans on from where the planner stopped.
//!
//! Test hooks (the `pause-points` feature, see [`crate::testing`]): the race points
//! `chunk-open` and `copying`, and the deliberately broken ordering `ApplyDuringCopy`, which
//! runs an applier while the chunks are copied (`phases::broken`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{Mutex, mpsc};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::ops::control::Controls;
use crate::ops::pacing::PaceHandle;
use crate::ops::progress::Progress;
use crate::ops::throttle::Throttler;
use crate::phases::checkpoint::{Checkpoint, CopyProgress, PlannedTo};
use crate::phases::shadow::pairs::{self, Pair};
use crate::phases::tid_chunks;
use crate::plan::Plan;
use crate::testing::{Probe, broken, pause_armed, pause_point};

/// Backfill settings.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Target duration of one chunk (ms).
    pub chunk_time: Duration,
    /// Sleep after each chunk, as a multiple of its duration (0 = none).
    pub nice_ratio: f64,
    /// Rows in the first chunk.
    pub initial_rows: i64,
    /// How the chunks divide the table (`--chunk-by`).
    pub chunk_by: ChunkBy,
    /// After a TID-range copy: distinct keys doppel holds in memory at once while it moves
    /// the keys changed during the copy to the server
    /// ([`crate::phases::tid_chunks::KEYS_PER_SET`] by default; no flag sets it).
    pub key_set_size: usize,
    /// The most rows one chunk may hold ([`MAX_CHUNK_ROWS`] by default). A run whose WAL
    /// sender decodes the copied rows lowers it to [`decoded_chunk_cap`].
    pub max_chunk_rows: i64,
}

/// How the backfill divides the table into chunks (`--chunk-by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChunkBy {
    /// Primary-key ranges, read through the key's index (the default; resumable, and the
    /// only way for a partitioned table).
    #[default]
    Key,
    /// Ranges of heap pages, read in physical order by a TID Range Scan
    /// ([`crate::phases::tid_chunks`]); a plain table in a run that is not `--resumable`.
    Tid,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            chunk_time: Duration::from_millis(100),
            nice_ratio: 0.0,
            initial_rows: 1_000,
            chunk_by: ChunkBy::Key,
            key_set_size: crate::phases::tid_chunks::KEYS_PER_SET,
            max_chunk_rows: MAX_CHUNK_ROWS,
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
    /// A resumed backfill: chunks an interrupted run had started and not committed, copied
    /// again.
    pub recopied_chunks: u64,
}

/// The factor by which the next chunk grows after one took `took`: `target / took`, at most
/// ×2 or ÷2 per step.
fn toward_target(took: Duration, target: Duration) -> f64 {
    let took = took.as_secs_f64().max(0.000_1);
    (target.as_secs_f64() / took).clamp(0.5, 2.0)
}

/// The fewest rows a key-range chunk is sized to.
pub const MIN_CHUNK_ROWS: i64 = 100;
/// The most rows a key-range chunk is sized to.
pub const MAX_CHUNK_ROWS: i64 = 5_000_000;

/// The next chunk size (rows) after a chunk of `rows` took `took`: scaled toward `target`,
/// at most ×2 or ÷2 per step, within [[`MIN_CHUNK_ROWS`], [`MAX_CHUNK_ROWS`]].
pub fn next_chunk_rows(rows: i64, took: Duration, target: Duration) -> i64 {
    ((rows as f64 * toward_target(took, target)) as i64).clamp(MIN_CHUNK_ROWS, MAX_CHUNK_ROWS)
}

/// Bytes the reorder buffer counts for one decoded row beyond the row itself: its change
/// record and tuple header (PostgreSQL's `ReorderBufferChangeSize`, reorderbuffer.c), rounded
/// up.
const DECODED_ROW_OVERHEAD: f64 = 128.0;

/// The most rows a chunk may hold while the WAL sender decodes the copied rows (PostgreSQL
/// 14-15, or `--no-copy-origin`): `workers` chunks open at once fill at most half of
/// `decoding_bytes` (the WAL sender's `logical_decoding_work_mem`, bytes), a row counted as
/// `row_bytes` (its average size on disk, bytes) plus the reorder buffer's own overhead; the
/// other half is left to the application's transactions. Past `logical_decoding_work_mem`
/// PostgreSQL spills the largest transaction to disk and reads it back (BENCHMARKS.md, "Chunk
/// time 100 ms against 500 ms": 922 MiB spilled, twice the WAL sender's CPU). Within
/// [[`MIN_CHUNK_ROWS`], [`MAX_CHUNK_ROWS`]].
pub fn decoded_chunk_rows(decoding_bytes: f64, row_bytes: f64, workers: usize) -> i64 {
    let per_chunk = decoding_bytes / 2.0 / workers.max(1) as f64;
    let rows = per_chunk / (row_bytes.max(0.0) + DECODED_ROW_OVERHEAD);
    (rows as i64).clamp(MIN_CHUNK_ROWS, MAX_CHUNK_ROWS)
}

/// [`decoded_chunk_rows`] for `plan`'s table copied by `workers` sessions under the WAL
/// sender's `logical_decoding_work_mem` = `work_mem` (PostgreSQL's size syntax, e.g. `256MB`),
/// a row's size taken as the average of the first 1,000 rows' (`pg_column_size`);
/// [`MAX_CHUNK_ROWS`] for an empty table.
///
/// Errors: the server rejects `work_mem` as a size, or the query fails.
pub async fn decoded_chunk_cap(
    client: &Client,
    plan: &Plan,
    work_mem: &str,
    workers: usize,
) -> Result<i64> {
    let sql = format!(
        "SELECT pg_size_bytes($1)::float8, \
         (SELECT avg(pg_column_size(t.*))::float8 FROM (SELECT * FROM {} LIMIT 1000) t)",
        plan.original.qualified()
    );
    let row = client
        .query_one(&sql, &[&work_mem])
        .await
        .with_context(|| {
            format!("sizing the chunks within --logical-decoding-work-mem {work_mem:?}")
        })?;
    let decoding_bytes: f64 = row.get(0);
    Ok(match row.get::<_, Option<f64>>(1) {
        Some(row_bytes) => decoded_chunk_rows(decoding_bytes, row_bytes, workers),
        None => MAX_CHUNK_ROWS,
    })
}

/// The next TID-range chunk's page count after a chunk of `pages` took `took`: scaled
/// toward `target`, at most ×2 or ÷2 per step, within [1, 1,000,000] pages.
pub fn next_chunk_pages(pages: i64, took: Duration, target: Duration) -> i64 {
    ((pages as f64 * toward_target(took, target)).round() as i64).clamp(1, 1_000_000)
}

/// One bound of a key range, as text per key column; `None` is open.
type Bound = Option<Vec<Option<String>>>;

/// A key range `(lower, upper]` of pair `pair` (an index into the backfill's
/// [`pairs::of`]) to copy, numbered in planning order.
#[derive(Debug, Clone)]
struct Range {
    seq: i64,
    pair: usize,
    lower: Bound,
    upper: Bound,
    /// Heap pages of a TID range (0 for a key range).
    pages: i64,
}

/// One backfill: the plan and settings, and what paces and watches it.
pub struct Backfill<'a> {
    /// The plan being run.
    pub plan: &'a Plan,
    /// Chunk sizing and pacing.
    pub options: &'a CopyOptions,
    /// Counters the status line and bars show (`rows_copied`).
    pub progress: &'a Progress,
    /// While it reports a reason, no new chunk starts.
    pub throttle: Option<&'a Throttler>,
    /// `--max-write-latency`: scales the workers, the chunk time and the pause after each
    /// chunk ([`crate::ops::pacing`]).
    pub pace: Option<&'a PaceHandle>,
    /// The control socket's live settings (`chunk-time=MS`).
    pub controls: Option<&'a Arc<Controls>>,
    /// A resumable run's checkpoint: chunks are recorded as planned and done.
    pub checkpoint: Option<&'a Checkpoint>,
    /// A resumed run: where the interrupted backfill stood.
    pub resume: Option<CopyProgress>,
    /// The run's test hooks.
    pub(crate) probe: Probe,
}

/// Shared by the planner and the copy workers of one backfill.
struct Counters {
    /// Rows the next chunk should hold.
    rows_target: AtomicI64,
    /// Heap pages the next TID-range chunk should cover.
    pages_target: AtomicI64,
    copied: AtomicU64,
    chunks: AtomicU64,
}

/// The copy statements one worker prepared, by pair and by which bounds the range has.
type CopyStatements = std::collections::HashMap<(usize, bool, bool), Statement>;

impl Backfill<'_> {
    /// Copies every row of the original into the shadow. `client` plans the chunks
    /// (index-only boundary scans); each of `workers` (one session each) copies ranges as
    /// they come, so `workers.len()` chunks run at once. `check` is called between chunks
    /// and stops the copy with its error (cancellation, a failed stream).
    ///
    /// Errors: `check`'s error; a chunk the new schema rejects (exit 8, see [`copy_error`]);
    /// a failed query.
    pub async fn run(
        &self,
        client: &Client,
        workers: &[Client],
        check: impl Fn() -> Result<()>,
    ) -> Result<CopyReport> {
        let started = Instant::now();
        let resumed = self.resume.clone().unwrap_or_default();
        let counters = Counters {
            rows_target: AtomicI64::new(self.options.initial_rows.min(self.options.max_chunk_rows)),
            pages_target: AtomicI64::new(0),
            copied: AtomicU64::new(resumed.rows),
            chunks: AtomicU64::new(0),
        };
        let recopied_chunks = resumed.pending.iter().filter(|c| c.started).count() as u64;
        if self.resume.is_some() {
            tracing::info!(
                rows_done = resumed.rows,
                chunks_pending = resumed.pending.len(),
                chunks_copied_again = recopied_chunks,
                "resuming the backfill from its checkpoint"
            );
        }
        let pairs = pairs::of(self.plan);
        let (tx, rx) = mpsc::channel::<Range>(workers.len().max(1));
        let rx = Mutex::new(rx);
        let producer = self.plan_ranges(client, &pairs, &counters, tx, resumed, check);
        let work = workers.iter().enumerate().map(|(i, worker)| {
            self.copy_ranges(worker, &pairs, (i, workers.len()), &rx, &counters)
        });
        #[cfg(feature = "pause-points")]
        let during_copy =
            crate::phases::broken::DuringCopy::start(&self.probe, client, self.plan).await?;
        // The first error (a worker's or the planner's) ends the copy; the rest is dropped.
        let copied_all = tokio::try_join!(producer, futures_util::future::try_join_all(work));
        #[cfg(feature = "pause-points")]
        if let Some(during_copy) = during_copy {
            during_copy.finish(&self.probe, client, self.plan).await?;
        }
        copied_all?;
        Ok(CopyReport {
            rows: counters.copied.load(Ordering::Relaxed),
            chunks: counters.chunks.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
            recopied_chunks,
        })
    }

    /// The planner: queues the chunks an interrupted run left (`resumed`), then, pair by
    /// pair from where the interrupted run stopped, each chunk of the pair.
    async fn plan_ranges(
        &self,
        client: &Client,
        pairs: &[Pair],
        counters: &Counters,
        tx: mpsc::Sender<Range>,
        resumed: CopyProgress,
        check: impl Fn() -> Result<()>,
    ) -> Result<()> {
        for chunk in resumed.pending {
            check()?;
            let range = Range {
                seq: chunk.seq,
                pair: pair_index(pairs, chunk.partition.as_deref())?,
                lower: chunk.lower,
                upper: chunk.upper,
                pages: 0,
            };
            if tx.send(range).await.is_err() {
                return Ok(());
            }
        }
        let (first, mut lower) = match resumed.planned_to {
            None => (0, None),
            Some(PlannedTo {
                partition,
                upper: None,
            }) => (pair_index(pairs, partition.as_deref())? + 1, None),
            Some(PlannedTo { partition, upper }) => {
                (pair_index(pairs, partition.as_deref())?, upper)
            }
        };
        let mut seq = resumed.next_seq;
        for (i, pair) in pairs.iter().enumerate().skip(first) {
            if let Some(step) = pair.step(i, pairs.len()) {
                tracing::info!("copying {step}");
                self.progress.update(|s| s.step = Some(step));
            }
            let start = Range {
                seq,
                pair: i,
                lower: lower.take(),
                upper: None,
                pages: 0,
            };
            let planned = match self.options.chunk_by {
                ChunkBy::Key => {
                    self.plan_pair(client, pair, start, counters, &tx, &check)
                        .await?
                }
                ChunkBy::Tid => {
                    self.plan_tid_pair(client, start, counters, &tx, &check)
                        .await?
                }
            };
            match planned {
                Some(next) => seq = next,
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// Queues the chunks of one pair from `start.lower` on, numbered from `start.seq`: finds
    /// each chunk's upper bound (`rows_target` rows past the lower one) and queues the range,
    /// until the last, open-ended one. Returns the next sequence number, or `None` when the
    /// workers are gone.
    async fn plan_pair(
        &self,
        client: &Client,
        pair: &Pair,
        start: Range,
        counters: &Counters,
        tx: &mpsc::Sender<Range>,
        check: &impl Fn() -> Result<()>,
    ) -> Result<Option<i64>> {
        let Range {
            mut seq, mut lower, ..
        } = start;
        let p = &self.plan.projection;
        let first_boundary = client
            .prepare(&p.chunk_boundary_sql(&pair.original, false))
            .await
            .map_err(|e| boundary_error(e, pair, "preparing the chunk boundary query"))?;
        let next_boundary = client
            .prepare(&p.chunk_boundary_sql(&pair.original, true))
            .await
            .map_err(|e| boundary_error(e, pair, "preparing the chunk boundary query"))?;
        loop {
            check()?;
            if let Some(t) = self.throttle {
                t.wait_clear().await?;
            }
            let rows = counters.rows_target.load(Ordering::Relaxed);
            let boundary = match &lower {
                None => client.query_opt(&first_boundary, &[&rows]).await,
                Some(lo) => {
                    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&rows];
                    params.extend(lo.iter().map(|v| v as &(dyn ToSql + Sync)));
                    client.query_opt(&next_boundary, &params).await
                }
            }
            .map_err(|e| boundary_error(e, pair, "finding the next chunk boundary"))?;
            let upper: Bound = boundary.map(|row| (0..p.key.len()).map(|i| row.get(i)).collect());
            let last = upper.is_none();
            if let Some(checkpoint) = self.checkpoint {
                checkpoint
                    .chunk_planned(client, seq, pair.checkpoint_name(), &lower, &upper)
                    .await?;
            }
            let range = Range {
                seq,
                pair: start.pair,
                lower: lower.clone(),
                upper: upper.clone(),
                pages: 0,
            };
            seq += 1;
            if tx.send(range).await.is_err() {
                return Ok(None);
            }
            if last {
                return Ok(Some(seq));
            }
            lower = upper;
        }
    }

    /// Queues the TID-range chunks of the plain table, numbered from `start.seq`: page ranges of
    /// `pages_target` pages from page 0, the first sized from `initial_rows` and the rows per
    /// page `pg_class` estimates; the table's size is read again when the ranges reach it, so
    /// pages added during the copy get bounded ranges too, and the last range, open-ended,
    /// covers less than one chunk when planned. Returns the next sequence number, or `None`
    /// when the workers are gone.
    async fn plan_tid_pair(
        &self,
        client: &Client,
        start: Range,
        counters: &Counters,
        tx: &mpsc::Sender<Range>,
        check: &impl Fn() -> Result<()>,
    ) -> Result<Option<i64>> {
        // TID ranges are used on a plain table only (the run falls back to key ranges), whose
        // one pair is the original.
        let (mut heap_pages, per_page) =
            tid_chunks::heap_pages(client, self.plan.original.oid).await?;
        // `max_chunk_rows` in pages; each range is clamped to it as it is planned.
        let max_pages =
            ((self.options.max_chunk_rows as f64 / per_page) as i64).clamp(1, 1_000_000);
        let first = (self.options.initial_rows as f64 / per_page).ceil() as i64;
        counters
            .pages_target
            .store(first.clamp(1, max_pages), Ordering::Relaxed);
        let (mut seq, mut lower) = (start.seq, 0i64);
        loop {
            check()?;
            if let Some(t) = self.throttle {
                t.wait_clear().await?;
            }
            let pages = counters.pages_target.load(Ordering::Relaxed).min(max_pages);
            if lower + pages >= heap_pages {
                // The table may have grown since: plan bounded ranges over what was added,
                // and leave only the tail of less than one chunk to the open-ended one.
                heap_pages = tid_chunks::heap_pages(client, self.plan.original.oid)
                    .await?
                    .0;
            }
            let last = lower + pages >= heap_pages;
            let range = Range {
                seq,
                pair: start.pair,
                lower: Some(tid_chunks::bound(lower)),
                upper: (!last).then(|| tid_chunks::bound(lower + pages)),
                pages,
            };
            seq += 1;
            if tx.send(range).await.is_err() {
                return Ok(None);
            }
            if last {
                return Ok(Some(seq));
            }
            lower += pages;
        }
    }

    /// The copy statement for `range` on `worker`: prepared on the worker's first chunk of
    /// that pair with those bounds (open or closed), then taken from `prepared`.
    async fn statement(
        &self,
        worker: &Client,
        pair: &Pair,
        range: &Range,
        prepared: &mut CopyStatements,
    ) -> Result<Statement> {
        let shape = (range.pair, range.lower.is_some(), range.upper.is_some());
        if let Some(statement) = prepared.get(&shape) {
            return Ok(statement.clone());
        }
        // Test-only broken ordering (never in a normal build): rows the applier running
        // during the backfill wrote first are kept.
        let conflict = if broken!(self.probe, ApplyDuringCopy) {
            " ON CONFLICT DO NOTHING"
        } else {
            ""
        };
        let projection = &self.plan.projection;
        let sql = match self.options.chunk_by {
            ChunkBy::Key => projection.copy_sql(&pair.original, &pair.shadow, shape.1, shape.2),
            ChunkBy::Tid => projection.tid_copy_sql(&pair.original, &pair.shadow, shape.2),
        };
        let statement = worker
            .prepare(&format!("{sql}{conflict}"))
            .await
            .map_err(|e| copy_error(e, self.plan, pair))?;
        prepared.insert(shape, statement.clone());
        Ok(statement)
    }

    /// One copy worker, number `index.0` of `index.1`: takes ranges until the planner is
    /// done (paced, only while the pacing allows that many workers).
    async fn copy_ranges(
        &self,
        worker: &Client,
        pairs: &[Pair],
        index: (usize, usize),
        rx: &Mutex<mpsc::Receiver<Range>>,
        counters: &Counters,
    ) -> Result<()> {
        let mut prepared = CopyStatements::new();
        loop {
            if let Some(pace) = self.pace {
                pace.worker_turn(index.0, index.1).await;
            }
            let next = rx.lock().await.recv().await;
            let Some(range) = next else {
                return Ok(());
            };
            // A range planned before the throttle started waits too.
            if let Some(t) = self.throttle {
                t.wait_clear().await?;
            }
            let pair = &pairs[range.pair];
            let statement = self.statement(worker, pair, &range, &mut prepared).await?;
            self.copy_chunk(worker, pair, &statement, &range, counters)
                .await?;
        }
    }

    /// Copies one range, counts it and sizes the next chunk from its duration.
    async fn copy_chunk(
        &self,
        worker: &Client,
        pair: &Pair,
        statement: &Statement,
        range: &Range,
        counters: &Counters,
    ) -> Result<()> {
        let (lower, upper) = (&range.lower, &range.upper);
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        for bound in [lower, upper].into_iter().flatten() {
            params.extend(bound.iter().map(|v| v as &(dyn ToSql + Sync)));
        }
        let chunk_start = Instant::now();
        let rows_planned = counters.rows_target.load(Ordering::Relaxed);
        let n = self
            .execute_chunk(worker, pair, statement, &params, range)
            .await?;
        let took = chunk_start.elapsed();
        let total = counters.copied.fetch_add(n, Ordering::Relaxed) + n;
        counters.chunks.fetch_add(1, Ordering::Relaxed);
        self.progress.chunk_copied(took, total);
        pause_point!(
            self.probe,
            "copying",
            format!("range={} rows={n} total={total}", describe_range(range)),
            |c: &str| self.in_range(c, range)
        );
        tracing::debug!(rows = n, ms = took.as_millis() as u64, "chunk copied");
        if upper.is_some() {
            // The target chunk time can be changed at runtime on the control socket; pacing
            // shortens it.
            let mut target = self
                .controls
                .map(|c| c.chunk_time())
                .unwrap_or(self.options.chunk_time);
            if let Some(pace) = self.pace {
                target = pace.state().chunk_time(target);
            }
            match self.options.chunk_by {
                ChunkBy::Key => counters.rows_target.store(
                    next_chunk_rows(rows_planned, took, target).min(self.options.max_chunk_rows),
                    Ordering::Relaxed,
                ),
                ChunkBy::Tid => counters.pages_target.store(
                    next_chunk_pages(range.pages, took, target),
                    Ordering::Relaxed,
                ),
            }
        }
        if self.options.nice_ratio > 0.0 {
            tokio::time::sleep(took.mul_f64(self.options.nice_ratio)).await;
        }
        if let Some(pace) = self.pace {
            pace.pace(took).await;
        }
        Ok(())
    }

    /// Runs one chunk's statement in its own transaction; returns the rows copied. In a
    /// resumable run the transaction also marks the chunk done in the checkpoint.
    async fn execute_chunk(
        &self,
        worker: &Client,
        pair: &Pair,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
        range: &Range,
    ) -> Result<u64> {
        // Test-only: with `chunk-open` armed for this chunk, the chunk runs in an explicit
        // transaction and stops between its statement (its snapshot) and its commit.
        let in_range = |c: &str| self.in_range(c, range);
        let paused = pause_armed!(self.probe, "chunk-open", in_range);
        if !paused && self.checkpoint.is_none() {
            return worker
                .execute(statement, params)
                .await
                .map_err(|e| copy_error(e, self.plan, pair));
        }
        // A resumable run marks the chunk started outside its transaction (so the mark
        // survives the chunk's rollback), then opens it.
        if let Some(checkpoint) = self.checkpoint {
            checkpoint.chunk_started(worker, range.seq).await?;
        }
        worker.batch_execute("BEGIN").await?;
        let n = match worker.execute(statement, params).await {
            Ok(n) => n,
            Err(e) => {
                worker.batch_execute("ROLLBACK").await.ok();
                return Err(copy_error(e, self.plan, pair));
            }
        };
        if let Some(checkpoint) = self.checkpoint {
            checkpoint.chunk_done(worker, range.seq, n).await?;
        }
        if paused {
            pause_point!(
                self.probe,
                "chunk-open",
                format!("range={} rows={n}", describe_range(range)),
                in_range
            );
        }
        worker
            .batch_execute("COMMIT")
            .await
            .context("committing a chunk")?;
        Ok(n)
    }

    /// Whether a pause point's condition names `range`: `key=N` a key range holding key N,
    /// `block=N` a TID range holding heap page N (test hooks, [`crate::testing`]).
    fn in_range(&self, condition: &str, range: &Range) -> bool {
        let (lower, upper) = (range.lower.as_deref(), range.upper.as_deref());
        match self.options.chunk_by {
            ChunkBy::Key => crate::testing::key_in_range(condition, lower, upper),
            ChunkBy::Tid => crate::testing::block_in_range(condition, lower, upper),
        }
    }
}

/// The index in `pairs` of the checkpoint's `partition` (`None` for a plain table).
/// Errors: the checkpoint names a partition the table no longer has (the resume's
/// fingerprint check refuses a changed tree first).
fn pair_index(pairs: &[Pair], partition: Option<&str>) -> Result<usize> {
    pairs
        .iter()
        .position(|p| p.checkpoint_name() == partition)
        .with_context(|| {
            format!(
                "the checkpoint names partition {}, which the table does not have: the partition tree changed since the interrupted run; run doppel cleanup and start again",
                partition.unwrap_or("(none)")
            )
        })
}

/// `(lo, hi]` of a chunk for pause-point details (`-inf`/`+inf` for open bounds).
#[cfg(feature = "pause-points")]
fn describe_range(Range { lower, upper, .. }: &Range) -> String {
    let show = |b: &Bound, open: &str| match b {
        None => open.to_string(),
        Some(values) => values
            .iter()
            .map(|v| v.clone().unwrap_or_else(|| "NULL".into()))
            .collect::<Vec<_>>()
            .join(","),
    };
    format!("({}, {}]", show(lower, "-inf"), show(upper, "+inf"))
}

/// A failed chunk boundary query (`what`) of `pair`: a leaf partition dropped or re-bound
/// during the run is a conflict (exit 8), as in [`copy_error`].
fn boundary_error(e: tokio_postgres::Error, pair: &Pair, what: &str) -> anyhow::Error {
    if let Some(changed) = e.as_db_error().and_then(|db| pair.changed(db)) {
        return changed;
    }
    anyhow::Error::new(e).context(format!("{what}{}", pair.in_partition()))
}

/// A failed chunk of `pair`: rows the new schema rejects are a conflict (exit 8), and so is
/// a leaf partition dropped or re-bound during the run.
fn copy_error(e: tokio_postgres::Error, plan: &Plan, pair: &Pair) -> anyhow::Error {
    let Some(db) = e.as_db_error() else {
        return anyhow::Error::new(e).context(format!("copying a chunk{}", pair.in_partition()));
    };
    if let Some(missing) = crate::failure::partition_missing(db, &plan.original.qualified()) {
        return missing;
    }
    if let Some(changed) = pair.changed(db) {
        return changed;
    }
    let failed = format!(
        "copying rows of {}{} into the new schema failed: {}{}",
        plan.original.qualified(),
        pair.in_partition(),
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
    fn chunk_pages_follow_time_within_bounds() {
        let target = Duration::from_millis(100);
        assert_eq!(next_chunk_pages(10, Duration::from_millis(50), target), 20);
        assert_eq!(next_chunk_pages(10, Duration::from_secs(1), target), 5);
        assert_eq!(next_chunk_pages(1, Duration::from_secs(1), target), 1);
        assert_eq!(next_chunk_pages(900_000, Duration::ZERO, target), 1_000_000);
    }

    #[test]
    fn decoded_chunks_fill_half_the_decoding_memory_between_the_workers() {
        // 256 MiB, rows of 128 bytes (+128 counted by the reorder buffer), 2 workers: each
        // chunk may fill 64 MiB, 262,144 rows.
        let mib = 1024.0 * 1024.0;
        assert_eq!(decoded_chunk_rows(256.0 * mib, 128.0, 2), 262_144);
        assert_eq!(decoded_chunk_rows(256.0 * mib, 128.0, 4), 131_072);
        // Wide rows: fewer; a tiny setting still copies MIN_CHUNK_ROWS at a time.
        assert_eq!(decoded_chunk_rows(256.0 * mib, 8064.0, 2), 8_192);
        assert_eq!(decoded_chunk_rows(64.0 * 1024.0, 100.0, 2), MIN_CHUNK_ROWS);
        // A huge setting is bounded like any chunk; no worker counts as one.
        assert_eq!(decoded_chunk_rows(1e15, 100.0, 2), MAX_CHUNK_ROWS);
        assert_eq!(decoded_chunk_rows(256.0 * mib, 128.0, 0), 524_288);
    }

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
