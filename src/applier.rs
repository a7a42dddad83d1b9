//! The applier: replays spooled pgoutput transactions into the shadow table, in commit order,
//! through the copy's own projection (DESIGN.md §2, ordering (a)).
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
//! Many source transactions go into one shadow transaction; consecutive changes of one kind
//! on distinct keys become one multi-row statement (`unnest` of `text[]` parameters), in
//! source order. Progress (applied LSN, fences) is published only after the shadow
//! transaction commits.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement, Transaction};

use crate::lsn::Lsn;
use crate::pgoutput::{self, ColumnValue, OldTuple, PgOutputMessage, TupleData};
use crate::plan::Plan;
use crate::spool::SpoolReader;
use crate::sql::ident;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Run,
    Pause,
    Stop,
}

/// A running applier task.
pub struct Applier {
    control: watch::Sender<Control>,
    status: watch::Receiver<ApplyStatus>,
    handle: JoinHandle<Result<()>>,
}

impl Applier {
    /// Prepares the apply statements on `client` (a session of its own) and starts the task,
    /// paused. Errors: a statement does not prepare (the shadow lacks its primary key).
    pub async fn spawn(client: Client, plan: Arc<Plan>, reader: SpoolReader) -> Result<Applier> {
        let worker = Worker::new(client, plan, reader).await?;
        let (control_tx, control_rx) = watch::channel(Control::Pause);
        let (status_tx, status_rx) = watch::channel(ApplyStatus {
            paused: true,
            ..ApplyStatus::default()
        });
        let handle = tokio::spawn(async move {
            let result = worker.run(control_rx, &status_tx).await;
            if let Err(e) = &result {
                status_tx.send_modify(|s| s.error = Some(format!("{e:#}")));
            }
            result
        });
        Ok(Applier {
            control: control_tx,
            status: status_rx,
            handle,
        })
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
            let why = self.status.borrow().error.clone();
            bail!(
                "applying streamed changes failed: {}",
                why.unwrap_or_else(|| "the applier stopped".into())
            );
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Upsert,
    Delete,
    ReRead,
}

/// Consecutive changes of one kind on distinct keys, applied as one statement.
struct Run {
    kind: Kind,
    rows: Vec<Vec<Option<String>>>,
    keys: HashSet<Vec<Option<String>>>,
    xids: Vec<u32>,
}

struct Worker {
    client: Client,
    plan: Arc<Plan>,
    reader: SpoolReader,
    upsert: Statement,
    delete: Statement,
    reread: Statement,
    partial: HashMap<Vec<bool>, Statement>,
    /// Partial updates may set sent columns directly (no written column uses USING).
    direct_partial: bool,
    relation_checked: bool,
}

struct Batch {
    run: Option<Run>,
    changes: u64,
    transactions: u64,
    applied: Lsn,
    fence: u64,
    xid: u32,
}

impl Worker {
    async fn new(client: Client, plan: Arc<Plan>, reader: SpoolReader) -> Result<Worker> {
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
            partial: HashMap::new(),
            direct_partial,
            relation_checked: false,
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
            let first = tokio::select! {
                record = self.reader.next() => record?,
                _ = control.changed() => continue,
            };
            let Some(first) = first else {
                return Ok(());
            };
            let batch = self.apply_batch(first).await?;
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

    /// Applies records from `first` up to a transaction boundary where the batch is full or
    /// the spool is drained, in one shadow transaction.
    async fn apply_batch(&mut self, first: (Lsn, bytes::Bytes)) -> Result<Batch> {
        let mut batch = Batch {
            run: None,
            changes: 0,
            transactions: 0,
            applied: Lsn::INVALID,
            fence: 0,
            xid: 0,
        };
        let plan = self.plan.clone();
        let upsert = self.upsert.clone();
        let delete = self.delete.clone();
        let reread = self.reread.clone();
        let direct_partial = self.direct_partial;
        let mut partial = std::mem::take(&mut self.partial);
        let mut relation_checked = self.relation_checked;
        let tx = self.client.transaction().await?;
        let mut ctx = Ctx {
            tx: &tx,
            plan: &plan,
            upsert: &upsert,
            delete: &delete,
            reread: &reread,
            partial: &mut partial,
            direct_partial,
        };
        let mut in_source_txn = false;
        let mut record = first;
        loop {
            let message = pgoutput::decode_bytes(record.1.clone())
                .with_context(|| format!("decoding the spooled message at {}", record.0))?;
            match message {
                PgOutputMessage::Begin { xid, .. } => {
                    in_source_txn = true;
                    batch.xid = xid;
                }
                PgOutputMessage::Commit { end_lsn, .. } => {
                    in_source_txn = false;
                    batch.transactions += 1;
                    batch.applied = batch.applied.max(end_lsn);
                }
                PgOutputMessage::Relation(rel) => {
                    check_relation(&plan, &rel)?;
                    relation_checked = true;
                }
                PgOutputMessage::Insert { relation_id, new } => {
                    ctx.expect_relation(relation_id, relation_checked)?;
                    let row = values(&new)?.iter().map(Val::bind).collect();
                    ctx.push(&mut batch, Kind::Upsert, row).await?;
                }
                PgOutputMessage::Update {
                    relation_id,
                    old,
                    new,
                } => {
                    ctx.expect_relation(relation_id, relation_checked)?;
                    ctx.update(&mut batch, old.as_ref(), &new).await?;
                }
                PgOutputMessage::Delete { relation_id, old } => {
                    ctx.expect_relation(relation_id, relation_checked)?;
                    let key = ctx.key_of(&values(old.tuple())?)?;
                    ctx.push(&mut batch, Kind::Delete, key).await?;
                }
                PgOutputMessage::Truncate { .. } => bail!(
                    "TRUNCATE ran on {} during the migration: the shadow cannot follow it; aborting (the original table is untouched; run doppel again)",
                    plan.original.qualified()
                ),
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
        ctx.flush(&mut batch).await?;

        tx.commit().await.context("committing applied changes")?;
        self.partial = partial;
        self.relation_checked = relation_checked;
        Ok(batch)
    }
}

struct Ctx<'a> {
    tx: &'a Transaction<'a>,
    plan: &'a Plan,
    upsert: &'a Statement,
    delete: &'a Statement,
    reread: &'a Statement,
    partial: &'a mut HashMap<Vec<bool>, Statement>,
    direct_partial: bool,
}

impl Ctx<'_> {
    fn expect_relation(&self, relation_id: u32, checked: bool) -> Result<()> {
        if relation_id != self.plan.original.oid {
            bail!(
                "a change for relation {relation_id} arrived on doppel's publication, which covers only {} (oid {})",
                self.plan.original.qualified(),
                self.plan.original.oid
            );
        }
        if !checked {
            bail!("a change arrived before its Relation message");
        }
        Ok(())
    }

    fn key_of(&self, row: &[Val]) -> Result<Vec<Option<String>>> {
        self.plan
            .projection
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

    async fn update(
        &mut self,
        batch: &mut Batch,
        old: Option<&OldTuple>,
        new: &TupleData,
    ) -> Result<()> {
        let row = values(new)?;
        let new_key = self.key_of(&row)?;
        if let Some(old) = old {
            let old_key = self.key_of(&values(old.tuple())?)?;
            if old_key != new_key {
                self.push(batch, Kind::Delete, old_key).await?;
            }
        }
        if row.iter().all(|v| *v != Val::Unchanged) {
            let bound = row.iter().map(Val::bind).collect();
            return self.push(batch, Kind::Upsert, bound).await;
        }
        if !self.direct_partial {
            return self.push(batch, Kind::ReRead, new_key).await;
        }
        // Set the sent columns on the key, in order with everything before it.
        self.flush(batch).await?;
        let mask: Vec<bool> = row.iter().map(|v| *v != Val::Unchanged).collect();
        let statement = match self.partial.get(&mask) {
            Some(s) => s.clone(),
            None => {
                let sql = partial_update_sql(self.plan, &mask);
                let s = self
                    .tx
                    .prepare(&sql)
                    .await
                    .context("preparing a partial update")?;
                self.partial.insert(mask.clone(), s.clone());
                s
            }
        };
        let params: Vec<Option<String>> = row
            .iter()
            .filter(|v| **v != Val::Unchanged)
            .map(Val::bind)
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let updated = self
            .tx
            .execute(&statement, &refs)
            .await
            .map_err(|e| apply_error(e, self.plan, &new_key))?;
        batch.changes += 1;
        if updated == 0 {
            self.push(batch, Kind::ReRead, new_key).await?;
        }
        Ok(())
    }

    async fn push(
        &mut self,
        batch: &mut Batch,
        kind: Kind,
        row: Vec<Option<String>>,
    ) -> Result<()> {
        let key = match kind {
            Kind::Upsert => self
                .plan
                .projection
                .key
                .iter()
                .map(|k| row.get(k.relation_position).cloned().flatten())
                .collect(),
            Kind::Delete | Kind::ReRead => row.clone(),
        };
        let fits = batch
            .run
            .as_ref()
            .is_some_and(|r| r.kind == kind && r.rows.len() < RUN_ROWS && !r.keys.contains(&key));
        if !fits {
            self.flush(batch).await?;
            batch.run = Some(Run {
                kind,
                rows: Vec::new(),
                keys: HashSet::new(),
                xids: Vec::new(),
            });
        }
        let xid = batch.xid;
        if let Some(run) = batch.run.as_mut() {
            run.rows.push(row);
            run.keys.insert(key);
            if kind == Kind::ReRead && run.xids.last() != Some(&xid) {
                run.xids.push(xid);
            }
        }
        batch.changes += 1;
        Ok(())
    }

    async fn flush(&mut self, batch: &mut Batch) -> Result<()> {
        let Some(run) = batch.run.take() else {
            return Ok(());
        };
        if run.rows.is_empty() {
            return Ok(());
        }
        let width = run.rows[0].len();
        let mut columns: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(run.rows.len()); width];
        for row in &run.rows {
            for (i, v) in row.iter().enumerate() {
                columns[i].push(v.clone());
            }
        }
        let refs: Vec<&(dyn ToSql + Sync)> =
            columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        let statement = match run.kind {
            Kind::Upsert => self.upsert,
            Kind::Delete => self.delete,
            Kind::ReRead => {
                for xid in &run.xids {
                    wait_visible(self.tx, *xid).await?;
                }
                self.reread
            }
        };
        if let Err(e) = self.tx.execute(statement, &refs).await {
            let first_key = run.keys.iter().next().cloned().unwrap_or_default();
            return Err(apply_error(e, self.plan, &first_key));
        }
        Ok(())
    }
}

/// A constraint the ALTER adds, violated by a live write: name the table, the constraint and
/// the server's detail (which names the key).
fn apply_error(e: tokio_postgres::Error, plan: &Plan, key: &[Option<String>]) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) if db.code().code().starts_with("23") || db.code().code().starts_with("22") => {
            anyhow!(
                "a live write to {} cannot be applied to the new schema: {}{} (near key {}); aborting before cutover, the original table is untouched",
                plan.original.qualified(),
                db.message(),
                db.detail().map(|d| format!(" — {d}")).unwrap_or_default(),
                key.iter()
                    .map(|k| k.clone().unwrap_or_else(|| "NULL".into()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        _ => anyhow::Error::new(e).context("applying streamed changes to the shadow"),
    }
}

/// `UPDATE shadow SET <sent, written, non-key columns> FROM (<sent values>) AS src WHERE key`.
/// Parameters: the sent relation columns' text values, in relation order.
fn partial_update_sql(plan: &Plan, sent: &[bool]) -> String {
    let p = &plan.projection;
    let shadow = plan.names.shadow_qualified();
    let mut casts = Vec::new();
    let mut n = 0;
    for (i, col) in p.relation.iter().enumerate() {
        if sent.get(i).copied().unwrap_or(false) {
            n += 1;
            casts.push(format!(
                "${n}::text::{} AS {}",
                col.type_sql,
                ident(&col.name)
            ));
        }
    }
    let sent_names: Vec<&str> = p
        .relation
        .iter()
        .enumerate()
        .filter(|(i, _)| sent.get(*i).copied().unwrap_or(false))
        .map(|(_, c)| c.name.as_str())
        .collect();
    let keys: Vec<&str> = p.key.iter().map(|k| k.target.name.as_str()).collect();
    let mut sets: Vec<String> = p
        .written()
        .iter()
        .filter(|c| !keys.contains(&c.target.name.as_str()))
        .filter(|c| {
            c.source
                .as_ref()
                .is_some_and(|s| sent_names.contains(&s.name.as_str()))
        })
        .map(|c| format!("{} = {}", ident(&c.target.name), c.expression))
        .collect();
    if sets.is_empty() {
        let k = &p.key[0].target.name;
        sets.push(format!("{0} = {1}.{0}", ident(k), shadow));
    }
    let key_match: Vec<String> = p
        .key
        .iter()
        .map(|k| {
            format!(
                "{shadow}.{} = CAST(src.{} AS {})",
                ident(&k.target.name),
                ident(&k.source.name),
                k.target.type_sql
            )
        })
        .collect();
    format!(
        "UPDATE {shadow} SET {} FROM (SELECT {}) AS src WHERE {}",
        sets.join(", "),
        casts.join(", "),
        key_match.join(" AND ")
    )
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
        bail!(
            "the definition of {} changed during the migration (DDL ran on it: columns now {:?}); aborting — the shadow was built for the old definition. The original table is untouched; run doppel again",
            plan.original.qualified(),
            rel.columns
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// Waits until transaction `xid` (32-bit, committed) is visible to new snapshots of this
/// session: its commit can be decoded before it leaves the ProcArray (DESIGN.md F3).
pub async fn wait_visible(client: &impl tokio_postgres::GenericClient, xid: u32) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let snapshot: String = client
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await?
            .get(0);
        let (xmin, xmax, xip) = parse_snapshot(&snapshot)?;
        let full = widen_xid(xid, xmax);
        if full < xmin || (full < xmax && !xip.contains(&full)) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "transaction {xid} was decoded but did not become visible within 60 s (a synchronous standby not acknowledging?)"
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Parses `pg_snapshot` text `xmin:xmax:xip1,xip2,..` into 64-bit transaction ids.
pub fn parse_snapshot(text: &str) -> Result<(u64, u64, Vec<u64>)> {
    let mut parts = text.split(':');
    let bad = || anyhow!("unexpected pg_snapshot text {text:?}");
    let xmin: u64 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let xmax: u64 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let xip = parts
        .next()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().map_err(|_| bad()))
        .collect::<Result<Vec<_>>>()?;
    Ok((xmin, xmax, xip))
}

/// The 64-bit id of a recent 32-bit `xid`, relative to a snapshot's `xmax` (the epoch of the
/// nearest id at or below `xmax`).
pub fn widen_xid(xid: u32, xmax: u64) -> u64 {
    let epoch = xmax >> 32;
    let candidate = (epoch << 32) | u64::from(xid);
    if candidate > xmax && epoch > 0 {
        candidate - (1 << 32)
    } else {
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_text_parses() {
        assert_eq!(
            parse_snapshot("724:730:725,727").unwrap(),
            (724, 730, vec![725, 727])
        );
        assert_eq!(parse_snapshot("10:10:").unwrap(), (10, 10, vec![]));
        assert!(parse_snapshot("x").is_err());
    }

    #[test]
    fn xids_widen_into_the_right_epoch() {
        assert_eq!(widen_xid(5, 10), 5);
        let xmax = (3u64 << 32) | 100;
        assert_eq!(widen_xid(50, xmax), (3 << 32) | 50);
        assert_eq!(
            widen_xid(u32::MAX - 1, xmax),
            (2 << 32) | u64::from(u32::MAX - 1)
        );
    }
}
