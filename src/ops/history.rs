//! The migration history (docs/design.md §1.11): one row per executed `doppel run` (each
//! strategy) and `doppel backfill`, in a table of the migrated database (`doppel.migrations`
//! by default; schema and name configurable), created on first use. A row is written when
//! the run starts (outcome `running`) and completed when it ends: the table, the clauses, the
//! strategy of each, the operator (`current_user` and the host doppel runs on), start and end
//! times, outcome and exit code, rows copied, the lock hold, the cutover's commit LSN, the
//! rollback script's text, and details (a backfill's checkpoint and report).
//!
//! History is a record, not a gate: if the table cannot be created or written (no privilege),
//! the run goes on and the failure is logged. `--no-history` turns it off.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::sql::{ident, qualified};

/// Where the history is kept, or that it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryOptions {
    /// False with `--no-history`.
    pub enabled: bool,
    /// The schema (`doppel`).
    pub schema: String,
    /// The table (`migrations`).
    pub table: String,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        HistoryOptions {
            enabled: true,
            schema: "doppel".into(),
            table: "migrations".into(),
        }
    }
}

impl HistoryOptions {
    /// `schema.table` (unquoted parts, as `--history-table` takes them; `table` alone keeps
    /// the schema `doppel`).
    ///
    /// Errors: more than one dot, or an empty part.
    pub fn parse(text: &str) -> Result<HistoryOptions> {
        let parts: Vec<&str> = text.split('.').collect();
        let (schema, table) = match parts.as_slice() {
            [table] => ("doppel", *table),
            [schema, table] => (*schema, *table),
            _ => bail!("--history-table {text:?}: write schema.table"),
        };
        if schema.is_empty() || table.is_empty() {
            bail!("--history-table {text:?}: write schema.table");
        }
        Ok(HistoryOptions {
            enabled: true,
            schema: schema.into(),
            table: table.into(),
        })
    }

    /// `"schema"."table"`.
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.table)
    }

    /// What the plan says about the history: where the run will be recorded, or that it
    /// will not be.
    pub fn describe(&self) -> String {
        if self.enabled {
            format!(
                "this run will be recorded in {} (created on first use; --no-history to skip)",
                self.qualified()
            )
        } else {
            format!(
                "--no-history: this run will not be recorded (it would be in {})",
                self.qualified()
            )
        }
    }
}

/// Creates the history schema and table if they do not exist.
///
/// Errors: the role may not create them, or a query fails.
pub async fn ensure(client: &Client, options: &HistoryOptions) -> Result<()> {
    let sql = format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {table} (
             id bigserial PRIMARY KEY,
             kind text NOT NULL,
             table_name text NOT NULL,
             table_oid oid,
             clauses text[] NOT NULL DEFAULT '{{}}',
             strategies jsonb NOT NULL DEFAULT '[]',
             operator text NOT NULL DEFAULT current_user,
             host text,
             started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
             ended_at timestamptz,
             outcome text NOT NULL DEFAULT 'running',
             exit_code integer,
             error text,
             rows_copied bigint,
             lock_hold_ms double precision,
             cutover_lsn pg_lsn,
             rollback_script text,
             details jsonb NOT NULL DEFAULT '{{}}',
             doppel_version text);
         CREATE INDEX IF NOT EXISTS {index} ON {table} (table_name, id)",
        schema = ident(&options.schema),
        table = options.qualified(),
        index = ident(&format!("{}_table_name_idx", options.table)),
    );
    // Two first runs at once can race on the catalog: one retry settles it.
    if client.batch_execute(&sql).await.is_err() {
        client
            .batch_execute(&sql)
            .await
            .with_context(|| format!("creating the history table {}", options.qualified()))?;
    }
    Ok(())
}

/// What is known of a run when it starts.
#[derive(Debug, Clone)]
pub struct Start {
    /// `run` or `backfill`.
    pub kind: &'static str,
    /// The table, quoted.
    pub table: String,
    /// Its OID when it starts.
    pub table_oid: Option<u32>,
    /// The clauses (or a backfill's assignments and `WHERE`).
    pub clauses: Vec<String>,
    /// `[{clause, strategy, reason}]`.
    pub strategies: Value,
}

/// How a run ended.
#[derive(Debug, Clone, Default)]
pub struct End {
    /// `succeeded`, `failed`, `aborted`, `refused`, ...
    pub outcome: String,
    /// The process exit code.
    pub exit_code: i32,
    /// The error, when it failed.
    pub error: Option<String>,
    /// Rows copied (shadow) or changed (backfill).
    pub rows_copied: Option<i64>,
    /// The longest hold of a lock that blocks writes (ms).
    pub lock_hold_ms: Option<f64>,
    /// The cutover's commit LSN.
    pub cutover_lsn: Option<String>,
    /// The rollback script's text.
    pub rollback_script: Option<String>,
    /// Merged into the row's `details`.
    pub details: Value,
}

/// One run's row, open until [`Record::finish`].
pub struct Record {
    client: Client,
    table: String,
    /// The row's `id`.
    pub id: i64,
}

impl Record {
    /// Creates the history table if needed and inserts the run's row (outcome `running`), on
    /// `client` (a session of its own, kept until [`Record::finish`]).
    ///
    /// Errors: the table cannot be created or written.
    pub async fn begin(client: Client, options: &HistoryOptions, start: &Start) -> Result<Record> {
        ensure(&client, options).await?;
        let table = options.qualified();
        let clauses: Vec<&str> = start.clauses.iter().map(String::as_str).collect();
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO {table} (kind, table_name, table_oid, clauses, strategies, host, doppel_version)
                     VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7) RETURNING id"
                ),
                &[
                    &start.kind,
                    &start.table,
                    &start.table_oid,
                    &clauses,
                    &start.strategies.to_string(),
                    &hostname(),
                    &env!("CARGO_PKG_VERSION"),
                ],
            )
            .await
            .context("recording the run in the history")?;
        Ok(Record {
            client,
            table,
            id: row.get(0),
        })
    }

    /// `UPDATE <history> SET details = details || $1 WHERE id = <id>`: run by a caller in its
    /// own transaction, so a checkpoint commits with the work it records (one parameter: the
    /// JSON object as text).
    pub fn checkpoint_sql(&self) -> String {
        format!(
            "UPDATE {} SET details = details || $1::text::jsonb WHERE id = {}",
            self.table, self.id
        )
    }

    /// Merges `details` into the row now.
    ///
    /// Errors: the update fails.
    pub async fn note(&self, details: &Value) -> Result<()> {
        self.client
            .execute(&self.checkpoint_sql(), &[&details.to_string()])
            .await?;
        Ok(())
    }

    /// Completes the row. A failure is logged, not returned: the run's outcome stands.
    pub async fn finish(self, end: End) {
        let sql = format!(
            "UPDATE {} SET ended_at = clock_timestamp(), outcome = $2, exit_code = $3, error = $4,
                 rows_copied = $5, lock_hold_ms = $6, cutover_lsn = $7::text::pg_lsn,
                 rollback_script = $8, details = details || $9::text::jsonb
             WHERE id = $1",
            self.table
        );
        if let Err(e) = self
            .client
            .execute(
                &sql,
                &[
                    &self.id,
                    &end.outcome,
                    &end.exit_code,
                    &end.error,
                    &end.rows_copied,
                    &end.lock_hold_ms,
                    &end.cutover_lsn,
                    &end.rollback_script,
                    &end.details.to_string(),
                ],
            )
            .await
        {
            tracing::warn!(
                "could not complete the history row {} in {}: {e}",
                self.id,
                self.table
            );
        }
    }
}

/// The outcome word for an exit code: `succeeded`, `refused`, `aborted`, `failed`.
pub fn outcome_of(exit_code: u8) -> &'static str {
    match exit_code {
        0 => "succeeded",
        2 => "refused",
        3 => "aborted",
        _ => "failed",
    }
}

/// One row of the history, as `doppel history` shows it.
#[derive(Debug, Clone)]
pub struct Row {
    /// The whole row as JSON (`row_to_json`).
    pub json: Value,
}

/// The history's rows, oldest first; only those of `table` (the name as SQL writes it,
/// resolved when it exists and compared with the recorded name, `"schema"."table"` always
/// quoted) when given. Empty when the history table does not exist.
///
/// Errors: a query fails.
pub async fn list(
    client: &Client,
    options: &HistoryOptions,
    table: Option<&str>,
) -> Result<Vec<Row>> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&options.qualified()],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let filter = match table {
        Some(t) => {
            let name: Option<String> = client
                .query_one(
                    "SELECT '\"' || replace(n.nspname, '\"', '\"\"') || '\".\"' || replace(c.relname, '\"', '\"\"') || '\"'
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE c.oid = to_regclass($1)",
                    &[&t],
                )
                .await?
                .get(0);
            Some(name.unwrap_or_else(|| t.to_string()))
        }
        None => None,
    };
    let rows = client
        .query(
            &format!(
                "SELECT row_to_json(h)::text FROM {} h
                 WHERE $1::text IS NULL OR h.table_name = $1 ORDER BY h.id",
                options.qualified()
            ),
            &[&filter],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let text: String = r.get(0);
            Ok(Row {
                json: serde_json::from_str(&text).context("reading a history row")?,
            })
        })
        .collect()
}

/// The host doppel runs on (`gethostname`), or `unknown`.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `[{clause, strategy, reason}]` for the history's `strategies` column.
pub fn strategies_json(clauses: &[(String, String, String)]) -> Value {
    Value::Array(
        clauses
            .iter()
            .map(|(clause, strategy, reason)| {
                json!({"clause": clause, "strategy": strategy, "reason": reason})
            })
            .collect(),
    )
}
