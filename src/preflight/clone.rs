//! The empty clone of the table in `pg_temp` on which preflight runs the ALTER (docs/design.md
//! §1.1): the server parses, and the clone's catalog is the new table's exact shape. Created
//! inside a transaction the caller rolls back, so nothing survives.
//!
//! Foreign keys: a constraint on a temporary table may reference only temporary tables, so
//! every table a foreign key references (the original's own foreign keys, and each
//! `REFERENCES <table>` of the `--alter` text) gets an empty temporary copy with its indexes
//! (`pg_temp._doppel_ref_<oid>`), the original's foreign keys are re-created on the clone
//! against those copies, and each clause's `REFERENCES` targets are pointed at them before it
//! runs. A reference to the table itself points at the clone. Reading the clone back
//! ([`TempClone::inspect`]), each foreign key's definition names the real table again, as
//! `pg_get_constraintdef` prints it for the original.

use anyhow::{Context, Result, anyhow};
use tokio_postgres::Transaction;

use crate::model::alter::referenced_tables;
use crate::model::catalog::{self, Table};
use crate::preflight::indexdef::retarget_index;
use crate::sql::ident;

/// A `REFERENCES <table>` of the `--alter` text names no table (`to_regclass` is NULL).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the ALTER references table {0}, which does not exist")]
pub struct MissingReference(pub String);

/// A table a foreign key references, and its stand-in next to the clone.
#[derive(Debug, Clone)]
struct Parent {
    /// The referenced table's OID.
    oid: u32,
    /// How `pg_get_constraintdef` prints the real table (through the session's
    /// `search_path`, read before the clone exists).
    printed: String,
    /// The stand-in as SQL names it (`pg_temp."_doppel_ref_<oid>"`, or the clone).
    temp: String,
    /// How `pg_get_constraintdef` prints the stand-in.
    temp_printed: String,
}

/// The clone of one table inside an open transaction.
#[derive(Debug, Clone)]
pub struct TempClone {
    /// `pg_temp.<t>` as doppel writes it.
    pub name: String,
    /// `pg_temp.<t>` exactly as `pg_get_indexdef` prints the clone.
    pub text: String,
    /// The clone's OID.
    pub oid: u32,
    parents: Vec<Parent>,
    /// Each `REFERENCES` name of the `--alter` text as written, with the parent it resolves to.
    references: Vec<(String, u32)>,
}

impl TempClone {
    /// Creates the clone of `t` in `tx`: `CREATE TEMP TABLE .. (LIKE .. INCLUDING ALL
    /// EXCLUDING INDEXES)`, then `t`'s indexes and constraints under their own names, its
    /// REPLICA IDENTITY FULL, reloptions and column statistics targets, a stand-in for every
    /// table a foreign key of `t` or of `clauses` references, and `t`'s foreign keys.
    ///
    /// Errors: [`MissingReference`] when a referenced table does not exist; the clone or an
    /// index of `t`
    /// cannot be created, or a query fails.
    pub async fn create(tx: &Transaction<'_>, t: &Table, clauses: &[&str]) -> Result<TempClone> {
        // Resolve every referenced table before the clone exists: its name shadows `t`'s.
        let own_fks = tx
            .query(
                "SELECT conname::text, pg_get_constraintdef(oid), confrelid::oid
                 FROM pg_constraint WHERE conrelid = $1 AND contype = 'f' ORDER BY conname",
                &[&t.oid],
            )
            .await
            .context("reading the table's foreign keys")?;
        let mut oids: Vec<u32> = own_fks.iter().map(|r| r.get(2)).collect();
        let mut references = Vec::new();
        for clause in clauses {
            for (_, name) in referenced_tables(clause) {
                let oid: Option<u32> = tx
                    .query_one("SELECT to_regclass($1)::oid", &[&name])
                    .await
                    .with_context(|| format!("resolving the referenced table {name}"))?
                    .get(0);
                let oid = oid.ok_or_else(|| MissingReference(name.clone()))?;
                references.push((name, oid));
                oids.push(oid);
            }
        }
        oids.sort_unstable();
        oids.dedup();
        let mut printed = Vec::new();
        for oid in &oids {
            let text: String = tx
                .query_one("SELECT $1::oid::regclass::text", &[oid])
                .await?
                .get(0);
            printed.push((*oid, text));
        }
        let (name, text) = create_bare(tx, t).await?;
        let oid: u32 = tx
            .query_one("SELECT $1::text::regclass::oid", &[&name])
            .await?
            .get(0);
        let mut clone = TempClone {
            name,
            text,
            oid,
            parents: Vec::new(),
            references,
        };
        for (parent_oid, parent_printed) in printed {
            clone.add_parent(tx, t, parent_oid, parent_printed).await?;
        }
        for fk in &own_fks {
            let (fk_name, def): (String, String) = (fk.get(0), fk.get(1));
            let def = clone.to_stand_in(&def, fk.get(2));
            tx.batch_execute(&format!(
                "ALTER TABLE {} ADD CONSTRAINT {} {def}",
                clone.name,
                ident(&fk_name)
            ))
            .await
            .with_context(|| format!("copying foreign key {fk_name} to the clone"))?;
        }
        Ok(clone)
    }

    /// Creates the stand-in for the referenced table `oid` (the clone itself when it is `t`).
    async fn add_parent(
        &mut self,
        tx: &Transaction<'_>,
        t: &Table,
        oid: u32,
        printed: String,
    ) -> Result<()> {
        let temp = if oid == t.oid {
            self.name.clone()
        } else {
            let temp = format!("pg_temp.{}", ident(&format!("_doppel_ref_{oid}")));
            tx.batch_execute(&format!(
                "CREATE TEMP TABLE {temp} (LIKE {} INCLUDING ALL)",
                printed_to_sql(tx, oid).await?
            ))
            .await
            .with_context(|| format!("creating a stand-in for the referenced table {printed}"))?;
            temp
        };
        let temp_printed: String = tx
            .query_one("SELECT $1::text::regclass::text", &[&temp])
            .await?
            .get(0);
        self.parents.push(Parent {
            oid,
            printed,
            temp,
            temp_printed,
        });
        Ok(())
    }

    /// A foreign key definition of the original (`pg_get_constraintdef`, referencing `parent`)
    /// pointed at the stand-in.
    fn to_stand_in(&self, def: &str, parent: u32) -> String {
        match self.parents.iter().find(|p| p.oid == parent) {
            Some(p) => def.replacen(
                &format!("REFERENCES {}(", p.printed),
                &format!("REFERENCES {}(", p.temp),
                1,
            ),
            None => def.to_string(),
        }
    }

    /// `clause` (or a statement) with each `REFERENCES <table>` pointed at the table's
    /// stand-in: the names the `--alter` text wrote, and the names `pg_get_constraintdef`
    /// prints for the referenced tables.
    pub fn retarget(&self, clause: &str) -> String {
        let mut out = clause.to_string();
        // Replace from the end, so earlier ranges stay valid.
        for (range, name) in referenced_tables(clause).into_iter().rev() {
            let parent = self
                .references
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, oid)| self.parents.iter().find(|p| p.oid == *oid))
                .or_else(|| self.parents.iter().find(|p| p.printed == name));
            if let Some(p) = parent {
                out.replace_range(range, &p.temp);
            }
        }
        out
    }

    /// Runs `ALTER TABLE <clone> <clause>` (its references pointed at the stand-ins); the
    /// server's message (and hint) when it rejects it.
    pub async fn alter(&self, tx: &Transaction<'_>, clause: &str) -> Option<String> {
        let sql = format!("ALTER TABLE {} {}", self.name, self.retarget(clause));
        tx.batch_execute(&sql).await.err().map(|e| {
            e.as_db_error()
                .map(|d| {
                    let mut m = d.message().to_string();
                    if let Some(h) = d.hint() {
                        m.push_str(&format!(" (hint: {h})"));
                    }
                    m
                })
                .unwrap_or_else(|| e.to_string())
        })
    }

    /// The clone's catalog ([`catalog::inspect`]) with every foreign key naming the real table
    /// it references, as `pg_get_constraintdef` prints it for the original.
    ///
    /// Errors: a catalog query fails.
    pub async fn inspect(&self, tx: &Transaction<'_>) -> Result<Table> {
        let mut table = catalog::inspect(tx, self.oid).await?;
        if table.relkind == 'p' {
            storage_of_the_partition(tx, &mut table).await?;
        }
        for con in table.constraints.iter_mut().filter(|c| c.kind == 'f') {
            for p in &self.parents {
                let stand_in = format!("REFERENCES {}(", p.temp_printed);
                if con.definition.contains(&stand_in) {
                    con.definition = con.definition.replacen(
                        &stand_in,
                        &format!("REFERENCES {}(", p.printed),
                        1,
                    );
                    con.references = Some(p.oid);
                    break;
                }
            }
        }
        Ok(table)
    }
}

/// The one partition of a partitioned table's clone.
const CLONE_LEAF: &str = "pg_temp._doppel_clone_partition";

/// A partitioned clone's storage is its partition's: `table.relfilenode` and each index's
/// become those of [`CLONE_LEAF`] and of its partition of the index, so that a rewrite or an
/// index rebuild shows as it would on every partition of the real tree (docs/design.md
/// §1.14).
///
/// Errors: a catalog query fails.
async fn storage_of_the_partition(tx: &Transaction<'_>, table: &mut Table) -> Result<()> {
    table.relfilenode = tx
        .query_one(
            &format!("SELECT relfilenode::oid FROM pg_class WHERE oid = '{CLONE_LEAF}'::regclass"),
            &[],
        )
        .await?
        .get(0);
    for index in &mut table.indexes {
        let row = tx
            .query_opt(
                "SELECT c.relfilenode::oid FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = $1",
                &[&index.oid],
            )
            .await?;
        if let Some(row) = row {
            index.relfilenode = row.get(0);
        }
    }
    Ok(())
}

/// The real table `oid` as SQL names it, fully qualified (for `LIKE`).
async fn printed_to_sql(tx: &Transaction<'_>, oid: u32) -> Result<String> {
    Ok(tx
        .query_one(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&oid],
        )
        .await?
        .get(0))
}

/// Creates the clone without foreign keys; returns its name as doppel writes it and as
/// `pg_get_indexdef` prints it.
async fn create_bare(tx: &Transaction<'_>, t: &Table) -> Result<(String, String)> {
    let clone = format!("pg_temp.{}", ident(&t.name));
    // A partitioned table's clone is partitioned by the same key (with no partitions), so
    // the ALTER meets what PostgreSQL checks on a partitioned table (docs/design.md §1.14).
    let key: Option<String> = tx
        .query_one("SELECT pg_get_partkeydef($1::oid)", &[&t.oid])
        .await?
        .get(0);
    let partition_by = key
        .as_ref()
        .map(|k| format!(" PARTITION BY {k}"))
        .unwrap_or_default();
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE {clone} (LIKE {} INCLUDING ALL EXCLUDING INDEXES){partition_by}",
        t.qualified()
    ))
    .await
    .context("creating the temporary clone")?;
    if let Some(key) = key {
        // One partition holding everything, on which the ALTER's cost is measured: a
        // partitioned table has no storage of its own to rewrite.
        let bound = match key.starts_with("HASH") {
            true => "FOR VALUES WITH (MODULUS 1, REMAINDER 0)",
            false => "DEFAULT",
        };
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE {CLONE_LEAF} PARTITION OF {clone} {bound}"
        ))
        .await
        .context("creating the temporary clone's partition")?;
    }
    // How pg_get_indexdef qualifies the clone: `pg_temp.<t>` from PostgreSQL 15 on, the
    // session's own temporary schema (`pg_temp_3.<t>`) before.
    let clone_text: String = tx
        .query_one(
            "SELECT CASE WHEN current_setting('server_version_num')::int >= 150000 THEN 'pg_temp'
                         ELSE (SELECT quote_ident(nspname) FROM pg_namespace
                               WHERE oid = pg_my_temp_schema()) END
                    || '.' || quote_ident($1)",
            &[&t.name],
        )
        .await?
        .get(0);
    let original_text: String = tx
        .query_one(
            "SELECT quote_ident($1) || '.' || quote_ident($2)",
            &[&t.schema, &t.name],
        )
        .await?
        .get(0);
    for index in &t.indexes {
        let sql = match &index.constraint {
            Some((_, def)) => format!(
                "ALTER TABLE {clone} ADD CONSTRAINT {} {def}",
                ident(&index.name)
            ),
            None => retarget_index(&index.definition, &original_text, &clone)
                .ok_or_else(|| anyhow!("cannot read index definition {:?}", index.definition))?,
        };
        tx.batch_execute(&sql)
            .await
            .with_context(|| format!("copying index {} to the clone", index.name))?;
    }
    if t.replica_identity == 'f' {
        tx.batch_execute(&format!("ALTER TABLE {clone} REPLICA IDENTITY FULL"))
            .await?;
    }
    if !t.reloptions.is_empty() && t.relkind != 'p' {
        tx.batch_execute(&format!(
            "ALTER TABLE {clone} SET ({})",
            t.reloptions.join(", ")
        ))
        .await?;
    }
    for c in &t.columns {
        if let Some(target) = c.stattarget {
            tx.batch_execute(&format!(
                "ALTER TABLE {clone} ALTER COLUMN {} SET STATISTICS {target}",
                ident(&c.name)
            ))
            .await?;
        }
    }
    Ok((clone, clone_text))
}
