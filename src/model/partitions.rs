//! A declaratively partitioned table's tree as the catalog describes it (issue 15): the
//! root's partition key, then every member (each partition at every level: sub-partitioned
//! members and leaves, a default partition included) with its bound, its own partition key
//! when it is partitioned itself, and what belongs to it alone: storage parameters,
//! tablespace, owner, comment, grants, replica identity, CHECK constraints and foreign keys
//! defined on it, indexes defined on it, and the names of its partitions of the parent's indexes.
//!
//! What a migration of the whole tree needs to build the shadow's tree with the same
//! partitioning (`crate::phases::shadow::partitions`) and to give the shadow's members and
//! their indexes the original names at the cutover. Read with the server's deparsers, like
//! the rest of the catalog: `pg_get_partkeydef`, `pg_get_expr(relpartbound)`,
//! `pg_get_indexdef`, `pg_get_constraintdef`; the tree from `pg_partition_tree`
//! (PostgreSQL 12+), the index tree from `pg_inherits`, grants from `aclexplode`.
//! Not read: column-level grants and column comments of a member (PostgreSQL keeps them per
//! partition, rarely set), security labels, and replica identity `USING INDEX` of a member.

use anyhow::{Context, Result};
use tokio_postgres::GenericClient;

use crate::sql::qualified;

/// A partitioned table's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTree {
    /// OID of the root (the partitioned table).
    pub root_oid: u32,
    /// The root's partition key, `pg_get_partkeydef`: `RANGE (created_at)`,
    /// `LIST (region)`, `HASH (id)`.
    pub key: String,
    /// Every member below the root, parents before their partitions (by level, then by
    /// parent, then by OID): the order the shadow's members are created in.
    pub members: Vec<Member>,
}

/// One partition of the tree, at any level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// OID.
    pub oid: u32,
    /// Schema (a partition may live in another schema than its parent).
    pub schema: String,
    /// Name.
    pub name: String,
    /// OID of its parent (the root or a sub-partitioned member).
    pub parent_oid: u32,
    /// Level below the root (1: a partition of the root).
    pub level: i32,
    /// `pg_get_expr(relpartbound)`: `FOR VALUES FROM (..) TO (..)`, `FOR VALUES IN (..)`,
    /// `FOR VALUES WITH (modulus .., remainder ..)` or `DEFAULT`.
    pub bound: String,
    /// Its own partition key when it is sub-partitioned (`relkind = 'p'`), else `None`.
    pub key: Option<String>,
    /// `reloptions` as `name=value`.
    pub reloptions: Vec<String>,
    /// Its tablespace when not the database's default.
    pub tablespace: Option<String>,
    /// Owner role.
    pub owner: String,
    /// `COMMENT ON TABLE`.
    pub comment: Option<String>,
    /// Table-level grants: (grantee, privilege, grantable); grantee `PUBLIC` for public.
    pub grants: Vec<(String, String, bool)>,
    /// `relreplident`.
    pub replica_identity: char,
    /// CHECK constraints defined on the member itself (not inherited): (name, definition).
    pub checks: Vec<(String, String)>,
    /// Foreign keys defined on the member itself (not clones of its parent's):
    /// (name, `pg_get_constraintdef` without a trailing ` NOT VALID`, validated).
    pub foreign_keys: Vec<(String, String, bool)>,
    /// Indexes defined on the member itself, not partitions of a parent's index.
    pub local_indexes: Vec<LocalIndex>,
    /// The member's partitions of its parent's indexes: (the root-level index it descends
    /// from, its own name), by the root index's name.
    pub attached_indexes: Vec<(String, String)>,
    /// How `pg_get_indexdef` writes the member: `schema.name`, quoted where needed.
    pub indexdef_name: String,
}

/// An index defined on one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalIndex {
    /// Name.
    pub name: String,
    /// `pg_get_indexdef`.
    pub definition: String,
    /// The constraint it backs (`p`, `u`, `x`) with `pg_get_constraintdef`, if any.
    pub constraint: Option<(char, String)>,
}

impl Member {
    /// `"schema"."name"`.
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }
}

/// The members, parents first, with the scalar properties of each.
const MEMBERS: &str = "SELECT t.relid::oid, n.nspname::text, c.relname::text, t.parentrelid::oid,
       t.level, pg_get_expr(c.relpartbound, c.oid),
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
       coalesce(c.reloptions, '{}')::text[],
       (SELECT spcname::text FROM pg_tablespace WHERE oid = c.reltablespace),
       pg_get_userbyid(c.relowner)::text, obj_description(c.oid, 'pg_class'),
       c.relreplident::text, quote_ident(n.nspname) || '.' || quote_ident(c.relname)
FROM pg_partition_tree($1::oid::regclass) t
JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE t.level > 0
ORDER BY t.level, t.parentrelid, t.relid";

/// Table-level grants of the members.
const GRANTS: &str = "SELECT c.oid, CASE WHEN a.grantee = 0 THEN 'PUBLIC'
       ELSE pg_get_userbyid(a.grantee)::text END, a.privilege_type::text, a.is_grantable
FROM pg_partition_tree($1::oid::regclass) t JOIN pg_class c ON c.oid = t.relid,
     aclexplode(c.relacl) a
WHERE t.level > 0 AND a.grantee <> c.relowner
ORDER BY c.oid, 2, 3";

/// CHECK constraints defined on a member (not inherited from its parent).
const CHECKS: &str = "SELECT con.conrelid, con.conname::text, pg_get_constraintdef(con.oid)
FROM pg_partition_tree($1::oid::regclass) t JOIN pg_constraint con ON con.conrelid = t.relid
WHERE t.level > 0 AND con.contype = 'c' AND con.conislocal AND con.coninhcount = 0
ORDER BY con.conrelid, con.conname";

/// Foreign keys defined on a member itself (`conparentid = 0`), not clones of a parent's.
const FOREIGN_KEYS: &str = "SELECT con.conrelid, con.conname::text, pg_get_constraintdef(con.oid),
       con.convalidated
FROM pg_partition_tree($1::oid::regclass) t JOIN pg_constraint con ON con.conrelid = t.relid
WHERE t.level > 0 AND con.contype = 'f' AND con.conparentid = 0
ORDER BY con.conrelid, con.conname";

/// Every index of the members: its name, definition, the constraint it backs, and the
/// root of its index tree when it is a partition of a parent's index (`pg_inherits`).
const INDEXES: &str = "WITH RECURSIVE up(idx, top) AS (
    SELECT i.indexrelid, i.indexrelid
    FROM pg_partition_tree($1::oid::regclass) t JOIN pg_index i ON i.indrelid = t.relid
    WHERE t.level > 0
    UNION ALL
    SELECT up.idx, h.inhparent FROM up JOIN pg_inherits h ON h.inhrelid = up.top
)
SELECT i.indrelid, ic.relname::text, pg_get_indexdef(i.indexrelid),
       (SELECT con.contype::text FROM pg_constraint con
        WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid
          AND con.contype IN ('p', 'u', 'x')),
       (SELECT pg_get_constraintdef(con.oid) FROM pg_constraint con
        WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid
          AND con.contype IN ('p', 'u', 'x')),
       CASE WHEN top.top <> i.indexrelid THEN (SELECT relname::text FROM pg_class WHERE oid = top.top) END
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN (SELECT idx, top FROM up u
      WHERE NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = u.top)) top
  ON top.idx = i.indexrelid
ORDER BY i.indrelid, ic.relname";

/// Reads the tree of the partitioned table `root_oid`.
///
/// Errors: a catalog query fails (for instance the relation is not partitioned: then
/// `pg_get_partkeydef` is NULL and the error says so).
pub async fn read(client: &impl GenericClient, root_oid: u32) -> Result<PartitionTree> {
    let key: Option<String> = client
        .query_one("SELECT pg_get_partkeydef($1::oid)", &[&root_oid])
        .await
        .context("reading the partition key")?
        .get(0);
    let key = key.with_context(|| format!("relation {root_oid} is not a partitioned table"))?;
    let mut members: Vec<Member> = client
        .query(MEMBERS, &[&root_oid])
        .await
        .context("reading the partitions")?
        .iter()
        .map(|r| Member {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            parent_oid: r.get(3),
            level: r.get(4),
            bound: r.get(5),
            key: r.get(6),
            reloptions: r.get(7),
            tablespace: r.get(8),
            owner: r.get(9),
            comment: r.get(10),
            grants: Vec::new(),
            replica_identity: r.get::<_, String>(11).chars().next().unwrap_or('d'),
            checks: Vec::new(),
            foreign_keys: Vec::new(),
            local_indexes: Vec::new(),
            attached_indexes: Vec::new(),
            indexdef_name: r.get(12),
        })
        .collect();
    for r in client.query(GRANTS, &[&root_oid]).await? {
        if let Some(m) = member(&mut members, r.get(0)) {
            m.grants.push((r.get(1), r.get(2), r.get(3)));
        }
    }
    for r in client.query(CHECKS, &[&root_oid]).await? {
        if let Some(m) = member(&mut members, r.get(0)) {
            m.checks.push((r.get(1), r.get(2)));
        }
    }
    for r in client
        .query(FOREIGN_KEYS, &[&root_oid])
        .await
        .context("reading the partitions' foreign keys")?
    {
        if let Some(m) = member(&mut members, r.get(0)) {
            let definition: String = r.get(2);
            let definition = definition.trim_end_matches(" NOT VALID").to_string();
            m.foreign_keys.push((r.get(1), definition, r.get(3)));
        }
    }
    for r in client
        .query(INDEXES, &[&root_oid])
        .await
        .context("reading the partitions' indexes")?
    {
        let Some(m) = member(&mut members, r.get(0)) else {
            continue;
        };
        let name: String = r.get(1);
        match r.get::<_, Option<String>>(5) {
            Some(root_index) => m.attached_indexes.push((root_index, name)),
            None => m.local_indexes.push(LocalIndex {
                name,
                definition: r.get(2),
                constraint: r
                    .get::<_, Option<String>>(3)
                    .and_then(|k| k.chars().next())
                    .zip(r.get::<_, Option<String>>(4)),
            }),
        }
    }
    for m in &mut members {
        m.attached_indexes.sort();
    }
    Ok(PartitionTree {
        root_oid,
        key,
        members,
    })
}

/// The member `oid` of `members`.
fn member(members: &mut [Member], oid: u32) -> Option<&mut Member> {
    members.iter_mut().find(|m| m.oid == oid)
}

impl PartitionTree {
    /// The members that hold rows (not sub-partitioned), in tree order.
    pub fn leaves(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.key.is_none())
    }

    /// The position of the member `oid` in [`PartitionTree::members`]: its number in
    /// doppel's names for the shadow's members (`Names::shadow_partition`).
    pub fn position(&self, oid: u32) -> Option<usize> {
        self.members.iter().position(|m| m.oid == oid)
    }
}
