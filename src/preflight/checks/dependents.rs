//! Dependents bound to the table's OID (views, functions, materialized views, foreign keys,
//! ...): read by [`crate::dependents`], which says which ones the cutover cannot move given
//! the columns the ALTER renames and drops (docs/design.md §1.1, §4 step 4).

use anyhow::Result;
use tokio_postgres::Client;

use crate::dependents::{self, Dependents, MemberDependents};
use crate::failure::{Check, Refusal};
use crate::model::catalog::Table;
use crate::model::names::Names;
use crate::model::partitions::PartitionTree;
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
    let (renamed, dropped) = column_changes(t, projection);
    let refusals = refusals_of(&dependents, &renamed, &dropped);
    Ok((dependents, refusals))
}

/// [`Check::Dependents`] for the members of the partitioned table `t`'s tree `tree`: reads
/// what is bound to single members ([`MemberDependents::read_all`]: a partition's own
/// triggers, policies, views, publications, statistics objects, foreign keys referencing
/// it, ...) and refuses, as for the table, each one that cannot be moved given the columns
/// `projection` renames or drops. Returns them, which the cutover moves to the new members,
/// with the refusals.
///
/// Errors: reading them fails.
pub async fn check_members(
    client: &Client,
    t: &Table,
    tree: &PartitionTree,
    names: &Names,
    projection: &Projection,
) -> Result<(Vec<MemberDependents>, Vec<Refusal>)> {
    let members = MemberDependents::read_all(client, tree, &names.publication).await?;
    let (renamed, dropped) = column_changes(t, projection);
    let refusals = members
        .iter()
        .flat_map(|m| refusals_of(&m.dependents, &renamed, &dropped))
        .collect();
    Ok((members, refusals))
}

/// The refusals of `dependents` ([`Dependents::blockers`]) as [`Check::Dependents`].
fn refusals_of(
    dependents: &Dependents,
    renamed: &[(String, String)],
    dropped: &[String],
) -> Vec<Refusal> {
    dependents
        .blockers(renamed, dropped)
        .into_iter()
        .map(|blocker| Refusal::new(Check::Dependents, blocker, FIX))
        .collect()
}

/// The columns of `t` that `projection` renames, as (old name, new name), and those it
/// drops.
fn column_changes(t: &Table, projection: &Projection) -> (Vec<(String, String)>, Vec<String>) {
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
    (renamed, dropped)
}
