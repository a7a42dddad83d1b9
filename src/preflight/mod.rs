//! Preflight: every check before doppel creates anything (docs/design.md §1.1). Runs in
//! dry-run mode too and changes nothing that survives: the ALTER is validated by applying it
//! to an empty clone of the table in `pg_temp`, inside a transaction that is rolled back — the
//! server is the parser, and the clone's catalog gives the shadow's exact shape.
//!
//! Every refusal is a [`Refusal`]: the [`Check`](crate::failure::Check) that refused, what
//! is wrong, and how to fix it. [`run`] runs the checks in order, collects the refusals and
//! reports them together as [`Refused`]; otherwise it builds the [`Plan`]. Where each check
//! lives:
//!
//! | file | checks |
//! |---|---|
//! | `checks/server.rs` | `Check::ServerVersion`, `Check::WalLevel`, `Check::ReplicationSlots`, `Check::WalSenders`, `Check::Encoding` |
//! | `checks/privileges.rs` | `Check::ReplicationPrivilege`, `Check::DatabaseCreate`, `Check::TempPrivilege`, `Check::Ownership`, `Check::SchemaCreate` |
//! | `checks/table.rs` | `Check::TableName`, `Check::TableKind`, `Check::Partition`, `Check::Inheritance`, `Check::Persistence` |
//! | `checks/key.rs` | `Check::PrimaryKey`, `Check::ReplicaIdentity` |
//! | `checks/publications.rs` | `Check::Publication` |
//! | `checks/leftovers.rs` | `Check::Leftovers` |
//! | `checks/alter.rs` | `Check::AlterText`, `Check::Alter` (the clone), `Check::IndexDefinition`, `Check::NameTaken` |
//! | `checks/projection.rs` | `Check::Projection`, `Check::KeyChange`; builds the projection |
//! | `checks/dependents.rs` | `Check::Dependents` |
//! | `checks/clauses.rs` | each clause alone on the clone (its effect, the dependents of the columns it retypes or drops); rehearsals of the direct steps |
//! | `checks/cost.rs` | the cost class of an ALTER run directly |
//! | `checks/transactions.rs` | warning: transactions open longer than 60 s |
//! | `checks/partition_maintenance.rs` | warning: pg_partman or pg_cron maintaining the migrated partitioned table, or a partitioned table whose foreign key moves through its partitions |
//! | `checks/partitions.rs` | `Check::Partition`: what is bound to one partition of a migrated partitioned table, foreign and UNLOGGED partitions |
//!
//! `Check::ConcurrentRun` (the table's advisory lock) is taken after preflight, by
//! `crate::run`.
//!
//! [`plan`] is the entry of a run: it chooses each clause's strategy (`strategy.rs`, pure)
//! and plans the direct steps and the shadow migration (`migration.rs`); [`run`] and
//! [`shadow`] plan the shadow migration alone.

mod checks;
mod clone;
mod indexdef;
mod migration;
pub mod strategy;

use anyhow::Result;
use tokio_postgres::Client;

use crate::failure::{Refusal, Refused};
use crate::model::assignment;
use crate::model::catalog;
use crate::model::names::Names;
use crate::plan::Plan;
use checks::{
    alter, compat, dependents, key, leftovers, partition_maintenance, partitions, privileges,
    projection, publications, server, table, transactions,
};

pub use checks::leftovers::check as leftovers;
pub use checks::server::MIN_SERVER_VERSION;
pub use indexdef::{rename_index_definition, retarget_index};
pub use migration::{Request, plan};

/// Runs every check against the server behind `client` for `table` (as SQL writes it) and
/// the `--alter` clauses, in this order: the server (a version before 14 stops preflight at
/// once) and the role; the table name (stops if it does not resolve), the table, its owner,
/// key, publications and leftovers; the ALTER text (stops if refused). If any of those
/// refused, it stops there. Then the ALTER on the clone, its indexes and the projection (each
/// stops at its refusal); the dependents, the projection's expressions and the new index names
/// (collected). Returns the plan with its warnings (long transactions, cost class), or
/// [`Refused`] (inside the `anyhow::Error`) listing every reason; other errors are connection
/// or query failures.
///
/// `resuming`: the run resumes an interrupted one (`--resume`), whose shadow, publication
/// and slot are expected: the leftovers check is left to the resume, which checks them
/// against the checkpoint.
pub async fn run(
    client: &mut Client,
    table: &str,
    alters: &[String],
    resuming: bool,
) -> Result<Plan> {
    shadow(client, table, alters, &[], resuming).await
}

/// The shadow migration's preflight ([`run`]) with `--backfill` assignments (`column =
/// expression`), which the copy and the applier evaluate over the old row.
///
/// Errors: as [`run`]; an assignment doppel cannot use is a [`Check::Backfill`] refusal.
///
/// [`Check::Backfill`]: crate::failure::Check::Backfill
pub async fn shadow(
    client: &mut Client,
    table: &str,
    alters: &[String],
    backfills: &[String],
    resuming: bool,
) -> Result<Plan> {
    let server = server::read(client).await?;
    if let Some(too_old) = server::version(&server) {
        return Err(Refused(vec![too_old]).into());
    }
    let mut refusals = server::settings(&server);
    let grants = privileges::read(client).await?;
    refusals.extend(privileges::replication(&server, &grants));
    refusals.extend(privileges::database(&server, &grants));
    let oid = match table::resolve(client, table).await {
        Ok(oid) => oid,
        Err(refusal) => return refuse(refusals, refusal),
    };
    let original = catalog::inspect(&*client, oid).await?;
    let names = Names::new(&original.schema, &original.name, oid);
    refusals.extend(table::check(&original));
    let tree = match original.relkind {
        'p' => Some(crate::model::partitions::read(&*client, oid).await?),
        _ => None,
    };
    if let Some(tree) = &tree {
        refusals.extend(partitions::check(client, tree).await?);
    }
    refusals.extend(privileges::table(client, &original).await?);
    refusals.extend(key::check(&original));
    refusals.extend(publications::check(client, &original).await?);
    if !resuming {
        refusals.extend(leftovers::check(client, &original, &names).await?);
    }
    let mut alter = match alter::analyze(alters) {
        Ok(spec) => spec,
        Err(refusal) => return refuse(refusals, refusal),
    };
    alter.backfills = match assignment::parse_all(backfills) {
        Ok(b) => b,
        Err(e) => return refuse(refusals, projection::backfill_text(&e)),
    };
    if !refusals.is_empty() {
        return Err(Refused(refusals).into());
    }

    let clone = alter::apply_to_clone(client, &original, &alter)
        .await?
        .map_err(Refused::from)?;
    alter::rebuildable_indexes(&clone).map_err(Refused::from)?;
    let mut projection =
        projection::project(&original, &clone.target, &alter).map_err(Refused::from)?;
    let (dependents, mut refusals) =
        dependents::check(client, &original, &names, &projection).await?;
    let member_dependents = match &tree {
        Some(tree) => {
            let (members, more) =
                dependents::check_members(client, &original, tree, &names, &projection).await?;
            refusals.extend(more);
            members
        }
        None => Vec::new(),
    };
    refusals.extend(projection::evaluable(client, &original, &projection).await);
    projection::mark_text_hashed(client, &mut projection).await;
    refusals.extend(alter::new_names(client, &original, &clone.target).await?);
    if !refusals.is_empty() {
        return Err(Refused(refusals).into());
    }

    let mut warnings = transactions::check(client).await?;
    warnings.extend(partition_maintenance::check(client, &dependents, tree.as_ref()).await?);
    let compatibility = compat::lines(&original, &clone.target);
    Ok(Plan {
        server_version: server.version,
        original,
        target: clone.target,
        clone_text: clone.clone_text,
        identity_options: clone.identity_options,
        names,
        projection,
        alter,
        rewrite: clone.rewrite,
        dependents,
        warnings,
        compatibility,
        partitions: tree,
        member_dependents,
    })
}

/// Stops preflight: the refusals so far and `last`.
fn refuse<T>(mut refusals: Vec<Refusal>, last: Refusal) -> Result<T> {
    refusals.push(last);
    Err(Refused(refusals).into())
}
