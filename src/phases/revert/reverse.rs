//! The reverse of a migration's projection: how a row of the new table is written back into
//! the kept old table during the revert window (docs/design.md §1.8).
//!
//! Each column of the old table takes the new table's column of the same name (doppel
//! refuses renames): unchanged types as they are; changed types converted back, and only
//! when the value survives the round trip (old type, then the new type again, compared as
//! text), so a value the old type cannot hold exactly (out of range, too long, rounded, a
//! failing cast) is an error the tolerant reverse applier records instead of a silently
//! different value. A column the ALTER added is not written back (its values are lost by a
//! revert); a column the ALTER dropped gets its default in a row inserted after the cutover
//! and keeps its value in a row updated after it.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use tokio_postgres::Client;

use crate::dependents;
use crate::model::catalog::{self, Column, Table};
use crate::model::names::Names;
use crate::model::projection::{ColumnMap, KeyColumn, Projection};
use crate::plan::Plan;
use crate::sql::{ident, literal};

/// How one column of the old table fares in a revert, for the plan and the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnFate {
    /// Same type on both sides: written back as is.
    Same,
    /// The type changed; converted back from `new` to `old`, lossless for every value of the
    /// new type when `always_fits` (e.g. the forward change narrowed), otherwise checked
    /// row by row.
    Converted {
        /// The new table's type.
        new: String,
        /// The old table's type.
        old: String,
        /// Every value of the new type converts back exactly.
        always_fits: bool,
    },
    /// The ALTER dropped the column: rows inserted after the cutover get its default, rows
    /// updated after it keep their value.
    Dropped,
}

/// What a revert loses or risks, column by column, for the plan: `(column, fate)` for the
/// old table's columns, and the columns the ALTER added (not written back).
pub fn fates(plan: &Plan) -> (Vec<(String, ColumnFate)>, Vec<String>) {
    let mut out = Vec::new();
    for old in &plan.original.columns {
        let new = plan
            .projection
            .columns
            .iter()
            .find(|m| m.source.as_ref().is_some_and(|s| s.name == old.name))
            .map(|m| &m.target);
        let fate = match new {
            None => ColumnFate::Dropped,
            Some(new) if new.type_sql == old.type_sql => ColumnFate::Same,
            Some(new) => ColumnFate::Converted {
                new: new.type_sql.clone(),
                old: old.type_sql.clone(),
                always_fits: always_fits(new, old),
            },
        };
        out.push((old.name.clone(), fate));
    }
    let added = plan
        .projection
        .columns
        .iter()
        .filter(|m| m.source.is_none())
        .map(|m| m.target.name.clone())
        .collect();
    (out, added)
}

/// Whether every value of `new`'s type converts back to `old`'s exactly: the integer and
/// float widenings read backwards, and anything into unbounded text.
fn always_fits(new: &Column, old: &Column) -> bool {
    const INT2: u32 = 21;
    const INT4: u32 = 23;
    const INT8: u32 = 20;
    const NUMERIC: u32 = 1700;
    const FLOAT4: u32 = 700;
    const FLOAT8: u32 = 701;
    const TEXT: u32 = 25;
    matches!(
        (new.type_oid, old.type_oid),
        (INT2, INT4 | INT8 | NUMERIC)
            | (INT4, INT8 | NUMERIC)
            | (INT8, NUMERIC)
            | (FLOAT4, FLOAT8)
            | (_, TEXT)
    ) && (old.type_oid != NUMERIC || old.type_modifier == -1)
}

/// The reverse plan of a committed cutover: `original` is the new table (the source of the
/// reverse stream, read from the catalog now), `target` the kept old table, the names those
/// of the revert window (`names.shadow` is the old table, `names.old` the name the new table
/// takes back on a revert), the projection from new rows to old, and the new table's
/// dependents now (what a revert re-checks under its lock).
///
/// Errors: a catalog read failed, or a key column of the old table has no counterpart.
pub async fn plan(client: &Client, forward: &Plan, new_oid: u32) -> Result<Arc<Plan>> {
    let new = catalog::inspect(client, new_oid)
        .await
        .context("reading the new table for the revert window")?;
    let old = forward.original.clone();
    let projection = projection(&new, &old)?;
    let f = &forward.names;
    let names = Names {
        schema: f.schema.clone(),
        table: f.table.clone(),
        shadow: f.old.clone(),
        old: f.shadow.clone(),
        publication: f.revert_publication.clone(),
        slot: f.revert_slot.clone(),
        message_prefix: f.revert_prefix.clone(),
        revert_publication: f.revert_publication.clone(),
        revert_slot: f.revert_slot.clone(),
        revert_prefix: f.revert_prefix.clone(),
        oid: f.oid,
    };
    let dependents = dependents::read(client, new_oid, &names.publication)
        .await
        .context("reading the new table's dependents for the revert window")?;
    Ok(Arc::new(Plan {
        server_version: forward.server_version,
        original: new,
        target: old,
        clone_text: String::new(),
        identity_options: Vec::new(),
        names,
        projection,
        alter: Default::default(),
        rewrite: forward.rewrite,
        dependents,
        warnings: Vec::new(),
        compatibility: Vec::new(),
        partitions: None,
        member_dependents: Vec::new(),
    }))
}

/// The projection from the new table's rows (`src`) to the old table's (see the module docs).
fn projection(new: &Table, old: &Table) -> Result<Projection> {
    let columns: Vec<ColumnMap> = old
        .columns
        .iter()
        .map(|target| {
            let source = new
                .column(&target.name)
                .filter(|s| s.generated_sql.is_none())
                .cloned();
            let expression = match &source {
                Some(s) => converted(s, target),
                None => String::new(),
            };
            ColumnMap {
                target: target.clone(),
                source,
                expression,
            }
        })
        .collect();
    let relation: Vec<Column> = new
        .columns
        .iter()
        .filter(|c| c.generated_sql.is_none())
        .cloned()
        .collect();
    let key = old
        .pk_columns
        .iter()
        .map(|name| {
            let source = new.column(name).cloned();
            let target = old.column(name).cloned();
            let position = relation.iter().position(|c| &c.name == name);
            match (source, target, position) {
                (Some(source), Some(target), Some(relation_position)) => Ok(KeyColumn {
                    source,
                    target,
                    relation_position,
                }),
                _ => Err(anyhow!(
                    "primary-key column {name:?} of the old table has no counterpart in the new table"
                )),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Projection {
        has_identity: old.columns.iter().any(|c| c.identity.is_some()),
        columns,
        key,
        relation,
        text_hashed: Vec::new(),
        partitioned: new.relkind == 'p',
    })
}

/// The expression writing new column `s` (`src.<name>`) into old column `t`: as is when the
/// types match; otherwise converted back only when the value survives the round trip, and
/// an error naming the value and the column when it does not (SQLSTATE 22P02, which the
/// tolerant applier records).
fn converted(s: &Column, t: &Column) -> String {
    let value = format!("src.{}", ident(&s.name));
    if s.type_sql == t.type_sql {
        return value;
    }
    let back = format!("CAST({value} AS {})", t.type_sql);
    let message = format!(
        "'doppel: ' || {value}::text || ' in column ' || {} || ' does not convert back to ' || {} || ' exactly'",
        literal(&t.name),
        literal(&t.type_sql)
    );
    format!(
        "CASE WHEN {value} IS NULL OR CAST({back} AS {new})::text = {value}::text THEN {back} \
         ELSE CAST(CAST({message} AS integer)::text AS {old}) END",
        new = s.type_sql,
        old = t.type_sql
    )
}
