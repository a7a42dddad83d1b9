//! The projection from original rows to new rows (docs/design.md §1.1, §2): which original
//! column (or `USING` expression) fills each column of the altered clone, and the key. Built
//! here, refusing what doppel cannot carry ([`project`], [`evaluable`]); types without an
//! extended hash function are marked for text hashing ([`mark_text_hashed`]).

use tokio_postgres::Client;

use crate::failure::{Check, Refusal};
use crate::model::alter::AlterSpec;
use crate::model::assignment::AssignmentError;
use crate::model::catalog::Table;
use crate::model::projection::{ColumnMap, KeyColumn, Projection};
use crate::sql::ident;

/// Maps each clone column to the original column it comes from (the clone was created with
/// `LIKE`, so clone attnum `i` is the original's `i`-th live column; renames and type changes
/// keep the attnum) and checks the key. Refuses ([`Check::Projection`]) a `USING` for a column
/// `t` lacks and a generated column that stops being generated, and ([`Check::KeyChange`])
/// any change of the primary key but widening an integer key column.
pub fn project(t: &Table, target: &Table, alter: &AlterSpec) -> Result<Projection, Refusal> {
    let refuse = |reason: String| Refusal::without_fix(Check::Projection, reason);
    let key_change = |reason: String| Refusal::without_fix(Check::KeyChange, reason);
    backfill_columns(t, target, alter)?;
    for using in &alter.usings {
        if t.column(&using.column).is_none() {
            return Err(refuse(format!(
                "USING clause for column {:?}, which the table does not have",
                using.column
            )));
        }
    }
    let mut columns = Vec::new();
    for col in &target.columns {
        let source = usize::try_from(col.attnum)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| t.columns.get(i))
            .cloned();
        let expression = match &source {
            Some(src) => {
                if src.generated_sql.is_some() && col.generated_sql.is_none() {
                    return Err(refuse(format!(
                        "column {:?} stops being a generated column: logical decoding does not send generated values, so doppel cannot carry that yet",
                        src.name
                    )));
                }
                match (alter.backfill_for(&col.name), alter.using_for(&src.name)) {
                    (Some(expr), _) | (None, Some(expr)) => format!("({expr})"),
                    (None, None) => format!("src.{}", ident(&src.name)),
                }
            }
            None => alter
                .backfill_for(&col.name)
                .map(|expr| format!("({expr})"))
                .unwrap_or_default(),
        };
        columns.push(ColumnMap {
            target: col.clone(),
            source,
            expression,
        });
    }
    let relation: Vec<_> = t
        .columns
        .iter()
        .filter(|c| c.generated_sql.is_none())
        .cloned()
        .collect();
    let mut key = Vec::new();
    for name in &t.pk_columns {
        let map = columns
            .iter()
            .find(|c| c.source.as_ref().is_some_and(|s| &s.name == name))
            .ok_or_else(|| key_change(format!("the ALTER drops primary-key column {name:?}: changing the primary key is not supported yet")))?;
        let source = map.source.clone().unwrap_or_else(|| map.target.clone());
        if alter.using_for(name).is_some() {
            return Err(key_change(format!(
                "the ALTER changes primary-key column {name:?} with a USING expression: doppel cannot match streamed keys through it yet"
            )));
        }
        let widening = matches!(
            (source.type_oid, map.target.type_oid),
            (21, 23) | (21, 20) | (23, 20)
        );
        if source.type_oid != map.target.type_oid && !widening {
            return Err(key_change(format!(
                "the ALTER changes primary-key column {name:?} from {} to {}: only widening integer keys (smallint → integer → bigint) is supported yet",
                source.type_sql, map.target.type_sql
            )));
        }
        let relation_position = relation
            .iter()
            .position(|c| &c.name == name)
            .ok_or_else(|| {
                key_change(format!("primary-key column {name:?} is a generated column"))
            })?;
        key.push(KeyColumn {
            source,
            target: map.target.clone(),
            relation_position,
        });
    }
    let target_pk: Vec<&String> = target.pk_columns.iter().collect();
    let mapped_pk: Vec<&String> = key.iter().map(|k| &k.target.name).collect();
    if target_pk != mapped_pk {
        return Err(key_change(format!(
            "the ALTER changes the primary key (from {:?} to {:?}): not supported yet",
            t.pk_columns, target.pk_columns
        )));
    }
    let has_identity = target.columns.iter().any(|c| c.identity.is_some());
    Ok(Projection {
        columns,
        key,
        relation,
        has_identity,
        text_hashed: Vec::new(),
        partitioned: t.relkind == 'p',
    })
}

/// [`Check::Backfill`]: each `--backfill` names a column of the new table that is neither a
/// primary-key column, nor generated, nor given a `USING` expression by the ALTER.
fn backfill_columns(t: &Table, target: &Table, alter: &AlterSpec) -> Result<(), Refusal> {
    let refuse = |text: &str, reason: String, fix: &str| {
        Refusal::new(
            Check::Backfill,
            format!("--backfill {text:?}: {reason}"),
            fix,
        )
    };
    for b in &alter.backfills {
        let Some(col) = target.column(&b.column) else {
            return Err(refuse(
                &b.text,
                format!("the new table has no column {:?}", b.column),
                "name a column the table has after the ALTER (add it with --alter \"ADD COLUMN ..\")",
            ));
        };
        if target.pk_columns.contains(&col.name) {
            return Err(refuse(
                &b.text,
                format!(
                    "{:?} is a primary-key column: streamed changes are matched by it",
                    col.name
                ),
                "leave the key as it is",
            ));
        }
        if col.generated_sql.is_some() {
            return Err(refuse(
                &b.text,
                format!(
                    "{:?} is a generated column: the new table computes it",
                    col.name
                ),
                "drop the --backfill",
            ));
        }
        let source = usize::try_from(col.attnum)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| t.columns.get(i));
        if let Some(src) = source
            && alter.using_for(&src.name).is_some()
        {
            return Err(refuse(
                &b.text,
                format!("column {:?} also has a USING expression", src.name),
                "give the value once: in the USING expression or in --backfill",
            ));
        }
    }
    Ok(())
}

/// The [`Check::Backfill`] refusal of an assignment that does not parse.
pub fn backfill_text(e: &AssignmentError) -> Refusal {
    Refusal::new(
        Check::Backfill,
        format!("--backfill: {e}"),
        "write it as --backfill 'column = expression', the expression over the old row",
    )
}

/// [`Check::Projection`]: prepares (without running) the copy's projection over the original
/// (`SELECT CAST(<expression> AS <type>), .. FROM ONLY t AS src LIMIT 0`), so a `USING`
/// expression the copy or the apply could not evaluate is refused now. Also refuses an ALTER
/// that leaves no column to copy. A failed prepare is the refusal, whatever the reason.
pub async fn evaluable(client: &Client, t: &Table, p: &Projection) -> Option<Refusal> {
    let exprs: Vec<String> = p
        .written()
        .iter()
        .map(|c| format!("CAST({} AS {})", c.expression, c.target.type_sql))
        .collect();
    if exprs.is_empty() {
        return Some(Refusal::without_fix(
            Check::Projection,
            "the ALTER leaves no column to copy",
        ));
    }
    let copy = format!(
        "SELECT {} FROM ONLY {} AS src LIMIT 0",
        exprs.join(", "),
        t.qualified()
    );
    // The applier evaluates the same expressions over the decoded row (docs/design.md §2.8).
    let apply = format!(
        "SELECT {} FROM ({}) AS src LIMIT 0",
        exprs.join(", "),
        p.decoded_row_sql()
    );
    for (sql, by) in [(copy, "the original row"), (apply, "a streamed row")] {
        if let Err(e) = client.prepare(&sql).await {
            return Some(Refusal::new(
                Check::Projection,
                format!(
                    "a USING or --backfill expression cannot be evaluated over {by} ({})",
                    e.as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_else(|| e.to_string())
                ),
                "reference the table's columns by their plain names (or as src.<column>); a streamed row has no generated or system columns",
            ));
        }
    }
    None
}

/// Verification hashes rows with `hash_record_extended`; each written column whose type has
/// no extended hash function (the probe `SELECT hash_record_extended(ROW(NULL::<type>), 0)`
/// fails) is added to [`Projection::text_hashed`], to be hashed through its text form. Not a
/// check: it refuses nothing.
pub async fn mark_text_hashed(client: &Client, projection: &mut Projection) {
    let written: Vec<(String, String)> = projection
        .written()
        .iter()
        .map(|c| (c.target.name.clone(), c.target.type_sql.clone()))
        .collect();
    for (name, type_sql) in written {
        let probe = format!("SELECT hash_record_extended(ROW(NULL::{type_sql}), 0)");
        if client.query_one(&probe, &[]).await.is_err() {
            projection.text_hashed.push(name);
        }
    }
}
