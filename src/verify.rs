//! Verification before cutover: original and shadow compared chunk by chunk — row count and an
//! order-independent hash of the projected rows — with one short REPEATABLE READ snapshot per
//! chunk covering both tables (DESIGN.md §1.6, I1, I4).
//!
//! The shadow trails the original by the stream, so a chunk that differs is re-checked after a
//! fence proves the applier has caught up with everything committed before the comparison. A
//! chunk that still differs after several fences is one the workload keeps changing: its
//! differing keys (at most [`MAX_UNSETTLED`]) are handed to the cutover, which re-checks them
//! under the lock, when nothing can change them. More than that is an unexplained mismatch and
//! stops the run.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, IsolationLevel};

use crate::applier::Applier;
use crate::fence::Fencer;
use crate::plan::Plan;
use crate::sql::literal;

/// Rows per verification chunk.
pub const VERIFY_CHUNK_ROWS: i64 = 250_000;
/// Fenced re-checks of a differing chunk before its keys are deferred to the cutover.
pub const RECHECKS: usize = 5;
/// Keys that may be deferred to the cutover.
pub const MAX_UNSETTLED: usize = 1_000;

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
    pub unsettled: Vec<Vec<Option<String>>>,
}

/// Compares every chunk. Errors: an unexplained mismatch (with example keys), or a failure.
///
/// `client` lists chunks and hashes the original's side; `peer` hashes the shadow's side at the
/// same time, under the same exported snapshot.
pub async fn verify(
    client: &mut Client,
    peer: &mut Client,
    plan: &Plan,
    fencer: &Fencer,
    applier: &Applier,
) -> Result<VerifyReport> {
    let table = plan.original.qualified();
    let shadow = plan.names.shadow_qualified();
    let p = &plan.projection;
    let mut report = VerifyReport::default();
    let mut lower: Option<Vec<Option<String>>> = None;
    loop {
        let boundary = {
            let sql = p.chunk_boundary_sql(&table, lower.is_some());
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&VERIFY_CHUNK_ROWS];
            if let Some(lo) = &lower {
                params.extend(lo.iter().map(|v| v as &(dyn ToSql + Sync)));
            }
            client
                .query_opt(&sql, &params)
                .await
                .context("finding a verification chunk")?
        };
        let upper: Option<Vec<Option<String>>> =
            boundary.map(|row| (0..p.key.len()).map(|i| row.get(i)).collect());
        let mut params: Vec<Option<String>> = Vec::new();
        if let Some(lo) = &lower {
            params.extend(lo.iter().cloned());
        }
        if let Some(hi) = &upper {
            params.extend(hi.iter().cloned());
        }
        let (has_lower, has_upper) = (lower.is_some(), upper.is_some());
        let source_sql = p.verify_source_sql(&table, has_lower, has_upper);
        let target_sql = p.verify_target_sql(&shadow, has_lower, has_upper);
        let mut attempt = 0;
        loop {
            let (a, b) = compare(client, peer, &source_sql, &target_sql, &params).await?;
            if attempt == 0 {
                report.rows += a.0 as u64;
            }
            if a == b {
                break;
            }
            // The shadow trails the stream: find the differing keys (cheap when few), then
            // re-check just those after fences.
            let diff_sql = p.diff_keys_sql(&table, &shadow, has_lower, has_upper);
            let limit = (MAX_UNSETTLED + 1) as i64;
            let mut all: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
            all.extend(params.iter().map(|v| v as &(dyn ToSql + Sync)));
            all.push(&limit);
            let rows = client
                .query(&diff_sql, &all)
                .await
                .context("listing differing keys")?;
            let mut keys: Vec<Vec<Option<String>>> = Vec::new();
            for row in &rows {
                let key: Vec<Option<String>> = row.get(0);
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            if keys.len() > MAX_UNSETTLED {
                // Too many to track one by one: re-check the whole chunk after a fence.
                if attempt == RECHECKS {
                    return Err(crate::failure::fail(
                        crate::failure::FailureKind::Verification,
                        format!(
                            "verification failed: more than {MAX_UNSETTLED} rows of a chunk of {} differ from the shadow (original {} rows, shadow {} rows) and the difference did not settle; refusing to cut over, the original table is untouched",
                            plan.original.qualified(),
                            a.0,
                            b.0
                        ),
                    ));
                }
                attempt += 1;
                report.rechecks += 1;
                let n = fencer.emit().await?;
                applier.wait_fence(n, Duration::from_secs(60)).await?;
                continue;
            }
            for _ in 0..RECHECKS {
                if keys.is_empty() {
                    break;
                }
                report.rechecks += 1;
                let n = fencer.emit().await?;
                applier.wait_fence(n, Duration::from_secs(60)).await?;
                keys = differing_keys(&*client, plan, &keys).await?;
            }
            for key in keys {
                if !report.unsettled.contains(&key) {
                    report.unsettled.push(key);
                }
            }
            if report.unsettled.len() > MAX_UNSETTLED {
                return Err(crate::failure::fail(
                    crate::failure::FailureKind::Verification,
                    format!(
                        "verification failed: {} rows of {} still differ from the shadow after {RECHECKS} fenced re-checks (for example key {}); refusing to cut over, the original table is untouched",
                        report.unsettled.len(),
                        plan.original.qualified(),
                        describe_key(&report.unsettled[0])
                    ),
                ));
            }
            break;
        }
        report.chunks += 1;
        match upper {
            Some(hi) => lower = Some(hi),
            None => break,
        }
    }
    Ok(report)
}

/// `(count, hash)` of the original's and the shadow's chunk, computed in parallel on two
/// sessions that share one snapshot (`pg_export_snapshot` / `SET TRANSACTION SNAPSHOT`).
async fn compare(
    client: &mut Client,
    peer: &mut Client,
    source_sql: &str,
    target_sql: &str,
    params: &[Option<String>],
) -> Result<((i64, String), (i64, String))> {
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
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    let (a, b) = tokio::join!(
        ta.query_one(source_sql, &refs),
        tb.query_one(target_sql, &refs)
    );
    let a = a.context("hashing an original chunk")?;
    let b = b.context("hashing a shadow chunk")?;
    tb.commit().await?;
    ta.commit().await?;
    Ok(((a.get(0), a.get(1)), (b.get(0), b.get(1))))
}

fn describe_key(key: &[Option<String>]) -> String {
    format!(
        "({})",
        key.iter()
            .map(|v| v.clone().unwrap_or_else(|| "NULL".into()))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The keys among `keys` whose projected rows still differ between original and shadow
/// (read under the statement's snapshot). Used after fences and under the cutover lock.
pub async fn differing_keys(
    client: &impl tokio_postgres::GenericClient,
    plan: &Plan,
    keys: &[Vec<Option<String>>],
) -> Result<Vec<Vec<Option<String>>>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let width = plan.projection.key.len();
    let columns: Vec<Vec<Option<String>>> = (0..width)
        .map(|i| keys.iter().map(|k| k.get(i).cloned().flatten()).collect())
        .collect();
    let refs: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    let sql = plan
        .projection
        .recheck_keys_sql(&plan.original.qualified(), &plan.names.shadow_qualified());
    let rows = client
        .query(&sql, &refs)
        .await
        .context("re-checking differing keys")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
