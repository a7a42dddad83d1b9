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
use crate::phases::capture::spool::{self, SpoolReader};
use crate::phases::checkpoint::Checkpoint;
use crate::plan::Plan;
use crate::sql::ident;
use crate::testing::{Probe, broken, pause_point};
use pglogrepl::lsn::Lsn;
use pglogrepl::pgoutput::{self, PgOutputMessage, TupleData};

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
    pub(super) collapse: Arc<std::sync::atomic::AtomicBool>,
    pub(super) hold: Option<watch::Receiver<crate::ops::throttle::ThrottleState>>,
    pub(super) pace: Option<crate::ops::pacing::PaceHandle>,
    /// The run's test hooks (pause points `applied`, `visibility-wait`; broken orderings).
    pub(super) probe: Probe,
    /// What decoding keeps between messages.
    pub(super) decoder: Decoder,
    /// [`ApplyOptions::tolerant`]: the keys whose latest change the target rejected.
    pub(super) rejected: Option<BTreeMap<super::changes::Key, String>>,
    /// [`ApplyOptions::checkpoint`]: where each batch records its position.
    pub(super) checkpoint: Option<Checkpoint>,
}

/// What decoding the spool keeps from one message to the next.
pub(super) struct Decoder {
    /// Partial updates may set sent columns directly (no written column uses USING).
    direct_partial: bool,
    /// The Relation message of the original was seen and checked.
    relation_checked: bool,
    /// [`ApplyOptions::after_marker`], until the marked transaction has committed.
    waiting_for: Option<String>,
    /// Test-only: transactions committed before this are skipped (see
    /// [`Worker::applied_during_copy`]).
    applied_during_copy: Lsn,
    /// [`ApplyOptions::resume_after`]: transactions committed before this are skipped.
    resume_after: Lsn,
}

/// One batch being decoded: its figures, its changes, where it stands in the stream.
struct Decoding {
    batch: Batch,
    pending: Pending,
    collapse: bool,
    in_source_txn: bool,
    skip_txn: bool,
    marker_in_txn: bool,
}

/// Rejected keys published in [`ApplyStatus::rejected`] at most.
const REJECTED_SHOWN: usize = 1_000;

#[derive(Default)]
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
            collapse,
            hold: options.hold,
            pace: options.pace,
            decoder: Decoder {
                direct_partial,
                relation_checked: options.resume_after.is_some(),
                waiting_for: options.after_marker,
                applied_during_copy: Lsn::INVALID,
                resume_after: options.resume_after.unwrap_or(Lsn::INVALID),
            },
            probe: options.probe,
            rejected: options.tolerant.then(BTreeMap::new),
            checkpoint: options.checkpoint,
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
            let batch_started = std::time::Instant::now();
            let batch = self.apply_batch(first).await?;
            let took = batch_started.elapsed();
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
            let past_marker = self.decoder.waiting_for.is_none();
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
            if let Some(pace) = &self.pace {
                // A pause or stop request ends the pacing pause (the cutover suspends pacing
                // before it takes its lock, see `PaceHandle::suspend`).
                tokio::select! {
                    _ = pace.pace(took) => {}
                    _ = control.changed() => {}
                }
            }
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
    /// the spool is drained, in one shadow transaction (which also records the position in
    /// the checkpoint, when the run is resumable).
    pub(super) async fn apply_batch(&mut self, first: (Lsn, bytes::Bytes)) -> Result<Batch> {
        // Test-only broken orderings (never in a normal build): changes are not collapsed per
        // key; transactions applied during the backfill are not applied again.
        let mut d = Decoding {
            batch: Batch::default(),
            pending: Pending::new(),
            collapse: self.collapse.load(std::sync::atomic::Ordering::SeqCst)
                && !broken!(self.probe, UnorderedBatch),
            in_source_txn: false,
            skip_txn: false,
            marker_in_txn: false,
        };
        self.decoder.applied_during_copy = self.applied_during_copy();
        let plan = self.plan.clone();
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
        let mut next = Some(first);
        while let Some(record) = next.take() {
            if !spool::is_doppel_record(&record.1) {
                let message = pgoutput::decode_bytes(record.1.clone())
                    .with_context(|| format!("decoding the spooled message at {}", record.0))?;
                self.decoder.take(&plan, &self.probe, message, &mut d)?;
            }
            if d.pending.len() >= MAX_PENDING {
                exec.flush(std::mem::replace(&mut d.pending, Pending::new()))
                    .await?;
            }
            let full = d.batch.changes as usize >= BATCH_CHANGES;
            if !d.in_source_txn && (full || !self.reader.has_more()) {
                break;
            }
            next = self.reader.next().await?;
        }
        exec.flush(d.pending).await?;
        if let Some(checkpoint) = &self.checkpoint
            && d.batch.applied != Lsn::INVALID
        {
            checkpoint
                .applied(&tx, d.batch.applied, self.reader.position())
                .await?;
        }
        tx.commit().await.context("committing applied changes")?;
        self.partial = partial;
        Ok(d.batch)
    }
}

impl Decoder {
    /// Takes one decoded message into the batch: transaction bounds, changes as per-key ops
    /// (docs/design.md §2.4), fences and the marker.
    ///
    /// Errors: a change of another relation or before its Relation message, a Relation that
    /// changed (DDL) or a TRUNCATE on the original (exit 8), a key that cannot be read.
    fn take(
        &mut self,
        plan: &Plan,
        probe: &Probe,
        message: PgOutputMessage,
        d: &mut Decoding,
    ) -> Result<()> {
        match message {
            PgOutputMessage::Begin { xid, final_lsn, .. } => {
                d.in_source_txn = true;
                d.batch.xid = xid;
                d.batch.xids.push(xid);
                d.skip_txn = final_lsn < self.applied_during_copy.max(self.resume_after)
                    || self.waiting_for.is_some();
            }
            PgOutputMessage::Commit {
                end_lsn,
                commit_time_us,
                ..
            } => {
                d.in_source_txn = false;
                d.batch.commit_time_us = Some(commit_time_us);
                if std::mem::take(&mut d.marker_in_txn) {
                    self.waiting_for = None;
                }
                d.batch.transactions += 1;
                d.batch.applied = d.batch.applied.max(end_lsn);
            }
            PgOutputMessage::Relation(rel) => {
                if check_relation(plan, &rel)? {
                    self.relation_checked = true;
                }
            }
            PgOutputMessage::Insert { .. }
            | PgOutputMessage::Update { .. }
            | PgOutputMessage::Delete { .. }
                if d.skip_txn => {}
            PgOutputMessage::Insert { relation_id, new } => {
                expect_relation(plan, relation_id, self.relation_checked)?;
                let row: Vec<Option<String>> = values(&new)?.iter().map(Val::bind).collect();
                let key = key_of_bound(plan, &row)?;
                d.pending
                    .push(d.collapse, key, Op::Upsert(row), d.batch.xid);
                d.batch.changes += 1;
            }
            PgOutputMessage::Update {
                relation_id,
                old,
                new,
            } => {
                expect_relation(plan, relation_id, self.relation_checked)?;
                self.update(plan, probe, old.as_ref().map(|o| o.tuple()), &new, d)?;
            }
            PgOutputMessage::Delete { relation_id, old } => {
                expect_relation(plan, relation_id, self.relation_checked)?;
                let key = key_of(plan, &values(old.tuple())?)?;
                d.pending.push(d.collapse, key, Op::Delete, d.batch.xid);
                d.batch.changes += 1;
            }
            PgOutputMessage::Truncate { .. } => return Err(truncated(plan)),
            PgOutputMessage::Message {
                prefix, content, ..
            } => self.message(plan, &prefix, &content, d),
            PgOutputMessage::Type { .. } | PgOutputMessage::Origin { .. } => {}
        }
        Ok(())
    }

    /// An UPDATE: a key change deletes the old key first; a full new row is upserted, a
    /// partial one (unchanged TOASTed values) updates the sent columns or is re-read.
    fn update(
        &self,
        plan: &Plan,
        probe: &Probe,
        old: Option<&TupleData>,
        new: &TupleData,
        d: &mut Decoding,
    ) -> Result<()> {
        let row = values(new)?;
        let new_key = key_of(plan, &row)?;
        if let Some(old) = old {
            let old_key = key_of(plan, &values(old)?)?;
            if old_key != new_key {
                d.pending.push(d.collapse, old_key, Op::Delete, d.batch.xid);
            }
        }
        let op = if row.iter().all(|v| *v != Val::Unchanged) || broken!(probe, PartialAsFull) {
            Op::Upsert(row.iter().map(Val::bind).collect())
        } else if self.direct_partial {
            Op::Partial(row)
        } else {
            Op::ReRead
        };
        d.pending.push(d.collapse, new_key, op, d.batch.xid);
        d.batch.changes += 1;
        Ok(())
    }

    /// A logical message: a fence of the run's prefix, or the marker waited for.
    fn message(&self, plan: &Plan, prefix: &str, content: &[u8], d: &mut Decoding) {
        if prefix != plan.names.message_prefix {
            return;
        }
        let content = std::str::from_utf8(content).ok();
        if let Some(n) = content
            .and_then(|c| c.strip_prefix("fence:"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            d.batch.fence = d.batch.fence.max(n);
        }
        if content.is_some() && content == self.waiting_for.as_deref() {
            d.marker_in_txn = true;
        }
    }
}

/// TRUNCATE ran on the original: the shadow cannot follow it (exit 8).
fn truncated(plan: &Plan) -> anyhow::Error {
    crate::failure::fail(
        crate::failure::FailureKind::Conflict,
        format!(
            "TRUNCATE ran on {} during the migration: the shadow cannot follow it; aborting (the original table is untouched; run doppel again)",
            plan.original.qualified()
        ),
    )
}
