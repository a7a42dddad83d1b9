//! `doppel cleanup`: removes what an interrupted run left behind.

use anyhow::{Context, Result, bail};

use crate::conninfo;
use crate::model::catalog;
use crate::model::names::Names;
use crate::phases::shadow;
use crate::run::ADVISORY_LOCK_CLASS;
use crate::sql::ident;

/// What `doppel cleanup` found and removed.
#[derive(Debug, Clone, Default)]
pub struct CleanupReport {
    /// Objects removed, described.
    pub removed: Vec<String>,
}

/// Removes what an interrupted run on `table` left behind: the shadow table, the publication
/// and an inactive slot named after the table's OID, and, given the run's `work_dir`, its
/// change spool files (`doppel-<oid>-<pid>.spool`) and control socket (`doppel-<oid>.sock`).
/// Refuses while a run holds the table's advisory lock.
///
/// Errors: the table does not exist, a run is active on it, a slot is in use, or a DROP or
/// file removal failed.
pub async fn cleanup(
    config: &(impl conninfo::ToConnInfo + ?Sized),
    table: &str,
    work_dir: Option<&std::path::Path>,
) -> Result<CleanupReport> {
    let client = conninfo::connect(config).await?;
    let oid = catalog::resolve(&client, table).await?;
    let t = catalog::inspect(&client, oid).await?;
    let names = Names::new(&t.schema, &t.name, oid);
    let free: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2::oid::int)",
            &[&ADVISORY_LOCK_CLASS, &oid],
        )
        .await?
        .get(0);
    if !free {
        bail!(
            "a doppel run is active on {} (it holds the advisory lock): stop it first (Ctrl-C cleans up by itself)",
            t.qualified()
        );
    }
    let mut report = CleanupReport::default();
    let slots = client
        .query(
            "SELECT slot_name::text, active, active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&names.slot],
        )
        .await?;
    for s in slots {
        let (name, active, pid): (String, bool, Option<i32>) = (s.get(0), s.get(1), s.get(2));
        if active {
            bail!(
                "replication slot {name} is in use by pid {}: stop that process first",
                pid.unwrap_or(0)
            );
        }
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[&name])
            .await?;
        report.removed.push(format!("replication slot {name}"));
    }
    let has_pub: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&names.publication],
        )
        .await?
        .get(0);
    if has_pub {
        client
            .batch_execute(&format!("DROP PUBLICATION {}", ident(&names.publication)))
            .await?;
        report
            .removed
            .push(format!("publication {}", names.publication));
    }
    let has_shadow: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&names.shadow_qualified()],
        )
        .await?
        .get(0);
    if has_shadow {
        client
            .batch_execute(&shadow::drop_sql(&names.schema, &names.shadow))
            .await?;
        report
            .removed
            .push(format!("shadow table {}", names.shadow_qualified()));
    }
    if let Some(dir) = work_dir {
        let spool_prefix = format!("doppel-{oid}-");
        let socket = format!("doppel-{oid}.sock");
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the work directory {}", dir.display()))?;
        let mut files: Vec<_> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                (name.starts_with(&spool_prefix) && name.ends_with(".spool")) || name == socket
            })
            .map(|e| e.path())
            .collect();
        files.sort();
        for path in files {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            let what = if path.extension().is_some_and(|x| x == "sock") {
                "control socket"
            } else {
                "change spool"
            };
            report.removed.push(format!("{what} {}", path.display()));
        }
    }
    Ok(report)
}
