//! Foreign keys of other tables that reference the table.
//!
//! A foreign key is bound to the OID of the table it references. The cutover locks each
//! child (in OID order, with the other tables it locks: docs/design.md §4.4), drops the key
//! and re-adds it `NOT VALID` from `pg_get_constraintdef`, which names the table by its name,
//! now the new table's: no scan of the child under the lock, and new rows are checked at
//! once. After the commit a key that was valid is validated (`VALIDATE CONSTRAINT` takes
//! only SHARE UPDATE EXCLUSIVE on the child: PostgreSQL docs, ALTER TABLE). Keys of
//! partitioned tables move the same way on PostgreSQL 18+; before 18, where none can be
//! added `NOT VALID`, they move through their leaf partitions (`foreign_key/partitioned.rs`).

mod partitioned;

use super::read::{Batch, EVERY_VERSION, Params, Query, ReadContext, Rows};
use super::{Dependents, Finish, Joint, Kind, Lock, Move, Refusal};
use crate::sql::{ident, qualified};

pub use partitioned::{
    LeafKey, NOT_VALID_ON_PARTITIONED, PENDING_REATTACH_MARK, REATTACH_ATTEMPTS,
    REATTACH_LOCK_TIMEOUT_MS, add_through_leaves, pending_reattach_sql, validate_and_reattach,
};

/// A foreign key of another table that references the table (`pg_constraint.confrelid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// OID of the child (referencing) table; children are locked and altered in this order.
    pub child_oid: u32,
    /// `"schema"."child"`.
    pub child: String,
    /// The child is a partitioned table (`relkind = 'p'`).
    pub child_partitioned: bool,
    /// Constraint name (kept).
    pub name: String,
    /// `pg_get_constraintdef` text without a trailing ` NOT VALID`, e.g.
    /// `FOREIGN KEY (t_id) REFERENCES public.t(id) ON DELETE CASCADE`.
    pub definition: String,
    /// `convalidated`: validated after the cutover commits when true.
    pub validated: bool,
    /// Columns of the table the key references (`confkey`), in key order.
    pub referenced_columns: Vec<String>,
    /// Name of the unique index of the table that backs the key (`conindid`); the new table
    /// must have a unique index on the same columns for the key to be re-added.
    pub referenced_index: Option<String>,
    /// For a key of a partitioned table on a server before PostgreSQL 18: its clones on the
    /// leaf partitions, through which it moves (`foreign_key/partitioned.rs`); `None`
    /// otherwise (the key moves as it is defined).
    pub leaf_keys: Option<Vec<LeafKey>>,
    /// The child is partitioned and the key's action on an update or a delete of the table
    /// (`CASCADE`, `SET NULL`, `SET DEFAULT`) writes a column of a partition key of its tree
    /// (or an expression key), so a cascaded change can move a row between partitions.
    pub action_moves_rows: bool,
}

impl ForeignKey {
    /// `ALTER TABLE child VALIDATE CONSTRAINT name`.
    fn validate_sql(&self) -> String {
        format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {}",
            self.child,
            ident(&self.name)
        )
    }
}

/// Foreign keys from other tables (not the clones on partitions: they follow the parent),
/// by child OID then name.
const FOREIGN_KEYS: Query = Query {
    what: "reading foreign keys from other tables",
    sql: "SELECT con.conrelid, n.nspname::text, c.relname::text, c.relkind = 'p',
           con.conname::text, pg_get_constraintdef(con.oid), con.convalidated,
           ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
                 ORDER BY k.ord),
           (SELECT relname::text FROM pg_class WHERE oid = con.conindid),
           pg_has_role(c.relowner, 'USAGE'), pg_get_userbyid(c.relowner)::text,
           c.relkind = 'p' AND (con.confupdtype IN ('c', 'n', 'd') OR con.confdeltype IN ('n', 'd'))
           AND EXISTS (
             SELECT 1 FROM pg_partition_tree(con.conrelid) t
             JOIN pg_partitioned_table pt ON pt.partrelid = t.relid
             CROSS JOIN unnest(pt.partattrs::int2[]) AS k(attnum)
             LEFT JOIN pg_attribute ka ON ka.attrelid = t.relid AND ka.attnum = k.attnum
             WHERE k.attnum = 0 OR ka.attname IN (
               SELECT a.attname FROM pg_attribute a
               WHERE a.attrelid = con.conrelid AND a.attnum = ANY (con.conkey)))
    FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE con.contype = 'f' AND con.confrelid = $1 AND con.conrelid <> $1
      AND con.conparentid = 0
    ORDER BY con.conrelid, con.conname",
    batch: Batch::First,
    params: Params::Oid,
    versions: EVERY_VERSION,
};

/// Clones of partitioned tables' keys on leaf partitions, before PostgreSQL 18.
const LEAF_KEYS: Query = Query {
    what: "reading partitions' copies of foreign keys from partitioned tables",
    sql: partitioned::LEAF_KEYS_SQL,
    batch: Batch::First,
    params: Params::Oid,
    versions: 0..NOT_VALID_ON_PARTITIONED,
};

/// Foreign keys that reference the table.
pub(super) struct ForeignKeys;

impl Kind for ForeignKeys {
    fn queries(&self) -> &'static [&'static Query] {
        &[&FOREIGN_KEYS, &LEAF_KEYS]
    }

    /// The keys into `deps.foreign_keys`; refused when the child's owner is a role the
    /// current user is not a member of.
    fn read(&self, rows: &mut Rows, cx: &ReadContext, deps: &mut Dependents) {
        for r in rows.take(&FOREIGN_KEYS) {
            let definition: String = r.get(5);
            let fk = ForeignKey {
                child_oid: r.get(0),
                child: qualified(&r.get::<_, String>(1), &r.get::<_, String>(2)),
                child_partitioned: r.get(3),
                name: r.get(4),
                definition: definition
                    .strip_suffix(" NOT VALID")
                    .unwrap_or(&definition)
                    .to_string(),
                validated: r.get(6),
                referenced_columns: r.get(7),
                referenced_index: r.get(8),
                leaf_keys: (r.get::<_, bool>(3) && cx.version < NOT_VALID_ON_PARTITIONED)
                    .then(Vec::new),
                action_moves_rows: r.get(11),
            };
            if !r.get::<_, bool>(9) {
                deps.unsupported.push(Refusal::new(
                    format!("foreign key {} on {}", fk.name, fk.child),
                    format!(
                        "references {}; {} is owned by {}, a role the current user is not a member of, so the cutover cannot re-point it",
                        cx.table,
                        fk.child,
                        r.get::<_, String>(10)
                    ),
                ));
            }
            deps.foreign_keys.push(fk);
        }
        for r in rows.take(&LEAF_KEYS) {
            let (root_child, root_name): (u32, String) = (r.get(0), r.get(1));
            let leaf = LeafKey {
                leaf_oid: r.get(2),
                leaf: qualified(&r.get::<_, String>(3), &r.get::<_, String>(4)),
                name: r.get(5),
                comment: r.get(6),
            };
            let owner = deps
                .foreign_keys
                .iter_mut()
                .find(|f| f.child_oid == root_child && f.name == root_name);
            if let Some(leaves) = owner.and_then(|f| f.leaf_keys.as_mut()) {
                leaves.push(leaf);
            }
        }
    }

    /// Before PostgreSQL 18, keys of partitioned tables whose action can move a row between
    /// partitions: between the cutover and the key's return to the parent, each partition
    /// enforces it alone, and a cascade run by a partition's key is an `UPDATE ONLY` of that
    /// partition, which cannot move a row (PostgreSQL's `ri_triggers.c`): the cascade would
    /// fail where it succeeds today.
    fn refusals(&self, deps: &Dependents) -> Vec<Refusal> {
        let table = qualified(&deps.schema, &deps.table);
        deps.foreign_keys
            .iter()
            .filter(|f| f.through_leaves() && f.action_moves_rows)
            .map(|fk| {
                Refusal::new(
                    format!("foreign key {} on the partitioned table {}", fk.name, fk.child),
                    format!("references {table} with an ON UPDATE/ON DELETE action that writes its partition key: before PostgreSQL 18 the key moves through its partitions (no NOT VALID key on a partitioned table), and while each partition enforces it alone after the cutover a cascaded change cannot move a row to another partition"),
                )
                .with_fix(
                    Joint::Semicolon,
                    "drop it before the migration and re-add it after, or migrate on PostgreSQL 18 or later",
                )
            })
            .collect()
    }

    fn column_users<'d>(&self, deps: &'d Dependents) -> Vec<(String, &'d [String])> {
        deps.foreign_keys
            .iter()
            .map(|fk| {
                (
                    format!("foreign key {} on {}", fk.name, fk.child),
                    &fk.referenced_columns[..],
                )
            })
            .collect()
    }

    /// The child tables (ACCESS EXCLUSIVE: `ALTER TABLE .. DROP CONSTRAINT` needs it).
    fn locks(&self, deps: &Dependents) -> Vec<Lock> {
        deps.foreign_keys
            .iter()
            .map(|fk| Lock::Table {
                oid: fk.child_oid,
                name: fk.child.clone(),
            })
            .collect()
    }

    /// Per key, by child OID: dropped and re-added `NOT VALID` (it then references the
    /// relation with the table's name); a key moving through its leaf partitions is added
    /// `NOT VALID` on each leaf instead. The same both ways.
    fn forward(&self, deps: &Dependents, _m: &Move) -> Vec<String> {
        let mut out = Vec::new();
        for fk in &deps.foreign_keys {
            if let Some(leaves) = &fk.leaf_keys {
                out.extend(fk.leaves_forward(leaves));
                continue;
            }
            out.push(format!(
                "ALTER TABLE {} DROP CONSTRAINT {}",
                fk.child,
                ident(&fk.name)
            ));
            out.push(format!(
                "ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID",
                fk.child,
                ident(&fk.name),
                fk.definition
            ));
        }
        out
    }

    /// `VALIDATE CONSTRAINT` for each key that was valid, labelled with its name; for a key
    /// moving through its leaf partitions, each leaf's validated and the key added on the
    /// parent again (a partitioned table's key is always valid before PostgreSQL 18).
    fn after_commit(&self, deps: &Dependents, _f: &Finish) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for fk in &deps.foreign_keys {
            match &fk.leaf_keys {
                Some(leaves) => out.extend(fk.leaves_after_commit(leaves)),
                None if fk.validated => out.push((fk.name.clone(), fk.validate_sql())),
                None => {}
            }
        }
        out
    }
}
