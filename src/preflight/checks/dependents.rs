//! Dependents bound to the table's OID (views, functions, materialized views, foreign keys,
//! ...): read by [`crate::dependents`], which says which ones the cutover cannot move given
//! the columns the ALTER renames and drops (docs/design.md §1.1, §4 step 4).

use anyhow::Result;
use tokio_postgres::Client;

use crate::dependents::{self, Dependents};
use crate::failure::{Check, Refusal};
use crate::model::catalog::Table;
use crate::model::names::Names;
use crate::model::projection::Projection;

/// The fix every dependent refusal shares.
const FIX: &str = "drop and recreate it around the migration";

/// [`Check::Dependents`]: reads the dependents of `t` ([`dependents::read`], through
/// `pg_depend`, `pg_rewrite`, `pg_proc`, `pg_constraint`, ...) and refuses each one
/// [`Dependents::blockers`] reports for the columns `projection` renames or drops. Returns the
/// dependents, which the cutover moves, with the refusals.
///
/// Errors: reading the dependents fails.
pub async fn check(
    client: &Client,
    t: &Table,
    names: &Names,
    projection: &Projection,
) -> Result<(Dependents, Vec<Refusal>)> {
    let dependents = dependents::read(client, t.oid, &names.publication).await?;
    let renamed: Vec<(String, String)> = projection
        .columns
        .iter()
        .filter_map(|m| m.source.as_ref().map(|s| (s, &m.target)))
        .filter(|(s, t)| s.name != t.name)
        .map(|(s, t)| (s.name.clone(), t.name.clone()))
        .collect();
    let dropped: Vec<String> = t
        .columns
        .iter()
        .filter(|c| {
            !projection
                .columns
                .iter()
                .any(|m| m.source.as_ref().is_some_and(|s| s.name == c.name))
        })
        .map(|c| c.name.clone())
        .collect();
    let refusals = dependents
        .blockers(&renamed, &dropped)
        .into_iter()
        .map(|blocker| Refusal::new(Check::Dependents, blocker, FIX))
        .collect();
    Ok((dependents, refusals))
}
