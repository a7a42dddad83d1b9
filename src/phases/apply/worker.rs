//! The applier's task: reads the spool, decodes each transaction into per-key changes and
//! applies a batch of source transactions in one shadow transaction.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio_postgres::{Client, Statement};

use super::changes::{Op, Pending, Val};
use super::exec::Exec;
use super::relation::{check_relation, expect_relation, key_of, key_of_bound, values};
use super::{ApplyOptions, ApplyStatus, BATCH_CHANGES, Control};
use crate::phases::capture::spool::SpoolReader;
use crate::plan::Plan;
use crate::sql::ident;
use crate::testing::{Probe, broken, pause_point};
use pglogrepl::lsn::Lsn;
use pglogrepl::pgoutput::{self, PgOutputMessage};

/// Buffered changes beyond which they are sent to the server mid-transaction (memory bound).
pub(super) const MAX_PENDING: usize = 50_000;

pub(super) struct Worker {
    pub(super) client: Client,
    pub(super) plan: Arc<Plan>,
    pub(super) reader: SpoolReader,
    pub(super) upsert: Statement,
    pub(super) delete: Statement,
    pub(super) reread: Statement,
    pub(super) reread_missing: Statement,
    pub(super) partial: HashMap<Vec<bool>, Statement>,
    /// Partial updates may set sent columns directly (no written column uses USING).
    pub(super) direct_partial: bool,
    pub(super) relation_checked: bool,
    pub(super) collapse: Arc<std::sync::atomic::AtomicBool>,
    pub(super) hold: Option<watch::Receiver<crate::ops::throttle::ThrottleState>>,
    /// The run's test hooks (pause points `applied`, `visibility-wait`; broken orderings).
    pub(super) probe: Probe,
    /// [`ApplyOptions::after_marker`], until the marked transaction has committed.
    pub(super) waiting_for: Option<String>,
    /// [`ApplyOptions::tolerant`]: the keys whose latest change the target rejected.
    pub(super) rejected: Option<BTreeMap<super::changes::Key, String>>,
}

/// Rejected keys published in [`ApplyStatus::rejected`] at most.
const REJECTED_SHOWN: usize = 1_000;

pub(super) struct Batch {
    pub(super) changes: u64,
    pub(super) transactions: u64,
    pub(super) applied: Lsn,
    pub(super) fence: u64,
    pub(super) xid: u32,
    /// Commit time of the batch's last source transaction (µs since 2000-01-01 UTC).
    pub(super) commit_time_us: Option<i64>,
    /// Source transactions in this batch (for the test-only `applied` pause point).
    pub(super) xids: Vec<u32>,
}

/// A PostgreSQL timestamp (µs since 2000-01-01 00:00:00 UTC) as a system time.
fn pg_time(us: i64) -> std::time::SystemTime {
    // 2000-01-01 00:00:00 UTC is 946,684,800 s after the Unix epoch.
    let unix_us = 946_684_800_000_000i64.saturating_add(us).max(0) as u64;
    std::time::UNIX_EPOCH + std::time::Duration::from_micros(unix_us)
}

impl Worker {
    pub(super) async fn new(
        client: Client,
        plan: Arc<Plan>,
        reader: SpoolReader,
        collapse: Arc<std::sync::atomic::AtomicBool>,
        options: ApplyOptions,
    ) -> Result<Worker> {
        let shadow = plan.names.shadow_qualified();
        let table = plan.original.qualified();
        let p = &plan.projection;
        let upsert = client
            .prepare(&p.upsert_sql(&shadow))
            .await
            .context("preparing the applier's upsert")?;
        let delete = client
            .prepare(&p.delete_sql(&shadow))
            .await
            .context("preparing the applier's delete")?;
        let reread = client
            .prepare(&p.reread_sql(&table, &shadow))
            .await
            .context("preparing the applier's re-read")?;
        let reread_missing = client
            .prepare(&p.reread_missing_sql(&table, &shadow))
            .await
            .context("preparing the applier's re-read of missing keys")?;
        let direct_partial = p.written().iter().all(|c| {
            c.source
                .as_ref()
                .is_some_and(|s| c.expression == format!("src.{}", ident(&s.name)))
        });
        Ok(Worker {
            client,
            plan,
            reader,
            upsert,
            delete,
            reread,
            reread_missing,
            partial: HashMap::new(),
            direct_partial,
            relation_checked: false,
            collapse,
            hold: options.hold,
            probe: options.probe,
            waiting_for: options.after_marker,
            rejected: options.tolerant.then(BTreeMap::new),
        })
    }

    pub(super) async fn run(
        mut self,
        mut control: watch::Receiver<Control>,
        status: &watch::Sender<ApplyStatus>,
    ) -> Result<()> {
        loop {
            let state = *control.borrow_and_update();
            match state {
                Control::Stop => return Ok(()),
                Control::Pause => {
                    status.send_modify(|s| s.paused = true);
                    if control.changed().await.is_err() {
                        return Ok(());
                    }
                    continue;
                }
                Control::Run => status.send_modify(|s| s.paused = false),
            }
            if let Some(hold) = self.hold.as_mut() {
                let throttled = !hold.borrow_and_update().reasons.is_empty();
                if throttled {
                    status.send_modify(|s| s.paused = true);
                    tokio::select! {
                        _ = hold.changed() => {}
                        _ = control.changed() => {}
                    }
                    continue;
                }
            }
            let first = tokio::select! {
                record = self.reader.next() => record?,
                _ = control.changed() => continue,
            };
            let Some(first) = first else {
                return Ok(());
            };
            let batch = self.apply_batch(first).await?;
            pause_point!(
                self.probe,
                "applied",
                format!(
                    "lsn={} xids={}",
                    batch.applied,
                    batch
                        .xids
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                |c: &str| crate::testing::names_xid(c, &batch.xids)
            );
            let idle = !self.reader.has_more();
            let past_marker = self.waiting_for.is_none();
            let rejected: Vec<_> = self
                .rejected
                .iter()
                .flatten()
                .take(REJECTED_SHOWN)
                .map(|(k, why)| (k.clone(), why.clone()))
                .collect();
            status.send_modify(|s| {
                s.past_marker = past_marker;
                s.rejected = rejected;
                s.applied = s.applied.max(batch.applied);
                s.changes += batch.changes;
                s.transactions += batch.transactions;
                s.fence = s.fence.max(batch.fence);
                s.idle = idle;
                if let Some(us) = batch.commit_time_us {
                    s.commit_time = Some(pg_time(us));
                }
            });
        }
    }

    /// Test-only ([`crate::testing::Broken::ApplyDuringCopy`]): where the applier that ran
    /// during the backfill stopped; [`Lsn::INVALID`] in every normal run.
    pub(super) fn applied_during_copy(&self) -> Lsn {
        #[cfg(feature = "pause-points")]
        if broken!(self.probe, ApplyDuringCopy) {
            return self.probe.applied_during_copy();
        }
        Lsn::INVALID
    }

    /// Applies records from `first` up to a transaction boundary where the batch is full or
    /// the spool is drained, in one shadow transaction.
    pub(super) async fn apply_batch(&mut self, first: (Lsn, bytes::Bytes)) -> Result<Batch> {
        let mut batch = Batch {
            changes: 0,
            transactions: 0,
            applied: Lsn::INVALID,
            fence: 0,
            xid: 0,
            commit_time_us: None,
            xids: Vec::new(),
        };
        // Test-only broken orderings (never in a normal build): changes are not collapsed per
        // key; transactions applied during the backfill are not applied again.
        let collapse = self.collapse.load(std::sync::atomic::Ordering::SeqCst)
            && !broken!(self.probe, UnorderedBatch);
        let applied_during_copy = self.applied_during_copy();
        let mut skip_txn = false;
        let mut marker_in_txn = false;
        let plan = self.plan.clone();
        let mut pending = Pending::new();
        let mut partial = std::mem::take(&mut self.partial);
        let tx = self.client.transaction().await?;
        let mut exec = Exec {
            tx: &tx,
            plan: &plan,
            upsert: &self.upsert,
            delete: &self.delete,
            reread: &self.reread,
            reread_missing: &self.reread_missing,
            partial: &mut partial,
            probe: &self.probe,
            rejected: self.rejected.as_mut(),
        };
        let mut in_source_txn = false;
        let mut record = first;
        loop {
            let message = pgoutput::decode_bytes(record.1.clone())
                .with_context(|| format!("decoding the spooled message at {}", record.0))?;
            match message {
                PgOutputMessage::Begin { xid, final_lsn, .. } => {
                    in_source_txn = true;
                    batch.xid = xid;
                    batch.xids.push(xid);
                    skip_txn = final_lsn < applied_during_copy || self.waiting_for.is_some();
                }
                PgOutputMessage::Commit {
                    end_lsn,
                    commit_time_us,
                    ..
                } => {
                    in_source_txn = false;
                    batch.commit_time_us = Some(commit_time_us);
                    if std::mem::take(&mut marker_in_txn) {
                        self.waiting_for = None;
                    }
                    batch.transactions += 1;
                    batch.applied = batch.applied.max(end_lsn);
                }
                PgOutputMessage::Relation(rel) => {
                    check_relation(&plan, &rel)?;
                    self.relation_checked = true;
                }
                PgOutputMessage::Insert { .. }
                | PgOutputMessage::Update { .. }
                | PgOutputMessage::Delete { .. }
                    if skip_txn => {}
                PgOutputMessage::Insert { relation_id, new } => {
                    expect_relation(&plan, relation_id, self.relation_checked)?;
                    let row: Vec<Option<String>> = values(&new)?.iter().map(Val::bind).collect();
                    let key = key_of_bound(&plan, &row)?;
                    pending.push(collapse, key, Op::Upsert(row), batch.xid);
                    batch.changes += 1;
                }
                PgOutputMessage::Update {
                    relation_id,
                    old,
                    new,
                } => {
                    expect_relation(&plan, relation_id, self.relation_checked)?;
                    let row = values(&new)?;
                    let new_key = key_of(&plan, &row)?;
                    if let Some(old) = &old {
                        let old_key = key_of(&plan, &values(old.tuple())?)?;
                        if old_key != new_key {
                            pending.push(collapse, old_key, Op::Delete, batch.xid);
                        }
                    }
                    let op = if row.iter().all(|v| *v != Val::Unchanged)
                        || broken!(self.probe, PartialAsFull)
                    {
                        Op::Upsert(row.iter().map(Val::bind).collect())
                    } else if self.direct_partial {
                        Op::Partial(row)
                    } else {
                        Op::ReRead
                    };
                    pending.push(collapse, new_key, op, batch.xid);
                    batch.changes += 1;
                }
                PgOutputMessage::Delete { relation_id, old } => {
                    expect_relation(&plan, relation_id, self.relation_checked)?;
                    let key = key_of(&plan, &values(old.tuple())?)?;
                    pending.push(collapse, key, Op::Delete, batch.xid);
                    batch.changes += 1;
                }
                PgOutputMessage::Truncate { .. } => {
                    return Err(crate::failure::fail(
                        crate::failure::FailureKind::Conflict,
                        format!(
                            "TRUNCATE ran on {} during the migration: the shadow cannot follow it; aborting (the original table is untouched; run doppel again)",
                            plan.original.qualified()
                        ),
                    ));
                }
                PgOutputMessage::Message {
                    prefix, content, ..
                } => {
                    let content = std::str::from_utf8(&content).ok();
                    if prefix == plan.names.message_prefix
                        && let Some(n) = content
                            .and_then(|c| c.strip_prefix("fence:"))
                            .and_then(|n| n.parse::<u64>().ok())
                    {
                        batch.fence = batch.fence.max(n);
                    }
                    if prefix == plan.names.message_prefix
                        && content.is_some()
                        && content == self.waiting_for.as_deref()
                    {
                        marker_in_txn = true;
                    }
                }
                PgOutputMessage::Type { .. } | PgOutputMessage::Origin { .. } => {}
            }
            if pending.len() >= MAX_PENDING {
                exec.flush(std::mem::replace(&mut pending, Pending::new()))
                    .await?;
            }
            if !in_source_txn
                && (batch.changes as usize >= BATCH_CHANGES || !self.reader.has_more())
            {
                break;
            }
            record = match self.reader.next().await? {
                Some(r) => r,
                None => break,
            };
        }
        exec.flush(pending).await?;
        tx.commit().await.context("committing applied changes")?;
        self.partial = partial;
        Ok(batch)
    }
}
