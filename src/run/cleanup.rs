//! `doppel cleanup`: removes what an interrupted run left behind, and never a table that may
//! hold rows that exist nowhere else.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tokio_postgres::Client;

use crate::conninfo;
use crate::failure::{Check, Refusal, Refused};
use crate::model::catalog;
use crate::model::names::Names;
use crate::phases::checkpoint::{self, Checkpoint};
use crate::phases::cutover::SWAPPED_OUT_MARK;
use crate::phases::shadow;
use crate::run::ADVISORY_LOCK_CLASS;
use crate::sql::ident;

/// What `doppel cleanup` may remove besides an interrupted run's leftovers.
#[derive(Debug, Clone, Default)]
pub struct CleanupOptions {
    /// The interrupted run's `--work-dir`: its change spool files (`doppel-<oid>-<pid>.spool`),
    /// control socket (`doppel-<oid>.sock`) and run registry file
    /// (`doppel-run-<oid>-<pid>.json`) there are removed too.
    pub work_dir: Option<PathBuf>,
    /// `--drop-new-table`: also drop a migrated table that a rollback or a revert swapped out
    /// (it may hold the writes made between the cutover and the rollback). Without it such a
    /// table is kept and cleanup refuses.
    pub drop_new_table: bool,
}

/// What `doppel cleanup` found and removed.
#[derive(Debug, Clone, Default)]
pub struct CleanupReport {
    /// Objects removed, described.
    pub removed: Vec<String>,
}

/// Removes what an interrupted run on `table` left behind: the shadow table, the publication
/// and an inactive slot named after the table's OID (reporting the WAL the slot released), a
/// resumable run's checkpoint and spool, an online recipe's index or helper constraint, a paced
/// run's row of `doppel.write_probe`, the copy's replication origins, and
/// the local files of [`CleanupOptions::work_dir`]. Refuses while a run holds the table's
/// advisory lock. When `table` is the migrated table of a resumable run whose cutover
/// committed before doppel stopped, only that run's slot, publication, spool and checkpoint
/// are removed.
///
/// A table under the shadow's name that a rollback script or a revert swapped out (its
/// comment starts with the mark they set) is the migrated table, which received the writes
/// made after the cutover: it is dropped only with [`CleanupOptions::drop_new_table`];
/// without it cleanup refuses (exit 2), changing nothing, and says what the table holds.
///
/// Errors: the table does not exist, a run is active on it, a slot is in use, the refusal
/// above, or a DROP or file removal failed.
pub async fn cleanup(
    config: &(impl conninfo::ToConnInfo + ?Sized),
    table: &str,
    options: &CleanupOptions,
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
    if let Some(saved) = Checkpoint::of_shadow(&client, oid).await? {
        return finished_run(&client, &saved).await;
    }
    let shadow = shadow_state(&client, &names).await?;
    if let Some(swapped_out) = &shadow
        && swapped_out.mark.is_some()
        && !options.drop_new_table
    {
        return Err(Refused(vec![keep_refusal(&names, swapped_out)]).into());
    }
    let mut report = CleanupReport::default();
    drop_slot(&client, &names, &mut report).await?;
    drop_publication(&client, &names, &mut report).await?;
    drop_revert_window(&client, &t, &mut report).await?;
    drop_recipe_leftovers(&client, &t, &names, &mut report).await?;
    if let Some(state) = shadow {
        client
            .batch_execute(&shadow::drop_sql(&names.schema, &names.shadow))
            .await?;
        let what = match state.mark {
            Some(_) => "migrated table (swapped out after the cutover, --drop-new-table)",
            None => "shadow table",
        };
        report
            .removed
            .push(format!("{what} {}", names.shadow_qualified()));
    }
    if let Some(dir) = &options.work_dir {
        remove_files(dir, oid, &mut report)?;
    }
    remove_checkpoint(&client, oid, &mut report).await?;
    if crate::phases::origin::drop_all(&client, oid).await? > 0 {
        report
            .removed
            .push("replication origins of the copy sessions".to_string());
    }
    if crate::ops::pacing::remove_probe(&client, oid).await? {
        report
            .removed
            .push("the run's row of doppel.write_probe (--max-write-latency)".to_string());
    }
    Ok(report)
}

/// Removes a resumable run's checkpoint and its spool (at the path the checkpoint recorded,
/// when on this host).
async fn remove_checkpoint(client: &Client, oid: u32, report: &mut CleanupReport) -> Result<()> {
    let Some(saved) = Checkpoint::load(client, oid).await? else {
        return Ok(());
    };
    if saved.host == checkpoint::this_host() && std::fs::remove_file(&saved.spool_path).is_ok() {
        report
            .removed
            .push(format!("change spool {}", saved.spool_path));
    }
    Checkpoint::remove(client, oid).await?;
    report.removed.push(format!(
        "checkpoint of the resumable run (phase {})",
        saved.phase
    ));
    Ok(())
}

/// `table` is the migrated table of a resumable run whose cutover committed before doppel
/// stopped: removes that run's slot, publication, spool and checkpoint (nothing else: the
/// table is live).
async fn finished_run(client: &Client, saved: &checkpoint::Saved) -> Result<CleanupReport> {
    let mut report = CleanupReport::default();
    let names = Names {
        slot: saved.slot.clone(),
        publication: format!("doppel_{}", saved.table_oid),
        ..Names::new("", "", saved.table_oid)
    };
    drop_slot(client, &names, &mut report).await?;
    drop_publication(client, &names, &mut report).await?;
    remove_checkpoint(client, saved.table_oid, &mut report).await?;
    Ok(report)
}

/// What an online recipe of a killed run left on the table: an index of a concurrent build
/// (`_doppel_<oid>_u<n>`, invalid if the build did not finish), dropped concurrently (no
/// lock that blocks writes), and a helper constraint (`_doppel_<oid>_nn<n>`), dropped under
/// a short `lock_timeout`.
///
/// Errors: a DROP fails (a lock not granted within 5 s: run cleanup again).
async fn drop_recipe_leftovers(
    client: &Client,
    t: &catalog::Table,
    names: &Names,
    report: &mut CleanupReport,
) -> Result<()> {
    let prefix = format!("{}%", names.recipe_prefix().replace('_', "\\_"));
    let indexes = client
        .query(
            "SELECT c.relname::text, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = $1 AND c.relname LIKE $2 ORDER BY 1",
            &[&t.oid, &prefix],
        )
        .await?;
    for row in indexes {
        let (name, valid): (String, bool) = (row.get(0), row.get(1));
        client
            .batch_execute(&format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
                ident(&t.schema),
                ident(&name)
            ))
            .await
            .with_context(|| format!("dropping the index {name} an online recipe left"))?;
        report.removed.push(format!(
            "{}index {name} (of an interrupted online recipe)",
            if valid { "" } else { "invalid " }
        ));
    }
    let constraints = client
        .query(
            "SELECT conname::text FROM pg_constraint WHERE conrelid = $1 AND conname LIKE $2 ORDER BY 1",
            &[&t.oid, &prefix],
        )
        .await?;
    for row in constraints {
        let name: String = row.get(0);
        client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '5s'; ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}; COMMIT",
                t.qualified(),
                ident(&name)
            ))
            .await
            .with_context(|| format!("dropping the constraint {name} an online recipe left"))?;
        report.removed.push(format!(
            "constraint {name} (of an interrupted online recipe)"
        ));
    }
    Ok(())
}

/// A table under the shadow's name: its row count and the mark a rollback or a revert put
/// on it, if any.
struct ShadowState {
    rows: i64,
    mark: Option<String>,
}

/// The table under the shadow's name, if one exists.
async fn shadow_state(client: &Client, names: &Names) -> Result<Option<ShadowState>> {
    let row = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL, obj_description(to_regclass($1), 'pg_class')",
            &[&names.shadow_qualified()],
        )
        .await?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    let comment: Option<String> = row.get(1);
    let mark = comment.filter(|c| c.starts_with(SWAPPED_OUT_MARK));
    let rows: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {}", names.shadow_qualified()),
            &[],
        )
        .await
        .context("counting the rows of the table under the shadow's name")?
        .get(0);
    Ok(Some(ShadowState { rows, mark }))
}

/// Why cleanup keeps a swapped-out migrated table, and how to keep or drop it.
fn keep_refusal(names: &Names, state: &ShadowState) -> Refusal {
    let table = names.shadow_qualified();
    Refusal::new(
        Check::SwappedOutTable,
        format!(
            "{table} is the migrated table that a rollback or a revert swapped out, not a leftover shadow: it holds {} row(s), and the writes made to {} between the cutover and the rollback exist only there. Its comment says: {}",
            state.rows,
            names.table_qualified(),
            state.mark.as_deref().unwrap_or_default()
        ),
        format!(
            "nothing was removed. Copy what you need from it (or keep it under another name: ALTER TABLE {table} RENAME TO ..), then run doppel cleanup again with --drop-new-table to drop it"
        ),
    )
}

/// Drops doppel's inactive slot for the table.
async fn drop_slot(client: &Client, names: &Names, report: &mut CleanupReport) -> Result<()> {
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
        report
            .removed
            .extend(super::resume::drop_slot(client, &name).await?);
    }
    Ok(())
}

/// Drops doppel's publication for the table.
async fn drop_publication(
    client: &Client,
    names: &Names,
    report: &mut CleanupReport,
) -> Result<()> {
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
    Ok(())
}

/// Drops what a revert window left when its doppel died: its publication (`doppel_<oid>_rev`,
/// named after the OID the table had before the cutover, publishing the table now) and its
/// slot if still there (a TEMPORARY slot goes with its connection).
async fn drop_revert_window(
    client: &Client,
    table: &catalog::Table,
    report: &mut CleanupReport,
) -> Result<()> {
    let publications = client
        .query(
            "SELECT pubname::text FROM pg_publication_tables
             WHERE schemaname = $1 AND tablename = $2 AND pubname LIKE 'doppel\\_%\\_rev'",
            &[&table.schema, &table.name],
        )
        .await?;
    for row in publications {
        let name: String = row.get(0);
        let slot_names = Names {
            slot: name.clone(),
            ..Names::new(&table.schema, &table.name, table.oid)
        };
        drop_slot(client, &slot_names, report).await?;
        client
            .batch_execute(&format!("DROP PUBLICATION {}", ident(&name)))
            .await?;
        report
            .removed
            .push(format!("publication {name} (of a revert window)"));
    }
    Ok(())
}

/// Removes the run's spool files, control socket and stale run registry file from `dir`.
fn remove_files(dir: &Path, oid: u32, report: &mut CleanupReport) -> Result<()> {
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
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        let what = if path.extension().is_some_and(|x| x == "sock") {
            "control socket"
        } else {
            "change spool"
        };
        report.removed.push(format!("{what} {}", path.display()));
    }
    for path in crate::ops::registry::remove_stale(dir, oid) {
        report
            .removed
            .push(format!("run registry file {}", path.display()));
    }
    Ok(())
}
