//! Cutover (DESIGN.md §4): the shadow takes the table's name in one transaction under an
//! ACCESS EXCLUSIVE lock held for milliseconds, with a rollback script written first.
//!
//! Each attempt: `SET LOCAL lock_timeout` (default 200 ms) and `LOCK TABLE .. IN ACCESS
//! EXCLUSIVE MODE`. A *waiting* ACCESS EXCLUSIVE request blocks every later reader of the
//! table, so a timed-out attempt rolls back at once and the next one waits with exponential
//! backoff and jitter. Once granted, no change to the original can commit; doppel then
//! re-checks the catalog fingerprint (DDL that ran during the migration would otherwise be
//! lost), commits a fence and waits until the applier has applied it (so every change
//! committed before the lock is in the shadow), re-checks the keys verification deferred, and
//! renames: original → `_doppel_<oid>_old_<name>` (its indexes and identity sequences out of
//! the way), shadow → original name, shadow indexes → their final names, sequence ownership
//! and values moved, foreign keys re-added `NOT VALID` (validated after commit). The lock hold
//! time (grant to commit) is measured and reported.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::model::catalog;
use crate::phases::apply::Applier;
use crate::phases::fence::Fencer;
use crate::phases::shadow;
use crate::phases::verify;
use crate::plan::Plan;
use crate::sql::{ident, literal, qualified};

/// Cutover settings.
#[derive(Debug, Clone)]
pub struct CutoverOptions {
    /// `lock_timeout` of each attempt.
    pub lock_timeout: Duration,
    /// Attempts before giving up.
    pub retries: u32,
    /// Longest wait for the applier inside the lock before the attempt is rolled back.
    pub fence_timeout: Duration,
    /// Directory the rollback script is written to.
    pub rollback_dir: PathBuf,
    /// While this file exists the cutover waits, keeping the shadow caught up (gh-ost's
    /// `--postpone-cut-over-flag-file`).
    pub postpone_flag_file: Option<PathBuf>,
    /// Live settings from the control socket: `postpone` / `cut-over` and `lock-timeout`.
    pub controls: Option<std::sync::Arc<crate::ops::control::Controls>>,
    /// The run's test hooks (pause point `cutover-locked`: renames done, not yet committed).
    pub(crate) probe: crate::testing::Probe,
    /// `--kill-blockers`: sessions seen blocking the lock for at least this long (the grace
    /// period) are cancelled (`pg_cancel_backend`); one still blocking at a later attempt is
    /// terminated (`pg_terminate_backend`). `None` (the default) kills nobody.
    pub kill_blockers: Option<Duration>,
    /// Ctrl-C / SIGTERM / `abort`: checked while the cutover is postponed, between attempts
    /// and while catching up before one (never inside the lock, where the transaction rolls
    /// back by itself on error).
    pub cancel: crate::cancel::Cancel,
    /// The throttle checker's samples: a critical condition (the panic flag file, ...) aborts
    /// a postponed cutover and stops further attempts. `None`: not watched.
    pub throttle: Option<tokio::sync::watch::Receiver<crate::ops::throttle::ThrottleState>>,
}

/// Outcome of one cutover attempt, as logged and stored in the cutover record.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// 1-based attempt number.
    pub attempt: u32,
    /// `granted`, `lock timeout`, or `drain timeout` (the applier did not reach the fence
    /// within `--fence-timeout` under the lock).
    pub outcome: String,
    /// Time spent waiting for the lock (ms).
    pub lock_wait_ms: f64,
    /// Predicted drain under the lock (ms): the last catch-up round trip before locking.
    pub predicted_drain_ms: f64,
    /// Sessions `pg_blocking_pids` reported blocking this attempt's lock request.
    pub blockers: Vec<i32>,
}

/// Sessions that hold a lock on `table_oid` or have a transaction open longer than 10 s: the
/// ones that can make the cutover's lock wait. `(pid, description)`.
pub async fn blockers(client: &Client, table_oid: u32) -> Result<Vec<(i32, String)>> {
    let rows = client
        .query(
            "SELECT a.pid, format('pid %s (%s, %s, transaction open %s s%s): %s', a.pid,
                           coalesce(a.usename::text, '?'), a.state,
                           coalesce(extract(epoch FROM now() - a.xact_start)::bigint, 0),
                           CASE WHEN l.mode IS NOT NULL THEN ', holds ' || l.mode ELSE '' END,
                           left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 60))
             FROM pg_stat_activity a
             LEFT JOIN LATERAL (SELECT string_agg(mode, '+') AS mode FROM pg_locks
                                WHERE pid = a.pid AND relation = $1 AND granted) l ON true
             WHERE a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
               AND (l.mode IS NOT NULL OR a.xact_start < now() - interval '10 seconds')
               AND a.application_name NOT LIKE 'doppel%'
             ORDER BY a.xact_start",
            &[&table_oid],
        )
        .await
        .context("listing sessions that could block the cutover")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// What the cutover did.
#[derive(Debug, Clone)]
pub struct CutoverReport {
    /// Attempts made (1 = first try).
    pub attempts: u32,
    /// ACCESS EXCLUSIVE lock held, from grant to commit.
    pub lock_held: Duration,
    /// Part of the hold spent waiting for the applier to reach the fence.
    pub fence_wait: Duration,
    /// The rollback script.
    pub rollback_path: PathBuf,
    /// After-commit steps that failed (what, server error): foreign keys re-added NOT VALID
    /// whose validation failed (named by the constraint), and materialized views not rebuilt
    /// on the new table (`materialized view "s"."mv"`; they still read the kept old table).
    pub unvalidated: Vec<(String, String)>,
    /// Every attempt, in order.
    pub history: Vec<Attempt>,
    /// Sessions cancelled or terminated by `--kill-blockers` (`cancelled pid ..: ..`).
    pub killed: Vec<String>,
    /// Where the lock hold went, step by step: fingerprint re-check, dependents re-check,
    /// fence and drain, deferred keys re-check, renames and dependents, commit.
    pub inside_lock: Vec<(&'static str, Duration)>,
    /// The cutover record (JSON: attempts, lock hold, fence wait, killed sessions) written
    /// next to the rollback script after commit.
    pub record_path: PathBuf,
}

/// The SQL of the swap and of its reverse.
#[derive(Debug, Clone)]
pub struct Script {
    /// Locks taken (under the same `lock_timeout`) before the table's own ACCESS EXCLUSIVE
    /// lock: dependent views and child tables, in a fixed order.
    pub locks: Vec<String>,
    /// Statements run inside the cutover transaction, after the fence.
    pub forward: Vec<String>,
    /// `ALTER TABLE .. VALIDATE CONSTRAINT ..` run after commit.
    pub validate: Vec<(String, String)>,
    /// The rollback script (psql-runnable).
    pub rollback: String,
}

/// Builds the swap and rollback SQL. Reads the shadow's identity sequence names (so it must
/// run after the shadow exists).
pub async fn script(client: &Client, plan: &Plan, lock_timeout: Duration) -> Result<Script> {
    let n = &plan.names;
    let oid = plan.original.oid;
    let schema = &n.schema;
    let table_q = n.table_qualified();
    let shadow_q = n.shadow_qualified();
    let old_q = n.old_qualified();
    let mut forward = Vec::new();
    let mut back = Vec::new();

    forward.push(format!("ALTER TABLE {table_q} RENAME TO {}", ident(&n.old)));
    for (i, index) in plan.original.indexes.iter().enumerate() {
        let old_name = n.old_index(oid, i);
        forward.push(format!(
            "ALTER INDEX {} RENAME TO {}",
            qualified(schema, &index.name),
            ident(&old_name)
        ));
    }
    forward.push(format!(
        "ALTER TABLE {shadow_q} RENAME TO {}",
        ident(&n.table)
    ));
    let shadow_indexes = shadow::indexes(plan);
    for index in &shadow_indexes {
        forward.push(format!(
            "ALTER INDEX {} RENAME TO {}",
            qualified(schema, &index.temp_name),
            ident(&index.final_name)
        ));
    }

    // Rollback, mirrored: new table back to the shadow name, old table back to its name.
    back.push(format!(
        "ALTER TABLE {table_q} RENAME TO {}",
        ident(&n.shadow)
    ));
    for index in &shadow_indexes {
        back.push(format!(
            "ALTER INDEX {} RENAME TO {}",
            qualified(schema, &index.final_name),
            ident(&index.temp_name)
        ));
    }
    back.push(format!("ALTER TABLE {old_q} RENAME TO {}", ident(&n.table)));
    for (i, index) in plan.original.indexes.iter().enumerate() {
        back.push(format!(
            "ALTER INDEX {} RENAME TO {}",
            qualified(schema, &n.old_index(oid, i)),
            ident(&index.name)
        ));
    }

    // Sequences. Identity sequences belong to their table: the original's are renamed out of
    // the way, the shadow's take their names and continue from their values. Serial sequences
    // change owner.
    let mut seq_forward = Vec::new();
    let mut seq_back = Vec::new(); // the original's sequences, back to their names and owner
    let mut seq_back_first = Vec::new(); // the new table's identity sequences, out of the way
    let mut seq_back_values = Vec::new();
    let target_name = |source: &str| {
        plan.projection
            .columns
            .iter()
            .find(|m| m.source.as_ref().is_some_and(|s| s.name == source))
            .map(|m| m.target.clone())
    };
    let mut renamed_identity: Vec<(String, String, String)> = Vec::new(); // (column, kept-as name, original name)
    for (i, seq) in plan.original.sequences.iter().enumerate() {
        if seq.identity {
            let kept = n.old_sequence(oid, i);
            seq_forward.push(format!(
                "ALTER SEQUENCE {} RENAME TO {}",
                qualified(&seq.schema, &seq.name),
                ident(&kept)
            ));
            seq_back.push(format!(
                "ALTER SEQUENCE {} RENAME TO {}",
                qualified(&seq.schema, &kept),
                ident(&seq.name)
            ));
            renamed_identity.push((seq.column.clone(), kept, seq.name.clone()));
        } else if let Some(col) = target_name(&seq.column)
            && col
                .default_sql
                .as_deref()
                .is_some_and(|d| d.contains("nextval"))
        {
            seq_forward.push(format!(
                "ALTER SEQUENCE {} OWNED BY {table_q}.{}",
                qualified(&seq.schema, &seq.name),
                ident(&col.name)
            ));
            seq_back.push(format!(
                "ALTER SEQUENCE {} OWNED BY {table_q}.{}",
                qualified(&seq.schema, &seq.name),
                ident(&seq.column)
            ));
        }
    }
    for target_seq in plan.target.sequences.iter().filter(|s| s.identity) {
        // The shadow's identity sequence (in a dry run, before the shadow exists, the name
        // PostgreSQL will give it).
        let current: Option<String> = client
            .query_opt(
                "SELECT s.relname::text FROM pg_depend d
                 JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                 JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                   AND d.deptype = 'i' AND d.refobjid = to_regclass($1) AND a.attname = $2",
                &[&shadow_q, &target_seq.column],
            )
            .await
            .context("reading the shadow's identity sequences")?
            .map(|r| r.get(0));
        // In a dry run the shadow does not exist yet: name its sequence by what it is.
        let current_name = current.unwrap_or_else(|| {
            format!("<identity sequence of {}.{}>", n.shadow, target_seq.column)
        });
        seq_forward.push(format!(
            "ALTER SEQUENCE {} RENAME TO {}",
            qualified(schema, &current_name),
            ident(&target_seq.name)
        ));
        seq_back_first.push(format!(
            "ALTER SEQUENCE {} RENAME TO {}",
            qualified(schema, &target_seq.name),
            ident(&current_name)
        ));
        let source_col = plan
            .projection
            .columns
            .iter()
            .find(|m| m.target.name == target_seq.column)
            .and_then(|m| m.source.as_ref())
            .map(|s| s.name.clone());
        if let Some((_, kept, original_name)) = renamed_identity
            .iter()
            .find(|(col, _, _)| Some(col) == source_col.as_ref())
        {
            seq_forward.push(format!(
                "SELECT setval({}::regclass, s.last_value, s.is_called) FROM {} AS s",
                literal(&qualified(schema, &target_seq.name)),
                qualified(schema, kept)
            ));
            seq_back_values.push(format!(
                "SELECT setval({}::regclass, s.last_value, s.is_called) FROM {} AS s",
                literal(&qualified(schema, original_name)),
                qualified(schema, &current_name)
            ));
        }
    }
    forward.extend(seq_forward);
    back.extend(seq_back_first);
    back.extend(seq_back);
    back.extend(seq_back_values);

    // Foreign keys from this table: move them to the new table (NOT VALID, validated after
    // commit) and drop them from the kept old table, whose stale rows would otherwise block
    // valid deletes on the parents.
    let mut validate = Vec::new();
    for fk in plan.original.constraints.iter().filter(|c| c.kind == 'f') {
        let def = if fk.definition.ends_with("NOT VALID") {
            fk.definition.clone()
        } else {
            format!("{} NOT VALID", fk.definition)
        };
        forward.push(format!(
            "ALTER TABLE {old_q} DROP CONSTRAINT {}",
            ident(&fk.name)
        ));
        forward.push(format!(
            "ALTER TABLE {table_q} ADD CONSTRAINT {} {def}",
            ident(&fk.name)
        ));
        if fk.validated {
            validate.push((
                fk.name.clone(),
                format!(
                    "ALTER TABLE {table_q} VALIDATE CONSTRAINT {}",
                    ident(&fk.name)
                ),
            ));
        }
        back.push(format!(
            "ALTER TABLE {} DROP CONSTRAINT {}",
            qualified(schema, &n.shadow),
            ident(&fk.name)
        ));
        back.push(format!(
            "ALTER TABLE {table_q} ADD CONSTRAINT {} {def}",
            ident(&fk.name)
        ));
    }

    // Dependents bound to the original's OID: views, foreign keys from other tables,
    // triggers, rules, policies, publications, replica identity, statistics objects.
    let deps = &plan.dependents;
    forward.extend(deps.forward(n));
    validate.extend(deps.forward_after_commit_labeled(n));
    back.extend(deps.rollback(n));
    let rollback_locks: String = deps.lock_sql().iter().map(|l| format!("{l};\n")).collect();
    let after_commit: String = deps
        .rollback_after_commit(n)
        .iter()
        .map(|l| format!("{l};\n"))
        .collect();
    let rollback = format!(
        "-- doppel rollback script for {table}\n\
         -- Swaps the original table back: {old} becomes {table} again and the migrated table\n\
         -- becomes {shadow}. Run it with: psql -v ON_ERROR_STOP=1 -f <this file>\n\
         --\n\
         -- WARNING: writes made to {table} after the cutover are NOT in the old table; this\n\
         -- rollback loses them (a lossless reverse stream is future work). Foreign keys are\n\
         -- re-added NOT VALID: run ALTER TABLE .. VALIDATE CONSTRAINT afterwards.\n\
         -- If the lock is not granted within the timeout the transaction fails and changes\n\
         -- nothing: run the script again.\n\
         \\set ON_ERROR_STOP on\n\
         BEGIN;\n\
         SET LOCAL lock_timeout = '{lock_ms}ms';\n\
         {rollback_locks}\
         LOCK TABLE {table_q}, {old_q} IN ACCESS EXCLUSIVE MODE;\n\
         {statements};\n\
         COMMIT;\n\
         {after_commit}",
        table = plan.original.qualified(),
        old = old_q,
        shadow = shadow_q,
        lock_ms = lock_timeout.as_millis(),
        statements = back.join(";\n"),
    );
    Ok(Script {
        locks: deps.lock_sql(),
        forward,
        validate,
        rollback,
    })
}

/// The rollback script of a cutover that has not reached its COMMIT: dropped, it removes
/// the file (a script for a cutover that never happened would only mislead).
struct UnusedScript(Option<PathBuf>);

impl UnusedScript {
    /// The COMMIT is about to be sent: the script stays.
    fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for UnusedScript {
    fn drop(&mut self) {
        let Some(path) = self.0.take() else { return };
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(
                "removed the rollback script {}: nothing was cut over",
                path.display()
            ),
            Err(e) => tracing::warn!(
                "nothing was cut over, but the rollback script {} could not be removed ({e}): delete it",
                path.display()
            ),
        }
    }
}

/// Writes the rollback script to `dir` and returns its path.
pub fn write_rollback(dir: &Path, plan: &Plan, script: &Script) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the rollback directory {}", dir.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let path = dir.join(format!(
        "doppel-rollback-{}-{}-{stamp}.sql",
        plan.original.oid,
        sanitize(&plan.names.table)
    ));
    std::fs::write(&path, &script.rollback)
        .with_context(|| format!("cannot write the rollback script {}", path.display()))?;
    let file = std::fs::File::open(&path)?;
    file.sync_all()?;
    Ok(path)
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Backoff before attempt `attempt` (1-based) after a lock timeout: 100 ms × 2^(attempt-1),
/// capped at 10 s, with ±50% jitter.
pub fn backoff(attempt: u32) -> Duration {
    let base = 100u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(7))
        .min(10_000);
    let jitter = rand::random::<u64>() % (base + 1);
    Duration::from_millis(base / 2 + jitter)
}

/// Runs the cutover. `unsettled` are keys verification deferred. `fingerprint` is the
/// original's catalog fingerprint taken when the shadow was built.
///
/// Errors: every attempt timed out on the lock (the original is untouched), DDL changed the
/// original, a deferred key still differs, or a statement failed (the transaction is rolled
/// back; the original is untouched).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: &mut Client,
    monitor: &Client,
    plan: &Plan,
    script: &Script,
    fencer: &Fencer,
    applier: &Applier,
    unsettled: &[Vec<Option<String>>],
    fingerprint: &str,
    options: &CutoverOptions,
) -> Result<CutoverReport> {
    let rollback_path = write_rollback(&options.rollback_dir, plan, script)?;
    tracing::info!("rollback script written to {}", rollback_path.display());
    // Removes the script on every way out before the COMMIT is sent: nothing was cut over.
    let mut script_file = UnusedScript(Some(rollback_path.clone()));
    let critical = || match options
        .throttle
        .as_ref()
        .and_then(|rx| rx.borrow().critical_error())
    {
        Some(e) => Err(e),
        None => Ok(()),
    };
    let table_q = plan.names.table_qualified();
    {
        let postponed = || {
            let by_flag = options
                .postpone_flag_file
                .as_ref()
                .is_some_and(|f| f.exists())
                && !options
                    .controls
                    .as_ref()
                    .is_some_and(|c| c.cut_over_requested());
            by_flag || options.controls.as_ref().is_some_and(|c| c.postponed())
        };
        let mut announced = false;
        let mut fence: Option<u64> = None;
        while postponed() {
            options.cancel.check()?;
            critical()?;
            applier.check()?;
            if !announced {
                tracing::info!(
                    "cutover postponed (flag file {}, or `postpone` on the control socket): remove the file or send `cut-over`; the shadow is kept caught up",
                    options
                        .postpone_flag_file
                        .as_ref()
                        .map(|f| f.display().to_string())
                        .unwrap_or_else(|| "-".into())
                );
                announced = true;
            }
            // One fence at a time keeps the slot confirmed and shows the applier keeps up; a
            // throttled applier only makes it wait (the postponement is not bounded).
            if fence.is_none_or(|n| applier.status().fence >= n) {
                fence = Some(fencer.emit().await?);
            }
            // Re-check every 500 ms, or at once when the operator changes a setting or aborts.
            let tick = async {
                match &options.controls {
                    Some(c) => {
                        let _ = tokio::time::timeout(
                            Duration::from_millis(500),
                            c.wait_until(|c| c.cut_over_requested() || c.abort_requested()),
                        )
                        .await;
                    }
                    None => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            };
            tokio::select! {
                _ = tick => {}
                _ = options.cancel.cancelled() => {}
            }
        }
    }
    for (_, who) in blockers(client, plan.original.oid).await? {
        tracing::warn!("before cutover: {who}");
    }
    let my_pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let mut killer = BlockerKiller::new(options.kill_blockers);
    let mut history: Vec<Attempt> = Vec::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        // The re-checks run under the lock, parsed and planned now (on this connection, each
        // attempt): under the lock only their execution remains.
        let fingerprint_check =
            catalog::PreparedFingerprint::new(&*client, plan.original.oid).await?;
        let dependents_check =
            crate::dependents::Prepared::new(&*client, plan.original.oid, &plan.names.publication)
                .await?;
        // Catch up outside the lock first, so the drain inside it is only the last moments;
        // attempt only when that drain is predicted to fit the budget.
        options.cancel.check()?;
        critical()?;
        let predicted = tokio::select! {
            r = drain_until_it_fits(fencer, applier, options.fence_timeout) => r?,
            _ = options.cancel.cancelled() => options.cancel.check().map(|_| Duration::ZERO)?,
        };

        let tx = client.transaction().await?;
        let lock_timeout = options
            .controls
            .as_ref()
            .map(|c| c.lock_timeout())
            .unwrap_or(options.lock_timeout);
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{}ms'",
            lock_timeout.as_millis().max(1)
        ))
        .await?;
        let lock_start = Instant::now();
        let mut locking = script.locks.clone();
        locking.push(format!("LOCK TABLE {table_q} IN ACCESS EXCLUSIVE MODE"));
        let locked = {
            let blocking = std::sync::Mutex::new(Vec::<i32>::new());
            // Watch who blocks the request while it waits (pg_blocking_pids, every 10 ms).
            let watch = async {
                loop {
                    let pids = blocking_pids(monitor, my_pid).await;
                    if let Ok(mut b) = blocking.lock() {
                        for pid in pids {
                            if !b.contains(&pid) {
                                b.push(pid);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            let lock_sql = locking.join(";\n");
            let result = tokio::select! {
                r = tx.batch_execute(&lock_sql) => r,
                never = watch => never,
            };
            let blocking = blocking.into_inner().unwrap_or_default();
            result.map_err(|e| (e, blocking))
        };
        let lock_wait = lock_start.elapsed();
        let mut record = |outcome: &str, blockers: Vec<i32>| {
            history.push(Attempt {
                attempt,
                outcome: outcome.to_string(),
                lock_wait_ms: lock_wait.as_secs_f64() * 1000.0,
                predicted_drain_ms: predicted.as_secs_f64() * 1000.0,
                blockers,
            });
        };
        if let Err((e, blocking)) = locked {
            let timed_out = e.as_db_error().is_some_and(|d| d.code().code() == "55P03");
            tx.rollback().await.ok();
            if !timed_out {
                return Err(anyhow::Error::new(e).context("locking the table for cutover"));
            }
            record("lock timeout", blocking.clone());
            let who: Vec<String> = blockers(client, plan.original.oid)
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|(_, w)| w)
                .collect();
            tracing::warn!(
                attempt,
                waited_ms = lock_wait.as_millis() as u64,
                blocking_pids = ?blocking,
                "cutover lock not granted within lock_timeout; rolled back. Possible blockers: {}",
                if who.is_empty() {
                    "none visible".to_string()
                } else {
                    who.join("; ")
                }
            );
            killer.act(client, &blocking).await;
            if attempt >= options.retries {
                return Err(crate::failure::fail(
                    crate::failure::FailureKind::LockBudget,
                    format!(
                        "cutover failed: the ACCESS EXCLUSIVE lock on {} was not granted within {} ms in {} attempts (long transactions or heavy lock traffic on the table); the original table is untouched. Retry later, raise --lock-timeout / --cutover-retries, or end the blocking sessions (--kill-blockers does it after a grace period)",
                        plan.original.qualified(),
                        options.lock_timeout.as_millis(),
                        attempt
                    ),
                ));
            }
            tokio::time::sleep(backoff(attempt)).await;
            continue;
        }
        let granted = Instant::now();
        let mut inside: Vec<(&'static str, Duration)> = Vec::new();
        let mut mark = granted;
        let mut lap = |name: &'static str| {
            let now = Instant::now();
            inside.push((name, now - mark));
            mark = now;
        };
        let current = fingerprint_check.compute(&tx).await?;
        lap("fingerprint re-check");
        if current != fingerprint {
            tx.rollback().await.ok();
            return Err(crate::failure::fail(
                crate::failure::FailureKind::Conflict,
                format!(
                    "the definition of {} changed during the migration (an index, constraint, trigger, grant or other DDL): the shadow does not carry it; aborting, the original table is untouched. Run doppel again",
                    plan.original.qualified()
                ),
            ));
        }
        let now = dependents_check.read(&tx).await?;
        if now != plan.dependents {
            tx.rollback().await.ok();
            return Err(crate::failure::fail(
                crate::failure::FailureKind::Conflict,
                format!(
                    "a view, trigger, policy, foreign key or publication bound to {} changed during the migration: the cutover would put back the old definition; aborting, the original table is untouched. Run doppel again",
                    plan.original.qualified()
                ),
            ));
        }
        lap("dependents re-check");
        let n = fencer.emit().await?;
        let fence_started = Instant::now();
        if let Err(e) = applier.wait_fence(n, options.fence_timeout).await {
            tx.rollback().await.ok();
            applier.check()?;
            record("drain timeout", Vec::new());
            tracing::warn!(
                attempt,
                "applier did not reach the fence inside the lock budget ({e}); rolled back"
            );
            if attempt >= options.retries {
                return Err(crate::failure::fail(
                    crate::failure::FailureKind::LockBudget,
                    format!(
                        "cutover failed: the applier could not drain the last changes within {} ms under the lock; the original table is untouched",
                        options.fence_timeout.as_millis()
                    ),
                ));
            }
            tokio::time::sleep(backoff(attempt)).await;
            continue;
        }
        let fence_wait = fence_started.elapsed();
        lap("fence and drain");
        let differing = verify::differing_keys(&tx, plan, unsettled).await?.len();
        if differing != 0 {
            tx.rollback().await.ok();
            return Err(crate::failure::fail(
                crate::failure::FailureKind::Verification,
                format!(
                    "verification failed under the cutover lock: {differing} row(s) differ between {} and the shadow; refusing to cut over, the original table is untouched",
                    plan.original.qualified()
                ),
            ));
        }
        lap("deferred keys re-check");
        for statement in &script.forward {
            if let Err(e) = tx.batch_execute(statement).await {
                tx.rollback().await.ok();
                return Err(anyhow::Error::new(e).context(format!(
                    "cutover statement failed, rolled back ({statement})"
                )));
            }
        }
        crate::testing::pause_point!(options.probe, "cutover-locked", plan.original.qualified());
        lap("renames and dependents");
        // From here the cutover may have committed even if COMMIT reports an error.
        script_file.keep();
        tx.commit().await.with_context(|| {
            format!(
                "committing the cutover (its outcome is unknown: check whether {} is the new table before using the rollback script {})",
                plan.original.qualified(),
                rollback_path.display()
            )
        })?;
        lap("commit");
        let lock_held = granted.elapsed();
        record("granted", Vec::new());
        tracing::info!(
            attempt,
            lock_held_ms = lock_held.as_secs_f64() * 1000.0,
            "cutover committed; inside the lock: {}",
            inside
                .iter()
                .map(|(step, d)| format!("{step} {:.1} ms", d.as_secs_f64() * 1000.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut unvalidated = Vec::new();
        for (name, sql) in &script.validate {
            if let Err(e) = client.batch_execute(sql).await {
                let why = e
                    .as_db_error()
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| e.to_string());
                unvalidated.push((name.clone(), why));
            }
        }
        let mut report = CutoverReport {
            attempts: attempt,
            lock_held,
            fence_wait,
            record_path: rollback_path.with_extension("json"),
            rollback_path,
            unvalidated,
            history,
            killed: killer.killed,
            inside_lock: inside,
        };
        match write_record(plan, &report) {
            Ok(path) => report.record_path = path,
            Err(e) => tracing::warn!("could not store the cutover record: {e:#}"),
        }
        return Ok(report);
    }
}

/// Catch-up rounds before a lock attempt (DESIGN.md §4 step 1): a fence is emitted and
/// awaited; the round trip is the drain the lock would have to wait for (it drains what
/// arrived during the previous round). Repeats until one round trip takes at most half of
/// `budget` (`--fence-timeout`; the other half absorbs what arrives while the lock is
/// requested). Returns the last round trip, the predicted drain under the lock.
///
/// Errors: the applier failed, or one round did not finish within 300 s.
async fn drain_until_it_fits(
    fencer: &Fencer,
    applier: &Applier,
    budget: Duration,
) -> Result<Duration> {
    let mut rounds = 0u32;
    loop {
        let started = Instant::now();
        let n = fencer.emit().await?;
        applier.wait_fence(n, Duration::from_secs(300)).await?;
        let took = started.elapsed();
        rounds += 1;
        if took <= budget / 2 {
            return Ok(took);
        }
        if rounds == 1 || rounds.is_multiple_of(20) {
            tracing::info!(
                drain_ms = took.as_millis() as u64,
                budget_ms = budget.as_millis() as u64,
                rounds,
                "backlog drain predicted not to fit half the lock budget (--fence-timeout); catching up before locking"
            );
        }
    }
}

/// Sessions blocking backend `pid`'s lock request (`pg_blocking_pids`); empty on error.
async fn blocking_pids(monitor: &Client, pid: i32) -> Vec<i32> {
    match monitor
        .query_one("SELECT pg_blocking_pids($1)", &[&pid])
        .await
    {
        Ok(row) => row.get::<_, Vec<i32>>(0),
        Err(_) => Vec::new(),
    }
}

/// `--kill-blockers`: cancels, then terminates, the sessions that block the cutover lock.
struct BlockerKiller {
    grace: Option<Duration>,
    first_seen: std::collections::HashMap<i32, Instant>,
    cancelled: std::collections::HashSet<i32>,
    killed: Vec<String>,
}

impl BlockerKiller {
    fn new(grace: Option<Duration>) -> BlockerKiller {
        BlockerKiller {
            grace,
            first_seen: Default::default(),
            cancelled: Default::default(),
            killed: Vec::new(),
        }
    }

    /// After a timed-out attempt: `blocking` are the pids `pg_blocking_pids` reported. A pid
    /// blocking for at least the grace period is cancelled; one already cancelled that still
    /// blocks is terminated. Sessions of doppel itself are never touched.
    async fn act(&mut self, client: &Client, blocking: &[i32]) {
        let Some(grace) = self.grace else { return };
        let now = Instant::now();
        for &pid in blocking {
            let since = *self.first_seen.entry(pid).or_insert(now);
            let (function, verb) = if self.cancelled.contains(&pid) {
                ("pg_terminate_backend", "terminated")
            } else if now.duration_since(since) >= grace {
                ("pg_cancel_backend", "cancelled")
            } else {
                continue;
            };
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {function}(pid), format('pid %s (%s, %s): %s', pid, coalesce(usename::text, '?'), state,
                                left(regexp_replace(coalesce(query, ''), '\\s+', ' ', 'g'), 60))
                         FROM pg_stat_activity
                         WHERE pid = $1 AND application_name NOT LIKE 'doppel%'"
                    ),
                    &[&pid],
                )
                .await;
            match row {
                Ok(Some(r)) if r.get::<_, bool>(0) => {
                    let who: String = r.get(1);
                    tracing::warn!("--kill-blockers: {verb} {who}");
                    self.killed.push(format!("{verb} {who}"));
                    self.cancelled.insert(pid);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("--kill-blockers: could not signal pid {pid}: {e}"),
            }
        }
    }
}

/// Stores the cutover record (JSON) next to the rollback script: attempts with their
/// outcomes, lock hold and fence wait (ms), killed sessions. Returns its path.
///
/// Errors: the file cannot be written.
fn write_record(plan: &Plan, report: &CutoverReport) -> Result<PathBuf> {
    let attempts: Vec<serde_json::Value> = report
        .history
        .iter()
        .map(|a| {
            serde_json::json!({
                "attempt": a.attempt,
                "outcome": a.outcome,
                "lock_wait_ms": a.lock_wait_ms,
                "predicted_drain_ms": a.predicted_drain_ms,
                "blocking_pids": a.blockers,
            })
        })
        .collect();
    let record = serde_json::json!({
        "table": plan.original.qualified(),
        "table_oid": plan.original.oid,
        "kept_as": plan.names.old_qualified(),
        "finished_at_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "lock_held_ms": report.lock_held.as_secs_f64() * 1000.0,
        "fence_wait_ms": report.fence_wait.as_secs_f64() * 1000.0,
        "inside_lock_ms": report
            .inside_lock
            .iter()
            .map(|(step, d)| serde_json::json!({"step": step, "ms": d.as_secs_f64() * 1000.0}))
            .collect::<Vec<_>>(),
        "attempts": attempts,
        "killed": report.killed,
        "rollback_script": report.rollback_path.display().to_string(),
        "unvalidated": report.unvalidated.iter().map(|(n, e)| serde_json::json!({"name": n, "error": e})).collect::<Vec<_>>(),
    });
    let path = report.rollback_path.with_extension("json");
    std::fs::write(&path, serde_json::to_string_pretty(&record)?)
        .with_context(|| format!("cannot write the cutover record {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..20 {
            let d = backoff(attempt);
            assert!(d <= Duration::from_millis(15_000), "{d:?}");
        }
        assert!(backoff(1) <= Duration::from_millis(150));
        assert!(backoff(5) >= Duration::from_millis(800));
    }
}
