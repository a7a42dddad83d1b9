//! The applier: replays spooled pgoutput transactions into the shadow table, in commit order,
//! through the copy's own projection (docs/design.md §2, ordering (a)).
//!
//! It starts only after the backfill and the shadow's primary key exist, so every event is
//! applied after every copied chunk: each key ends at its last write, either the copy (latest
//! at copy time) or a later event. The rules that make replay idempotent and never trust a
//! partial image:
//!
//! - INSERT, and UPDATE with a complete new row → upsert of the full row.
//! - UPDATE whose new row lacks unchanged TOASTed values (pgoutput `u`) → set the sent
//!   columns on the key; if the key is absent, re-read the row from the original (under a
//!   snapshot in which the event's transaction is visible) and upsert it, or skip it if the
//!   original no longer has it (a later event removes or moves it). With a `USING`
//!   expression in play the sent columns may not suffice, so such rows are always re-read.
//! - Primary-key change k1→k2 → delete k1, then the rules above for k2.
//! - DELETE → delete by key if present.
//! - TRUNCATE, or a Relation message whose columns differ from the original's → abort: DDL
//!   ran on the original during the migration.
//!
//! Many source transactions go into one shadow transaction. While only the primary key
//! constrains the shadow (the whole backlog, and afterwards when the new schema has no other
//! unique or exclusion index), changes are collapsed to the last write per key and applied as
//! one multi-row statement per kind (`unnest` of `text[]` parameters); otherwise consecutive
//! changes of one kind on distinct keys share a statement, in source order, so a unique index
//! never sees a state the original did not pass through. Statements are pipelined. Progress
//! (applied LSN, fences) is published only after the shadow transaction commits.
//!
//! Test hooks (the `pause-points` feature, see [`crate::testing`]): the race points `applied`
//! and `visibility-wait`, and the deliberately broken orderings that concern the apply, from
//! the probe the applier is spawned with.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement, Transaction};

use crate::model::snapshot::Snapshot;
use crate::phases::capture::spool::SpoolReader;
use crate::plan::Plan;
use crate::sql::ident;
use crate::testing::{Probe, broken, pause_point};
use pglogrepl::lsn::Lsn;
use pglogrepl::pgoutput::{self, ColumnValue, PgOutputMessage, TupleData};

/// Source changes per shadow transaction (a soft limit: transactions are never split).
pub const BATCH_CHANGES: usize = 20_000;
/// Rows per multi-row statement.
pub const RUN_ROWS: usize = 2_000;

/// What the applier has durably done.
#[derive(Debug, Clone, Default)]
pub struct ApplyStatus {
    /// End LSN of the last source transaction whose changes are committed in the shadow.
    pub applied: Lsn,
    /// Row changes applied.
    pub changes: u64,
    /// Source transactions applied.
    pub transactions: u64,
    /// Highest fence number seen (see [`crate::fence`]); everything before it is applied.
    pub fence: u64,
    /// True while paused at a transaction boundary.
    pub paused: bool,
    /// True when the last batch drained the spool.
    pub idle: bool,
    /// Why the applier stopped, when it failed.
    pub error: Option<String>,
    /// The failure's class, when it had one.
    pub error_kind: Option<crate::failure::FailureKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Run,
    Pause,
    Stop,
}

/// A running applier task.
pub struct Applier {
    collapse: Arc<std::sync::atomic::AtomicBool>,
    control: watch::Sender<Control>,
    status: watch::Receiver<ApplyStatus>,
    handle: JoinHandle<Result<()>>,
}

impl Applier {
    /// Prepares the apply statements on `client` (a session of its own) and starts the task,
    /// paused. Errors: a statement does not prepare (the shadow lacks its primary key).
    ///
    /// While `hold` reports throttle reasons, no new batch starts (the spool absorbs the
    /// stream meanwhile). `probe` carries the run's test hooks (`Probe::default()`: none).
    pub async fn spawn(
        client: Client,
        plan: Arc<Plan>,
        reader: SpoolReader,
        hold: Option<watch::Receiver<crate::ops::throttle::ThrottleState>>,
        probe: Probe,
    ) -> Result<Applier> {
        let collapse = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mut worker = Worker::new(client, plan, reader, collapse.clone(), probe).await?;
        worker.hold = hold;
        let (control_tx, control_rx) = watch::channel(Control::Pause);
        let (status_tx, status_rx) = watch::channel(ApplyStatus {
            paused: true,
            ..ApplyStatus::default()
        });
        let handle = tokio::spawn(async move {
            let result = worker.run(control_rx, &status_tx).await;
            if let Err(e) = &result {
                let kind = crate::failure::kind_of(e);
                status_tx.send_modify(|s| {
                    s.error = Some(format!("{e:#}"));
                    s.error_kind = kind;
                });
            }
            result
        });
        Ok(Applier {
            collapse,
            control: control_tx,
            status: status_rx,
            handle,
        })
    }

    /// Whether changes to the same key within a batch may be collapsed to the last write and
    /// applied in any key order (true by default). Only sound while nothing but the primary
    /// key constrains the shadow: turn it off before unique or exclusion indexes are built.
    /// Takes effect at the next batch.
    pub fn set_collapse(&self, collapse: bool) {
        self.collapse
            .store(collapse, std::sync::atomic::Ordering::SeqCst);
    }

    /// Lets the applier run.
    pub fn resume(&self) {
        self.control.send_replace(Control::Run);
    }

    /// Asks the applier to stop at the next transaction boundary and waits until it has.
    pub async fn pause(&self) -> Result<()> {
        self.control.send_replace(Control::Pause);
        let mut status = self.status.clone();
        loop {
            self.check()?;
            if status.borrow_and_update().paused {
                return Ok(());
            }
            tokio::select! {
                changed = status.changed() => { if changed.is_err() { self.check()?; bail!("applier stopped"); } }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Latest status.
    pub fn status(&self) -> ApplyStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status updates.
    pub fn watch(&self) -> watch::Receiver<ApplyStatus> {
        self.status.clone()
    }

    /// Fails with the applier's error if its task has ended.
    pub fn check(&self) -> Result<()> {
        if self.handle.is_finished() {
            let (why, kind) = {
                let s = self.status.borrow();
                (s.error.clone(), s.error_kind)
            };
            let message = format!(
                "applying streamed changes failed: {}",
                why.unwrap_or_else(|| "the applier stopped".into())
            );
            return Err(match kind {
                Some(kind) => crate::failure::fail(kind, message),
                None => anyhow!(message),
            });
        }
        Ok(())
    }

    /// Waits until fence `n` is applied, or `timeout` passes (error).
    pub async fn wait_fence(&self, n: u64, timeout: Duration) -> Result<()> {
        let mut status = self.status.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.check()?;
            if status.borrow_and_update().fence >= n {
                return Ok(());
            }
            tokio::select! {
                changed = status.changed() => { if changed.is_err() { self.check()?; bail!("applier stopped"); } }
                _ = tokio::time::sleep_until(deadline) => bail!("fence {n} not applied within {} ms", timeout.as_millis()),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Stops the task at the next boundary and returns its result.
    pub async fn stop(self) -> Result<()> {
        self.control.send_replace(Control::Stop);
        match tokio::time::timeout(Duration::from_secs(30), self.handle).await {
            Ok(joined) => joined.context("applier task panicked")?,
            Err(_) => bail!("the applier did not stop within 30 s"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    Null,
    Text(String),
    Unchanged,
}

impl Val {
    fn bind(&self) -> Option<String> {
        match self {
            Val::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

type Key = Vec<Option<String>>;

/// One change to apply to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// Full row (every replicated column), text values.
    Upsert(Vec<Option<String>>),
    /// Delete the key.
    Delete,
    /// Copy the key's current row from the original (its event's transaction is `xid`).
    ReRead,
    /// Set the sent columns (`Unchanged` = not sent); if the key is absent, re-read it.
    Partial(Vec<Val>),
}

impl Op {
    /// `self` followed by `later` on the same key, as one op (last write wins; a partial
    /// update is merged into what it updates).
    fn then(self, later: Op) -> Op {
        match (self, later) {
            (Op::Upsert(mut row), Op::Partial(sent)) => {
                for (slot, v) in row.iter_mut().zip(sent) {
                    if v != Val::Unchanged {
                        *slot = v.bind();
                    }
                }
                Op::Upsert(row)
            }
            (Op::Partial(mut row), Op::Partial(sent)) => {
                for (slot, v) in row.iter_mut().zip(sent) {
                    if v != Val::Unchanged {
                        *slot = v;
                    }
                }
                Op::Partial(row)
            }
            (_, later) => later,
        }
    }
}

/// Changes buffered for the current shadow transaction: in source order, or collapsed to the
/// last write per key when nothing but the primary key constrains the shadow (then the order
/// of writes to different keys cannot matter).
struct Pending {
    ordered: Vec<(Key, Op)>,
    collapsed: HashMap<Key, Op>,
    xids: Vec<u32>,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            ordered: Vec::new(),
            collapsed: HashMap::new(),
            xids: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.ordered.len() + self.collapsed.len()
    }

    fn push(&mut self, collapse: bool, key: Key, op: Op, xid: u32) {
        if matches!(op, Op::ReRead | Op::Partial(_)) && self.xids.last() != Some(&xid) {
            self.xids.push(xid);
        }
        if collapse {
            let merged = match self.collapsed.remove(&key) {
                Some(prev) => prev.then(op),
                None => op,
            };
            self.collapsed.insert(key, merged);
        } else {
            self.ordered.push((key, op));
        }
    }
}

/// Buffered changes beyond which they are sent to the server mid-transaction (memory bound).
const MAX_PENDING: usize = 50_000;

struct Worker {
    client: Client,
    plan: Arc<Plan>,
    reader: SpoolReader,
    upsert: Statement,
    delete: Statement,
    reread: Statement,
    reread_missing: Statement,
    partial: HashMap<Vec<bool>, Statement>,
    /// Partial updates may set sent columns directly (no written column uses USING).
    direct_partial: bool,
    relation_checked: bool,
    collapse: Arc<std::sync::atomic::AtomicBool>,
    hold: Option<watch::Receiver<crate::ops::throttle::ThrottleState>>,
    /// The run's test hooks (pause points `applied`, `visibility-wait`; broken orderings).
    probe: Probe,
}

struct Batch {
    changes: u64,
    transactions: u64,
    applied: Lsn,
    fence: u64,
    xid: u32,
    /// Source transactions in this batch (for the test-only `applied` pause point).
    xids: Vec<u32>,
}

impl Worker {
    async fn new(
        client: Client,
        plan: Arc<Plan>,
        reader: SpoolReader,
        collapse: Arc<std::sync::atomic::AtomicBool>,
        probe: Probe,
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
            hold: None,
            probe,
        })
    }

    async fn run(
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
            status.send_modify(|s| {
                s.applied = s.applied.max(batch.applied);
                s.changes += batch.changes;
                s.transactions += batch.transactions;
                s.fence = s.fence.max(batch.fence);
                s.idle = idle;
            });
        }
    }

    /// Test-only ([`crate::testing::Broken::ApplyDuringCopy`]): where the applier that ran
    /// during the backfill stopped; [`Lsn::INVALID`] in every normal run.
    fn applied_during_copy(&self) -> Lsn {
        #[cfg(feature = "pause-points")]
        if broken!(self.probe, ApplyDuringCopy) {
            return self.probe.applied_during_copy();
        }
        Lsn::INVALID
    }

    /// Applies records from `first` up to a transaction boundary where the batch is full or
    /// the spool is drained, in one shadow transaction.
    async fn apply_batch(&mut self, first: (Lsn, bytes::Bytes)) -> Result<Batch> {
        let mut batch = Batch {
            changes: 0,
            transactions: 0,
            applied: Lsn::INVALID,
            fence: 0,
            xid: 0,
            xids: Vec::new(),
        };
        // Test-only broken orderings (never in a normal build): changes are not collapsed per
        // key; transactions applied during the backfill are not applied again.
        let collapse = self.collapse.load(std::sync::atomic::Ordering::SeqCst)
            && !broken!(self.probe, UnorderedBatch);
        let applied_during_copy = self.applied_during_copy();
        let mut skip_txn = false;
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
                    skip_txn = final_lsn < applied_during_copy;
                }
                PgOutputMessage::Commit { end_lsn, .. } => {
                    in_source_txn = false;
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
                    if prefix == plan.names.message_prefix
                        && let Some(n) = std::str::from_utf8(&content)
                            .ok()
                            .and_then(|c| c.strip_prefix("fence:"))
                            .and_then(|n| n.parse::<u64>().ok())
                    {
                        batch.fence = batch.fence.max(n);
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

fn expect_relation(plan: &Plan, relation_id: u32, checked: bool) -> Result<()> {
    if relation_id != plan.original.oid {
        bail!(
            "a change for relation {relation_id} arrived on doppel's publication, which covers only {} (oid {})",
            plan.original.qualified(),
            plan.original.oid
        );
    }
    if !checked {
        bail!("a change arrived before its Relation message");
    }
    Ok(())
}

fn key_of(plan: &Plan, row: &[Val]) -> Result<Key> {
    plan.projection
        .key
        .iter()
        .map(|k| match row.get(k.relation_position) {
            Some(Val::Text(s)) => Ok(Some(s.clone())),
            Some(Val::Unchanged) => Err(anyhow!(
                "primary-key column {:?} arrived as an unchanged TOASTed value; keys this large are not supported",
                k.source.name
            )),
            _ => Err(anyhow!("a streamed change lacks primary-key column {:?}", k.source.name)),
        })
        .collect()
}

fn key_of_bound(plan: &Plan, row: &[Option<String>]) -> Result<Key> {
    plan.projection
        .key
        .iter()
        .map(|k| match row.get(k.relation_position) {
            Some(Some(s)) => Ok(Some(s.clone())),
            _ => Err(anyhow!(
                "a streamed change lacks primary-key column {:?}",
                k.source.name
            )),
        })
        .collect()
}

/// Sends buffered changes to the shadow inside the open transaction, as pipelined statements.
struct Exec<'a> {
    tx: &'a Transaction<'a>,
    plan: &'a Plan,
    upsert: &'a Statement,
    delete: &'a Statement,
    reread: &'a Statement,
    reread_missing: &'a Statement,
    partial: &'a mut HashMap<Vec<bool>, Statement>,
    probe: &'a Probe,
}

/// One statement to send: the statement and its parameters.
struct Call {
    statement: Statement,
    /// One array per parameter, or (when `scalar`) one single-element vector per parameter.
    params: Vec<Vec<Option<String>>>,
    scalar: bool,
    first_key: Key,
    /// A shadow-only partial update: when it updates no row, the key is re-read from the
    /// original after the batch.
    reread_if_absent: bool,
}

/// Consecutive changes of one kind on distinct keys: kind, rows (key, parameters), keys.
type OrderedRun = (Kind, Vec<(Key, Vec<Option<String>>)>, HashSet<Key>);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Upsert,
    Delete,
    ReRead,
}

impl Exec<'_> {
    async fn flush(&mut self, pending: Pending) -> Result<()> {
        if pending.len() == 0 {
            return Ok(());
        }
        // A re-read must see the event's transaction (docs/design.md §2.6, F3).
        if !broken!(self.probe, NoVisibilityWait) {
            wait_visible_pausing(self.tx, &pending.xids, self.probe).await?;
        }
        let mut ordered = pending.ordered;
        let mut collapsed = pending.collapsed;
        // Test-only broken orderings: kinds grouped regardless of source order; re-reads
        // dropped.
        if broken!(self.probe, UnorderedBatch) {
            ordered.sort_by_key(|(_, op)| match op {
                Op::Upsert(_) => 0,
                Op::Partial(_) | Op::ReRead => 1,
                Op::Delete => 2,
            });
        }
        if broken!(self.probe, NoReread) {
            ordered.retain(|(_, op)| *op != Op::ReRead);
            collapsed.retain(|_, op| *op != Op::ReRead);
        }
        let mut calls = Vec::new();
        if collapsed.is_empty() {
            // Source order: consecutive changes of one kind on distinct keys share a statement.
            let mut run: Option<OrderedRun> = None;
            for (key, op) in ordered {
                let (kind, row) = match op {
                    Op::Upsert(row) => (Kind::Upsert, row),
                    Op::Delete => (Kind::Delete, key.clone()),
                    Op::ReRead => (Kind::ReRead, key.clone()),
                    Op::Partial(row) => {
                        if let Some((k, rows, _)) = run.take() {
                            calls.push(self.call(k, rows));
                        }
                        calls.push(self.partial_call(&key, &row).await?);
                        continue;
                    }
                };
                let fits = run.as_ref().is_some_and(|(k, rows, keys)| {
                    *k == kind && rows.len() < RUN_ROWS && !keys.contains(&key)
                });
                if !fits {
                    if let Some((k, rows, _)) = run.take() {
                        calls.push(self.call(k, rows));
                    }
                    run = Some((kind, Vec::new(), HashSet::new()));
                }
                if let Some((_, rows, keys)) = run.as_mut() {
                    keys.insert(key.clone());
                    rows.push((key, row));
                }
            }
            if let Some((k, rows, _)) = run.take() {
                calls.push(self.call(k, rows));
            }
        } else {
            // Collapsed: one op per key; different keys commute.
            let mut deletes = Vec::new();
            let mut upserts = Vec::new();
            let mut rereads = Vec::new();
            let mut partials = Vec::new();
            for (key, op) in collapsed {
                match op {
                    Op::Delete => deletes.push((key.clone(), key)),
                    Op::Upsert(row) => upserts.push((key, row)),
                    Op::ReRead => rereads.push((key.clone(), key)),
                    Op::Partial(row) => partials.push((key, row)),
                }
            }
            for (kind, rows) in [
                (Kind::Delete, deletes),
                (Kind::Upsert, upserts),
                (Kind::ReRead, rereads),
            ] {
                let mut rows = rows;
                while !rows.is_empty() {
                    let rest = rows.split_off(rows.len().min(RUN_ROWS));
                    calls.push(self.call(kind, rows));
                    rows = rest;
                }
            }
            for (key, row) in partials {
                calls.push(self.partial_call(&key, &row).await?);
            }
        }
        self.execute(calls).await
    }

    fn call(&self, kind: Kind, rows: Vec<(Key, Vec<Option<String>>)>) -> Call {
        let width = rows.first().map(|(_, r)| r.len()).unwrap_or(0);
        let mut params: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(rows.len()); width];
        let first_key = rows.first().map(|(k, _)| k.clone()).unwrap_or_default();
        for (_, row) in rows {
            for (i, v) in row.into_iter().enumerate() {
                params[i].push(v);
            }
        }
        let statement = match kind {
            Kind::Upsert => self.upsert.clone(),
            Kind::Delete => self.delete.clone(),
            Kind::ReRead => self.reread.clone(),
        };
        Call {
            statement,
            params,
            scalar: false,
            first_key,
            reread_if_absent: false,
        }
    }

    /// A partial update that touches only the shadow (it must not wait for a lock on the
    /// original: the cutover drains the last changes while holding ACCESS EXCLUSIVE on it).
    /// A key it does not find is re-read from the original after the batch.
    async fn partial_call(&mut self, key: &Key, row: &[Val]) -> Result<Call> {
        let mask: Vec<bool> = row.iter().map(|v| *v != Val::Unchanged).collect();
        let statement = match self.partial.get(&mask) {
            Some(s) => s.clone(),
            None => {
                let sql = self
                    .plan
                    .projection
                    .partial_update_shadow_sql(&self.plan.names.shadow_qualified(), &mask);
                let s = self
                    .tx
                    .prepare(&sql)
                    .await
                    .context("preparing a partial update")?;
                self.partial.insert(mask, s.clone());
                s
            }
        };
        let params = row
            .iter()
            .filter(|v| **v != Val::Unchanged)
            .map(|v| vec![v.bind()])
            .chain(key.iter().map(|k| vec![k.clone()]))
            .collect();
        Ok(Call {
            statement,
            params,
            scalar: true,
            first_key: key.clone(),
            reread_if_absent: true,
        })
    }

    async fn execute(&self, calls: Vec<Call>) -> Result<()> {
        let results = {
            let futures = calls.iter().map(|call| {
                let params: Vec<&(dyn ToSql + Sync)> = call
                    .params
                    .iter()
                    .map(|p| {
                        if call.scalar {
                            &p[0] as &(dyn ToSql + Sync)
                        } else {
                            p as &(dyn ToSql + Sync)
                        }
                    })
                    .collect();
                let tx = self.tx;
                async move { tx.execute(&call.statement, &params).await }
            });
            futures_util::future::join_all(futures).await
        };
        let mut missing: Vec<&Key> = Vec::new();
        for (call, result) in calls.iter().zip(results) {
            match result {
                Err(e) => return Err(apply_error(e, self.plan, &call.first_key)),
                Ok(0) if call.reread_if_absent => missing.push(&call.first_key),
                Ok(_) => {}
            }
        }
        // Keys a partial update did not find: copy their current version from the original
        // (keeping a row a later change of this batch wrote meanwhile).
        if !missing.is_empty() && !broken!(self.probe, NoReread) {
            let width = missing[0].len();
            let mut params: Vec<Vec<Option<String>>> = vec![Vec::new(); width];
            for key in &missing {
                for (i, v) in key.iter().enumerate() {
                    params[i].push(v.clone());
                }
            }
            let params: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            self.tx
                .execute(self.reread_missing, &params)
                .await
                .map_err(|e| apply_error(e, self.plan, missing[0]))?;
        }
        Ok(())
    }
}

/// A constraint the ALTER adds, violated by a live write: name the table, the constraint and
/// the server's detail (which names the key).
fn apply_error(e: tokio_postgres::Error, plan: &Plan, key: &[Option<String>]) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) if crate::failure::rejected_by_schema(db) => crate::failure::fail(
            crate::failure::FailureKind::Conflict,
            format!(
                "a live write to {} cannot be applied to the new schema: {}{} (near key {}); aborting before cutover, the original table is untouched",
                plan.original.qualified(),
                db.message(),
                db.detail().map(|d| format!(" — {d}")).unwrap_or_default(),
                key.iter()
                    .map(|k| k.clone().unwrap_or_else(|| "NULL".into()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        _ => anyhow::Error::new(e).context("applying streamed changes to the shadow"),
    }
}

fn values(tuple: &TupleData) -> Result<Vec<Val>> {
    tuple
        .0
        .iter()
        .map(|v| match v {
            ColumnValue::Null => Ok(Val::Null),
            ColumnValue::UnchangedToast => Ok(Val::Unchanged),
            ColumnValue::Text(_) => v
                .as_text()
                .map(|s| Val::Text(s.to_string()))
                .ok_or_else(|| anyhow!("a streamed value is not valid UTF-8")),
            ColumnValue::Binary(_) => {
                bail!("a streamed value arrived in binary format; doppel requests text")
            }
        })
        .collect()
}

fn check_relation(plan: &Plan, rel: &pgoutput::Relation) -> Result<()> {
    let expected = &plan.projection.relation;
    let same = rel.id == plan.original.oid
        && rel.columns.len() == expected.len()
        && rel
            .columns
            .iter()
            .zip(expected)
            .all(|(a, b)| a.name == b.name && a.type_oid == b.type_oid);
    if !same {
        return Err(crate::failure::fail(
            crate::failure::FailureKind::Conflict,
            format!(
                "the definition of {} changed during the migration (DDL ran on it: columns now {:?}); aborting — the shadow was built for the old definition. The original table is untouched; run doppel again",
                plan.original.qualified(),
                rel.columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
            ),
        ));
    }
    Ok(())
}

/// Waits until the transactions `xids` (32-bit, committed) are visible to new snapshots of
/// this session: a commit can be decoded before it leaves the ProcArray (docs/design.md F3). One
/// `pg_current_snapshot()` per check, whatever the number of transactions.
///
/// Errors: a transaction still invisible after 60 s (a synchronous standby that never
/// acknowledges), or a failed query.
pub async fn wait_visible(client: &impl tokio_postgres::GenericClient, xids: &[u32]) -> Result<()> {
    wait_visible_pausing(client, xids, &Probe::default()).await
}

/// [`wait_visible`], stopping once at the test-only `visibility-wait` pause point of `probe`
/// when a transaction is found invisible.
async fn wait_visible_pausing(
    client: &impl tokio_postgres::GenericClient,
    xids: &[u32],
    probe: &Probe,
) -> Result<()> {
    if xids.is_empty() {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut first = true;
    loop {
        let text: String = client
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await?
            .get(0);
        let snapshot = Snapshot::parse(&text)?;
        let Some(xid) = xids.iter().copied().find(|x| !snapshot.sees_xid32(*x)) else {
            return Ok(());
        };
        if std::mem::take(&mut first) {
            pause_point!(probe, "visibility-wait", format!("xid={xid}"));
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "transaction {xid} was decoded but did not become visible within 60 s (a synchronous standby not acknowledging?)"
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
