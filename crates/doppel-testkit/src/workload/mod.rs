//! A concurrent writer with a twin-table oracle (docs/design.md §2, "the oracle test pattern"),
//! used by `doppel demo`, the tests and the benchmarks.
//!
//! Every change the writer makes to the table is mirrored into an untouched twin table in the
//! same statement (a data-modifying CTE: `WITH i AS (INSERT .. RETURNING ..) INSERT INTO twin
//! ..`), so after a migration the new table projected onto the twin's columns must equal the
//! twin exactly. The writer mixes inserts, updates of small columns (which leave a TOASTed
//! `note` unchanged — pgoutput's `u`), updates that write large out-of-line values, NULLs,
//! deletes and primary-key changes, sometimes several in one transaction. It uses no typed
//! parameters and names every column, so its statements keep working on the new table after
//! the cutover.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Transaction};

use postgres_protocol::escape::escape_identifier as ident;

pub mod ledger;
mod matrix;

pub use matrix::{
    MATRIX_TYPES_SQL, MatrixColumn, big_bytea_sql, big_jsonb_sql, big_text_sql,
    create_matrix_tables, edge_rows, insert_template, matrix_columns, rounding_columns,
    server_has_xml,
};

/// Columns of the demo table, shared by the table and its twin.
pub const COLUMNS: &str = "id, customer_id, status, amount, note, created_at, tags, payload, ref, flag, ratio, due, blob, ip, span";

/// Creates the demo table `name` (15 columns of 13 types, primary key, two secondary indexes)
/// and its twin `twin`, and loads `rows` identical rows into both.
///
/// Errors: a statement fails (e.g. the tables exist).
pub async fn create_tables(client: &Client, name: &str, twin: &str, rows: i64) -> Result<()> {
    let (t, w) = (ident(name), ident(twin));
    client
        .batch_execute(&format!(
            "CREATE TABLE {t} (
               id bigserial PRIMARY KEY,
               customer_id int NOT NULL,
               status text NOT NULL,
               amount numeric(12,2) NOT NULL,
               note text,
               created_at timestamptz NOT NULL DEFAULT now(),
               tags text[],
               payload jsonb,
               ref uuid,
               flag boolean,
               ratio float8,
               due date,
               blob bytea,
               ip inet,
               span interval);
             CREATE INDEX {ci} ON {t} (customer_id);
             CREATE INDEX {cr} ON {t} (created_at);
             CREATE TABLE {w} (LIKE {t});
             ALTER TABLE {w} ADD PRIMARY KEY (id);",
            ci = ident(&format!("{name}_customer_idx")),
            cr = ident(&format!("{name}_created_idx")),
        ))
        .await
        .context("creating the demo tables")?;
    client
        .batch_execute(&format!(
            "INSERT INTO {t} (customer_id, status, amount, note, created_at, tags, payload, ref, flag, ratio, due, blob, ip, span)
             SELECT ((i::bigint * 7919) % 100000)::int,
                    (ARRAY['pending','paid','shipped','refunded'])[1 + i % 4],
                    ((i * 37) % 100000) / 100.0,
                    CASE WHEN i % 10 = 0 THEN NULL WHEN i % 10 = 1 THEN '' ELSE md5(i::text) || md5((i * 7)::text) END,
                    timestamptz '2026-01-01 00:00:00+00' - (i || ' seconds')::interval,
                    CASE WHEN i % 5 = 0 THEN '{{}}'::text[] ELSE ARRAY['t' || (i % 3), 'ü' || (i % 7)] END,
                    jsonb_build_object('i', i, 'even', i % 2 = 0),
                    md5(i::text)::uuid,
                    CASE WHEN i % 3 = 0 THEN NULL ELSE i % 2 = 0 END,
                    CASE WHEN i % 1000 = 0 THEN 'NaN'::float8 ELSE i / 3.0 END,
                    date '2026-01-01' + (i % 365),
                    decode(md5(i::text), 'hex'),
                    ('10.' || (i % 250) || '.' || (i % 200) || '.1')::inet,
                    (i % 1000 || ' minutes')::interval
             FROM generate_series(1, {rows}) AS i;
             INSERT INTO {w} SELECT * FROM {t};"
        ))
        .await
        .context("loading the demo rows")?;
    for table in [&t, &w] {
        client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await?;
    }
    Ok(())
}

/// Creates `name (id int PRIMARY KEY, v int NOT NULL)` holding the rows `(i, i)` for `i` in
/// `1..=rows`: the small table most tests migrate (`ALTER COLUMN v TYPE bigint`).
///
/// Errors: a statement fails (e.g. the table exists).
pub async fn create_id_v_table(client: &Client, name: &str, rows: i64) -> Result<()> {
    let t = ident(name);
    client
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO {t} SELECT i, i FROM generate_series(1, {rows}) i;"
        ))
        .await
        .with_context(|| format!("creating {name}"))
}

/// Rows of `table` (projected onto the twin's columns and types) and of `twin` that have no
/// exact counterpart in the other: 0 means equal multisets (see [`Difference::rows`]).
///
/// Values are compared by their text form (see [`compare`]), so `-0` and `0`, `1.5` and
/// `1.50`, `'1 day'` and `'24 hours'` differ, and types without an equality operator
/// (`json`, `point`, `xml`) can be compared.
pub async fn mismatches(client: &Client, table: &str, twin: &str) -> Result<i64> {
    Ok(compare_with_twin(client, table, twin).await?.rows())
}

/// How two row sets differ (see [`compare`]).
#[derive(Debug, Clone, Default)]
pub struct Difference {
    /// Rows of the left set without an exact counterpart in the right one.
    pub only_left: i64,
    /// Rows of the right set without an exact counterpart in the left one.
    pub only_right: i64,
    /// Rows in the left set.
    pub left_rows: i64,
    /// Rows in the right set.
    pub right_rows: i64,
    /// A few differing rows, as text, prefixed with `<` (left only) or `>` (right only).
    pub sample: Vec<String>,
}

impl Difference {
    /// Mismatched rows: rows without an exact counterpart on the other side, both sides
    /// together (a stale row counts twice, a lost or ghost row once; the difference in counts
    /// is `only_left - only_right`). 0 means equal multisets.
    pub fn rows(&self) -> i64 {
        self.only_left + self.only_right
    }
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rows vs {}; {} only left, {} only right",
            self.left_rows, self.right_rows, self.only_left, self.only_right
        )?;
        for row in &self.sample {
            write!(f, "\n  {row}")?;
        }
        Ok(())
    }
}

/// Compares two queries' results as multisets (`EXCEPT ALL` both ways, plus counts), on a
/// session whose float output is exact (`extra_float_digits = 3`, set locally in a
/// transaction of its own on `client`). Each query should select text columns in the same
/// order (`col::text`): text comparison is exact where `=` is not (`-0 = 0`, `1.5 = 1.50`,
/// `'1 day' = '24 hours'`) and works for types without equality. Rows are compared by the
/// MD5 of their text form (`ROW(..)::text`, which tells NULL from `''`), so wide rows do not
/// spill; up to 6 differing rows are returned in full in [`Difference::sample`].
///
/// Errors: a query fails (e.g. a column is missing).
pub async fn compare(client: &Client, left: &str, right: &str) -> Result<Difference> {
    client
        .batch_execute(
            "BEGIN; SET LOCAL extra_float_digits = 3; SET LOCAL DateStyle = 'ISO, YMD';
             SET LOCAL IntervalStyle = 'postgres'",
        )
        .await?;
    let result = async {
        let counts = client
            .query_one(
                &format!(
                    "WITH l AS MATERIALIZED (SELECT md5(x::text) AS h FROM ({left}) x),
                          r AS MATERIALIZED (SELECT md5(x::text) AS h FROM ({right}) x)
                     SELECT (SELECT count(*) FROM (SELECT h FROM l EXCEPT ALL SELECT h FROM r) a),
                            (SELECT count(*) FROM (SELECT h FROM r EXCEPT ALL SELECT h FROM l) b),
                            (SELECT count(*) FROM l),
                            (SELECT count(*) FROM r)"
                ),
                &[],
            )
            .await?;
        let mut difference = Difference {
            only_left: counts.get(0),
            only_right: counts.get(1),
            left_rows: counts.get(2),
            right_rows: counts.get(3),
            sample: Vec::new(),
        };
        if difference.only_left + difference.only_right > 0 {
            for (mark, a, b) in [("<", left, right), (">", right, left)] {
                for row in client
                    .query(
                        &format!("SELECT d::text FROM ({a} EXCEPT ALL {b}) d ORDER BY 1 LIMIT 3"),
                        &[],
                    )
                    .await?
                {
                    let text: String = row.get(0);
                    let short: String = text.chars().take(600).collect();
                    difference.sample.push(format!("{mark} {short}"));
                }
            }
        }
        Ok::<_, anyhow::Error>(difference)
    }
    .await;
    client
        .batch_execute(if result.is_ok() { "COMMIT" } else { "ROLLBACK" })
        .await?;
    result
}

/// Columns of `table` (name and `format_type`), in order.
///
/// Errors: the table does not exist.
pub async fn table_columns(client: &Client, table: &str) -> Result<Vec<(String, String)>> {
    let rows = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&ident(table)],
        )
        .await
        .with_context(|| format!("reading the columns of {table}"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// `table` projected onto the twin's columns and types compared with `twin` (the oracle of
/// docs/design.md §2), exactly, by text ([`compare`]).
///
/// Errors: a column of the twin is missing from `table` or cannot be cast back.
pub async fn compare_with_twin(client: &Client, table: &str, twin: &str) -> Result<Difference> {
    let cols = table_columns(client, twin).await?;
    let projected: Vec<String> = cols
        .iter()
        .map(|(name, ty)| format!("{}::{ty}::text", ident(name)))
        .collect();
    let plain: Vec<String> = cols
        .iter()
        .map(|(name, _)| format!("{}::text", ident(name)))
        .collect();
    compare(
        client,
        &format!("SELECT {} FROM {}", projected.join(", "), ident(table)),
        &format!("SELECT {} FROM {}", plain.join(", "), ident(twin)),
    )
    .await
}

/// The reference oracle for changes that are not reversible (rounding type changes,
/// `USING`, dropped columns): copies `twin` into a fresh table `reference` (dropped first if
/// it exists), applies `alters` to it with plain `ALTER TABLE` — PostgreSQL's own conversion
/// — and compares the migrated `table` with it on every column of `table`, by text.
///
/// Errors: an ALTER fails on the reference, or the tables' columns differ.
pub async fn compare_with_reference(
    client: &Client,
    table: &str,
    twin: &str,
    reference: &str,
    alters: &[String],
) -> Result<Difference> {
    let (w, r) = (ident(twin), ident(reference));
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {r}; CREATE TABLE {r} (LIKE {w}); INSERT INTO {r} SELECT * FROM {w};"
        ))
        .await
        .context("copying the twin into the reference table")?;
    for alter in alters {
        client
            .batch_execute(&format!("ALTER TABLE {r} {alter}"))
            .await
            .with_context(|| format!("ALTER TABLE {reference} {alter}"))?;
    }
    let cols = table_columns(client, table).await?;
    let ref_cols = table_columns(client, reference).await?;
    let mut names: Vec<&(String, String)> = cols.iter().collect();
    let mut ref_names: Vec<&(String, String)> = ref_cols.iter().collect();
    names.sort();
    ref_names.sort();
    if names != ref_names {
        anyhow::bail!(
            "{table} has columns {cols:?}, the reference altered by PostgreSQL has {ref_cols:?}"
        );
    }
    let list: Vec<String> = cols
        .iter()
        .map(|(name, _)| format!("{}::text", ident(name)))
        .collect();
    let list = list.join(", ");
    compare(
        client,
        &format!("SELECT {list} FROM {}", ident(table)),
        &format!("SELECT {list} FROM {r}"),
    )
    .await
}

/// What the writer saw.
#[derive(Debug, Clone, Default)]
pub struct WorkloadReport {
    /// Transactions committed.
    pub transactions: u64,
    /// Transactions that failed, other than those a reconnecting writer lost with its
    /// connection (counted in [`WorkloadReport::interrupted`]).
    pub errors: u64,
    /// The first few error messages.
    pub first_errors: Vec<String>,
    /// Worst transaction latency.
    pub max_latency: Duration,
    /// Median and 99th-percentile latency.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Connections a reconnecting writer ([`Workload::start_reconnecting`]) opened again
    /// after losing one.
    pub reconnects: u64,
    /// Transactions a reconnecting writer lost with its connection: rolled back, or
    /// committed if the connection died while COMMIT was under way. Either way the table
    /// and the twin stay equal, as each transaction writes both.
    pub interrupted: u64,
    /// The first few connection errors a reconnecting writer survived.
    pub first_connection_errors: Vec<String>,
}

/// A running writer.
pub struct Workload {
    stop: watch::Sender<bool>,
    handle: JoinHandle<Result<WorkloadReport>>,
}

/// First wait before a reconnecting writer tries to connect again; it doubles after each
/// failed attempt up to [`MAX_RECONNECT_DELAY`].
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(50);
/// Longest wait between two connection attempts of a reconnecting writer.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Timeout of one connection attempt of a reconnecting writer.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Error messages kept in a report.
const ERRORS_KEPT: usize = 5;

impl Workload {
    /// Starts a writer on `table` mirrored into `twin`, with a seeded random mix, pausing
    /// `pause` between transactions (zero = as fast as it can). A failed transaction counts
    /// as an error; once its connection is lost every later transaction fails.
    ///
    /// Errors: the first connection or the first query fails.
    pub async fn start(
        config: &tokio_postgres::Config,
        table: &str,
        twin: &str,
        seed: u64,
        pause: Duration,
    ) -> Result<Workload> {
        Self::spawn(config, table, twin, seed, pause, false).await
    }

    /// [`Workload::start`], but the writer survives a lost connection (a server restart, a
    /// terminated backend): it reconnects, waiting 50 ms after the first failed attempt and
    /// twice as long after each further one (at most 1 s), and goes on with the next
    /// transaction. Lost connections are counted in [`WorkloadReport::reconnects`] and
    /// [`WorkloadReport::interrupted`], not as errors; any other failure is an error.
    ///
    /// Errors: the first connection or the first query fails.
    pub async fn start_reconnecting(
        config: &tokio_postgres::Config,
        table: &str,
        twin: &str,
        seed: u64,
        pause: Duration,
    ) -> Result<Workload> {
        Self::spawn(config, table, twin, seed, pause, true).await
    }

    async fn spawn(
        config: &tokio_postgres::Config,
        table: &str,
        twin: &str,
        seed: u64,
        pause: Duration,
        reconnecting: bool,
    ) -> Result<Workload> {
        let client = writer_session(config).await?;
        let max_id: i64 = client
            .query_one(
                &format!("SELECT coalesce(max(id), 0) FROM {}", ident(table)),
                &[],
            )
            .await?
            .get(0);
        let (tx, rx) = watch::channel(false);
        let mut reconnect = config.clone();
        if reconnect.get_connect_timeout().is_none() {
            reconnect.connect_timeout(RECONNECT_TIMEOUT);
        }
        let writer = Writer {
            client,
            t: ident(table),
            w: ident(twin),
            rng: StdRng::seed_from_u64(seed),
            pause,
            max_id,
            reconnect: reconnecting.then_some(reconnect),
            stop: rx,
        };
        let handle = tokio::spawn(writer.run());
        Ok(Workload { stop: tx, handle })
    }

    /// Stops the writer and returns what it saw.
    ///
    /// Errors: the writer's task panicked.
    pub async fn stop(self) -> Result<WorkloadReport> {
        self.stop.send_replace(true);
        self.handle.await.context("workload task panicked")?
    }
}

/// A session of the writer, named `doppel workload` in `pg_stat_activity`.
async fn writer_session(config: &tokio_postgres::Config) -> Result<Client> {
    let client = crate::connect(config).await?;
    client
        .batch_execute("SET application_name = 'doppel workload'")
        .await?;
    Ok(client)
}

/// Whether `e` means the session is gone or the server is going away or not back yet: the
/// connection closed, an I/O error on it, SQLSTATE class 08 (connection exception), 57P01
/// (admin shutdown: a fast or immediate shutdown, `pg_terminate_backend`), 57P02 (crash
/// shutdown) or 57P03 (cannot connect now: starting up, in recovery).
pub fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
    }
    std::error::Error::source(e).is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
}

/// The writer task's state.
struct Writer {
    client: Client,
    t: String,
    w: String,
    rng: StdRng,
    pause: Duration,
    max_id: i64,
    /// Where to reconnect after a lost connection; `None`: a plain writer.
    reconnect: Option<tokio_postgres::Config>,
    stop: watch::Receiver<bool>,
}

impl Writer {
    async fn run(mut self) -> Result<WorkloadReport> {
        let mut report = WorkloadReport::default();
        let mut latencies: Vec<Duration> = Vec::new();
        while !*self.stop.borrow() {
            let ops = if self.rng.random_range(0..10) == 0 {
                self.rng.random_range(2..5)
            } else {
                1
            };
            let statements: Vec<String> = (0..ops)
                .map(|_| random_op(&mut self.rng, &self.t, &self.w, &mut self.max_id))
                .collect();
            let started = Instant::now();
            let result = async {
                let tx = self.client.transaction().await?;
                for s in &statements {
                    tx.batch_execute(s).await?;
                }
                tx.commit().await
            }
            .await;
            let took = started.elapsed();
            latencies.push(took);
            report.max_latency = report.max_latency.max(took);
            match result {
                Ok(()) => report.transactions += 1,
                Err(e) if self.reconnect.is_some() && is_connection_error(&e) => {
                    report.interrupted += 1;
                    keep(&mut report.first_connection_errors, &e);
                    if self.reconnect().await {
                        report.reconnects += 1;
                    }
                }
                Err(e) => {
                    report.errors += 1;
                    keep(&mut report.first_errors, &e);
                }
            }
            if !self.pause.is_zero() {
                tokio::time::sleep(self.pause).await;
            }
        }
        latencies.sort();
        if !latencies.is_empty() {
            report.p50 = latencies[latencies.len() / 2];
            report.p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
        }
        Ok(report)
    }

    /// Opens a new session, retrying with backoff until one opens (true) or the writer is
    /// asked to stop (false).
    async fn reconnect(&mut self) -> bool {
        let Some(config) = self.reconnect.clone() else {
            return false;
        };
        let mut delay = FIRST_RECONNECT_DELAY;
        loop {
            if *self.stop.borrow() {
                return false;
            }
            match writer_session(&config).await {
                Ok(client) => {
                    self.client = client;
                    return true;
                }
                Err(e) => tracing::debug!("the writer could not reconnect yet: {e:#}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                changed = self.stop.changed() => {
                    if changed.is_err() {
                        // The Workload was dropped without being stopped.
                        return false;
                    }
                }
            }
            delay = (delay * 2).min(MAX_RECONNECT_DELAY);
        }
    }
}

/// Keeps the message of `e` in `list` while it holds fewer than [`ERRORS_KEPT`].
fn keep(list: &mut Vec<String>, e: &tokio_postgres::Error) {
    if list.len() < ERRORS_KEPT {
        list.push(match e.as_db_error() {
            Some(db) => format!("{} {}", db.code().code(), db.message()),
            None => format!("{e:#}"),
        });
    }
}

fn random_op(rng: &mut StdRng, t: &str, w: &str, max_id: &mut i64) -> String {
    let id = rng.random_range(1..=(*max_id).max(1));
    let sets = |assignments: &str| {
        format!(
            "WITH u AS (UPDATE {t} SET {assignments} WHERE id = {id} RETURNING {COLUMNS})
             UPDATE {w} SET ({COLUMNS}) = (SELECT {COLUMNS} FROM u) WHERE id IN (SELECT id FROM u)"
        )
    };
    match rng.random_range(0..100) {
        0..=29 => {
            *max_id += 1;
            let big = rng.random_range(0..10) == 0;
            let note = if big {
                random_big_text_sql(rng)
            } else {
                format!("'n{}'", rng.random_range(0..1_000_000))
            };
            format!(
                "WITH i AS (INSERT INTO {t} (customer_id, status, amount, note, tags, payload, ref, flag, ratio, due, blob, ip, span)
                 VALUES ({c}::int, 'new', {a}::numeric, {note}, ARRAY['x', NULL, ''], '{{\"w\": {c}}}'::jsonb, gen_random_uuid(),
                         NULL, 'Infinity'::float8, 'infinity'::date, '\\x00ff'::bytea, '::1'::inet, '-1 day 02:03:04'::interval)
                 RETURNING {COLUMNS})
                 INSERT INTO {w} ({COLUMNS}) SELECT {COLUMNS} FROM i",
                c = rng.random_range(0..100_000),
                a = rng.random_range(0..100_000) as f64 / 100.0,
            )
        }
        30..=54 => sets(&format!(
            "amount = amount + 1, status = 'paid', customer_id = {}::int",
            rng.random_range(0..100_000)
        )),
        55..=64 => sets(&format!("note = {}", random_big_text_sql(rng))),
        65..=72 => {
            sets("note = NULL, tags = NULL, payload = NULL, flag = true, ratio = '-Infinity'")
        }
        73..=79 => sets(
            "payload = jsonb_set(coalesce(payload, '{}'), '{n}', to_jsonb(now()::text)), span = span + interval '1 second'",
        ),
        80..=91 => format!(
            "WITH d AS (DELETE FROM {t} WHERE id = {id} RETURNING id) DELETE FROM {w} WHERE id IN (SELECT id FROM d)"
        ),
        _ => format!(
            "WITH u AS (UPDATE {t} SET id = -id WHERE id = {id} RETURNING id)
             UPDATE {w} SET id = -id WHERE id IN (SELECT -id FROM u)"
        ),
    }
}

/// SQL for an incompressible ~9.6 kB text, stored out of line (TOAST).
fn random_big_text_sql(rng: &mut StdRng) -> String {
    format!(
        "(SELECT string_agg(md5(random()::text || {}), '') FROM generate_series(1, 300))",
        rng.random_range(0..1_000_000)
    )
}

/// Runs each statement on a table and on its twin in the same transaction: the oracle of
/// docs/design.md §2 for deterministic statements (no `random()`, `now()`, `LIMIT` without
/// `ORDER BY`). Templates name the table `{t}`.
#[derive(Debug, Clone)]
pub struct Mirror {
    table: String,
    twin: String,
}

impl Mirror {
    /// Statements on `table` mirrored into `twin` (names as SQL writes them, quoted here).
    pub fn new(table: &str, twin: &str) -> Mirror {
        Mirror {
            table: ident(table),
            twin: ident(twin),
        }
    }

    /// The template for the table (`{t}` replaced by its name).
    pub fn for_table(&self, template: &str) -> String {
        template.replace("{t}", &self.table)
    }

    /// The template for the twin.
    pub fn for_twin(&self, template: &str) -> String {
        template.replace("{t}", &self.twin)
    }

    /// Runs `template` on the table, then on the twin, in `tx`; returns the rows affected.
    ///
    /// Errors: a statement fails, or the two affected different numbers of rows (the twin
    /// diverged: the oracle itself is broken).
    pub async fn execute(&self, tx: &Transaction<'_>, template: &str) -> Result<u64> {
        let on_table = tx.execute(&self.for_table(template), &[]).await?;
        let on_twin = tx.execute(&self.for_twin(template), &[]).await?;
        if on_table != on_twin {
            anyhow::bail!(
                "the twin diverged: {on_table} rows on the table, {on_twin} on the twin for {template}"
            );
        }
        Ok(on_table)
    }

    /// Runs each template mirrored in one transaction of `client` and commits.
    ///
    /// Errors: as [`Mirror::execute`]; the transaction is rolled back.
    pub async fn transaction(&self, client: &mut Client, templates: &[String]) -> Result<u64> {
        let tx = client.transaction().await?;
        let mut rows = 0;
        for template in templates {
            rows += self
                .execute(&tx, template)
                .await
                .with_context(|| format!("mirrored statement {}", truncated(template)))?;
        }
        tx.commit().await?;
        Ok(rows)
    }
}

fn truncated(s: &str) -> String {
    let short: String = s.chars().take(300).collect();
    if short.len() < s.len() {
        format!("{short}…")
    } else {
        short
    }
}
