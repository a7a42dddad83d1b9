//! What each clause of the ALTER does, measured on the empty clone (docs/design.md §1.10):
//! [`effects`] runs the clauses one at a time, reading the clone's catalog before and after
//! each, and asks the real table which views, rules, policies and triggers use the columns a
//! clause retypes or drops (PostgreSQL refuses such a clause directly; the clone has no
//! dependents to refuse it). [`rehearse`] runs the direct steps in the order doppel would run
//! them on a fresh clone and says whether the table ends in the shape the clauses in their
//! written order give. Everything
//! runs in transactions that are rolled back.

use anyhow::Result;
use tokio_postgres::{Client, Transaction};

use super::cost;
use crate::failure::{Check, Refusal};
use crate::model::alter::AlterSpec;
use crate::model::catalog::Table;
use crate::preflight::clone::{MissingReference, TempClone};
use crate::preflight::strategy::{Effect, same_shape};

/// The clone after every clause, and each clause's effect.
pub struct Measured {
    /// One per clause (action), in order.
    pub effects: Vec<Effect>,
    /// The clone after every clause, in the written order.
    pub final_shape: Table,
    /// How `pg_get_indexdef` prints the clone's name.
    pub clone_text: String,
}

/// Runs every clause of `alter` alone on a clone of `t`, in order, and measures each.
/// Returns the refusal ([`Check::Alter`]) when the server rejects a clause or a referenced
/// table does not exist.
///
/// Errors: the clone cannot be created, or a query fails.
pub async fn effects(
    client: &mut Client,
    t: &Table,
    alter: &AlterSpec,
) -> Result<std::result::Result<Measured, Refusal>> {
    let actions = alter.actions();
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL lock_timeout = '5s'").await?;
    let clone = match TempClone::create(&tx, t, &actions).await {
        Ok(clone) => clone,
        Err(e) if e.downcast_ref::<MissingReference>().is_some() => {
            return Ok(Err(Refusal::new(
                Check::Alter,
                e.to_string(),
                "create the referenced table first, or correct its name",
            )));
        }
        Err(e) => return Err(e),
    };
    let mut before = clone.inspect(&tx).await?;
    let mut effects = Vec::new();
    for action in &actions {
        if let Some(msg) = clone.alter(&tx, action).await {
            return Ok(Err(Refusal::without_fix(
                Check::Alter,
                format!("the server rejected {action:?}: {msg}; nothing was created"),
            )));
        }
        let after = clone.inspect(&tx).await?;
        let mut effect = diff(action, &before, &after);
        dependents(&tx, t, &before, &after, &mut effect).await?;
        effects.push(effect);
        before = after;
    }
    tx.rollback().await?;
    Ok(Ok(Measured {
        effects,
        final_shape: before,
        clone_text: clone.text,
    }))
}

/// What `action` changed between `before` and `after` (the clone's catalog).
fn diff(action: &str, before: &Table, after: &Table) -> Effect {
    let rebuilt_indexes = after
        .indexes
        .iter()
        .filter(|a| {
            before
                .indexes
                .iter()
                .any(|b| b.name == a.name && (b.oid != a.oid || b.relfilenode != a.relfilenode))
        })
        .map(|a| a.name.clone())
        .collect();
    let added_columns = after
        .columns
        .iter()
        .filter(|a| before.columns.iter().all(|b| b.attnum != a.attnum))
        .cloned()
        .collect();
    let new_not_null = after
        .columns
        .iter()
        .filter(|a| {
            a.not_null
                && before
                    .columns
                    .iter()
                    .any(|b| b.attnum == a.attnum && !b.not_null)
        })
        .map(|a| a.name.clone())
        .collect();
    let new_constraints = after
        .constraints
        .iter()
        .filter(|a| a.kind != 'n' && before.constraints.iter().all(|b| b.name != a.name))
        .cloned()
        .collect();
    let validated = after
        .constraints
        .iter()
        .filter(|a| {
            a.validated
                && before
                    .constraints
                    .iter()
                    .any(|b| b.name == a.name && !b.validated)
        })
        .cloned()
        .collect();
    let new_indexes = after
        .indexes
        .iter()
        .filter(|a| {
            before
                .indexes
                .iter()
                .all(|b| b.oid != a.oid && b.name != a.name)
        })
        .cloned()
        .collect();
    Effect {
        text: action.to_string(),
        cost: cost::classify(before, after),
        rewrite: after.relfilenode != before.relfilenode,
        rebuilt_indexes,
        added_columns,
        new_not_null,
        new_constraints,
        validated,
        new_indexes,
        retype_dependents: Vec::new(),
        drop_dependents: Vec::new(),
    }
}

/// Fills in the objects of the real table `t` that use the columns `effect`'s clause retypes
/// or drops. Clone column `n` is the original's `n`-th live column (the clone was made with
/// `LIKE`); columns the ALTER added have no users.
async fn dependents(
    tx: &Transaction<'_>,
    t: &Table,
    before: &Table,
    after: &Table,
    effect: &mut Effect,
) -> Result<()> {
    let real = |clone_attnum: i16| {
        usize::try_from(clone_attnum)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| t.columns.get(i))
    };
    let mut retyped = Vec::new();
    let mut dropped = Vec::new();
    for b in &before.columns {
        let Some(r) = real(b.attnum) else { continue };
        match after.columns.iter().find(|a| a.attnum == b.attnum) {
            Some(a) if a.type_oid != b.type_oid || a.type_modifier != b.type_modifier => {
                retyped.push(r.attnum)
            }
            None => dropped.push(r.attnum),
            _ => {}
        }
    }
    if !retyped.is_empty() {
        effect.retype_dependents = users(tx, t.oid, &retyped).await?;
    }
    if !dropped.is_empty() {
        effect.drop_dependents = users(tx, t.oid, &dropped).await?;
    }
    Ok(())
}

/// `(column, user)` for the views, rules, policies and triggers that use the columns
/// `attnums` of the table `oid` (`pg_depend`).
async fn users(tx: &Transaction<'_>, oid: u32, attnums: &[i16]) -> Result<Vec<(String, String)>> {
    let rows = tx
        .query(
            "SELECT DISTINCT a.attname::text,
                    CASE d.classid
                      WHEN 'pg_rewrite'::regclass THEN
                        (SELECT CASE WHEN r.rulename = '_RETURN' THEN 'view ' || r.ev_class::regclass::text
                                     ELSE 'rule ' || quote_ident(r.rulename) || ' on ' || r.ev_class::regclass::text END
                         FROM pg_rewrite r WHERE r.oid = d.objid)
                      WHEN 'pg_policy'::regclass THEN
                        (SELECT 'policy ' || quote_ident(p.polname) FROM pg_policy p WHERE p.oid = d.objid)
                      ELSE (SELECT 'trigger ' || quote_ident(g.tgname) FROM pg_trigger g WHERE g.oid = d.objid)
                    END
             FROM pg_depend d
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = $1
               AND d.refobjsubid = ANY($2::int2[]) AND d.deptype <> 'i'
               AND d.classid IN ('pg_rewrite'::regclass, 'pg_policy'::regclass, 'pg_trigger'::regclass)
             ORDER BY 1, 2",
            &[&oid, &attnums],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()))
        .collect())
}

/// A statement of a rehearsal: the direct steps' SQL against the clone.
pub enum Rehearsed {
    /// A complete statement naming the clone (`pg_temp.<t>`).
    Statement(String),
}

/// Runs `statements` in order on a fresh clone of `t` (their foreign keys pointed at the
/// stand-ins) and compares the result with `expected` (the clone after the clauses in their
/// written order). `None` when they agree; otherwise what went differently (a statement the
/// server rejected, or a different shape).
///
/// Errors: the clone cannot be created, or a query fails.
pub async fn rehearse(
    client: &mut Client,
    t: &Table,
    alter: &AlterSpec,
    statements: &[Rehearsed],
    expected: &Table,
) -> Result<Option<String>> {
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL lock_timeout = '5s'").await?;
    let clone = TempClone::create(&tx, t, &alter.actions()).await?;
    for statement in statements {
        let Rehearsed::Statement(sql) = statement;
        let sql = clone.retarget(sql);
        let failed = tx.batch_execute(&sql).await.err().map(|e| {
            format!(
                "{sql}: {}",
                e.as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string())
            )
        });
        if let Some(why) = failed {
            tx.rollback().await.ok();
            return Ok(Some(why));
        }
    }
    let shape = clone.inspect(&tx).await?;
    tx.rollback().await?;
    Ok((!same_shape(&shape, expected))
        .then(|| "the table would end in a different shape".to_string()))
}
