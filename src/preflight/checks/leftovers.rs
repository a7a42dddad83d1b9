//! Leftovers of an earlier run: doppel's shadow table, publication or replication slot named
//! after the table's OID (docs/design.md §1.1). `doppel cleanup` removes them.

use anyhow::Result;
use tokio_postgres::Client;

use crate::failure::{Check, Refusal};
use crate::model::catalog::Table;
use crate::model::names::Names;
use crate::sql::qualified;

/// [`Check::Leftovers`]: one refusal per object of `names` that exists (`to_regclass` for the
/// shadow, `pg_publication`, `pg_replication_slots`).
///
/// Errors: the query fails.
pub async fn check(client: &Client, t: &Table, names: &Names) -> Result<Vec<Refusal>> {
    let leftovers = client
        .query(
            "SELECT 'table ' || $1::text WHERE to_regclass($2) IS NOT NULL
             UNION ALL SELECT 'publication ' || pubname FROM pg_publication WHERE pubname = $3
             UNION ALL SELECT 'replication slot ' || slot_name FROM pg_replication_slots WHERE slot_name = $4",
            &[
                &names.shadow,
                &qualified(&names.schema, &names.shadow),
                &names.publication,
                &names.slot,
            ],
        )
        .await?;
    Ok(leftovers
        .iter()
        .map(|r| {
            let what_left: String = r.get(0);
            Refusal::new(
                Check::Leftovers,
                format!(
                    "{what_left} is left over from an earlier doppel run on this table (or another run is in progress)"
                ),
                format!(
                    "if no run is active, remove it with `doppel cleanup --table {}`",
                    t.qualified()
                ),
            )
        })
        .collect())
}

/// [`Check::Leftovers`] of an online recipe a killed run left on `t`: an index or a
/// constraint named with the recipes' prefix `_doppel_<oid>_` (an invalid index of a
/// concurrent build, a `CHECK (col IS NOT NULL)` helper). One refusal each.
///
/// Errors: the query fails.
pub async fn recipes(client: &Client, t: &Table, names: &Names) -> Result<Vec<Refusal>> {
    let prefix = format!("{}%", names.recipe_prefix().replace('_', "\\_"));
    let rows = client
        .query(
            "SELECT 'index ' || quote_ident(c.relname) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = $1 AND c.relname LIKE $2
             UNION ALL
             SELECT 'constraint ' || quote_ident(conname) FROM pg_constraint
             WHERE conrelid = $1 AND conname LIKE $2 ORDER BY 1",
            &[&t.oid, &prefix],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let what: String = r.get(0);
            Refusal::new(
                Check::Leftovers,
                format!(
                    "{what} on {} is left over from an interrupted online recipe of doppel",
                    t.qualified()
                ),
                format!(
                    "if no run is active, remove it with `doppel cleanup --table {}`",
                    t.qualified()
                ),
            )
        })
        .collect())
}
