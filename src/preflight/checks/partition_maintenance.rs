//! Partition maintenance jobs (issue 15, item 3): warned about, not refused. A partition
//! created, attached or detached during the run on a partitioned table whose foreign key
//! moves through its leaf partitions (before PostgreSQL 18, `dependents/foreign_key/
//! partitioned.rs`) stops the run at the cutover (exit 8); preflight says so when it sees a
//! job that does that: a table registered in pg_partman's configuration (`part_config`,
//! found by name and its `parent_table` column, in whatever schema the extension lives),
//! or a pg_cron job (`cron.job`) whose command names one of those tables. The same for a
//! partitioned table being migrated itself, whose tree the cutover re-checks (§1.14).

use anyhow::Result;
use tokio_postgres::Client;

use crate::dependents::Dependents;
use crate::model::partitions::PartitionTree;

/// pg_partman's configuration tables the current user can read, as `schema.part_config`
/// (quoted where needed).
const PARTMAN_CONFIGS: &str = "SELECT format('%I.%I', n.nspname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relname = 'part_config' AND c.relkind IN ('r', 'p')
      AND EXISTS (SELECT 1 FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attname = 'parent_table' AND NOT a.attisdropped)
      AND has_table_privilege(c.oid, 'SELECT')";

/// One warning per partitioned table whose key moves through its leaves and that a
/// pg_partman configuration or a pg_cron job maintains, naming what maintains it; and one
/// when the migrated table is itself partitioned (`migrated`) and maintained so.
///
/// Errors: a catalog query fails.
pub async fn check(
    client: &Client,
    deps: &Dependents,
    migrated: Option<&PartitionTree>,
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    if let Some(tree) = migrated {
        let mut by = partman(client, tree.root_oid).await?;
        by.extend(cron_jobs(client, tree.root_oid).await?);
        if !by.is_empty() {
            warnings.push(format!(
                "{}.{} is maintained by {}: a partition created, attached or detached during the run stops it at the cutover (exit 8, the original untouched); pause the maintenance for the run",
                crate::sql::ident(&deps.schema),
                crate::sql::ident(&deps.table),
                by.join(", ")
            ));
        }
    }
    let trees: Vec<(u32, String)> = deps
        .foreign_keys
        .iter()
        .filter(|fk| fk.through_leaves())
        .map(|fk| (fk.child_oid, fk.child.clone()))
        .collect();
    for (oid, tree) in &trees {
        let mut by = partman(client, *oid).await?;
        by.extend(cron_jobs(client, *oid).await?);
        if !by.is_empty() {
            warnings.push(format!(
                "{tree} has a foreign key to {}.{} and is maintained by {}: a partition created, attached or detached during the run stops it at the cutover (exit 8); pause the maintenance for the run",
                crate::sql::ident(&deps.schema),
                crate::sql::ident(&deps.table),
                by.join(", ")
            ));
        }
    }
    Ok(warnings)
}

/// `pg_partman (<config table>)` for each readable `part_config` that lists the table `oid`.
async fn partman(client: &Client, oid: u32) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for row in client.query(PARTMAN_CONFIGS, &[]).await? {
        let config: String = row.get(0);
        let listed: bool = client
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {config} WHERE to_regclass(parent_table) = $1::oid::regclass)"
                ),
                &[&oid],
            )
            .await?
            .get(0);
        if listed {
            found.push(format!("pg_partman ({config})"));
        }
    }
    Ok(found)
}

/// `pg_cron job <id> (<schedule>)` for each readable `cron.job` whose command names the
/// table `oid` (its name as a whole word, case-insensitively).
async fn cron_jobs(client: &Client, oid: u32) -> Result<Vec<String>> {
    let readable: bool = client
        .query_one(
            "SELECT to_regclass('cron.job') IS NOT NULL
                    AND has_table_privilege('cron.job', 'SELECT')",
            &[],
        )
        .await?
        .get(0);
    if !readable {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT j.jobid::bigint, j.schedule::text FROM cron.job j, pg_class c
             WHERE c.oid = $1
               AND j.command ~* ('(^|[^[:alnum:]_$])'
                                 || regexp_replace(c.relname, '([^[:alnum:]_])', '\\\\\\1', 'g')
                                 || '($|[^[:alnum:]_$])')
             ORDER BY j.jobid",
            &[&oid],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let (id, schedule): (i64, String) = (r.get(0), r.get(1));
            format!("pg_cron job {id} ({schedule})")
        })
        .collect())
}
