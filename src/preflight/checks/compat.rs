//! What the application will see at the cutover (docs/design.md §4.6), for the ALTER at hand:
//! whether the result columns of `SELECT *`-style queries change, and that whole-row
//! references change type at every swap. Informational lines of the plan, never refusals.

use crate::model::catalog::{Column, Table};

/// The plan's application-compatibility lines for turning `original` into `target` (the
/// clone after the ALTER), in the order the plan prints them.
pub fn lines(original: &Table, target: &Table) -> Vec<String> {
    let qualified = original.qualified();
    let mut out = Vec::new();
    match changed_columns(&original.columns, &target.columns) {
        Some(change) => out.push(format!(
            "`SELECT *` / `RETURNING *` on {qualified} changes result type ({change}): a statement prepared on the server before the cutover fails with SQLSTATE 0A000 \"cached plan must not change result type\" after it, as after the plain ALTER TABLE; asyncpg and pgjdbc re-prepare after that one error per statement and connection, psycopg 3 in autocommit keeps failing until the connection is replaced"
        )),
        None => out.push(format!(
            "the result columns of `SELECT *` on {qualified} are unchanged (names and types): prepared statements that name columns or select * keep working"
        )),
    }
    out.push(format!(
        "whole-row references change type at every swap: the new {qualified} is another table with another row type (pg_type OID), so a prepared statement returning the row itself (`SELECT o FROM {qualified} o`, `RETURNING {name}`, a function returning SETOF {qualified}) fails with 0A000 after the cutover even when no column changes, unlike the plain ALTER TABLE; clients that cached the row type's OID must look it up again",
        name = crate::sql::ident(&original.name),
    ));
    out.push(
        "after the cutover: recycle pooled connections (DISCARD ALL, PgBouncer RECONNECT, a pool refresh from the after-cutover hook) so prepared statements and cached type OIDs are replaced at once rather than failing on first use".into(),
    );
    out.push(format!(
        "transactions holding a snapshot older than the cutover are waited for before the lock (--old-snapshot-timeout; --kill-old-snapshots ends them): a REPEATABLE READ or SERIALIZABLE transaction that reads {qualified} after the swap with such a snapshot would see the new table incompletely"
    ));
    out
}

/// How the visible columns differ (`added a`, `dropped b`, `c integer -> bigint`, `renamed d
/// to e`), or `None` when names, types and order are the same.
fn changed_columns(before: &[Column], after: &[Column]) -> Option<String> {
    let shape = |c: &Column| (c.name.clone(), c.type_oid, c.type_modifier);
    if before.iter().map(shape).eq(after.iter().map(shape)) {
        return None;
    }
    let mut parts = Vec::new();
    for b in before {
        match after.iter().find(|a| a.attnum == b.attnum) {
            None => parts.push(format!("dropped {}", b.name)),
            Some(a) if a.name != b.name => parts.push(format!("renamed {} to {}", b.name, a.name)),
            Some(a) if (a.type_oid, a.type_modifier) != (b.type_oid, b.type_modifier) => {
                parts.push(format!("{} {} -> {}", b.name, b.type_sql, a.type_sql))
            }
            Some(_) => {}
        }
    }
    for a in after {
        if !before.iter().any(|b| b.attnum == a.attnum) {
            parts.push(format!("added {}", a.name));
        }
    }
    if parts.is_empty() {
        parts.push("column order".into());
    }
    Some(parts.join(", "))
}
