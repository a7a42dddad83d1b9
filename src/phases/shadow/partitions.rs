//! The shadow's partition tree (issue 15): the same partitioning as the original's
//! ([`PartitionTree`]) under a shadow root that is partitioned by the same key, and the
//! renames that give the shadow's members and their indexes the original names at the
//! cutover (and back in the rollback script).
//!
//! Every member is created with `CREATE TABLE .. PARTITION OF <its parent's shadow> <bound>`
//! (with `PARTITION BY` when it is sub-partitioned), in the original's order (parents
//! first), in the original member's schema and tablespace, with its storage parameters,
//! owner, comment, grants, replica identity and the CHECK constraints defined on it. Indexes
//! defined on the shadow root are created on every member by PostgreSQL (partitioned
//! indexes); the indexes defined on a single member are created by [`index_sql`] under
//! temporary names. A member's partitions of the root's indexes get names PostgreSQL
//! chooses; [`renames`] gives each the name of the original member's partition of the same
//! root index.

use crate::model::names::Names;
use crate::model::partitions::{Member, PartitionTree};
use crate::preflight::rename_index_definition;
use crate::sql::{comment_sql, ident, qualified};

/// `"schema"."_doppel_<oid>_new_p<n>"`: the shadow of the `n`-th member of `tree`.
fn shadow_member(tree: &PartitionTree, names: &Names, n: usize) -> String {
    qualified(
        &tree.members[n].schema,
        &names.shadow_partition(tree.root_oid, n),
    )
}

/// The shadow's leaves (members that hold rows), as SQL names them, with the original
/// member each stands for, in tree order.
pub fn leaves<'t>(
    tree: &'t PartitionTree,
    names: &'t Names,
) -> impl Iterator<Item = (String, &'t Member)> + 't {
    tree.members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.key.is_none())
        .map(|(n, m)| (shadow_member(tree, names, n), m))
}

/// The shadow of `m`'s parent: `shadow_root` for a partition of the root.
fn shadow_parent(tree: &PartitionTree, names: &Names, shadow_root: &str, m: &Member) -> String {
    match tree.position(m.parent_oid) {
        Some(p) => shadow_member(tree, names, p),
        None => shadow_root.to_string(),
    }
}

/// Statements creating the shadow's members under `shadow_root` (which exists and is
/// partitioned by `tree.key`), parents first, each with its properties (module docs).
pub fn create_sql(tree: &PartitionTree, names: &Names, shadow_root: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (n, m) in tree.members.iter().enumerate() {
        let shadow = shadow_member(tree, names, n);
        let mut create = format!(
            "CREATE TABLE {shadow} PARTITION OF {} {}",
            shadow_parent(tree, names, shadow_root, m),
            m.bound
        );
        if let Some(key) = &m.key {
            create.push_str(&format!(" PARTITION BY {key}"));
        }
        if !m.reloptions.is_empty() {
            create.push_str(&format!(" WITH ({})", m.reloptions.join(", ")));
        }
        if let Some(ts) = &m.tablespace {
            create.push_str(&format!(" TABLESPACE {}", ident(ts)));
        }
        out.push(create);
        out.extend(properties_sql(m, &shadow));
    }
    out
}

/// Owner, comment, grants, replica identity and CHECK constraints of `m`, on `shadow`.
fn properties_sql(m: &Member, shadow: &str) -> Vec<String> {
    let mut out = vec![format!("ALTER TABLE {shadow} OWNER TO {}", ident(&m.owner))];
    if m.comment.is_some() {
        out.push(comment_sql(
            &format!("TABLE {shadow}"),
            m.comment.as_deref(),
        ));
    }
    for (grantee, privilege, grantable) in &m.grants {
        let grantee = if grantee == "PUBLIC" {
            "PUBLIC".to_string()
        } else {
            ident(grantee)
        };
        let option = if *grantable { " WITH GRANT OPTION" } else { "" };
        out.push(format!(
            "GRANT {privilege} ON {shadow} TO {grantee}{option}"
        ));
    }
    match m.replica_identity {
        'f' => out.push(format!("ALTER TABLE {shadow} REPLICA IDENTITY FULL")),
        'n' => out.push(format!("ALTER TABLE {shadow} REPLICA IDENTITY NOTHING")),
        _ => {}
    }
    for (name, definition) in &m.checks {
        out.push(format!(
            "ALTER TABLE {shadow} ADD CONSTRAINT {} {definition}",
            ident(name)
        ));
    }
    out
}

/// The indexes defined on single members, on their shadows under temporary names
/// (`Names::shadow_partition_index`): a constraint's with `ADD CONSTRAINT`, others from
/// their definition. Built after the backfill, like the root's indexes: `constraining`
/// selects the unique and exclusion ones (built after the backlog is applied) or the others.
pub fn index_sql(tree: &PartitionTree, names: &Names, constraining: bool) -> Vec<String> {
    index_statements(tree, names, constraining)
        .into_iter()
        .map(|(sql, _)| sql)
        .collect()
}

/// [`index_sql`] with the temporary name each statement creates: (statement, name).
pub fn index_statements(
    tree: &PartitionTree,
    names: &Names,
    constraining: bool,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (n, m) in tree.members.iter().enumerate() {
        let shadow = shadow_member(tree, names, n);
        for (k, index) in m.local_indexes.iter().enumerate() {
            if super::constrains(&index.definition, index.constraint.as_ref()) != constraining {
                continue;
            }
            let temp = names.shadow_partition_index(tree.root_oid, n, k);
            let sql = match &index.constraint {
                Some((_, def)) => {
                    format!("ALTER TABLE {shadow} ADD CONSTRAINT {} {def}", ident(&temp))
                }
                None => {
                    rename_index_definition(&index.definition, &m.indexdef_name, &temp, &shadow)
                        .unwrap_or_else(|| {
                            format!(
                                "-- cannot rebuild index {:?}: {}",
                                index.name, index.definition
                            )
                        })
                }
            };
            out.push((sql, temp));
        }
    }
    out
}

/// The renames of the cutover for the members (after the roots' own): `forward` moves every
/// original member and its indexes out of the way (`Names::old_partition`,
/// `Names::old_partition_index`), then gives each shadow member its original's name, its
/// local indexes their original names, and its partitions of the root's indexes the names
/// of the original member's partitions of the same root index; `back` (the rollback script)
/// undoes it. `shadow` is the shadow's tree as read once built (whose members carry the
/// names [`create_sql`] gave them), `final_root_index` maps a shadow root index's temporary
/// name to its final name. [`MemberRenames`] has the same statements apart, tables and
/// indexes.
pub fn renames(
    original: &PartitionTree,
    shadow: &PartitionTree,
    names: &Names,
    final_root_index: impl Fn(&str) -> String,
) -> (Vec<String>, Vec<String>) {
    let r = member_renames(original, shadow, names, final_root_index);
    let forward = r
        .tables_forward
        .into_iter()
        .chain(r.indexes_forward)
        .collect();
    let back = r.indexes_back.into_iter().chain(r.tables_back).collect();
    (forward, back)
}

/// The members' renames of [`renames`], tables and indexes apart: the cutover renames the
/// tables under its lock and the indexes right after its commit (docs/design.md §1.14).
/// Each list is in order; the index lists do not depend on the tables' names (every index
/// is named with its schema).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberRenames {
    /// Original members to their kept names, then shadow members to the original names.
    pub tables_forward: Vec<String>,
    /// New members back to their shadow names, then kept members to their names.
    pub tables_back: Vec<String>,
    /// Original members' indexes to their kept names, then the shadow members' indexes to
    /// the original names.
    pub indexes_forward: Vec<String>,
    /// The new members' indexes back to their shadow names, then the kept members' indexes
    /// to their names.
    pub indexes_back: Vec<String>,
    /// The kept name of the first original index renamed (`"schema"."name"`): it exists
    /// exactly when the index renames have run.
    pub first_kept_index: Option<String>,
}

/// [`MemberRenames`] of `original` and `shadow` (see [`renames`]).
pub fn member_renames(
    original: &PartitionTree,
    shadow: &PartitionTree,
    names: &Names,
    final_root_index: impl Fn(&str) -> String,
) -> MemberRenames {
    let oid = original.root_oid;
    let mut r = MemberRenames::default();
    let (mut tables_back_later, mut indexes_back_later) = (Vec::new(), Vec::new());
    for (n, m) in original.members.iter().enumerate() {
        let old = names.old_partition(oid, n);
        r.tables_forward.push(format!(
            "ALTER TABLE {} RENAME TO {}",
            m.qualified(),
            ident(&old)
        ));
        tables_back_later.push(format!(
            "ALTER TABLE {} RENAME TO {}",
            qualified(&m.schema, &old),
            ident(&m.name)
        ));
        for (k, index) in member_indexes(m).iter().enumerate() {
            let kept = names.old_partition_index(oid, n, k);
            if r.first_kept_index.is_none() {
                r.first_kept_index = Some(qualified(&m.schema, &kept));
            }
            r.indexes_forward.push(format!(
                "ALTER INDEX {} RENAME TO {}",
                qualified(&m.schema, index),
                ident(&kept)
            ));
            indexes_back_later.push(format!(
                "ALTER INDEX {} RENAME TO {}",
                qualified(&m.schema, &kept),
                ident(index)
            ));
        }
    }
    for s in &shadow.members {
        let Some(n) =
            (0..original.members.len()).find(|&n| s.name == names.shadow_partition(oid, n))
        else {
            continue;
        };
        let m = &original.members[n];
        let temp = |k: usize| names.shadow_partition_index(oid, n, k);
        for (from, to) in index_pairs(m, s, temp, &final_root_index) {
            r.indexes_forward.push(format!(
                "ALTER INDEX {} RENAME TO {}",
                qualified(&s.schema, &from),
                ident(&to)
            ));
            r.indexes_back.push(format!(
                "ALTER INDEX {} RENAME TO {}",
                qualified(&m.schema, &to),
                ident(&from)
            ));
        }
        r.tables_forward.push(format!(
            "ALTER TABLE {} RENAME TO {}",
            s.qualified(),
            ident(&m.name)
        ));
        r.tables_back.push(format!(
            "ALTER TABLE {} RENAME TO {}",
            m.qualified(),
            ident(&s.name)
        ));
    }
    r.tables_back.extend(tables_back_later);
    r.indexes_back.extend(indexes_back_later);
    r
}

/// Every index name of `m`: local ones, then its partitions of the root's indexes.
fn member_indexes(m: &Member) -> Vec<String> {
    m.local_indexes
        .iter()
        .map(|i| i.name.clone())
        .chain(m.attached_indexes.iter().map(|(_, name)| name.clone()))
        .collect()
}

/// (shadow index name, original name) for the shadow member `s` of the original member `m`:
/// local indexes by position (`temp(k)` is the shadow's name of the `k`-th), partitions of
/// root indexes by the root index.
fn index_pairs(
    m: &Member,
    s: &Member,
    temp: impl Fn(usize) -> String,
    final_root_index: &impl Fn(&str) -> String,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = m
        .local_indexes
        .iter()
        .enumerate()
        .map(|(k, i)| (temp(k), i.name.clone()))
        .collect();
    for (root_index, name) in &s.attached_indexes {
        let root_final = final_root_index(root_index);
        if let Some((_, original)) = m.attached_indexes.iter().find(|(r, _)| *r == root_final) {
            out.push((name.clone(), original.clone()));
        }
    }
    out
}
