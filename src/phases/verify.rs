//! Verification: the original and the shadow (or, after a cutover, the kept old table and the
//! new one) compared chunk by chunk — row count and an order-independent hash of the projected
//! rows — with one short REPEATABLE READ snapshot per chunk covering both tables (docs/design.md
//! §1.6, I1, I4).
//!
//! Inside a run ([`verify`]) the shadow trails the original by the stream, so a chunk that
//! differs is re-checked after a fence proves the applier has caught up with everything
//! committed before the comparison. A chunk that still differs after several fences is one the
//! workload keeps changing: its differing keys (at most [`MAX_UNSETTLED`]) are handed to the
//! cutover, which re-checks them under the lock, when nothing can change them. More than that
//! is an unexplained mismatch and stops the run.
//!
//! On demand (`doppel verify`, [`check`]) the same comparison runs from outside a run: during
//! a run against the run's shadow, where a differing key is re-checked a few times after a
//! pause (the live stream may not have applied it yet), or after a cutover against the kept
//! old table, whose columns are projected onto the new table's by name.
//!
//! A partitioned table is verified partition by partition (issue 15, docs/design.md §1.14):
//! each leaf partition against the shadow leaf of the same bound, so a row the stream wrote
//! into the wrong partition is a difference too, and the report has each partition's rows.
//!
//! Inside a run the verification yields to the server as the backfill does ([`Pace`]): no
//! chunk starts while the run is throttled, and `--nice-ratio` sleeps after each chunk. It is
//! a full read of both tables, so a DBA who throttles doppel to protect the workload needs it
//! to stop too.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use std::collections::{HashMap, HashSet};
use tokio_postgres::types::ToSql;

use tokio_postgres::{Client, GenericClient, IsolationLevel, Row, Transaction};

use crate::model::catalog::{self, Table};
use crate::model::names::Names;
use crate::model::projection::{ColumnMap, KeyColumn, Projection, Side, key_arrays};
use crate::phases::apply::Applier;
use crate::phases::fence::Fencer;
use crate::phases::shadow::pairs;
use crate::plan::Plan;
use crate::sql::{ident, literal};
use crate::testing::{Probe, broken, pause_point};

/// Rows per verification chunk (the default of `--verify-chunk-rows`).
pub const VERIFY_CHUNK_ROWS: i64 = 250_000;
/// Fenced re-checks of a differing chunk before its keys are deferred to the cutover.
pub const RECHECKS: usize = 5;
/// Keys that may be deferred to the cutover.
pub const MAX_UNSETTLED: usize = 1_000;

/// A key's values as text, in the source's key column order (`None` for NULL).
pub type Key = Vec<Option<String>>;

/// Outcome of a verification pass.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Chunks compared.
    pub chunks: u64,
    /// Rows compared (original side).
    pub rows: u64,
    /// Chunk comparisons repeated after a fence.
    pub rechecks: u64,
    /// Keys (original key values as text) still differing; re-checked under the cutover lock.
    pub unsettled: Vec<Key>,
    /// A partitioned table's leaf partitions, in tree order, each with what was verified of
    /// it; empty for a plain table.
    pub partitions: Vec<PartitionVerified>,
}

/// What the verification compared of one leaf partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionVerified {
    /// The partition, `schema.name`.
    pub name: String,
    /// Rows compared (original side).
    pub rows: u64,
    /// Chunks compared.
    pub chunks: u64,
    /// Keys of the partition deferred to the cutover's re-check.
    pub unsettled: usize,
}

/// How the run's verification yields to the server between chunks.
#[derive(Clone, Copy, Default)]
pub struct Pace<'a> {
    /// While it reports a throttle reason, no chunk starts (checked before each chunk).
    pub throttle: Option<&'a crate::ops::throttle::Throttler>,
    /// Sleep after each chunk, as a multiple of the time its comparison took (0 = none;
    /// gh-ost's `--nice-ratio`, shared with the backfill).
    pub nice_ratio: f64,
    /// Where rows verified so far are counted (`rows_verified` of the status).
    pub progress: Option<&'a crate::ops::progress::Progress>,
    /// `--max-write-latency`: the pause after each chunk ([`crate::ops::pacing`]).
    pub pacing: Option<&'a crate::ops::pacing::PaceHandle>,
    /// The run's test hooks ([`crate::testing`]); none from outside a run.
    pub probe: Option<&'a Probe>,
}

/// How a difference is given time to settle before it is compared again.
enum Settle<'a> {
    /// Inside a run: a fence, once applied, proves every change committed before it is in the
    /// shadow.
    Fence(&'a Fencer, &'a Applier),
    /// From outside a run: wait this long (the run's applier keeps going meanwhile).
    Wait(Duration),
}

impl Settle<'_> {
    async fn wait(&self) -> Result<()> {
        match self {
            Settle::Fence(fencer, applier) => {
                let n = fencer.emit().await?;
                applier.wait_fence(n, Duration::from_secs(60)).await
            }
            Settle::Wait(pause) => {
                tokio::time::sleep(*pause).await;
                Ok(())
            }
        }
    }
}

/// What to compare: `source` (the original, or the kept old table) projected through
/// `projection` against `target` (the shadow, or the new table). Names are quoted SQL.
struct Pair<'a> {
    projection: &'a Projection,
    source: String,
    target: String,
}

/// Limits of one comparison pass.
struct Limits {
    chunk_rows: i64,
    rechecks: usize,
    max_keys: usize,
    /// Stop at the first overflow (a run refuses at once) or go on counting (the command).
    stop_on_overflow: bool,
}

/// A difference too large to list key by key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Overflow {
    /// A chunk differed in more than `max_keys` rows (or in no nameable row) after every
    /// re-check: its source and target row counts.
    Chunk { source_rows: i64, target_rows: i64 },
    /// More than `max_keys` keys still differ in total.
    Keys,
}

/// Raw result of a comparison pass.
#[derive(Debug, Default)]
struct Comparison {
    chunks: u64,
    rows: u64,
    target_rows: u64,
    rechecks: u64,
    differing_chunks: u64,
    keys: Vec<Key>,
    overflow: Option<Overflow>,
}

/// Compares every chunk. Errors: an unexplained mismatch (with example keys), or a failure.
///
/// `client` lists chunks and hashes the original's side; `peer` hashes the shadow's side at the
/// same time, under the same exported snapshot. Chunks hold `chunk_rows` rows (the last one
/// fewer); `pace` says when to wait between them. Errors also when the throttle's critical
/// condition aborts the run while it waits.
pub async fn verify(
    client: &mut Client,
    peer: &mut Client,
    plan: &Plan,
    fencer: &Fencer,
    applier: &Applier,
    chunk_rows: i64,
    pace: &Pace<'_>,
) -> Result<VerifyReport> {
    let limits = Limits {
        chunk_rows: chunk_rows.max(1),
        rechecks: RECHECKS,
        max_keys: MAX_UNSETTLED,
        stop_on_overflow: true,
    };
    if let Some(progress) = pace.progress {
        progress.update(|s| s.rows_verified = 0);
    }
    let mut report = VerifyReport::default();
    let pairs = pairs::of(plan);
    let count = pairs.len();
    for (i, tables) in pairs.into_iter().enumerate() {
        if let (Some(step), Some(progress)) = (tables.step(i, count), pace.progress) {
            progress.update(|s| s.step = Some(step));
        }
        let pair = Pair {
            projection: &plan.projection,
            source: tables.original.clone(),
            target: tables.shadow.clone(),
        };
        let settle = Settle::Fence(fencer, applier);
        let c = compare_all(client, peer, &pair, &limits, &settle, pace)
            .await
            .map_err(|e| partition_error(e, &tables))?;
        if let Some(overflow) = &c.overflow {
            return Err(overflow_error(plan, &tables, overflow, &c));
        }
        report.chunks += c.chunks;
        report.rows += c.rows;
        report.rechecks += c.rechecks;
        if let Some(name) = tables.partition.clone() {
            tracing::info!(
                rows = c.rows,
                chunks = c.chunks,
                deferred_keys = c.keys.len(),
                "partition {name} verified"
            );
            report.partitions.push(PartitionVerified {
                name,
                rows: c.rows,
                chunks: c.chunks,
                unsettled: c.keys.len(),
            });
        }
        report.unsettled.extend(c.keys);
        if report.unsettled.len() > MAX_UNSETTLED {
            // The keys come from every partition verified so far: name those that had some.
            let located = pairs::Pair {
                partition: tables.partition.as_ref().map(|_| {
                    report
                        .partitions
                        .iter()
                        .filter(|p| p.unsettled > 0)
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", partition ")
                }),
                ..tables
            };
            let c = Comparison {
                keys: std::mem::take(&mut report.unsettled),
                ..Comparison::default()
            };
            return Err(overflow_error(plan, &located, &Overflow::Keys, &c));
        }
    }
    if let Some(progress) = pace.progress {
        progress.update(|s| s.step = None);
    }
    Ok(report)
}

/// A failed comparison of `tables`: a leaf partition dropped or re-bound during the run (met
/// first here when its copy was done) is a conflict (exit 8,
/// [`crate::failure::partition_changed`]); other errors are returned as they are.
fn partition_error(e: anyhow::Error, tables: &pairs::Pair) -> anyhow::Error {
    let changed = e
        .chain()
        .find_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .and_then(tokio_postgres::Error::as_db_error)
        .and_then(|db| tables.changed(db));
    changed.unwrap_or(e)
}

/// The verification failure (exit 6) for a difference that did not settle in `tables`.
fn overflow_error(
    plan: &Plan,
    tables: &pairs::Pair,
    overflow: &Overflow,
    c: &Comparison,
) -> anyhow::Error {
    let table = format!("{}{}", plan.original.qualified(), tables.in_partition());
    let message = match overflow {
        Overflow::Chunk {
            source_rows,
            target_rows,
        } => format!(
            "verification failed: more than {MAX_UNSETTLED} rows of a chunk of {table} differ from the shadow (original {source_rows} rows, shadow {target_rows} rows) and the difference did not settle; refusing to cut over, the original table is untouched",
        ),
        Overflow::Keys => format!(
            "verification failed: {} rows of {table} still differ from the shadow after {RECHECKS} fenced re-checks (for example key {}); refusing to cut over, the original table is untouched",
            c.keys.len(),
            describe_key(c.keys.first().map(Vec::as_slice).unwrap_or_default())
        ),
    };
    crate::failure::fail(crate::failure::FailureKind::Verification, message)
}

/// The chunk loop shared by the run's verification and `doppel verify`.
async fn compare_all(
    client: &mut Client,
    peer: &mut Client,
    pair: &Pair<'_>,
    limits: &Limits,
    settle: &Settle<'_>,
    pace: &Pace<'_>,
) -> Result<Comparison> {
    let (table, shadow) = (&pair.source, &pair.target);
    let p = pair.projection;
    let mut report = Comparison::default();
    let mut lower: Option<Key> = None;
    let mut pending: Vec<Vec<Key>> = Vec::new();
    let first_boundary = p.chunk_boundary_sql(table, false);
    let next_boundary = p.chunk_boundary_sql(table, true);
    // The next chunk's upper bound, found with this chunk's comparison.
    let mut prefetched: Option<Option<Key>> = None;
    let probe = pace.probe.cloned().unwrap_or_default();
    loop {
        if pending.iter().map(Vec::len).sum::<usize>() > PENDING_KEYS {
            settle_keys(&*client, pair, limits, settle, &mut pending, &mut report).await?;
            if report.overflow.is_some() && limits.stop_on_overflow {
                return Ok(report);
            }
        }
        if let Some(t) = pace.throttle {
            t.wait_clear().await?;
        }
        let upper = match prefetched.take() {
            Some(upper) => upper,
            None => {
                let sql = if lower.is_some() {
                    &next_boundary
                } else {
                    &first_boundary
                };
                chunk_upper(&*client, sql, limits.chunk_rows, lower.as_ref()).await?
            }
        };
        let mut params: Vec<Option<String>> = Vec::new();
        if let Some(lo) = &lower {
            params.extend(lo.iter().cloned());
        }
        if let Some(hi) = &upper {
            params.extend(hi.iter().cloned());
        }
        let (has_lower, has_upper) = (lower.is_some(), upper.is_some());
        let source_sql = p.verify_source_sql(table, has_lower, has_upper);
        let target_sql = p.verify_target_sql(shadow, has_lower, has_upper);
        let range = describe_range(lower.as_deref(), upper.as_deref());
        let mut attempt = 0;
        let mut took = Duration::ZERO;
        loop {
            let started = std::time::Instant::now();
            let next = match (&upper, attempt) {
                (Some(hi), 0) => Some(NextBoundary {
                    sql: &next_boundary,
                    chunk_rows: limits.chunk_rows,
                    lower: hi,
                }),
                _ => None,
            };
            let (a, b, after) = compare(
                client,
                peer,
                &source_sql,
                &target_sql,
                &params,
                next,
                &probe,
            )
            .await?;
            if attempt == 0 {
                prefetched = after;
                took = started.elapsed();
                report.rows += a.0 as u64;
                report.target_rows += b.0 as u64;
                if let Some(progress) = pace.progress {
                    progress.update(|s| s.rows_verified += a.0 as u64);
                }
            }
            if a == b {
                break;
            }
            // The shadow may trail the stream: find the differing keys (cheap when few), then
            // re-check just those after the difference had time to settle.
            let chunk = Chunk {
                params: &params,
                has_lower,
                has_upper,
                buckets: buckets(limits.chunk_rows),
            };
            let keys =
                differing_in_chunk(client, peer, pair, &chunk, limits.max_keys + 1, &probe).await?;
            if keys.is_empty() {
                // The listing compares every row of the range on both sides under one
                // snapshot: none differs, so the change in flight at the comparison
                // has been applied since, and the range is equal at that later snapshot.
                break;
            }
            if keys.len() > limits.max_keys {
                // Too many to track one by one: re-check the whole chunk.
                if attempt == limits.rechecks {
                    report.differing_chunks += 1;
                    report.overflow = Some(Overflow::Chunk {
                        source_rows: a.0,
                        target_rows: b.0,
                    });
                    if limits.stop_on_overflow {
                        return Ok(report);
                    }
                    for key in keys {
                        if report.keys.len() >= limits.max_keys {
                            break;
                        }
                        if !report.keys.contains(&key) {
                            report.keys.push(key);
                        }
                    }
                    break;
                }
                attempt += 1;
                report.rechecks += 1;
                tracing::info!(
                    "chunk {range} not settled yet (source {} rows, target {} rows, {} key(s) listed): changes still in flight from the stream; comparing it again once they are applied (pass {attempt} of {})",
                    a.0,
                    b.0,
                    keys.len(),
                    limits.rechecks
                );
                settle.wait().await?;
                continue;
            }
            // Few keys: re-checked with those of the other differing chunks after one fence
            // per round (`settle_keys`), not one fence per chunk.
            pending.push(keys);
            break;
        }
        report.chunks += 1;
        if pace.nice_ratio > 0.0 {
            tokio::time::sleep(took.mul_f64(pace.nice_ratio)).await;
        }
        if let Some(pacing) = pace.pacing {
            pacing.pace(took).await;
        }
        match upper {
            Some(hi) => lower = Some(hi),
            None => break,
        }
    }
    settle_keys(&*client, pair, limits, settle, &mut pending, &mut report).await?;
    Ok(report)
}

/// Keys listed as differing that [`compare_all`] holds before re-checking them: past this
/// many, it settles them before the next chunk (memory stays bounded on a huge table whose
/// every chunk differs).
const PENDING_KEYS: usize = 10 * MAX_UNSETTLED;

/// Re-checks `pending` (the differing keys of each chunk that differed, listed when there
/// were at most `max_keys`) after a fence, up to `limits.rechecks` rounds: one fence per
/// round for all the chunks, so under a writer, where most chunks differ by a change still in
/// flight, the verification waits for the applier once per round instead of once per chunk.
/// The keys still differing after the last round go to `report.keys` (the cutover re-checks
/// them under the lock); more than `max_keys` of them is [`Overflow::Keys`].
async fn settle_keys(
    client: &Client,
    pair: &Pair<'_>,
    limits: &Limits,
    settle: &Settle<'_>,
    pending: &mut Vec<Vec<Key>>,
    report: &mut Comparison,
) -> Result<()> {
    for round in 1..=limits.rechecks {
        pending.retain(|keys| !keys.is_empty());
        let Some(example) = pending.first().and_then(|keys| keys.first()) else {
            break;
        };
        report.rechecks += pending.len() as u64;
        tracing::info!(
            "{} key(s) still in flight from the stream in {} chunk(s) (for example {}); comparing them again once applied (pass {round} of {})",
            pending.iter().map(Vec::len).sum::<usize>(),
            pending.len(),
            describe_key(example),
            limits.rechecks
        );
        settle.wait().await?;
        for keys in pending.iter_mut() {
            *keys = differing_keys_between(client, pair, keys).await?;
        }
    }
    for keys in pending.drain(..) {
        if !keys.is_empty() {
            report.differing_chunks += 1;
        }
        // Past `max_keys` the pass has overflowed: the keys after are not kept.
        for key in keys {
            if report.keys.len() > limits.max_keys {
                break;
            }
            if !report.keys.contains(&key) {
                report.keys.push(key);
            }
        }
    }
    if report.keys.len() > limits.max_keys {
        if report.overflow.is_none() {
            report.overflow = Some(Overflow::Keys);
        }
        report.keys.truncate(limits.max_keys);
    }
    Ok(())
}

/// The next chunk's boundary, to be found while a chunk is compared: the key `chunk_rows` rows
/// after `lower`, by `sql` ([`Projection::chunk_boundary_sql`] with a lower bound).
struct NextBoundary<'a> {
    sql: &'a str,
    chunk_rows: i64,
    lower: &'a Key,
}

/// The upper bound of the chunk of `chunk_rows` rows after `lower` (the first chunk when
/// `None`), by `sql` ([`Projection::chunk_boundary_sql`]): the key of its last row, or `None`
/// when fewer rows are left (the chunk runs to the end of the table). Any snapshot will do:
/// the bounds only partition the key space, each chunk is compared under its own snapshot.
async fn chunk_upper(
    client: &impl GenericClient,
    sql: &str,
    chunk_rows: i64,
    lower: Option<&Key>,
) -> Result<Option<Key>> {
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&chunk_rows];
    if let Some(lo) = lower {
        params.extend(lo.iter().map(|v| v as &(dyn ToSql + Sync)));
    }
    let row = client
        .query_opt(sql, &params)
        .await
        .context("finding a verification chunk")?;
    Ok(row.map(|row| (0..row.len()).map(|i| row.get(i)).collect()))
}

/// `(count, hash)` of the original's and the shadow's chunk, computed in parallel on two
/// sessions that share one snapshot ([`shared_snapshot`]). With `next`, the control session
/// also finds the next chunk's upper bound once it has hashed the original's side; it is
/// returned as the third member (`None` when not asked).
///
/// The bound is read on the session that already holds the original's lock. On the peer it
/// would overlap the original's hash (the longer side) but take a second lock on the
/// original while the control session's transaction holds one and waits, in doppel, for the
/// peer: an `ACCESS EXCLUSIVE` request queued between the two (an `ALTER TABLE`, a
/// partition dropped) would wait for the control session, the peer for it, and the control
/// session for the peer, a cycle PostgreSQL's deadlock detector cannot see.
async fn compare(
    client: &mut Client,
    peer: &mut Client,
    source_sql: &str,
    target_sql: &str,
    params: &[Option<String>],
    next: Option<NextBoundary<'_>>,
    probe: &Probe,
) -> Result<((i64, String), (i64, String), Option<Option<Key>>)> {
    let (ta, tb) = shared_snapshot(client, peer).await?;
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    // Test-only broken ordering (never in a normal build): the bound read on the peer.
    let on_peer = broken!(probe, BoundOnPeer);
    let bound_on = |peer_side: bool| next.as_ref().filter(|_| on_peer == peer_side);
    let original_side = hash_side(
        &ta,
        source_sql,
        &refs,
        "an original",
        bound_on(false),
        probe,
    );
    let shadow_side = hash_side(&tb, target_sql, &refs, "a shadow", bound_on(true), probe);
    let (a, b) = tokio::join!(original_side, shadow_side);
    let ((a, after_a), (b, after_b)) = (a?, b?);
    tb.commit().await?;
    ta.commit().await?;
    Ok((
        (a.get(0), a.get(1)),
        (b.get(0), b.get(1)),
        after_a.or(after_b),
    ))
}

/// One side of [`compare`] on `t`: the chunk's `(count, hash)` by `sql`, then, with `next`,
/// the next chunk's upper bound ([`chunk_upper`], after the `verify-bound` pause point).
/// `side` names the table in the error ("an original", "a shadow").
async fn hash_side(
    t: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    side: &str,
    next: Option<&NextBoundary<'_>>,
    probe: &Probe,
) -> Result<(Row, Option<Option<Key>>)> {
    let row = t
        .query_one(sql, params)
        .await
        .with_context(|| format!("hashing {side} chunk"))?;
    let Some(next) = next else {
        return Ok((row, None));
    };
    pause_point!(probe, "verify-bound", describe_key(next.lower));
    let upper = chunk_upper(t, next.sql, next.chunk_rows, Some(next.lower)).await?;
    Ok((row, Some(upper)))
}

/// Two read-only REPEATABLE READ transactions, on `client` and `peer`, that see one snapshot
/// (`pg_export_snapshot` / `SET TRANSACTION SNAPSHOT`).
async fn shared_snapshot<'a>(
    client: &'a mut Client,
    peer: &'a mut Client,
) -> Result<(Transaction<'a>, Transaction<'a>)> {
    let ta = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let snapshot: String = ta
        .query_one("SELECT pg_export_snapshot()", &[])
        .await?
        .get(0);
    let tb = peer
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    tb.batch_execute(&format!("SET TRANSACTION SNAPSHOT {}", literal(&snapshot)))
        .await
        .context("sharing the verification snapshot")?;
    Ok((ta, tb))
}

/// One chunk's key range: its bounds as text parameters (lower first), which bounds there
/// are, and the buckets its differences are located by.
struct Chunk<'a> {
    params: &'a [Option<String>],
    has_lower: bool,
    has_upper: bool,
    buckets: u32,
}

/// Buckets a chunk of `chunk_rows` rows is grouped into when it differs: a power of two, 32
/// to 64 rows a bucket (4,096 for the default 250,000-row chunk), from 64 to 65,536 buckets
/// (past 4.2M-row chunks, more rows a bucket).
fn buckets(chunk_rows: i64) -> u32 {
    let per_bucket = u64::try_from(chunk_rows / 64).unwrap_or(0);
    per_bucket.clamp(64, 1 << 16).next_power_of_two() as u32
}

/// Rows of the differing buckets that [`differing_in_chunk`] reads into memory at most, on
/// each side (about 100 bytes each); past it, the examples are listed by one statement.
const MAX_LISTED_ROWS: i64 = 100_000;

/// The keys (at most `limit`, the original's first) whose projected rows differ between the
/// original's and the shadow's `chunk`, under one snapshot shared by two sessions.
///
/// Two passes on each side, in parallel: the rows' hashes grouped by bucket (low bits of the
/// hash), then the rows of just the buckets whose count or hash differ, compared here. A row
/// found on one side only moves its bucket's aggregate there, and a row whose hash differs
/// moves the aggregates of its buckets on both sides, so every differing row is in a
/// differing bucket (barring a 64-bit XOR cancellation within one bucket, as for the chunk's
/// own hash). With a few changes in flight this costs two reads of the chunk, where one
/// statement that sets the sides against each other costs about four times as much
/// (BENCHMARKS.md, "Locating a chunk's differences"). Past `2 * limit` differing buckets at
/// least `limit` keys differ, and past [`MAX_LISTED_ROWS`] rows in them the listing would be
/// large: then that statement ([`Projection::diff_keys_sql`]) lists examples, at most
/// `limit`. Both sessions run the passes with `work_mem` 64MB (`SET LOCAL`), room for the
/// grouping's hash table. Errors: a failed statement, named by pass and side.
async fn differing_in_chunk(
    client: &mut Client,
    peer: &mut Client,
    pair: &Pair<'_>,
    chunk: &Chunk<'_>,
    limit: usize,
    probe: &Probe,
) -> Result<Vec<Key>> {
    let p = pair.projection;
    let (lo, hi, n) = (chunk.has_lower, chunk.has_upper, chunk.buckets);
    let (ta, tb) = shared_snapshot(client, peer).await?;
    // Without room for the grouping's hash table the planner sorts the chunk instead.
    let room = "SET LOCAL work_mem = '64MB'";
    tokio::try_join!(ta.batch_execute(room), tb.batch_execute(room))
        .context("setting work_mem for listing a chunk's differences")?;
    let mut refs: Vec<&(dyn ToSql + Sync)> = chunk
        .params
        .iter()
        .map(|v| v as &(dyn ToSql + Sync))
        .collect();
    let sql = (
        p.bucket_sql(Side::Original, &pair.source, lo, hi, n),
        p.bucket_sql(Side::Shadow, &pair.target, lo, hi, n),
    );
    let (a, b) = on_both(&ta, &tb, &sql, &refs, "grouping a chunk by hash").await?;
    let (differing, rows) = differing_buckets(&a, &b);
    let keys = if differing.is_empty() {
        tb.commit().await?;
        Vec::new()
    } else if differing.len() > limit.saturating_mul(2) || rows > MAX_LISTED_ROWS {
        // The statement reads the shadow on the control session: the peer's transaction,
        // which holds the shadow's lock, ends first. Kept open, an `ACCESS EXCLUSIVE`
        // request on the shadow queued behind it would wait for the peer, the control
        // session for the request, and the peer's commit for the control session, a cycle
        // through doppel the server cannot detect (see [`compare`]).
        tb.commit().await?;
        pause_point!(probe, "verify-except", pair.target.clone());
        let sql = p.diff_keys_sql(&pair.source, &pair.target, lo, hi);
        listed_by_except(&ta, &sql, &refs, limit).await?
    } else {
        refs.push(&differing);
        let sql = (
            p.bucket_rows_sql(Side::Original, &pair.source, lo, hi, n),
            p.bucket_rows_sql(Side::Shadow, &pair.target, lo, hi, n),
        );
        let (a, b) = on_both(&ta, &tb, &sql, &refs, "listing a chunk's differing rows").await?;
        tb.commit().await?;
        differing_rows(&a, &b, limit)
    };
    ta.commit().await?;
    Ok(keys)
}

/// The differing keys of a chunk by [`Projection::diff_keys_sql`] (`sql`), whose range
/// parameters `refs` are passed for each side, at most `limit`.
async fn listed_by_except(
    t: &Transaction<'_>,
    sql: &str,
    refs: &[&(dyn ToSql + Sync)],
    limit: usize,
) -> Result<Vec<Key>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut all = refs.to_vec();
    all.extend(refs.iter().copied());
    all.push(&limit);
    let rows = t.query(sql, &all).await.context("listing differing keys")?;
    let mut keys: Vec<Key> = Vec::new();
    for row in &rows {
        let key: Key = row.get(0);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// Runs `sql.0` on the original's side (`ta`) and `sql.1` on the shadow's (`tb`) at once.
async fn on_both(
    ta: &Transaction<'_>,
    tb: &Transaction<'_>,
    sql: &(String, String),
    params: &[&(dyn ToSql + Sync)],
    what: &str,
) -> Result<(Vec<Row>, Vec<Row>)> {
    let (a, b) = tokio::join!(ta.query(&sql.0, params), tb.query(&sql.1, params));
    let a = a.with_context(|| format!("{what} (original)"))?;
    let b = b.with_context(|| format!("{what} (shadow)"))?;
    Ok((a, b))
}

/// Buckets whose `(bucket, rows, xor)` rows differ between the two sides (or that one side
/// lacks), in bucket order, and the rows they hold on the side that has more of them.
fn differing_buckets(a: &[Row], b: &[Row]) -> (Vec<i32>, i64) {
    let side = |rows: &[Row]| -> HashMap<i32, (i64, i64)> {
        rows.iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect()
    };
    let (a, b) = (side(a), side(b));
    let mut differing: Vec<i32> = a
        .iter()
        .filter(|(bucket, v)| b.get(bucket) != Some(v))
        .map(|(bucket, _)| *bucket)
        .chain(b.keys().filter(|bucket| !a.contains_key(bucket)).copied())
        .collect();
    differing.sort_unstable();
    let rows = |side: &HashMap<i32, (i64, i64)>| -> i64 {
        differing
            .iter()
            .filter_map(|bucket| side.get(bucket).map(|v| v.0))
            .sum()
    };
    let most = rows(&a).max(rows(&b));
    (differing, most)
}

/// Keys of the `(key, hash)` rows found on one side and not the other: the original's first,
/// each once, at most `limit`.
fn differing_rows(a: &[Row], b: &[Row], limit: usize) -> Vec<Key> {
    let decode =
        |rows: &[Row]| -> Vec<(Key, i64)> { rows.iter().map(|r| (r.get(0), r.get(1))).collect() };
    let (a, b) = (decode(a), decode(b));
    let sa: HashSet<&(Key, i64)> = a.iter().collect();
    let sb: HashSet<&(Key, i64)> = b.iter().collect();
    let differing = a
        .iter()
        .filter(|row| !sb.contains(row))
        .chain(b.iter().filter(|row| !sa.contains(row)));
    let mut keys: Vec<Key> = Vec::new();
    for (key, _) in differing {
        if keys.len() == limit {
            break;
        }
        if !keys.contains(key) {
            keys.push(key.clone());
        }
    }
    keys
}

/// `(v1, v2)`, NULLs as `NULL`.
pub fn describe_key(key: &[Option<String>]) -> String {
    format!(
        "({})",
        key.iter()
            .map(|v| v.clone().unwrap_or_else(|| "NULL".into()))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn describe_range(lower: Option<&[Option<String>]>, upper: Option<&[Option<String>]>) -> String {
    format!(
        "({}, {}]",
        lower.map(describe_key).unwrap_or_else(|| "start".into()),
        upper.map(describe_key).unwrap_or_else(|| "end".into())
    )
}

/// The keys among `keys` whose projected rows still differ between original and shadow
/// (read under the statement's snapshot). Used after fences and under the cutover lock.
pub async fn differing_keys(
    client: &impl GenericClient,
    plan: &Plan,
    keys: &[Key],
) -> Result<Vec<Key>> {
    let pair = Pair {
        projection: &plan.projection,
        source: plan.original.qualified(),
        target: plan.names.shadow_qualified(),
    };
    differing_keys_between(client, &pair, keys).await
}

async fn differing_keys_between(
    client: &impl GenericClient,
    pair: &Pair<'_>,
    keys: &[Key],
) -> Result<Vec<Key>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let columns = key_arrays(pair.projection.key.len(), keys);
    let refs: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    let sql = pair.projection.recheck_keys_sql(&pair.source, &pair.target);
    let rows = client
        .query(&sql, &refs)
        .await
        .context("re-checking differing keys")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

// ---------------------------------------------------------------------------------------------
// `doppel verify`: the comparison on demand.
// ---------------------------------------------------------------------------------------------

/// What `doppel verify` compares and how patiently.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The table, as SQL writes it (during a run: the original; after a cutover: the new
    /// table).
    pub table: String,
    /// After a cutover: the kept old table (`_doppel_<oid>_old_<name>`) to compare the new
    /// table with. Without it, `table` is compared with its run's shadow.
    pub against: Option<String>,
    /// The run's `--alter` clauses, for their `USING` expressions (optional: without them each
    /// old value is cast to the new column's type).
    pub alters: Vec<String>,
    /// The run's `--backfill` assignments (`column = expression` over the old row): a column
    /// of the new table that has one is compared with the expression's value, whether the
    /// old table has the column or not.
    pub backfills: Vec<String>,
    /// Rows per chunk.
    pub chunk_rows: i64,
    /// Re-checks of a differing key (or chunk) before it is reported.
    pub rechecks: usize,
    /// Pause before each re-check.
    pub recheck_interval: Duration,
    /// Differing keys listed at most.
    pub max_keys: usize,
    /// Parallel query workers each of the two sessions may use
    /// ([`crate::sql::parallel_workers_sql`]; 0 by default).
    pub parallel_workers: u32,
}

impl CheckOptions {
    /// Defaults for `table`: its run's shadow, 250,000-row chunks, 5 re-checks 1 s apart, at
    /// most 100 keys listed.
    pub fn new(table: &str) -> CheckOptions {
        CheckOptions {
            table: table.to_string(),
            against: None,
            alters: Vec::new(),
            backfills: Vec::new(),
            chunk_rows: VERIFY_CHUNK_ROWS,
            rechecks: RECHECKS,
            recheck_interval: Duration::from_secs(1),
            max_keys: 100,
            parallel_workers: 0,
        }
    }
}

/// How one key still differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDifference {
    /// The row is on both sides with different values.
    Values,
    /// Only the source (original / old table) has the row.
    MissingFromTarget,
    /// Only the target (shadow / new table) has the row.
    OnlyInTarget,
}

/// What `doppel verify` found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The source side (the original, or the kept old table), quoted.
    pub source: String,
    /// The target side (the shadow, or the new table), quoted.
    pub target: String,
    /// Columns compared (target names).
    pub compared_columns: Vec<String>,
    /// Target columns not compared: added by the ALTER, renamed, or generated.
    pub target_only_columns: Vec<String>,
    /// Source columns with no same-named target column (dropped or renamed).
    pub source_only_columns: Vec<String>,
    /// Chunks compared.
    pub chunks: u64,
    /// Rows on the source side.
    pub rows: u64,
    /// Rows on the target side.
    pub target_rows: u64,
    /// Comparisons repeated to let a live stream catch up.
    pub rechecks: u64,
    /// Chunks that still differed after the re-checks.
    pub differing_chunks: u64,
    /// Keys still differing after the re-checks (at most `max_keys`), with how.
    pub differing: Vec<(Key, KeyDifference)>,
    /// More rows differ than are listed.
    pub truncated: bool,
}

impl CheckReport {
    /// True when every chunk compared equal.
    pub fn equal(&self) -> bool {
        self.differing_chunks == 0 && self.differing.is_empty() && !self.truncated
    }
}

/// Runs `doppel verify`: resolves the two tables, projects the source's columns onto the
/// target's by name, and compares them chunk by chunk as the run's verification does.
///
/// Errors: a table is missing (during a run: no shadow), no primary key, key types that
/// cannot be matched, or a query failure. A difference is not an error: see
/// [`CheckReport::equal`].
pub async fn check(
    config: &(impl crate::conninfo::ToConnInfo + ?Sized),
    options: &CheckOptions,
) -> Result<CheckReport> {
    let mut client = crate::conninfo::connect(config).await?;
    let mut peer = crate::conninfo::connect(config).await?;
    for c in [&client, &peer] {
        c.batch_execute(&format!(
            "SET application_name = 'doppel verify'; {}; {}",
            crate::sql::WORKING_SESSION,
            crate::sql::parallel_workers_sql(options.parallel_workers)
        ))
        .await?;
    }
    let oid = catalog::resolve(&client, &options.table).await?;
    let table = catalog::inspect(&client, oid).await?;
    let (source, target) = match &options.against {
        Some(old) => {
            let old_oid = catalog::resolve(&client, old).await?;
            (catalog::inspect(&client, old_oid).await?, table)
        }
        None => {
            let names = Names::new(&table.schema, &table.name, oid);
            let shadow: Option<u32> = client
                .query_one("SELECT to_regclass($1)::oid", &[&names.shadow_qualified()])
                .await?
                .get(0);
            match shadow {
                Some(shadow) => (table, catalog::inspect(&client, shadow).await?),
                None => {
                    let old: Vec<String> = client
                        .query(
                            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
                             JOIN pg_namespace n ON n.oid = c.relnamespace
                             WHERE n.nspname = $1 AND c.relkind = 'r'
                               AND c.relname LIKE '\\_doppel\\_%\\_old\\_' || $2 ORDER BY 1",
                            &[&table.schema, &table.name],
                        )
                        .await?
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    let hint = if old.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; after a cutover compare with the kept old table: --against {}",
                            old.join(" or --against ")
                        )
                    };
                    bail!(
                        "{} has no shadow table {} (no doppel run is in progress on it){hint}",
                        table.qualified(),
                        names.shadow_qualified()
                    );
                }
            }
        }
    };
    let alter = if options.alters.is_empty() && options.backfills.is_empty() {
        None
    } else {
        let mut spec = if options.alters.is_empty() {
            crate::model::alter::AlterSpec::default()
        } else {
            crate::model::alter::analyze(&options.alters).context("reading --alter")?
        };
        spec.backfills = crate::model::assignment::parse_all(&options.backfills)
            .context("reading --backfill")?;
        Some(spec)
    };
    let projection = projection_between(&client, &source, &target, alter.as_ref()).await?;
    let pair = Pair {
        projection: &projection,
        source: source.qualified(),
        target: target.qualified(),
    };
    let limits = Limits {
        chunk_rows: options.chunk_rows.max(1),
        rechecks: options.rechecks,
        max_keys: options.max_keys.max(1),
        stop_on_overflow: false,
    };
    let settle = Settle::Wait(options.recheck_interval);
    // Test hooks of a `doppel verify` started by a test (inert otherwise).
    let probe = Probe::capture();
    let pace = Pace {
        probe: Some(&probe),
        ..Pace::default()
    };
    let c = compare_all(&mut client, &mut peer, &pair, &limits, &settle, &pace).await?;
    let kinds = classify(&client, &pair, &c.keys).await?;
    let written: Vec<String> = projection
        .written()
        .iter()
        .map(|m| m.target.name.clone())
        .collect();
    Ok(CheckReport {
        source: pair.source.clone(),
        target: pair.target.clone(),
        target_only_columns: target
            .columns
            .iter()
            .filter(|col| !written.contains(&col.name))
            .map(|col| col.name.clone())
            .collect(),
        source_only_columns: source
            .columns
            .iter()
            .filter(|col| target.column(&col.name).is_none())
            .map(|col| col.name.clone())
            .collect(),
        compared_columns: written,
        chunks: c.chunks,
        rows: c.rows,
        target_rows: c.target_rows,
        rechecks: c.rechecks,
        differing_chunks: c.differing_chunks,
        differing: c.keys.into_iter().zip(kinds).collect(),
        truncated: c.overflow.is_some(),
    })
}

/// The projection of `source`'s rows onto `target`'s columns, matched by name: each value cast
/// to the target column's type, or computed by the ALTER's `USING` expression when `alter`
/// has one for the column, or by its `--backfill` expression (also for a column only the
/// target has). The key is the source's primary key.
async fn projection_between(
    client: &Client,
    source: &Table,
    target: &Table,
    alter: Option<&crate::model::alter::AlterSpec>,
) -> Result<Projection> {
    if source.pk_columns.is_empty() {
        bail!(
            "{} has no primary key: verification compares chunks of the primary key",
            source.qualified()
        );
    }
    let columns: Vec<ColumnMap> = target
        .columns
        .iter()
        .map(|col| {
            let source_col = source.column(&col.name).cloned();
            let backfill = alter.and_then(|a| a.backfill_for(&col.name));
            let expression = match (&source_col, alter.and_then(|a| a.using_for(&col.name))) {
                _ if backfill.is_some() => format!("({})", backfill.unwrap_or_default()),
                (Some(_), Some(using)) => format!("({using})"),
                (Some(s), None) => format!("src.{}", ident(&s.name)),
                (None, _) => String::new(),
            };
            ColumnMap {
                target: col.clone(),
                source: source_col,
                expression,
            }
        })
        .collect();
    let relation: Vec<_> = source
        .columns
        .iter()
        .filter(|c| c.generated_sql.is_none())
        .cloned()
        .collect();
    let mut key = Vec::new();
    for name in &source.pk_columns {
        let (Some(s), Some(t)) = (source.column(name), target.column(name)) else {
            bail!(
                "primary-key column {name:?} of {} is not a column of {}: cannot match rows",
                source.qualified(),
                target.qualified()
            );
        };
        let widening = matches!((s.type_oid, t.type_oid), (21, 23) | (21, 20) | (23, 20));
        if s.type_oid != t.type_oid && !widening {
            bail!(
                "primary-key column {name:?} is {} in {} but {} in {}: cannot match rows",
                s.type_sql,
                source.qualified(),
                t.type_sql,
                target.qualified()
            );
        }
        key.push(KeyColumn {
            source: s.clone(),
            target: t.clone(),
            relation_position: relation.iter().position(|c| &c.name == name).unwrap_or(0),
        });
    }
    let mut projection = Projection {
        columns,
        key,
        relation,
        has_identity: target.columns.iter().any(|c| c.identity.is_some()),
        text_hashed: Vec::new(),
        partitioned: source.relkind == 'p',
    };
    if projection.written().is_empty() {
        bail!(
            "{} and {} have no column in common to compare",
            source.qualified(),
            target.qualified()
        );
    }
    // As preflight does: types without an extended hash function are hashed as text.
    let written: Vec<(String, String, String)> = projection
        .written()
        .iter()
        .map(|c| {
            (
                c.target.name.clone(),
                c.target.type_sql.clone(),
                c.expression.clone(),
            )
        })
        .collect();
    for (name, type_sql, expression) in &written {
        let probe = format!("SELECT hash_record_extended(ROW(NULL::{type_sql}), 0)");
        if client.query_one(&probe, &[]).await.is_err() {
            projection.text_hashed.push(name.clone());
        }
        let cast = format!(
            "SELECT CAST({expression} AS {type_sql}) FROM ONLY {} AS src LIMIT 0",
            source.qualified()
        );
        if let Err(e) = client.prepare(&cast).await {
            bail!(
                "column {name:?}: {expression} cannot be cast to {type_sql} ({}); pass the run's --alter if it had a USING expression",
                e.as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string())
            );
        }
    }
    Ok(projection)
}

/// For each key: is the row on both sides, or on one only?
async fn classify(client: &Client, pair: &Pair<'_>, keys: &[Key]) -> Result<Vec<KeyDifference>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let key = &pair.projection.key;
    let aliases: Vec<String> = (0..key.len()).map(|i| format!("p{i}")).collect();
    let params: Vec<String> = (1..=key.len()).map(|i| format!("${i}::text[]")).collect();
    let source_match: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, k)| {
            format!(
                "src.{} = u.p{i}::{}",
                ident(&k.source.name),
                k.source.type_sql
            )
        })
        .collect();
    let target_match: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, k)| {
            format!(
                "dst.{} = CAST(u.p{i}::{} AS {})",
                ident(&k.target.name),
                k.source.type_sql,
                k.target.type_sql
            )
        })
        .collect();
    let only = pair.projection.only();
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {only}{} AS src WHERE {}),
                EXISTS (SELECT 1 FROM {only}{} AS dst WHERE {})
         FROM unnest({}) WITH ORDINALITY AS u({}, n) ORDER BY n",
        pair.source,
        source_match.join(" AND "),
        pair.target,
        target_match.join(" AND "),
        params.join(", "),
        aliases.join(", ")
    );
    let columns = key_arrays(key.len(), keys);
    let refs: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    let rows = client
        .query(&sql, &refs)
        .await
        .context("classifying differing keys")?;
    Ok(rows
        .iter()
        .map(|r| match (r.get::<_, bool>(0), r.get::<_, bool>(1)) {
            (true, false) => KeyDifference::MissingFromTarget,
            (false, true) => KeyDifference::OnlyInTarget,
            _ => KeyDifference::Values,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::buckets;

    #[test]
    fn buckets_hold_about_64_rows_of_a_chunk_within_bounds() {
        assert_eq!(buckets(250_000), 4096);
        assert_eq!(buckets(1), 64);
        assert_eq!(buckets(0), 64);
        assert_eq!(buckets(-5), 64);
        assert_eq!(buckets(64 * 1000), 1024);
        assert_eq!(buckets(i64::MAX), 1 << 16);
    }
}
