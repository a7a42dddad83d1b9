//! Sending a batch's changes to the shadow inside its transaction: multi-row statements per
//! kind (collapsed) or in source order, pipelined; partial updates; re-reads of absent keys.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Context, Result};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Statement, Transaction};

use super::RUN_ROWS;
use super::changes::{Key, Op, Pending, Val};
use super::visibility::wait_visible_pausing;
use crate::plan::Plan;
use crate::testing::{Probe, broken};

/// Sends buffered changes to the shadow inside the open transaction, as pipelined statements.
pub(super) struct Exec<'a> {
    pub(super) tx: &'a Transaction<'a>,
    pub(super) plan: &'a Plan,
    pub(super) upsert: &'a Statement,
    pub(super) delete: &'a Statement,
    pub(super) reread: &'a Statement,
    pub(super) reread_missing: &'a Statement,
    pub(super) partial: &'a mut HashMap<Vec<bool>, Statement>,
    pub(super) probe: &'a Probe,
    /// Tolerant mode ([`super::ApplyOptions::tolerant`]): the keys whose latest change the
    /// target rejected, with the reason.
    pub(super) rejected: Option<&'a mut BTreeMap<Key, String>>,
}

/// One statement to send: the statement and its parameters.
pub(super) struct Call {
    pub(super) statement: Statement,
    /// One array per parameter, or (when `scalar`) one single-element vector per parameter.
    pub(super) params: Vec<Vec<Option<String>>>,
    pub(super) scalar: bool,
    pub(super) first_key: Key,
    /// The key of each row, in parameter order.
    pub(super) keys: Vec<Key>,
    /// A shadow-only partial update: when it updates no row, the key is re-read from the
    /// original after the batch.
    pub(super) reread_if_absent: bool,
}

/// Consecutive changes of one kind on distinct keys: kind, rows (key, parameters), keys.
pub(super) type OrderedRun = (Kind, Vec<(Key, Vec<Option<String>>)>, HashSet<Key>);

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Upsert,
    Delete,
    ReRead,
}

impl Exec<'_> {
    pub(super) async fn flush(&mut self, pending: Pending) -> Result<()> {
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

    pub(super) fn call(&self, kind: Kind, rows: Vec<(Key, Vec<Option<String>>)>) -> Call {
        let width = rows.first().map(|(_, r)| r.len()).unwrap_or(0);
        let mut params: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(rows.len()); width];
        let first_key = rows.first().map(|(k, _)| k.clone()).unwrap_or_default();
        let mut keys = Vec::with_capacity(rows.len());
        for (key, row) in rows {
            for (i, v) in row.into_iter().enumerate() {
                params[i].push(v);
            }
            keys.push(key);
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
            keys,
            reread_if_absent: false,
        }
    }

    /// A partial update that touches only the shadow (it must not wait for a lock on the
    /// original: the cutover drains the last changes while holding ACCESS EXCLUSIVE on it).
    /// A key it does not find is re-read from the original after the batch.
    pub(super) async fn partial_call(&mut self, key: &Key, row: &[Val]) -> Result<Call> {
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
            keys: vec![key.clone()],
            reread_if_absent: true,
        })
    }

    pub(super) async fn execute(&mut self, calls: Vec<Call>) -> Result<()> {
        if self.rejected.is_some() {
            return self.execute_tolerant(calls).await;
        }
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

impl Call {
    /// The parameters as the statement binds them.
    fn bound(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| {
                if self.scalar {
                    &p[0] as &(dyn ToSql + Sync)
                } else {
                    p as &(dyn ToSql + Sync)
                }
            })
            .collect()
    }

    /// One call per row (a multi-row call split), each with its key.
    fn rows(&self) -> Vec<Call> {
        if self.scalar || self.keys.len() <= 1 {
            return vec![self.clone_call(self.params.clone(), self.keys.clone())];
        }
        (0..self.keys.len())
            .map(|i| {
                let params = self.params.iter().map(|p| vec![p[i].clone()]).collect();
                self.clone_call(params, vec![self.keys[i].clone()])
            })
            .collect()
    }

    fn clone_call(&self, params: Vec<Vec<Option<String>>>, keys: Vec<Key>) -> Call {
        Call {
            statement: self.statement.clone(),
            params,
            scalar: self.scalar,
            first_key: keys.first().cloned().unwrap_or_default(),
            keys,
            reread_if_absent: self.reread_if_absent,
        }
    }
}

impl Exec<'_> {
    /// Tolerant mode: each call under a savepoint. A call the target rejects (SQLSTATE
    /// classes 22 and 23) is rolled back and its rows applied one by one, each under its own
    /// savepoint: a rejected row's key is recorded with the server's reason and skipped; an
    /// applied row's key leaves the record. Keys a partial update did not find are re-read
    /// from the source the same way.
    ///
    /// Errors: any other failure (exit 1, or its class).
    async fn execute_tolerant(&mut self, calls: Vec<Call>) -> Result<()> {
        let mut missing = Vec::new();
        for call in calls {
            let rows = match self.savepointed(&call).await? {
                Ok(n) => vec![(call, n)],
                Err(_) => {
                    let mut applied = Vec::new();
                    for row in call.rows() {
                        match self.savepointed(&row).await? {
                            Ok(n) => applied.push((row, n)),
                            Err(reason) => self.reject(&row.first_key, reason),
                        }
                    }
                    applied
                }
            };
            for (call, n) in rows {
                self.accept(&call.keys);
                if n == 0 && call.reread_if_absent {
                    missing.push(call.first_key.clone());
                }
            }
        }
        for key in missing {
            let reread = Call {
                statement: self.reread_missing.clone(),
                params: key.iter().map(|v| vec![v.clone()]).collect(),
                scalar: false,
                first_key: key.clone(),
                keys: vec![key.clone()],
                reread_if_absent: false,
            };
            match self.savepointed(&reread).await? {
                Ok(_) => self.accept(&reread.keys),
                Err(reason) => self.reject(&key, reason),
            }
        }
        Ok(())
    }

    /// Runs `call` under a savepoint: `Ok(Ok(rows))` when applied, `Ok(Err(reason))` when the
    /// target rejected it (rolled back to the savepoint).
    ///
    /// Errors: any other failure.
    async fn savepointed(&self, call: &Call) -> Result<std::result::Result<u64, String>> {
        self.tx.batch_execute("SAVEPOINT doppel_change").await?;
        match self.tx.execute(&call.statement, &call.bound()).await {
            Ok(n) => {
                self.tx
                    .batch_execute("RELEASE SAVEPOINT doppel_change")
                    .await?;
                Ok(Ok(n))
            }
            Err(e) => match e.as_db_error() {
                Some(db) if crate::failure::rejected_by_schema(db) => {
                    self.tx
                        .batch_execute("ROLLBACK TO SAVEPOINT doppel_change")
                        .await?;
                    Ok(Err(format!(
                        "{} (SQLSTATE {})",
                        db.message(),
                        db.code().code()
                    )))
                }
                _ => Err(apply_error(e, self.plan, &call.first_key)),
            },
        }
    }

    fn reject(&mut self, key: &Key, reason: String) {
        if let Some(rejected) = self.rejected.as_deref_mut() {
            tracing::warn!(key = ?key, "a change the target rejects was skipped: {reason}");
            rejected.insert(key.clone(), reason);
        }
    }

    fn accept(&mut self, keys: &[Key]) {
        if let Some(rejected) = self.rejected.as_deref_mut()
            && !rejected.is_empty()
        {
            for key in keys {
                rejected.remove(key);
            }
        }
    }
}

/// A constraint the ALTER adds, violated by a live write: name the table, the constraint and
/// the server's detail (which names the key).
pub(super) fn apply_error(
    e: tokio_postgres::Error,
    plan: &Plan,
    key: &[Option<String>],
) -> anyhow::Error {
    let missing = e
        .as_db_error()
        .and_then(|db| crate::failure::partition_missing(db, &plan.original.qualified()));
    if let Some(missing) = missing {
        return missing;
    }
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
