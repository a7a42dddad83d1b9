//! The ALTER (docs/design.md §1.1): its text is analysed before the server sees it
//! ([`analyze`]), then each clause runs on an empty clone of the table in `pg_temp` inside a
//! transaction that is rolled back ([`apply_to_clone`]): the server is the parser, and the
//! clone's catalog is the shadow's exact shape. Then the clone's indexes must be rebuildable
//! ([`rebuildable_indexes`]) and the index names the ALTER adds free ([`new_names`]).

use anyhow::Result;
use tokio_postgres::{Client, Transaction};

use super::cost;
use crate::failure::{Check, Refusal};
use crate::model::alter::{self, AlterSpec};
use crate::model::catalog::Table;
use crate::plan::Rewrite;
use crate::preflight::clone::{MissingReference, TempClone};
use crate::preflight::indexdef::rename_index_definition;
use crate::sql::{ident, qualified};

/// [`Check::AlterText`]: the `--alter` clauses analysed by [`alter::analyze`] (no server
/// involved), or the refusal of the first one doppel cannot take.
pub fn analyze(alters: &[String]) -> Result<AlterSpec, Refusal> {
    alter::analyze(alters).map_err(|e| e.refusal())
}

/// The empty clone after the ALTER, and what preflight learned from it.
#[derive(Debug, Clone)]
pub struct AlteredClone {
    /// The clone's catalog after the ALTER: the shadow's columns, indexes and constraints.
    pub target: Table,
    /// `pg_temp.<name>` exactly as `pg_get_indexdef` prints the clone.
    pub clone_text: String,
    /// Sequence options of the clone's identity columns, by column.
    pub identity_options: Vec<(String, String)>,
    /// What the ALTER costs if run directly.
    pub rewrite: Rewrite,
}

/// [`Check::Alter`]: applies the ALTER to an empty clone of `t` in `pg_temp` (same name, same
/// index and constraint names) inside a transaction that is rolled back. The refusal when the
/// server rejects a clause, or when the ALTER renames or moves the table or makes it UNLOGGED.
/// Reads `pg_class`, `pg_index`, `pg_constraint` (through [`catalog::inspect`]) and
/// `pg_sequence` for the clone.
///
/// Errors: the clone cannot be created, an index of `t` cannot be copied to it, or a query
/// fails.
pub async fn apply_to_clone(
    client: &mut Client,
    t: &Table,
    alter: &AlterSpec,
) -> Result<std::result::Result<AlteredClone, Refusal>> {
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL lock_timeout = '5s'").await?;
    let clone = match TempClone::create(&tx, t, &alter.actions()).await {
        Ok(clone) => clone,
        Err(e) if e.downcast_ref::<MissingReference>().is_some() => {
            tx.rollback().await.ok();
            return Ok(Err(Refusal::new(
                Check::Alter,
                format!("{e}"),
                "create the referenced table first, or correct its name",
            )));
        }
        Err(e) => return Err(e),
    };
    let before = clone.inspect(&tx).await?;
    if let Some(refusal) = run_alter(&tx, &clone, alter).await {
        tx.rollback().await.ok();
        return Ok(Err(refusal));
    }
    let after_oid: Option<u32> = tx
        .query_one("SELECT to_regclass($1)::oid", &[&clone.name])
        .await?
        .get(0);
    if after_oid != Some(clone.oid) {
        tx.rollback().await.ok();
        return Ok(Err(Refusal::new(
            Check::Alter,
            "the ALTER renames the table or moves it to another schema: that is metadata-only",
            "run it directly",
        )));
    }
    let target = clone.inspect(&tx).await?;
    if target.persistence == 'u' {
        tx.rollback().await.ok();
        return Ok(Err(Refusal::new(
            Check::Alter,
            "the ALTER makes the table UNLOGGED: doppel needs its changes in the WAL",
            "run it directly",
        )));
    }
    let identity_options = identity_options(&tx, &target).await?;
    tx.rollback().await?;

    let rewrite = cost::classify(&before, &target);
    Ok(Ok(AlteredClone {
        target,
        clone_text: clone.text,
        identity_options,
        rewrite,
    }))
}

/// Runs each `--alter` clause as `ALTER TABLE <clone> <clause>`, in order; the refusal quotes
/// the server's message (and hint) for the first one it rejects.
async fn run_alter(tx: &Transaction<'_>, clone: &TempClone, alter: &AlterSpec) -> Option<Refusal> {
    for statement in &alter.statements {
        if let Some(msg) = clone.alter(tx, &statement.text).await {
            return Some(Refusal::without_fix(
                Check::Alter,
                format!(
                    "the server rejected --alter {:?}: {msg}; nothing was created",
                    statement.text
                ),
            ));
        }
    }
    None
}

/// `START WITH .. INCREMENT BY .. MINVALUE .. MAXVALUE .. CACHE .. [NO] CYCLE` of each
/// identity column's sequence on the clone (`pg_sequence`), by column.
async fn identity_options(tx: &Transaction<'_>, target: &Table) -> Result<Vec<(String, String)>> {
    let mut options = Vec::new();
    for seq in target.sequences.iter().filter(|s| s.identity) {
        let row = tx
            .query_one(
                "SELECT format('START WITH %s INCREMENT BY %s MINVALUE %s MAXVALUE %s CACHE %s %s',
                               seqstart, seqincrement, seqmin, seqmax, seqcache,
                               CASE WHEN seqcycle THEN 'CYCLE' ELSE 'NO CYCLE' END)
                 FROM pg_sequence WHERE seqrelid = $1::text::regclass",
                &[&qualified(&seq.schema, &seq.name)],
            )
            .await?;
        options.push((seq.column.clone(), row.get(0)));
    }
    Ok(options)
}

/// [`Check::IndexDefinition`]: every plain index of the altered clone (not a constraint's) must
/// have a definition the shadow phase can rebuild ([`rename_index_definition`]); the refusal
/// names the first that has not.
pub fn rebuildable_indexes(clone: &AlteredClone) -> Result<(), Refusal> {
    for index in clone
        .target
        .indexes
        .iter()
        .filter(|i| i.constraint.is_none())
    {
        if rename_index_definition(&index.definition, &clone.clone_text, "x", "y").is_none() {
            return Err(Refusal::without_fix(
                Check::IndexDefinition,
                format!(
                    "cannot rebuild index {:?} on the new table: unexpected definition {:?}",
                    index.name, index.definition
                ),
            ));
        }
    }
    Ok(())
}

/// [`Check::NameTaken`]: index and constraint names the ALTER adds must be free in `t`'s
/// schema (they are given to the new table at cutover): one `to_regclass` per new name.
///
/// Errors: a query fails.
pub async fn new_names(client: &Client, t: &Table, target: &Table) -> Result<Vec<Refusal>> {
    let mut refusals = Vec::new();
    for index in &target.indexes {
        if t.indexes.iter().any(|i| i.name == index.name) {
            continue;
        }
        let taken: bool = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&qualified(&t.schema, &index.name)],
            )
            .await?
            .get(0);
        if taken {
            refusals.push(Refusal::new(
                Check::NameTaken,
                format!(
                    "the ALTER creates index {:?}, but a relation with that name already exists in schema {}",
                    index.name,
                    ident(&t.schema)
                ),
                "name the constraint explicitly (ADD CONSTRAINT <name> ..)",
            ));
        }
    }
    Ok(refusals)
}
