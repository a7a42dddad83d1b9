//! Foreign keys of other tables that reference the table.
//!
//! A foreign key is bound to the OID of the table it references. The cutover locks each
//! child (in OID order, with the other tables it locks: docs/design.md §4.4), drops the key
//! and re-adds it `NOT VALID` from `pg_get_constraintdef`, which names the table by its name,
//! now the new table's: no scan of the child under the lock, and new rows are checked at
//! once. After the commit a key that was valid is validated (`VALIDATE CONSTRAINT` takes
//! only SHARE UPDATE EXCLUSIVE on the child: PostgreSQL docs, ALTER TABLE). Keys of
//! partitioned tables are refused: before PostgreSQL 18 none can be added `NOT VALID`.

use super::read::{Batch, EVERY_VERSION, Params, Query, ReadContext, Rows};
use super::{Dependents, Finish, Joint, Kind, Lock, Move, Refusal};
use crate::sql::{ident, qualified};

/// A foreign key of another table that references the table (`pg_constraint.confrelid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// OID of the child (referencing) table; children are locked and altered in this order.
    pub child_oid: u32,
    /// `"schema"."child"`.
    pub child: String,
    /// The child is a partitioned table (`NOT VALID` foreign keys cannot be added to one
    /// before PostgreSQL 18: a blocker).
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
           pg_has_role(c.relowner, 'USAGE'), pg_get_userbyid(c.relowner)::text
    FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE con.contype = 'f' AND con.confrelid = $1 AND con.conrelid <> $1
      AND con.conparentid = 0
    ORDER BY con.conrelid, con.conname",
    batch: Batch::First,
    params: Params::Oid,
    versions: EVERY_VERSION,
};

/// Foreign keys that reference the table.
pub(super) struct ForeignKeys;

impl Kind for ForeignKeys {
    fn queries(&self) -> &'static [&'static Query] {
        &[&FOREIGN_KEYS]
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
    }

    /// Keys of partitioned tables: no `NOT VALID` foreign key on a partitioned table before
    /// PostgreSQL 18, and validating one under the cutover lock would scan every partition.
    fn refusals(&self, deps: &Dependents) -> Vec<Refusal> {
        let table = qualified(&deps.schema, &deps.table);
        deps.foreign_keys
            .iter()
            .filter(|f| f.child_partitioned)
            .map(|fk| {
                Refusal::new(
                    format!("foreign key {} on the partitioned table {}", fk.name, fk.child),
                    format!("references {table}: a foreign key cannot be re-added NOT VALID on a partitioned table, and validating it under the cutover lock would scan every partition"),
                )
                .with_fix(
                    Joint::Semicolon,
                    "drop it before the migration and re-add it after",
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
    /// relation with the table's name). The same both ways.
    fn forward(&self, deps: &Dependents, _m: &Move) -> Vec<String> {
        let mut out = Vec::new();
        for fk in &deps.foreign_keys {
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

    /// `VALIDATE CONSTRAINT` for each key that was valid, labelled with its name.
    fn after_commit(&self, deps: &Dependents, _f: &Finish) -> Vec<(String, String)> {
        deps.foreign_keys
            .iter()
            .filter(|fk| fk.validated)
            .map(|fk| (fk.name.clone(), fk.validate_sql()))
            .collect()
    }
}
