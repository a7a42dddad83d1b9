//! Dependents bound to one member of a partitioned table's tree rather than to the
//! partitioned table itself (issue 15, docs/design.md §1.14): a trigger defined on one
//! partition, its rules, its row security policies and RLS flags, the views that read it
//! (and the views on those), the publications that list it, its statistics objects, the
//! foreign keys of other tables that reference it.
//!
//! The cutover renames every original member out of the way and gives its name to the
//! shadow's member that stands for it (`Names::shadow_partition`), so a member's dependents
//! move exactly as a table's do ([`Dependents`]): read before the cutover while the member
//! has its name (each definition names it `schema.member`, which resolves to the new member
//! once it has the name), moved in the cutover transaction from the kept old member
//! (`Names::old_partition`) to the new one, and back by the rollback script and a revert,
//! from the migrated member (under its temporary name again) to the restored original.
//!
//! Only the members that have such an object are read ([`MEMBERS_WITH_DEPENDENTS_SQL`]): a
//! tree of 100 partitions with none costs one query. Under the cutover lock the same query
//! runs again (a dependent created on another member meanwhile changes its answer) and each
//! member read is read again, as the table's are.

use anyhow::{Context, Result};
use tokio_postgres::GenericClient;

use super::{Dependents, lock_each_of, lock_sql_of, read};
use crate::model::names::Names;
use crate::model::partitions::PartitionTree;
use crate::sql::qualified;

/// The members of the tree `$1` (OID of the partitioned table) that have a dependent the
/// cutover moves, by OID: RLS enabled or forced; a trigger defined on the member itself (not
/// a clone of its parent's, `tgparentid`); a rule; a policy; a publication listing it; a
/// statistics object; a foreign key of another table referencing it (not a clone,
/// `conparentid`); a view, rule or policy elsewhere that uses it (`pg_depend` from
/// `pg_rewrite` or `pg_policy`). Also those with what a table's read refuses: a function
/// bound to it (an SQL-standard body, `pg_depend` from `pg_proc`) or a user of its row
/// type; reading them makes preflight refuse it (`unmovable.rs`). One set-based pass over each
/// catalog (a `UNION` of joins rather than an `EXISTS` per member and catalog): it runs again
/// under the cutover lock, where it took 6 ms for 100 bare partitions that way and 2 ms this
/// way.
pub const MEMBERS_WITH_DEPENDENTS_SQL: &str = "WITH m AS (
    SELECT relid::oid AS oid FROM pg_partition_tree($1::oid::regclass) WHERE level > 0)
SELECT c.oid FROM pg_class c JOIN m ON m.oid = c.oid
  WHERE c.relrowsecurity OR c.relforcerowsecurity
UNION SELECT t.tgrelid FROM pg_trigger t JOIN m ON m.oid = t.tgrelid
  WHERE NOT t.tgisinternal AND t.tgparentid = 0
UNION SELECT r.ev_class FROM pg_rewrite r JOIN m ON m.oid = r.ev_class
  WHERE r.rulename <> '_RETURN'
UNION SELECT p.polrelid FROM pg_policy p JOIN m ON m.oid = p.polrelid
UNION SELECT pr.prrelid FROM pg_publication_rel pr JOIN m ON m.oid = pr.prrelid
UNION SELECT s.stxrelid FROM pg_statistic_ext s JOIN m ON m.oid = s.stxrelid
UNION SELECT k.confrelid FROM pg_constraint k JOIN m ON m.oid = k.confrelid
  WHERE k.contype = 'f' AND k.conrelid <> k.confrelid AND k.conparentid = 0
UNION SELECT d.refobjid FROM pg_depend d JOIN m ON m.oid = d.refobjid
  WHERE d.refclassid = 'pg_class'::regclass
    AND d.classid IN ('pg_rewrite'::regclass, 'pg_policy'::regclass, 'pg_proc'::regclass)
UNION SELECT c.oid FROM pg_class c JOIN m ON m.oid = c.oid
  JOIN pg_depend d ON d.refclassid = 'pg_type'::regclass AND d.refobjid = c.reltype
  WHERE d.deptype IN ('n', 'a')
ORDER BY 1";

/// The dependents of one member of a partitioned table's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDependents {
    /// The member's position in `PartitionTree::members`: its number in doppel's names for
    /// the shadow's member that takes its name (`Names::shadow_partition`) and for the name
    /// it is kept under (`Names::old_partition`).
    pub position: usize,
    /// What is bound to the member, read like a table's ([`read`]).
    pub dependents: Dependents,
}

/// The OIDs of the members of the tree rooted at `root_oid` that have a dependent
/// ([`MEMBERS_WITH_DEPENDENTS_SQL`]).
///
/// Errors: the query failed.
pub async fn members_with_dependents(
    client: &impl GenericClient,
    root_oid: u32,
) -> Result<Vec<u32>> {
    Ok(client
        .query(MEMBERS_WITH_DEPENDENTS_SQL, &[&root_oid])
        .await
        .context("reading what is bound to the partitions")?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

impl MemberDependents {
    /// Reads the dependents of every member of `tree` that has any, in tree order, skipping
    /// membership in `own_publication` (doppel's).
    ///
    /// Errors: a catalog read failed.
    pub async fn read_all(
        client: &impl GenericClient,
        tree: &PartitionTree,
        own_publication: &str,
    ) -> Result<Vec<MemberDependents>> {
        let with = members_with_dependents(client, tree.root_oid).await?;
        let mut out = Vec::new();
        for (position, m) in tree.members.iter().enumerate() {
            if with.contains(&m.oid) {
                let dependents = read(client, m.oid, own_publication)
                    .await
                    .with_context(|| format!("reading what is bound to {}", m.qualified()))?;
                out.push(MemberDependents {
                    position,
                    dependents,
                });
            }
        }
        Ok(out)
    }

    /// The member as named now (the new member once the swap renamed it, the restored
    /// original after a rollback), the name the original is kept under after the cutover, and
    /// the shadow's temporary name (which the migrated member takes back in a rollback).
    fn relations(&self, tree: &PartitionTree, names: &Names) -> (String, String, String) {
        let m = &tree.members[self.position];
        (
            m.qualified(),
            qualified(
                &m.schema,
                &names.old_partition(tree.root_oid, self.position),
            ),
            qualified(
                &m.schema,
                &names.shadow_partition(tree.root_oid, self.position),
            ),
        )
    }

    /// Statements of the cutover transaction, after the renames, without the locks (taken
    /// with the table's, [`lock_each_with_members`]): the dependents moved from the kept old member to the
    /// new one (see [`Dependents::forward`]).
    pub fn forward(&self, tree: &PartitionTree, names: &Names) -> Vec<String> {
        let (now, old, _) = self.relations(tree, names);
        self.dependents.forward_between(&now, &old)
    }

    /// After the cutover commits, as (what, SQL): materialized view rebuilds on the new
    /// member, validations of the foreign keys that reference it.
    pub fn forward_after_commit(
        &self,
        tree: &PartitionTree,
        names: &Names,
    ) -> Vec<(String, String)> {
        let (now, old, _) = self.relations(tree, names);
        self.dependents.after_commit_between(
            format!("the new partition {now}"),
            format!("the kept old partition {old}"),
        )
    }

    /// The rollback script's (and a revert's) statements after the renames back, without the
    /// locks ([`lock_sql_with_members`]): the dependents moved from the migrated member back to the
    /// restored original.
    pub fn rollback(&self, tree: &PartitionTree, names: &Names) -> Vec<String> {
        let (now, _, shadow) = self.relations(tree, names);
        self.dependents.rollback_between(&now, &shadow)
    }

    /// After the rollback commits: materialized view rebuilds on the restored member, then
    /// the validations (see [`Dependents::rollback_after_commit`]).
    pub fn rollback_after_commit(&self, tree: &PartitionTree, names: &Names) -> Vec<String> {
        let (now, _, shadow) = self.relations(tree, names);
        self.dependents
            .after_commit_between(
                format!("the restored partition {now}"),
                format!("the migrated partition {shadow}"),
            )
            .into_iter()
            .map(|(_, sql)| sql)
            .collect()
    }
}

/// The OIDs of the tree's root and members: never locked on their own by the dependents'
/// locks, since locking the partitioned table locks them after it (PostgreSQL's order).
fn tree_oids(tree: Option<&PartitionTree>) -> Vec<u32> {
    tree.map(|t| {
        std::iter::once(t.root_oid)
            .chain(t.members.iter().map(|m| m.oid))
            .collect()
    })
    .unwrap_or_default()
}

/// [`Dependents::lock_each`] of the table's dependents and its members' together (one
/// statement per relation, tables by OID, then the views), the tree's own relations left
/// out.
pub fn lock_each_with_members(
    table: &Dependents,
    members: &[MemberDependents],
    tree: Option<&PartitionTree>,
) -> Vec<String> {
    lock_each_of(&with_members(table, members), &tree_oids(tree))
}

/// [`Dependents::lock_sql`] of the table's dependents and its members' together, the tree's
/// own relations left out.
pub fn lock_sql_with_members(
    table: &Dependents,
    members: &[MemberDependents],
    tree: Option<&PartitionTree>,
) -> Vec<String> {
    lock_sql_of(&with_members(table, members), &tree_oids(tree))
}

/// The table's dependents, then each member's.
fn with_members<'a>(table: &'a Dependents, members: &'a [MemberDependents]) -> Vec<&'a Dependents> {
    std::iter::once(table)
        .chain(members.iter().map(|m| &m.dependents))
        .collect()
}
