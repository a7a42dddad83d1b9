//! Preflight: every check before doppel creates anything (DESIGN.md §1.1). Runs in dry-run
//! mode too and changes nothing that survives: the ALTER is validated by applying it to an
//! empty clone of the table in `pg_temp`, inside a transaction that is rolled back — the server
//! is the parser, and the clone's catalog gives the shadow's exact shape.
//!
//! Every refusal says what is wrong and how to fix it; all refusals are collected and reported
//! together.

use anyhow::{Context, Result, anyhow};
use tokio_postgres::Client;

use crate::model::alter::{self, AlterSpec};
use crate::model::catalog::{self, Table};
use crate::model::names::Names;
use crate::model::projection::{ColumnMap, KeyColumn, Projection};
use crate::plan::{Plan, Rewrite};
use crate::sql::{ident, qualified};

/// Oldest supported server (`server_version_num`).
pub const MIN_SERVER_VERSION: i32 = 140000;

/// Preflight refused the migration: one line per reason, each with its fix.
#[derive(Debug, thiserror::Error)]
#[error("preflight refused the migration:\n  - {}", .0.join("\n  - "))]
pub struct Refused(pub Vec<String>);

/// Runs every check against the server behind `client` for `table` (as SQL writes it) and
/// the `--alter` clauses. Returns the plan, or [`Refused`] (inside the `anyhow::Error`)
/// listing every reason; other errors are connection or query failures.
pub async fn run(client: &mut Client, table: &str, alters: &[String]) -> Result<Plan> {
    let mut refusals = Vec::new();
    let mut warnings = Vec::new();

    let settings = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('wal_level'),
                    current_setting('max_replication_slots')::int,
                    (SELECT count(*) FROM pg_replication_slots)::int,
                    current_setting('max_wal_senders')::int,
                    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')::int,
                    current_setting('server_encoding'),
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                    (SELECT rolreplication FROM pg_roles WHERE rolname = current_user),
                    current_user::text",
            &[],
        )
        .await
        .context("reading server settings")?;
    let version: i32 = settings.get(0);
    let wal_level: String = settings.get(1);
    let (max_slots, slots): (i32, i32) = (settings.get(2), settings.get(3));
    let (max_senders, senders): (i32, i32) = (settings.get(4), settings.get(5));
    let encoding: String = settings.get(6);
    let superuser: bool = settings.get(7);
    let replication: bool = settings.get(8);
    let user: String = settings.get(9);

    if version < MIN_SERVER_VERSION {
        return Err(Refused(vec![format!(
            "the server is PostgreSQL {}.{}: doppel needs PostgreSQL 14 or newer",
            version / 10000,
            version % 10000
        )])
        .into());
    }
    if wal_level != "logical" {
        refusals.push(format!(
            "wal_level is '{wal_level}': doppel streams changes through logical decoding; set wal_level = logical (ALTER SYSTEM SET wal_level = logical, or in postgresql.conf) and restart the server"
        ));
    }
    if slots >= max_slots {
        refusals.push(format!(
            "all {max_slots} replication slots are in use (max_replication_slots): raise max_replication_slots and restart, or drop an unused slot (SELECT pg_drop_replication_slot(..))"
        ));
    }
    if senders >= max_senders {
        refusals.push(format!(
            "all {max_senders} WAL senders are in use (max_wal_senders): raise max_wal_senders and restart"
        ));
    }
    if encoding != "UTF8" && encoding != "SQL_ASCII" {
        refusals.push(format!(
            "the database encoding is {encoding}: this doppel version streams values as UTF-8 and supports UTF8 (or SQL_ASCII) databases only"
        ));
    }
    if !superuser && !replication {
        refusals.push(format!(
            "role {user} has neither REPLICATION nor SUPERUSER: grant it with ALTER ROLE {} REPLICATION (doppel opens a logical replication connection)",
            ident(&user)
        ));
    }

    let oid = match catalog::resolve(&*client, table).await {
        Ok(oid) => oid,
        Err(e) => {
            refusals.push(format!("{e:#}"));
            return Err(Refused(refusals).into());
        }
    };
    let original = catalog::inspect(&*client, oid).await?;
    let names = Names::new(&original.schema, &original.name, oid);
    check_table(client, &original, &names, &mut refusals).await?;

    let alter = match alter::analyze(alters) {
        Ok(spec) => spec,
        Err(e) => {
            refusals.push(e.to_string());
            return Err(Refused(refusals).into());
        }
    };
    if !refusals.is_empty() {
        return Err(Refused(refusals).into());
    }

    let clone = match build_clone(client, &original, &alter).await? {
        Ok(clone) => clone,
        Err(refusal) => {
            refusals.push(refusal);
            return Err(Refused(refusals).into());
        }
    };
    for index in clone
        .target
        .indexes
        .iter()
        .filter(|i| i.constraint.is_none())
    {
        if rename_index_definition(&index.definition, &clone.clone_text, "x", "y").is_none() {
            refusals.push(format!(
                "cannot rebuild index {:?} on the new table: unexpected definition {:?}",
                index.name, index.definition
            ));
            return Err(Refused(refusals).into());
        }
    }
    let projection = match project(&original, &clone.target, &alter) {
        Ok(p) => p,
        Err(refusal) => {
            refusals.push(refusal);
            return Err(Refused(refusals).into());
        }
    };
    let mut projection = projection;
    let dependents = crate::dependents::read(&*client, original.oid, &names.publication).await?;
    let renamed: Vec<(String, String)> = projection
        .columns
        .iter()
        .filter_map(|m| m.source.as_ref().map(|s| (s, &m.target)))
        .filter(|(s, t)| s.name != t.name)
        .map(|(s, t)| (s.name.clone(), t.name.clone()))
        .collect();
    let dropped: Vec<String> = original
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
    for blocker in dependents.blockers(&renamed, &dropped) {
        refusals.push(format!(
            "{blocker}; drop and recreate it around the migration"
        ));
    }
    validate_projection(client, &original, &projection, &mut refusals).await?;
    // Verification hashes rows with hash_record_extended; types without an extended hash
    // function are hashed through their text form.
    let written: Vec<(String, String)> = projection
        .written()
        .iter()
        .map(|c| (c.target.name.clone(), c.target.type_sql.clone()))
        .collect();
    for (name, type_sql) in written {
        let probe = format!("SELECT hash_record_extended(ROW(NULL::{type_sql}), 0)");
        if client.query_one(&probe, &[]).await.is_err() {
            projection.text_hashed.push(name);
        }
    }
    check_new_names(client, &original, &clone.target, &mut refusals).await?;
    if !refusals.is_empty() {
        return Err(Refused(refusals).into());
    }

    for row in client
        .query(
            "SELECT pid, extract(epoch FROM now() - xact_start)::bigint, coalesce(usename::text, ''),
                    left(regexp_replace(coalesce(query, ''), '\\s+', ' ', 'g'), 80)
             FROM pg_stat_activity
             WHERE xact_start < now() - interval '60 seconds' AND pid <> pg_backend_pid()
               AND backend_type = 'client backend'
             ORDER BY xact_start",
            &[],
        )
        .await?
    {
        let (pid, secs, who, query): (i32, i64, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        warnings.push(format!(
            "transaction of pid {pid} ({who}) has been open for {secs} s ({query}): it holds back vacuum and can block the cutover lock"
        ));
    }
    if clone.rewrite == Rewrite::MetadataOnly {
        warnings.push(
            "this ALTER is metadata-only (no rewrite, no scan): running it directly takes its ACCESS EXCLUSIVE lock for milliseconds and is cheaper than doppel".into(),
        );
    } else if clone.rewrite == Rewrite::ScanUnderLock {
        warnings.push(
            "this ALTER does not rewrite the table but scans it or builds an index under its lock; doppel avoids that lock, but NOT VALID + VALIDATE CONSTRAINT or CREATE INDEX CONCURRENTLY may be cheaper".into(),
        );
    }

    Ok(Plan {
        server_version: version,
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
    })
}

async fn check_table(
    client: &Client,
    t: &Table,
    names: &Names,
    refusals: &mut Vec<String>,
) -> Result<()> {
    let what = t.qualified();
    match t.relkind {
        'r' => {}
        'p' => refusals.push(format!(
            "{what} is a partitioned table: doppel does not migrate partitioned tables yet; migrate its partitions' parent with native partition tools"
        )),
        'f' => refusals.push(format!("{what} is a foreign table: there is nothing local to rewrite")),
        'v' | 'm' => refusals.push(format!("{what} is a view, not a table")),
        other => refusals.push(format!("{what} is not a plain table (relkind '{other}')")),
    }
    if t.is_partition {
        refusals.push(format!(
            "{what} is a partition of a partitioned table: doppel cannot swap a partition yet"
        ));
    }
    if t.inherits {
        refusals.push(format!(
            "{what} has inheritance parents or children: doppel cannot move an inheritance tree yet"
        ));
    }
    match t.persistence {
        'u' => refusals.push(format!(
            "{what} is UNLOGGED: its changes are not in the WAL, so logical decoding cannot stream them; make it logged first (ALTER TABLE .. SET LOGGED) or run the ALTER directly"
        )),
        't' => refusals.push(format!("{what} is a temporary table, private to one session")),
        _ => {}
    }
    let owner_ok: bool = client
        .query_one(
            "SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class WHERE oid = $1",
            &[&t.oid],
        )
        .await?
        .get(0);
    if !owner_ok {
        refusals.push(format!(
            "the current user is not the owner of {what} (owner: {}) nor a member of its role: run doppel as the owner or grant its role (GRANT {} TO <doppel user>)",
            t.owner,
            ident(&t.owner)
        ));
    }
    match t.primary_key() {
        None => refusals.push(format!(
            "{what} has no primary key: doppel copies in primary-key chunks and matches streamed changes by key; add one first (e.g. CREATE UNIQUE INDEX CONCURRENTLY .., then ALTER TABLE .. ADD PRIMARY KEY USING INDEX ..)"
        )),
        Some(pk) => match t.replica_identity {
            'n' => refusals.push(format!(
                "{what} has REPLICA IDENTITY NOTHING: once published, its UPDATEs and DELETEs would fail; set ALTER TABLE {what} REPLICA IDENTITY DEFAULT"
            )),
            'i' if !pk.is_replica_identity => refusals.push(format!(
                "{what} uses REPLICA IDENTITY USING INDEX on an index other than the primary key: streamed changes would carry keys that are not the chunk key; set REPLICA IDENTITY DEFAULT"
            )),
            _ => {}
        },
    }
    let pubs = client
        .query(
            "SELECT pubname::text FROM pg_publication WHERE puballtables ORDER BY 1",
            &[],
        )
        .await?;
    for p in pubs {
        let name: String = p.get(0);
        refusals.push(format!(
            "publication {name} is FOR ALL TABLES: it would ship doppel's shadow table to its subscribers; doppel cannot run while it exists"
        ));
    }
    let covering = client
        .query(
            "SELECT p.pubname::text FROM pg_publication p
             JOIN pg_catalog.pg_publication_namespace pn ON pn.pnpubid = p.oid
             WHERE pn.pnnspid = (SELECT relnamespace FROM pg_class WHERE oid = $1)",
            &[&t.oid],
        )
        .await;
    if let Ok(rows) = covering {
        for r in rows {
            let name: String = r.get(0);
            refusals.push(format!(
                "publication {name} is FOR TABLES IN SCHEMA {}: it would ship doppel's shadow table to its subscribers",
                ident(&t.schema)
            ));
        }
    }
    let leftovers = client
        .query(
            "SELECT 'table ' || $1::text WHERE to_regclass($2) IS NOT NULL
             UNION ALL SELECT 'publication ' || pubname FROM pg_publication WHERE pubname = $3
             UNION ALL SELECT 'replication slot ' || slot_name FROM pg_replication_slots WHERE slot_name = $4",
            &[
                &names.shadow,
                &qualified(&names.schema, &names.shadow),
                &names.publication,
                &names.slot,
            ],
        )
        .await?;
    for r in leftovers {
        let what_left: String = r.get(0);
        refusals.push(format!(
            "{what_left} is left over from an earlier doppel run on this table (or another run is in progress): if no run is active, remove it with `doppel cleanup --table {}`",
            t.qualified()
        ));
    }
    Ok(())
}

struct Clone {
    target: Table,
    clone_text: String,
    identity_options: Vec<(String, String)>,
    rewrite: Rewrite,
}

/// Applies the ALTER to an empty clone in `pg_temp` (same name, same index and constraint
/// names) inside a transaction that is rolled back. `Ok(Err(reason))` when the server rejects
/// the ALTER.
async fn build_clone(
    client: &mut Client,
    t: &Table,
    alter: &AlterSpec,
) -> Result<std::result::Result<Clone, String>> {
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL lock_timeout = '5s'").await?;
    let clone = format!("pg_temp.{}", ident(&t.name));
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE {clone} (LIKE {} INCLUDING ALL EXCLUDING INDEXES)",
        t.qualified()
    ))
    .await
    .context("creating the temporary clone")?;
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
    if !t.reloptions.is_empty() {
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
    let clone_oid: u32 = tx
        .query_one("SELECT $1::text::regclass::oid", &[&clone])
        .await?
        .get(0);
    let before = catalog::inspect(&tx, clone_oid).await?;
    for statement in &alter.statements {
        let sql = format!("ALTER TABLE {clone} {}", statement.text);
        if let Err(e) = tx.batch_execute(&sql).await {
            let msg = e
                .as_db_error()
                .map(|d| {
                    let mut m = d.message().to_string();
                    if let Some(h) = d.hint() {
                        m.push_str(&format!(" (hint: {h})"));
                    }
                    m
                })
                .unwrap_or_else(|| e.to_string());
            tx.rollback().await.ok();
            return Ok(Err(format!(
                "the server rejected --alter {:?}: {msg}; nothing was created",
                statement.text
            )));
        }
    }
    let after_oid: Option<u32> = tx
        .query_one("SELECT to_regclass($1)::oid", &[&clone])
        .await?
        .get(0);
    if after_oid != Some(clone_oid) {
        tx.rollback().await.ok();
        return Ok(Err(
            "the ALTER renames the table or moves it to another schema: that is metadata-only, run it directly".into(),
        ));
    }
    let target = catalog::inspect(&tx, clone_oid).await?;
    if target.persistence == 'u' {
        tx.rollback().await.ok();
        return Ok(Err(
            "the ALTER makes the table UNLOGGED: doppel needs its changes in the WAL; run it directly".into(),
        ));
    }
    let mut identity_options = Vec::new();
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
        identity_options.push((seq.column.clone(), row.get(0)));
    }
    tx.rollback().await?;

    let rewrite = classify(&before, &target);
    Ok(Ok(Clone {
        target,
        clone_text,
        identity_options,
        rewrite,
    }))
}

/// Rewrites an index definition from `pg_get_indexdef` to target another table:
/// `CREATE [UNIQUE] INDEX name ON <from> USING ..` → `.. ON <to> USING ..`.
pub fn retarget_index(definition: &str, from: &str, to: &str) -> Option<String> {
    let needle = format!(" ON {from} USING ");
    let at = definition.find(&needle)?;
    Some(format!(
        "{} ON {to} USING {}",
        &definition[..at],
        &definition[at + needle.len()..]
    ))
}

/// Replaces the index name in a `pg_get_indexdef` definition whose table part is `on`.
pub fn rename_index_definition(
    definition: &str,
    on: &str,
    new_name: &str,
    new_table: &str,
) -> Option<String> {
    let needle = format!(" ON {on} USING ");
    let at = definition.find(&needle)?;
    let head = if definition.starts_with("CREATE UNIQUE INDEX ") {
        "CREATE UNIQUE INDEX"
    } else {
        "CREATE INDEX"
    };
    Some(format!(
        "{head} {} ON {new_table} USING {}",
        ident(new_name),
        &definition[at + needle.len()..]
    ))
}

fn classify(before: &Table, after: &Table) -> Rewrite {
    let index_rebuilt = after.indexes.iter().any(|a| {
        before
            .indexes
            .iter()
            .find(|b| b.oid == a.oid)
            .is_none_or(|b| b.relfilenode != a.relfilenode)
    });
    if after.relfilenode != before.relfilenode {
        return Rewrite::Rewrite;
    }
    let new_constraint = after.constraints.iter().any(|a| {
        a.validated
            && !before
                .constraints
                .iter()
                .any(|b| b.name == a.name && b.definition == a.definition)
    });
    let new_not_null = after.columns.iter().any(|a| {
        a.not_null
            && before
                .columns
                .iter()
                .any(|b| b.attnum == a.attnum && !b.not_null)
    });
    if index_rebuilt || new_constraint || new_not_null {
        Rewrite::ScanUnderLock
    } else {
        Rewrite::MetadataOnly
    }
}

/// Maps each clone column to the original column it comes from (the clone was created with
/// `LIKE`, so clone attnum `i` is the original's `i`-th live column; renames and type changes
/// keep the attnum) and checks the key. `Err(reason)` when doppel cannot carry the change.
fn project(
    t: &Table,
    target: &Table,
    alter: &AlterSpec,
) -> std::result::Result<Projection, String> {
    for using in &alter.usings {
        if t.column(&using.column).is_none() {
            return Err(format!(
                "USING clause for column {:?}, which the table does not have",
                using.column
            ));
        }
    }
    let mut columns = Vec::new();
    for col in &target.columns {
        let source = usize::try_from(col.attnum)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| t.columns.get(i))
            .cloned();
        let expression = match &source {
            Some(src) => {
                if src.generated_sql.is_some() && col.generated_sql.is_none() {
                    return Err(format!(
                        "column {:?} stops being a generated column: logical decoding does not send generated values, so doppel cannot carry that yet",
                        src.name
                    ));
                }
                match alter.using_for(&src.name) {
                    Some(expr) => format!("({expr})"),
                    None => format!("src.{}", ident(&src.name)),
                }
            }
            None => String::new(),
        };
        columns.push(ColumnMap {
            target: col.clone(),
            source,
            expression,
        });
    }
    let relation: Vec<_> = t
        .columns
        .iter()
        .filter(|c| c.generated_sql.is_none())
        .cloned()
        .collect();
    let mut key = Vec::new();
    for name in &t.pk_columns {
        let map = columns
            .iter()
            .find(|c| c.source.as_ref().is_some_and(|s| &s.name == name))
            .ok_or_else(|| format!("the ALTER drops primary-key column {name:?}: changing the primary key is not supported yet"))?;
        let source = map.source.clone().unwrap_or_else(|| map.target.clone());
        if alter.using_for(name).is_some() {
            return Err(format!(
                "the ALTER changes primary-key column {name:?} with a USING expression: doppel cannot match streamed keys through it yet"
            ));
        }
        let widening = matches!(
            (source.type_oid, map.target.type_oid),
            (21, 23) | (21, 20) | (23, 20)
        );
        if source.type_oid != map.target.type_oid && !widening {
            return Err(format!(
                "the ALTER changes primary-key column {name:?} from {} to {}: only widening integer keys (smallint → integer → bigint) is supported yet",
                source.type_sql, map.target.type_sql
            ));
        }
        let relation_position = relation
            .iter()
            .position(|c| &c.name == name)
            .ok_or_else(|| format!("primary-key column {name:?} is a generated column"))?;
        key.push(KeyColumn {
            source,
            target: map.target.clone(),
            relation_position,
        });
    }
    let target_pk: Vec<&String> = target.pk_columns.iter().collect();
    let mapped_pk: Vec<&String> = key.iter().map(|k| &k.target.name).collect();
    if target_pk != mapped_pk {
        return Err(format!(
            "the ALTER changes the primary key (from {:?} to {:?}): not supported yet",
            t.pk_columns, target.pk_columns
        ));
    }
    let has_identity = target.columns.iter().any(|c| c.identity.is_some());
    Ok(Projection {
        columns,
        key,
        relation,
        has_identity,
        text_hashed: Vec::new(),
    })
}

/// Prepares (without running) the copy's projection over the original and the applier's over
/// decoded values, so a USING expression the copy or apply could not evaluate is refused now.
async fn validate_projection(
    client: &Client,
    t: &Table,
    p: &Projection,
    refusals: &mut Vec<String>,
) -> Result<()> {
    let exprs: Vec<String> = p
        .written()
        .iter()
        .map(|c| format!("CAST({} AS {})", c.expression, c.target.type_sql))
        .collect();
    if exprs.is_empty() {
        refusals.push("the ALTER leaves no column to copy".into());
        return Ok(());
    }
    let sql = format!(
        "SELECT {} FROM ONLY {} AS src LIMIT 0",
        exprs.join(", "),
        t.qualified()
    );
    if let Err(e) = client.prepare(&sql).await {
        refusals.push(format!(
            "a USING expression cannot be evaluated over the original row ({}): reference columns by their plain names",
            e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
        ));
    }
    Ok(())
}

/// Index and constraint names the ALTER adds must be free in the schema (they are given to
/// the new table at cutover).
async fn check_new_names(
    client: &Client,
    t: &Table,
    target: &Table,
    refusals: &mut Vec<String>,
) -> Result<()> {
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
            refusals.push(format!(
                "the ALTER creates index {:?}, but a relation with that name already exists in schema {}: name the constraint explicitly (ADD CONSTRAINT <name> ..)",
                index.name,
                ident(&t.schema)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retargets_index_definitions() {
        let def = "CREATE INDEX orders_created_idx ON public.orders USING btree (created_at) WHERE (amount > (0)::numeric)";
        assert_eq!(
            retarget_index(def, "public.orders", "pg_temp.orders").unwrap(),
            "CREATE INDEX orders_created_idx ON pg_temp.orders USING btree (created_at) WHERE (amount > (0)::numeric)"
        );
        assert!(retarget_index(def, "public.other", "x").is_none());
        assert_eq!(
            rename_index_definition(
                "CREATE UNIQUE INDEX \"Odd Name\" ON pg_temp.orders USING btree (lower(email))",
                "pg_temp.orders",
                "_doppel_1_new_i0",
                "\"public\".\"s\""
            )
            .unwrap(),
            "CREATE UNIQUE INDEX \"_doppel_1_new_i0\" ON \"public\".\"s\" USING btree (lower(email))"
        );
    }
}
