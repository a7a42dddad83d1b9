//! Shadow table DDL: the new table, built from the clone's catalog (the original with the
//! ALTER applied), in the order that makes the backfill cheapest (docs/design.md §1.2 and §3:
//! copying into a table without indexes, then building them, is about 2.7x faster on the
//! benchmark table than copying into an indexed one, BENCHMARKS.md):
//!
//! 1. [`create_sql`] — columns, defaults, identity, generated columns, NOT NULL and validated
//!    CHECK constraints, storage, owner, grants, comments; autovacuum off. No index.
//! 2. [`primary_key_sql`] — after the backfill, before the backlog is applied (the applier
//!    upserts by key).
//! 3. [`plain_index_sql`] — non-unique secondary indexes, right after the primary key (while
//!    logical decoding catches up with the backfill's WAL); then [`constraining_sql`] — unique
//!    and exclusion indexes and NOT VALID checks, after the backlog is applied (so they never
//!    see replay's transient states).
//! 4. [`finish_sql`] — autovacuum settings restored, `VACUUM (ANALYZE)`.
//!
//! Indexes get temporary names (`_doppel_<oid>_new_i<n>`) until the cutover gives them the
//! final ones, which are still taken by the original's indexes until then.
//!
//! [`partitions`]: a partitioned table's members and their own indexes on the shadow, and
//! their renames at the cutover (docs/design.md §1.14): the shadow of a partitioned table is
//! partitioned by the same key; its indexes, built on it, are built on every partition.

pub mod pairs;
pub mod partitions;

use crate::model::catalog::grant_sql;
use crate::plan::Plan;
use crate::preflight::rename_index_definition;
use crate::sql::comment_sql;
use crate::sql::ident;

/// One index of the shadow: its final name and its temporary name before cutover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowIndex {
    /// Name after cutover (as the ALTER leaves it on the clone; the original's name when kept).
    pub final_name: String,
    /// Name until cutover.
    pub temp_name: String,
    /// DDL creating it on the shadow under its temporary name.
    pub create_sql: String,
    /// True for the primary key.
    pub is_primary: bool,
    /// True for unique and exclusion indexes: they must only ever see states the original
    /// passed through, so they are built after the backlog is applied.
    pub constrains: bool,
}

/// The shadow's indexes (primary key first), with their DDL.
pub fn indexes(plan: &Plan) -> Vec<ShadowIndex> {
    let shadow = plan.names.shadow_qualified();
    let mut out: Vec<ShadowIndex> = plan
        .target
        .indexes
        .iter()
        .enumerate()
        .map(|(n, index)| {
            let temp_name = plan.names.shadow_index(plan.original.oid, n);
            let create_sql = match &index.constraint {
                Some((_, def)) => format!(
                    "ALTER TABLE {shadow} ADD CONSTRAINT {} {def}",
                    ident(&temp_name)
                ),
                None => rename_index_definition(
                    &index.definition,
                    &plan.clone_text,
                    &temp_name,
                    &shadow,
                )
                .unwrap_or_else(|| {
                    format!(
                        "-- cannot rebuild index {:?}: {}",
                        index.name, index.definition
                    )
                }),
            };
            ShadowIndex {
                final_name: index.name.clone(),
                temp_name,
                create_sql,
                is_primary: index.is_primary,
                constrains: constrains(&index.definition, index.constraint.as_ref()),
            }
        })
        .collect();
    out.sort_by_key(|i| !i.is_primary);
    out
}

/// True for a unique or exclusion index (its definition, and the constraint it backs):
/// built after the backlog is applied, so it only ever sees states the original passed
/// through.
fn constrains(definition: &str, constraint: Option<&(char, String)>) -> bool {
    definition.starts_with("CREATE UNIQUE") || matches!(constraint, Some(('x', _)))
}

/// Statements creating the empty shadow table (no indexes), with autovacuum off.
pub fn create_sql(plan: &Plan) -> Vec<String> {
    let shadow = plan.names.shadow_qualified();
    let target = &plan.target;
    let mut defs = Vec::new();
    for c in &target.columns {
        let mut def = format!("{} {}", ident(&c.name), c.type_sql);
        if !c.collate_sql.is_empty() {
            def.push(' ');
            def.push_str(&c.collate_sql);
        }
        if let Some(expr) = &c.generated_sql {
            let kind = if c.generated_kind == Some('v') {
                "VIRTUAL"
            } else {
                "STORED"
            };
            def.push_str(&format!(" GENERATED ALWAYS AS ({expr}) {kind}"));
        } else if let Some(kind) = c.identity {
            let options = plan
                .identity_options
                .iter()
                .find(|(col, _)| col == &c.name)
                .map(|(_, o)| format!(" ({o})"))
                .unwrap_or_default();
            let when = if kind == 'a' { "ALWAYS" } else { "BY DEFAULT" };
            def.push_str(&format!(" GENERATED {when} AS IDENTITY{options}"));
        } else if let Some(default) = &c.default_sql {
            def.push_str(&format!(" DEFAULT {default}"));
        }
        // PostgreSQL 18 keeps NOT NULL as named constraints: keep the names, and add a
        // NOT VALID one only after the backfill (existing rows may violate it).
        let named = target
            .constraints
            .iter()
            .find(|k| k.kind == 'n' && k.columns.len() == 1 && k.columns[0] == c.name);
        match named {
            Some(k) if !k.validated => {}
            Some(k) => def.push_str(&format!(" CONSTRAINT {} NOT NULL", ident(&k.name))),
            None if c.not_null => def.push_str(" NOT NULL"),
            None => {}
        }
        defs.push(def);
    }
    for con in target
        .constraints
        .iter()
        .filter(|c| c.kind == 'c' && c.validated)
    {
        defs.push(format!(
            "CONSTRAINT {} {}",
            ident(&con.name),
            con.definition
        ));
    }
    let tablespace = target
        .tablespace
        .as_ref()
        .or(plan.original.tablespace.as_ref())
        .map(|ts| format!(" TABLESPACE {}", ident(ts)))
        .unwrap_or_default();
    let partition_by = plan
        .partitions
        .as_ref()
        .map(|t| format!(" PARTITION BY {}", t.key))
        .unwrap_or_default();
    let mut out = vec![format!(
        "CREATE TABLE {shadow} (\n    {}\n){partition_by}{tablespace}",
        defs.join(",\n    ")
    )];
    out.extend(storage_sql(plan, &shadow));
    out.extend(column_sql(plan, &shadow));
    if target.replica_identity == 'f' {
        out.push(format!("ALTER TABLE {shadow} REPLICA IDENTITY FULL"));
    }
    out.push(format!(
        "ALTER TABLE {shadow} OWNER TO {}",
        ident(&plan.original.owner)
    ));
    let renamed = |column: &str| {
        plan.projection
            .columns
            .iter()
            .find(|m| m.source.as_ref().is_some_and(|s| s.name == column))
            .map(|m| m.target.name.clone())
    };
    out.extend(grant_sql(&plan.original, &shadow, renamed));
    if plan.original.comment.is_some() {
        out.push(comment_sql(
            &format!("TABLE {shadow}"),
            plan.original.comment.as_deref(),
        ));
    }
    if let Some(tree) = &plan.partitions {
        out.extend(partitions::create_sql(tree, &plan.names, &shadow));
        out.extend(partitions::leaves(tree, &plan.names).map(|(leaf, _)| {
            format!(
                "ALTER TABLE {leaf} SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)"
            )
        }));
    }
    out
}

/// Storage parameters of the shadow with autovacuum off until [`finish_sql`]: on the table
/// itself, or, when it is partitioned (which takes no storage parameters), on each leaf.
fn storage_sql(plan: &Plan, shadow: &str) -> Vec<String> {
    let target = &plan.target;
    if plan.partitions.is_some() {
        return Vec::new();
    }
    let mut options: Vec<String> = target
        .reloptions
        .iter()
        .filter(|o| {
            !o.starts_with("autovacuum_enabled=") && !o.starts_with("toast.autovacuum_enabled=")
        })
        .cloned()
        .collect();
    options.push("autovacuum_enabled = false".into());
    options.push("toast.autovacuum_enabled = false".into());
    vec![format!("ALTER TABLE {shadow} SET ({})", options.join(", "))]
}

/// Per-column storage, compression, statistics targets and comments of the shadow.
fn column_sql(plan: &Plan, shadow: &str) -> Vec<String> {
    let mut out = Vec::new();
    for c in &plan.target.columns {
        if let Some(storage) = c.storage {
            let kind = match storage {
                'p' => "PLAIN",
                'e' => "EXTERNAL",
                'm' => "MAIN",
                _ => "EXTENDED",
            };
            out.push(format!(
                "ALTER TABLE {shadow} ALTER COLUMN {} SET STORAGE {kind}",
                ident(&c.name)
            ));
        }
        if let Some(method) = c.compression {
            let method = if method == 'l' { "lz4" } else { "pglz" };
            out.push(format!(
                "ALTER TABLE {shadow} ALTER COLUMN {} SET COMPRESSION {method}",
                ident(&c.name)
            ));
        }
        if let Some(target) = c.stattarget {
            out.push(format!(
                "ALTER TABLE {shadow} ALTER COLUMN {} SET STATISTICS {target}",
                ident(&c.name)
            ));
        }
        if c.comment.is_some() {
            out.push(comment_sql(
                &format!("COLUMN {shadow}.{}", ident(&c.name)),
                c.comment.as_deref(),
            ));
        }
    }
    out
}

/// The primary key, built after the backfill.
pub fn primary_key_sql(plan: &Plan) -> Vec<String> {
    indexes(plan)
        .into_iter()
        .filter(|i| i.is_primary)
        .map(|i| i.create_sql)
        .collect()
}

/// Non-unique secondary indexes: built right after the primary key, before the backlog is
/// applied (their order of maintenance cannot matter), while logical decoding catches up with
/// the backfill's WAL.
pub fn plain_index_sql(plan: &Plan) -> Vec<String> {
    let mut out: Vec<String> = indexes(plan)
        .into_iter()
        .filter(|i| !i.is_primary && !i.constrains)
        .map(|i| i.create_sql)
        .collect();
    if let Some(tree) = &plan.partitions {
        out.extend(partitions::index_sql(tree, &plan.names, false));
    }
    out
}

/// True when the new schema has unique or exclusion indexes besides the primary key.
pub fn has_constraining_indexes(plan: &Plan) -> bool {
    indexes(plan).iter().any(|i| !i.is_primary && i.constrains)
        || plan
            .partitions
            .as_ref()
            .is_some_and(|t| !partitions::index_sql(t, &plan.names, true).is_empty())
}

/// Unique and exclusion indexes (and their constraints) and NOT VALID checks: built after the
/// backlog is applied, so they only ever see states the original passed through.
pub fn constraining_sql(plan: &Plan) -> Vec<String> {
    let mut out: Vec<String> = indexes(plan)
        .into_iter()
        .filter(|i| !i.is_primary && i.constrains)
        .map(|i| i.create_sql)
        .collect();
    if let Some(tree) = &plan.partitions {
        out.extend(partitions::index_sql(tree, &plan.names, true));
    }
    out.extend(constraint_statements(plan).into_iter().map(|(sql, _)| sql));
    out
}

/// `statements` (from [`primary_key_sql`], [`plain_index_sql`] or [`constraining_sql`])
/// without those whose index or constraint the shadow already has: a resumed run builds only
/// what the interrupted one had not committed (each build is one transaction, so an
/// interrupted build left nothing).
///
/// Errors: the catalog query failed.
pub async fn unbuilt(
    client: &impl tokio_postgres::GenericClient,
    plan: &Plan,
    statements: Vec<String>,
) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query(
            "WITH t AS (SELECT to_regclass($1)::oid AS relid
                       UNION SELECT relid FROM pg_partition_tree(to_regclass($1)))
             SELECT relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid IN (SELECT relid FROM t)
             UNION SELECT conname::text FROM pg_constraint WHERE conrelid IN (SELECT relid FROM t)",
            &[&plan.names.shadow_qualified()],
        )
        .await?;
    let built: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let mut names: std::collections::HashMap<String, String> = indexes(plan)
        .into_iter()
        .map(|i| (i.create_sql, i.temp_name))
        .collect();
    names.extend(constraint_statements(plan));
    if let Some(tree) = &plan.partitions {
        for constraining in [false, true] {
            names.extend(partitions::index_statements(
                tree,
                &plan.names,
                constraining,
            ));
        }
    }
    Ok(statements
        .into_iter()
        .filter(|sql| names.get(sql).is_none_or(|name| !built.contains(name)))
        .collect())
}

/// NOT VALID checks of the target, added to the shadow after the backlog: (statement,
/// constraint name).
fn constraint_statements(plan: &Plan) -> Vec<(String, String)> {
    let shadow = plan.names.shadow_qualified();
    plan.target
        .constraints
        .iter()
        .filter(|c| (c.kind == 'c' || c.kind == 'n') && !c.validated)
        .map(|con| {
            (
                format!(
                    "ALTER TABLE {shadow} ADD CONSTRAINT {} {}",
                    ident(&con.name),
                    con.definition
                ),
                con.name.clone(),
            )
        })
        .collect()
}

/// Restores the target's autovacuum settings (statements run in a transaction; on each leaf
/// of a partitioned shadow, with the leaf's own) and the `VACUUM (ANALYZE)` to run after
/// (outside any transaction; on a partitioned table it processes every partition).
pub fn finish_sql(plan: &Plan) -> (Vec<String>, String) {
    let shadow = plan.names.shadow_qualified();
    let out = match &plan.partitions {
        Some(tree) => partitions::leaves(tree, &plan.names)
            .flat_map(|(leaf, m)| autovacuum_restored(&leaf, &m.reloptions))
            .collect(),
        None => autovacuum_restored(&shadow, &plan.target.reloptions),
    };
    (out, format!("VACUUM (ANALYZE) {shadow}"))
}

/// `table`'s autovacuum settings reset, then set again to those of `reloptions`.
fn autovacuum_restored(table: &str, reloptions: &[String]) -> Vec<String> {
    let mut out = vec![format!(
        "ALTER TABLE {table} RESET (autovacuum_enabled, toast.autovacuum_enabled)"
    )];
    let kept: Vec<String> = reloptions
        .iter()
        .filter(|o| {
            o.starts_with("autovacuum_enabled=") || o.starts_with("toast.autovacuum_enabled=")
        })
        .cloned()
        .collect();
    if !kept.is_empty() {
        out.push(format!("ALTER TABLE {table} SET ({})", kept.join(", ")));
    }
    out
}

/// `DROP TABLE IF EXISTS` for the shadow (failure cleanup).
pub fn drop_sql(plan_schema: &str, shadow: &str) -> String {
    format!(
        "DROP TABLE IF EXISTS {}.{}",
        ident(plan_schema),
        ident(shadow)
    )
}

/// `text` (a server message about the shadow) with doppel's temporary names replaced by the
/// names the user knows: each index's and constraint's temporary name by its final name, the
/// shadow table by the original table's name.
pub fn user_names(plan: &Plan, text: &str) -> String {
    let mut out = text.to_string();
    // Longest first, so `.._i1` does not clobber the front of `.._i10`.
    let mut renames: Vec<(String, String)> = indexes(plan)
        .into_iter()
        .map(|i| (i.temp_name, i.final_name))
        .collect();
    renames.push((plan.names.shadow.clone(), plan.names.table.clone()));
    renames.sort_by_key(|(temp, _)| std::cmp::Reverse(temp.len()));
    for (temp, user) in renames {
        out = out.replace(&temp, &user);
    }
    out
}
