//! Resuming an interrupted resumable run (`--resume`, docs/design.md §2.13).
//!
//! The checkpoint found for the table is checked against the plan and the server, each
//! mismatch refused with its reason and `doppel cleanup` as the way out (never a silent
//! restart); then the run reopens its permanent slot, recovers its spool and continues in
//! the phase it had reached (`setup::Continue`). A run whose cutover had committed (the table's
//! name now resolves to the shadow: decided from the catalog, not from the checkpoint) only
//! finishes: [`finish_committed`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pglogrepl::lsn::Lsn;
use tokio_postgres::Client;

use super::setup::{Capture, Continue};
use super::tasks::Tasks;
use super::{ADVISORY_LOCK_CLASS, Run, RunOptions};
use crate::conninfo;
use crate::failure::{Check, Refusal, Refused};
use crate::model::catalog;
use crate::model::names::Names;
use crate::model::phase::Phase;
use crate::model::snapshot::Snapshot;
use crate::ops::progress::format_duration;
use crate::phases::capture::spool;
use crate::phases::capture::stream::Streamer;
use crate::phases::checkpoint::{self, Checkpoint, Saved};
use crate::plan::Plan;
use crate::sql::ident;

/// The checkpoint a run on `plan`'s table resumes from:
/// - there is none: `None` (with `--resume` a new resumable run starts, unless an earlier
///   run's objects are left over: refused as preflight would);
/// - there is one and the run was not given `--resume`: refused ([`Check::Resume`]), saying
///   how to resume it or remove it;
/// - there is one and the run was given `--resume`: every check that fails is a refusal
///   ([`check`]); otherwise the checkpoint.
///
/// Errors: the refusals (exit 2, nothing changed), or a failed query.
pub(super) async fn checkpoint_for(
    control: &Client,
    plan: &Plan,
    options: &RunOptions,
) -> Result<Option<Saved>> {
    let saved = Checkpoint::load(control, plan.original.oid).await?;
    match (saved, options.resume) {
        (None, false) => Ok(None),
        (None, true) => {
            let leftovers =
                crate::preflight::leftovers(control, &plan.original, &plan.names).await?;
            if !leftovers.is_empty() {
                return Err(Refused(leftovers).into());
            }
            tracing::info!(
                "--resume: there is no checkpoint of a run on {}: starting a new resumable run",
                plan.original.qualified()
            );
            Ok(None)
        }
        (Some(saved), false) => Err(Refused::from(exists_refusal(plan, &saved)).into()),
        (Some(saved), true) => {
            let refusals = check(control, plan, options, &saved).await?;
            if refusals.is_empty() {
                Ok(Some(saved))
            } else {
                Err(Refused(refusals).into())
            }
        }
    }
}

/// Whether the table named `table` (as SQL writes it) has a checkpoint; false when the name
/// does not resolve (preflight then says so).
///
/// Errors: a failed query.
pub(super) async fn has_checkpoint(control: &Client, table: &str) -> Result<bool> {
    let oid: Option<u32> = match control
        .query_one("SELECT to_regclass($1)::oid", &[&table])
        .await
    {
        Ok(row) => row.get(0),
        Err(_) => None,
    };
    match oid {
        Some(oid) => Ok(Checkpoint::load(control, oid).await?.is_some()),
        None => Ok(false),
    }
}

/// A run without `--resume` found an interrupted resumable run.
fn exists_refusal(plan: &Plan, saved: &Saved) -> Refusal {
    let table = plan.original.qualified();
    Refusal::new(
        Check::Resume,
        format!(
            "a resumable doppel run on {table} was interrupted in phase {} (last alive {} ago); its shadow, its replication slot {} (which retains WAL) and its checkpoint are kept",
            saved.phase,
            format_duration(Duration::from_secs(saved.idle_secs.max(0) as u64)),
            saved.slot
        ),
        format!(
            "continue it: run the same command with --resume; or remove it: doppel cleanup --table {table}"
        ),
    )
}

/// The way out named by every resume refusal.
fn cleanup_fix(plan: &Plan) -> String {
    format!(
        "remove the interrupted run with `doppel cleanup --table {}` (drops its slot, shadow and checkpoint), then start a new run",
        plan.original.qualified()
    )
}

/// Checks the checkpoint `saved` against this run and the server: the same doppel version
/// and checkpoint format, the same `--alter` clauses, the original's catalog fingerprint
/// unchanged, the shadow still the one built, the slot present, valid and free, the spool on
/// this host, and the run down no longer than `--resume-within`. Returns one refusal per
/// failed check.
///
/// Errors: a failed query.
pub(super) async fn check(
    control: &Client,
    plan: &Plan,
    options: &RunOptions,
    saved: &Saved,
) -> Result<Vec<Refusal>> {
    let fix = cleanup_fix(plan);
    let mut out = Vec::new();
    let version = env!("CARGO_PKG_VERSION");
    if saved.format != checkpoint::FORMAT || saved.doppel_version != version {
        out.push(Refusal::new(
            Check::Resume,
            format!(
                "the checkpoint was written by doppel {} (checkpoint format {}); this is doppel {version} (format {}): a run is resumed only by the version that started it",
                saved.doppel_version,
                saved.format,
                checkpoint::FORMAT
            ),
            format!("resume with doppel {}, or {fix}", saved.doppel_version),
        ));
    }
    if saved.alters != options.alters {
        out.push(Refusal::new(
            Check::Resume,
            format!(
                "the interrupted run's ALTER was {:?}, not {:?}: its shadow was built for another schema",
                saved.alters, options.alters
            ),
            format!("resume with the same --alter clauses, or {fix}"),
        ));
    }
    if saved.phase == Phase::Setup.key() {
        // Nothing was copied: the resume removes what exists and sets up again.
        return Ok(out);
    }
    let fingerprint = catalog::fingerprint(control, plan.original.oid).await?;
    if fingerprint != saved.fingerprint {
        out.push(Refusal::new(
            Check::Resume,
            format!(
                "{} changed since the interrupted run built its shadow (its columns, indexes, constraints, triggers or dependents differ): the shadow no longer matches it",
                plan.original.qualified()
            ),
            fix.clone(),
        ));
    }
    let shadow: Option<u32> = control
        .query_one(
            "SELECT to_regclass($1)::oid",
            &[&plan.names.shadow_qualified()],
        )
        .await?
        .get(0);
    if shadow != Some(saved.shadow_oid) {
        out.push(Refusal::new(
            Check::Resume,
            format!(
                "the shadow table {} {}",
                plan.names.shadow_qualified(),
                if shadow.is_none() {
                    "no longer exists"
                } else {
                    "was replaced (its OID changed)"
                }
            ),
            fix.clone(),
        ));
    }
    out.extend(check_slot(control, saved, &fix).await?);
    out.extend(check_spool(saved, &fix));
    if saved.idle_secs > options.resume_within.as_secs() as i64 {
        out.push(Refusal::new(
            Check::Resume,
            format!(
                "the interrupted run has been down for {} (since its last sign of life), longer than --resume-within {}: its slot has retained WAL on the primary all that time",
                format_duration(Duration::from_secs(saved.idle_secs as u64)),
                format_duration(options.resume_within)
            ),
            format!("to resume anyway, pass a larger --resume-within; otherwise {fix}"),
        ));
    }
    Ok(out)
}

/// The slot must exist, not be invalidated (`wal_status = lost`, or an `invalidation_reason`
/// on PostgreSQL 17+), and be free: a WAL sender still on it after 10 s is a leftover of
/// the interrupted run (this run holds the table's advisory lock) and is terminated.
async fn check_slot(control: &Client, saved: &Saved, fix: &str) -> Result<Vec<Refusal>> {
    let Some(state) = slot_state(control, &saved.slot).await? else {
        return Ok(vec![Refusal::new(
            Check::Resume,
            format!(
                "the replication slot {} no longer exists (dropped, or lost in a failover to a standby that did not have it): the changes made since the run was interrupted cannot be streamed",
                saved.slot
            ),
            fix.to_string(),
        )]);
    };
    if let Some(why) = state.invalidated() {
        return Ok(vec![Refusal::new(
            Check::Resume,
            format!(
                "the replication slot {} was invalidated ({why}): the WAL it needed is gone",
                saved.slot
            ),
            format!(
                "{fix}; to keep a slot from being invalidated while doppel is down, raise max_slot_wal_keep_size or resume sooner"
            ),
        )]);
    }
    if state.active_pid.is_some() {
        free_slot(control, &saved.slot).await?;
    }
    Ok(Vec::new())
}

/// A slot as `pg_replication_slots` shows it.
struct SlotState {
    wal_status: Option<String>,
    invalidation_reason: Option<String>,
    active_pid: Option<i32>,
    confirmed_flush: Option<String>,
}

impl SlotState {
    fn invalidated(&self) -> Option<String> {
        if let Some(reason) = &self.invalidation_reason {
            return Some(format!("invalidation_reason = {reason}"));
        }
        (self.wal_status.as_deref() == Some("lost")).then(|| {
            "wal_status = lost: it retained more WAL than max_slot_wal_keep_size allows".into()
        })
    }
}

/// The slot `name`, if it exists (`invalidation_reason` read through `to_jsonb`, as the
/// column exists only on PostgreSQL 17+).
async fn slot_state(client: &Client, name: &str) -> Result<Option<SlotState>> {
    let row = client
        .query_opt(
            "SELECT s.wal_status, to_jsonb(s)->>'invalidation_reason', s.active_pid,
                    s.confirmed_flush_lsn::text
             FROM pg_replication_slots s WHERE s.slot_name = $1",
            &[&name],
        )
        .await
        .context("reading the replication slot")?;
    Ok(row.map(|r| SlotState {
        wal_status: r.get(0),
        invalidation_reason: r.get(1),
        active_pid: r.get(2),
        confirmed_flush: r.get(3),
    }))
}

/// Waits up to 10 s for the WAL sender of an interrupted run to leave the slot (the server
/// notices a dead client's closed socket), then terminates it.
async fn free_slot(client: &Client, slot: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut terminated = false;
    loop {
        let Some(state) = slot_state(client, slot).await? else {
            return Ok(());
        };
        let Some(pid) = state.active_pid else {
            return Ok(());
        };
        if Instant::now() > deadline && !terminated {
            tracing::warn!(
                "the replication slot {slot} is still in use by pid {pid}, the WAL sender of the interrupted run: terminating it"
            );
            client
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await?;
            terminated = true;
        } else if Instant::now() > deadline + Duration::from_secs(10) {
            bail!("the replication slot {slot} is still in use by pid {pid} after terminating it");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The spool must be on this host and present.
fn check_spool(saved: &Saved, fix: &str) -> Vec<Refusal> {
    let here = checkpoint::this_host();
    if saved.host != here {
        return vec![Refusal::new(
            Check::Resume,
            format!(
                "the interrupted run's change spool is on host {} ({}); this is host {here}",
                saved.host, saved.spool_path
            ),
            format!(
                "resume on {} (the spool holds the changes streamed before the interruption), or {fix}",
                saved.host
            ),
        )];
    }
    if !Path::new(&saved.spool_path).exists() {
        return vec![Refusal::new(
            Check::Resume,
            format!(
                "the interrupted run's change spool {} is missing: the changes it streamed before the interruption are lost with it",
                saved.spool_path
            ),
            fix.to_string(),
        )];
    }
    Vec::new()
}

impl Run<'_> {
    /// Continues the interrupted run of the checkpoint `saved` (checked by [`check`]): from
    /// phase `setup` it removes what exists and sets up again; otherwise it recovers the
    /// spool (cutting a torn tail), reopens it after the applier's recorded position and
    /// restarts the stream from the slot where the spool ends.
    ///
    /// Errors: the spool holds less than the slot confirmed, a connection or query failed.
    pub(super) async fn resume_capture(&mut self, saved: Saved) -> Result<Capture> {
        let checkpoint = Checkpoint {
            table_oid: saved.table_oid,
        };
        self.checkpoint = Some(checkpoint);
        self.created.resumed(PathBuf::from(&saved.spool_path));
        let Some(from) = Phase::from_key(&saved.phase).filter(|p| *p != Phase::Setup) else {
            tracing::info!(
                "resuming: the interrupted run had not finished its setup (phase {}): removing what it created and starting again",
                saved.phase
            );
            self.remove_created().await;
            self.created = Default::default();
            self.checkpoint = None;
            return self.set_up().await;
        };
        let copy = checkpoint.copy_progress(&self.control).await?;
        let replication = self.replication_connection().await?;
        let confirmed = slot_confirmed(&self.control, &saved.slot).await?;
        let path = PathBuf::from(&saved.spool_path);
        let recovered = spool::recover(&path, confirmed)?;
        if recovered.dropped > 0 {
            tracing::info!(
                bytes = recovered.dropped,
                "cut the change spool's torn or unfinished tail (the stream sends it again)"
            );
        }
        let read_from = saved
            .applied
            .map(|(_, offset)| offset.min(recovered.end))
            .unwrap_or(spool::MAGIC.len() as u64);
        let (writer, reader) = spool::reopen(&path, &recovered, read_from)?;
        let start = recovered.holds.max(confirmed);
        let options = self.stream_options().await?;
        let stream = replication
            .start_logical_replication_with(
                &saved.slot,
                start,
                &self.plan.names.publication,
                options,
            )
            .await
            .context("restarting replication from the slot")?;
        tracing::info!(
            phase = from.key(),
            stream_from = %start,
            rows_copied = copy.rows,
            chunks_pending = copy.pending.len(),
            "resuming the interrupted run from its checkpoint"
        );
        Ok(Capture {
            tasks: Tasks {
                streamer: Some(Streamer::spawn(stream, writer, self.probe.clone())),
                applier: None,
            },
            reader: Some(reader),
            exported: Snapshot::parse(&saved.exported_snapshot)?,
            start_lsn: start,
            fingerprint: saved.fingerprint,
            reverse: None,
            resumed: Some(Continue {
                from,
                copy,
                applied: saved.applied.map(|(lsn, _)| lsn),
            }),
        })
    }
}

/// The slot's `confirmed_flush_lsn`.
async fn slot_confirmed(client: &Client, slot: &str) -> Result<Lsn> {
    let state = slot_state(client, slot)
        .await?
        .with_context(|| format!("the replication slot {slot} disappeared"))?;
    let text = state
        .confirmed_flush
        .with_context(|| format!("the replication slot {slot} has no confirmed position"))?;
    text.parse::<Lsn>()
        .map_err(|e| anyhow::anyhow!("slot position {text:?}: {e:?}"))
}

/// A resumed run whose cutover had committed before the interruption, finished.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The migrated table (the former shadow), qualified.
    pub table: String,
    /// The kept original, qualified (it keeps the original's OID).
    pub old_table: String,
    /// The newest rollback script of the run in `--rollback-dir`, if found.
    pub rollback_script: Option<PathBuf>,
    /// What was removed: the slot (with the WAL it released), the publication, the spool,
    /// the checkpoint.
    pub removed: Vec<String>,
    /// Foreign keys left NOT VALID by the interrupted after-commit steps whose validation
    /// failed now: (constraint, server error).
    pub unvalidated: Vec<(String, String)>,
}

/// With `--resume`: if `--table` now names the shadow of a checkpointed run, that run's
/// cutover committed (the catalog says so): its slot, publication, spool and checkpoint are
/// removed, the foreign keys the interrupted after-commit steps left NOT VALID are validated
/// and the keys of partitioned tables they left on the leaves are added back on the parents
/// (`dependents::pending_reattach_sql`), and the run reports [`Finished`]. `None` otherwise.
///
/// Errors: another run holds the original's advisory lock, a statement failed.
pub(super) async fn finish_committed(
    config: &conninfo::ConnInfo,
    options: &RunOptions,
) -> Result<Option<Finished>> {
    let client = conninfo::connect(config).await?;
    let oid: Option<u32> = client
        .query_one("SELECT to_regclass($1)::oid", &[&options.table])
        .await
        .ok()
        .and_then(|r| r.get(0));
    let Some(oid) = oid else {
        return Ok(None);
    };
    let Some(saved) = Checkpoint::of_shadow(&client, oid).await? else {
        return Ok(None);
    };
    let locked: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2::oid::int)",
            &[&ADVISORY_LOCK_CLASS, &saved.table_oid],
        )
        .await?
        .get(0);
    if !locked {
        bail!(
            "another doppel process holds the lock of the run on {}: stop it first",
            saved.table_name
        );
    }
    let table = catalog::inspect(&client, oid).await?;
    let names = Names::new(&table.schema, &table.name, saved.table_oid);
    tracing::info!(
        "the interrupted run's cutover had committed ({} is the migrated table): finishing it",
        table.qualified()
    );
    let mut removed = Vec::new();
    if let Some(state) = slot_state(&client, &saved.slot).await?
        && state.active_pid.is_some()
    {
        free_slot(&client, &saved.slot).await?;
    }
    if let Some(released) = drop_slot(&client, &saved.slot).await? {
        removed.push(released);
    }
    client
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            ident(&names.publication)
        ))
        .await?;
    removed.push(format!("publication {}", names.publication));
    if saved.host == checkpoint::this_host() && std::fs::remove_file(&saved.spool_path).is_ok() {
        removed.push(format!("change spool {}", saved.spool_path));
    }
    let rollback_script = newest_rollback_script(&options.rollback_dir, saved.table_oid);
    let mut unvalidated = Vec::new();
    // A partitioned table's partitions' indexes are renamed right after the commit
    // (docs/design.md §1.14): the rollback script holds those renames (a no-op once done).
    let index_names = rollback_script
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| crate::phases::cutover::index_names_in(&text));
    if let Some(sql) = index_names
        && let Err(e) = client.batch_execute(&sql).await
    {
        unvalidated.push(("the partitions' index names".to_string(), e.to_string()));
    }
    unvalidated.extend(validate_foreign_keys(&client, oid).await?);
    for (name, sql) in crate::dependents::pending_reattach_sql(&client, oid).await? {
        if let Err(e) = client.batch_execute(&sql).await {
            unvalidated.push((
                name,
                e.as_db_error()
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| e.to_string()),
            ));
        }
    }
    Checkpoint::remove(&client, saved.table_oid).await?;
    removed.push("checkpoint".into());
    Ok(Some(Finished {
        table: table.qualified(),
        old_table: names.old_qualified(),
        rollback_script,
        removed,
        unvalidated,
    }))
}

/// Drops the slot `name` if it exists; describes it with the WAL it retained.
///
/// Errors: the slot is in use, or the statement failed.
pub(crate) async fn drop_slot(client: &Client, name: &str) -> Result<Option<String>> {
    let row = client
        .query_opt(
            "SELECT coalesce((pg_current_wal_lsn() - restart_lsn)::bigint, 0)
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let retained: i64 = row.get(0);
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&name])
        .await
        .with_context(|| format!("dropping the replication slot {name}"))?;
    Ok(Some(format!(
        "replication slot {name} (released {} of retained WAL)",
        crate::ops::progress::format_bytes(retained.max(0) as u64)
    )))
}

/// Validates the NOT VALID foreign keys of the table `oid` and of the tables referencing it
/// (the after-commit steps an interrupted cutover did not run); returns those that failed.
async fn validate_foreign_keys(client: &Client, oid: u32) -> Result<Vec<(String, String)>> {
    let rows = client
        .query(
            "SELECT conrelid::regclass::text, conname::text FROM pg_constraint
             WHERE contype = 'f' AND NOT convalidated AND (conrelid = $1 OR confrelid = $1)",
            &[&oid],
        )
        .await?;
    let mut failed = Vec::new();
    for row in rows {
        let (table, name): (String, String) = (row.get(0), row.get(1));
        let sql = format!("ALTER TABLE {table} VALIDATE CONSTRAINT {}", ident(&name));
        if let Err(e) = client.batch_execute(&sql).await {
            failed.push((
                name,
                e.as_db_error()
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| e.to_string()),
            ));
        }
    }
    Ok(failed)
}

/// The newest `doppel-rollback-<oid>-*.sql` in `dir`.
fn newest_rollback_script(dir: &Path, oid: u32) -> Option<PathBuf> {
    let prefix = format!("doppel-rollback-{oid}-");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".sql"))
        })
        .max()
}

/// Waits up to 10 s until no WAL sender uses the slot `name` (its stream was just closed).
///
/// Errors: still in use after 10 s, or a failed query.
pub(crate) async fn wait_slot_inactive(client: &Client, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match slot_state(client, name).await? {
            Some(SlotState {
                active_pid: Some(pid),
                ..
            }) if Instant::now() < deadline => {
                tracing::debug!("replication slot {name} still in use by pid {pid}");
            }
            Some(SlotState {
                active_pid: Some(pid),
                ..
            }) => bail!("the replication slot {name} is still in use by pid {pid}"),
            _ => return Ok(()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
