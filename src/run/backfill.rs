//! `doppel backfill` (docs/design.md §1.12): checks, the plan (dry run by default), the
//! batched update with the operator's side every run has (control socket, throttles, hooks,
//! status line), the resume from the history, and the validation report.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use tokio_postgres::Client;

use super::operator::{Operator, Place, Subject};
use super::tasks::AbortOnDrop;
use super::{RunOptions, lock_table};
use crate::cancel::Cancel;
use crate::conninfo;
use crate::failure::{Check, Refusal, Refused, exit_code};
use crate::model::assignment;
use crate::model::catalog::{self, Table};
use crate::model::names::Names;
use crate::ops::history::{self, End, HistoryOptions, Record, Start};
use crate::ops::hooks::Hooks;
use crate::ops::progress::{self, Display, Progress};
use crate::ops::throttle::{ThrottleOptions, Throttler};
use crate::phases::backfill_update::{
    self, BatchUpdate, Key, UpdateOptions, UpdateReport, UpdateSpec, Validation,
};

/// Everything `doppel backfill` takes.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// The table, as SQL writes it.
    pub table: String,
    /// `--set 'column = expression'` (repeatable).
    pub sets: Vec<String>,
    /// `--where`: only rows matching it.
    pub filter: Option<String>,
    /// False for a dry run.
    pub execute: bool,
    /// Chunking, pacing, retries.
    pub update: UpdateOptions,
    /// When to slow down or abort.
    pub throttle: ThrottleOptions,
    /// The control socket (default `<work_dir>/doppel-<oid>.sock`).
    pub control_socket: Option<PathBuf>,
    /// Hook executables.
    pub hooks_dir: Option<PathBuf>,
    /// Directory of the default control socket.
    pub work_dir: PathBuf,
    /// How progress is shown.
    pub display: Display,
    /// Interval between status lines.
    pub status_interval: Duration,
    /// Where the run is recorded (and resumed from).
    pub history: HistoryOptions,
}

impl BackfillOptions {
    /// The defaults of `doppel backfill` (a dry run) for `table` and `sets`.
    pub fn new(table: &str, sets: &[&str]) -> BackfillOptions {
        BackfillOptions {
            table: table.into(),
            sets: sets.iter().map(|s| s.to_string()).collect(),
            filter: None,
            execute: false,
            update: UpdateOptions::default(),
            throttle: ThrottleOptions::default(),
            control_socket: None,
            hooks_dir: None,
            work_dir: std::env::temp_dir(),
            display: Display::Lines,
            status_interval: Duration::from_secs(10),
            history: HistoryOptions::default(),
        }
    }

    /// The run options the shared parts (history, operator, control socket, registry) read:
    /// the backfill's history table, lock_timeout, throttles, work directory and chunk time.
    fn run_options(&self) -> RunOptions {
        let mut out = RunOptions {
            history: self.history.clone(),
            lock_timeout: self.update.lock_timeout,
            throttle: self.throttle.clone(),
            work_dir: self.work_dir.clone(),
            ..RunOptions::new(&self.table, &[])
        };
        out.copy.chunk_time = self.update.chunk_time;
        out
    }

    /// The clauses recorded in the history (and matched to resume): the assignments, then
    /// the filter.
    fn clauses(&self) -> Vec<String> {
        let mut out = self.sets.clone();
        if let Some(w) = &self.filter {
            out.push(format!("WHERE {w}"));
        }
        out
    }
}

/// What `doppel backfill` planned or did.
#[derive(Debug, Clone)]
pub enum BackfillOutcome {
    /// A dry run.
    Planned(Box<BackfillPlan>),
    /// The update ran; the validation report.
    Done(Box<BackfillReport>),
}

/// The dry run's plan.
#[derive(Debug, Clone)]
pub struct BackfillPlan {
    /// The table.
    pub table: Table,
    /// The chunk statement (`$n` are the key bounds).
    pub update_sql: String,
    /// The key a run would resume after, with the history row it comes from.
    pub resume: Option<(i64, Key)>,
    /// Where the run would be recorded.
    pub history: String,
}

/// What an executed backfill did.
#[derive(Debug, Clone)]
pub struct BackfillReport {
    /// The table.
    pub table: Table,
    /// The chunks.
    pub update: UpdateReport,
    /// The validation report.
    pub validation: Validation,
    /// The history row, when recorded.
    pub history_id: Option<i64>,
}

/// Runs `doppel backfill` (a dry run unless `options.execute`).
///
/// Errors: a refusal (exit 2: no primary key, a column the table lacks or that is generated,
/// an expression or filter the server rejects, another run on the table), an abort (3), a
/// critical threshold (7), values the rows reject (8), a query failure (1). Chunks committed
/// before an error stay, and a new run resumes after them.
pub async fn backfill(
    config: &(impl conninfo::ToConnInfo + ?Sized),
    options: &BackfillOptions,
    cancel: &Cancel,
) -> Result<BackfillOutcome> {
    let config = &*config.to_conn_info();
    let mut control = conninfo::connect(config).await?;
    control
        .batch_execute(&format!(
            "SET application_name = 'doppel backfill'; {}",
            crate::sql::WORKING_SESSION
        ))
        .await?;
    let spec = check(&control, options).await?;
    lock_table(&control, spec.table.oid, &spec.table.qualified()).await?;
    let resume = previous(&control, options, &spec.table).await?;
    if !options.execute {
        return Ok(BackfillOutcome::Planned(Box::new(BackfillPlan {
            update_sql: spec.update_sql(true, true),
            table: spec.table,
            resume,
            history: options.history.describe(),
        })));
    }
    let record = match options.history.enabled {
        true => open_record(config, options, &spec.table, resume.as_ref()).await,
        false => None,
    };
    let result = execute(
        config,
        options,
        &mut control,
        &spec,
        &record,
        resume,
        cancel,
    )
    .await;
    if let Some(record) = record {
        record.finish(end_of(&result)).await;
    }
    result.map(BackfillOutcome::Done)
}

/// The checks: the table has a primary key, each `--set` names a column it has that is not
/// generated, and the server accepts the chunk statement (prepared, not run).
///
/// Errors: [`Refused`] listing the reasons; a query failure.
async fn check(client: &Client, options: &BackfillOptions) -> Result<UpdateSpec> {
    let oid = catalog::resolve(client, &options.table)
        .await
        .map_err(|e| Refused::from(Refusal::without_fix(Check::TableName, format!("{e:#}"))))?;
    let table = catalog::inspect(client, oid).await?;
    let sets = assignment::parse_all(&options.sets).map_err(|e| {
        Refused::from(Refusal::new(
            Check::Backfill,
            format!("--set: {e}"),
            "write it as --set 'column = expression'",
        ))
    })?;
    let mut refusals = Vec::new();
    if table.pk_columns.is_empty() {
        refusals.push(Refusal::new(
            Check::PrimaryKey,
            format!(
                "{} has no primary key: doppel backfill updates it in primary-key chunks",
                table.qualified()
            ),
            "add a primary key first",
        ));
    }
    for a in &sets {
        match table.column(&a.column) {
            None => refusals.push(Refusal::new(
                Check::Backfill,
                format!(
                    "--set {:?}: {} has no column {:?}",
                    a.text,
                    table.qualified(),
                    a.column
                ),
                "add the column first (doppel run --alter \"ADD COLUMN ..\")",
            )),
            Some(c)
                if c.generated_sql.is_some()
                    || c.identity == Some('a')
                    || table.pk_columns.contains(&c.name) =>
            {
                refusals.push(Refusal::without_fix(
                    Check::Backfill,
                    format!(
                        "--set {:?}: {:?} is a generated, identity or primary-key column",
                        a.text, a.column
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    if !refusals.is_empty() {
        return Err(Refused(refusals).into());
    }
    let spec = UpdateSpec {
        table,
        sets,
        filter: options.filter.clone(),
    };
    if let Err(e) = client.prepare(&spec.update_sql(true, true)).await {
        return Err(Refused::from(Refusal::new(
            Check::Backfill,
            format!(
                "the server rejects the chunk statement: {}",
                e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
            ),
            "check the --set expressions and the --where predicate (columns by their plain names, or as src.<column>)",
        ))
        .into());
    }
    Ok(spec)
}

/// The last run of the same backfill, when it did not finish: its history row and the key
/// its last committed chunk ended at. A row still `running` belongs to a run that died (this
/// session holds the table's advisory lock): it is marked `interrupted`.
///
/// Errors: a query fails.
async fn previous(
    client: &Client,
    options: &BackfillOptions,
    table: &Table,
) -> Result<Option<(i64, Key)>> {
    if !options.history.enabled {
        return Ok(None);
    }
    let exists: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&options.history.qualified()],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let clauses = options.clauses();
    let row = client
        .query_opt(
            &format!(
                "SELECT id, outcome, (details->'resume_after')::text FROM {}
                 WHERE kind = 'backfill' AND table_name = $1 AND clauses = $2::text[]
                 ORDER BY id DESC LIMIT 1",
                options.history.qualified()
            ),
            &[&table.qualified(), &clauses],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let (id, outcome, point): (i64, String, Option<String>) = (row.get(0), row.get(1), row.get(2));
    if outcome == "succeeded" {
        return Ok(None);
    }
    if outcome == "running" && options.execute {
        client
            .execute(
                &format!(
                    "UPDATE {} SET outcome = 'interrupted', ended_at = coalesce(ended_at, clock_timestamp()) WHERE id = $1",
                    options.history.qualified()
                ),
                &[&id],
            )
            .await?;
    }
    let key: Option<Key> = point.and_then(|p| serde_json::from_str(&p).ok());
    Ok(key.map(|k| (id, k)))
}

/// Opens the run's history row; `None` (logged) when it cannot be written.
async fn open_record(
    config: &conninfo::ConnInfo,
    options: &BackfillOptions,
    table: &Table,
    resume: Option<&(i64, Key)>,
) -> Option<Record> {
    let start = Start {
        kind: "backfill",
        table: table.qualified(),
        table_oid: Some(table.oid),
        clauses: options.clauses(),
        strategies: json!([{"strategy": "backfill", "resumes": resume.map(|(id, _)| id)}]),
    };
    match super::history::open(config, &options.run_options(), &start).await {
        Ok(record) => {
            // A run that stops before its first chunk still resumes where the last one did.
            if let Some((_, key)) = resume
                && let Err(e) = record.note(&json!({"resume_after": key})).await
            {
                tracing::warn!("could not record the resume point: {e:#}");
            }
            Some(record)
        }
        Err(e) => {
            tracing::warn!(
                "could not record this backfill in {} ({e:#}); it runs without resume points",
                options.history.qualified()
            );
            None
        }
    }
}

/// Runs the chunks with the operator's side, then validates.
async fn execute(
    config: &conninfo::ConnInfo,
    options: &BackfillOptions,
    control: &mut Client,
    spec: &UpdateSpec,
    record: &Option<Record>,
    resume: Option<(i64, Key)>,
    cancel: &Cancel,
) -> Result<Box<BackfillReport>> {
    let progress = Progress::new();
    progress.update(|s| s.rows_estimate = spec.table.rows_estimate.max(0) as u64);
    // The control socket's live settings start from the backfill's own.
    let run_options = options.run_options();
    let socket = options
        .control_socket
        .clone()
        .unwrap_or_else(|| crate::ops::control::default_path(&options.work_dir, spec.table.oid));
    let hooks = Hooks::new(options.hooks_dir.clone())?;
    let subject = Subject::table_only(&spec.table, &options.clauses());
    let place = Place::of(control, config, Some(socket)).await?;
    let mut operator =
        Operator::start(subject, progress.clone(), hooks, place, &run_options).await?;
    let (abort, internal) = Cancel::new();
    operator.drive_abort(abort.clone());
    let outer = cancel.clone();
    let _forward = AbortOnDrop(tokio::spawn(async move {
        outer.cancelled().await;
        abort.send_replace(true);
    }));
    let result = async {
        operator.hook("on-startup").await?;
        let _reporter = AbortOnDrop(progress::spawn_reporter(
            progress.clone(),
            options.display,
            options.status_interval,
        ));
        let names = Names::new(&spec.table.schema, &spec.table.name, spec.table.oid);
        let mut throttler = Throttler::spawn(
            config,
            options.throttle.clone(),
            &names.slot,
            &names.message_prefix,
        )
        .await?;
        throttler.abort_on(internal.clone());
        operator.drive_throttle(throttler.live());
        operator.drive_hooks(throttler.watch());
        let _feed = super::tasks::feed_throttle_progress(progress.clone(), throttler.watch());
        if let Some((id, key)) = &resume {
            tracing::info!("resuming the backfill of history row {id} after key {key:?}");
        }
        let update = BatchUpdate {
            spec,
            options: &options.update,
            progress: &progress,
            throttle: Some(&throttler),
            controls: Some(&operator.controls),
            cancel: internal.clone(),
            checkpoint: record.as_ref().map(Record::checkpoint_sql),
            resume_after: resume.map(|(_, k)| k),
        };
        let report = update.run(control).await?;
        let validation = backfill_update::validate(control, spec).await?;
        Ok::<_, anyhow::Error>(Box::new(BackfillReport {
            table: spec.table.clone(),
            update: report,
            validation,
            history_id: record.as_ref().map(|r| r.id),
        }))
    }
    .await;
    match &result {
        Ok(_) => operator.hook("on-success").await.ok(),
        Err(_) => operator.hook("on-failure").await.ok(),
    };
    result
}

/// The history row's end from the result.
fn end_of(result: &Result<Box<BackfillReport>>) -> End {
    match result {
        Ok(r) => End {
            outcome: "succeeded".into(),
            exit_code: 0,
            rows_copied: Some(r.update.rows_changed as i64),
            details: json!({
                "rows_examined": r.update.rows_examined,
                "rows_changed": r.update.rows_changed,
                "chunks": r.update.chunks,
                "retries": r.update.retries,
                "resumed_after": r.update.resumed_after,
                "elapsed_s": r.update.elapsed.as_secs_f64(),
                "validation": r.validation.lines(),
                "clean": r.validation.clean(),
            }),
            ..End::default()
        },
        Err(e) => {
            let code = exit_code(e);
            End {
                outcome: history::outcome_of(code).into(),
                exit_code: i32::from(code),
                error: Some(format!("{e:#}")),
                details: json!({}),
                ..End::default()
            }
        }
    }
}
