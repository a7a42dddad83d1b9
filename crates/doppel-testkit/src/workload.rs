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

use postgres_protocol::escape::{escape_identifier as ident, escape_literal as literal};

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
    /// Transactions that failed.
    pub errors: u64,
    /// The first few error messages.
    pub first_errors: Vec<String>,
    /// Worst transaction latency.
    pub max_latency: Duration,
    /// Median and 99th-percentile latency.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

/// A running writer.
pub struct Workload {
    stop: watch::Sender<bool>,
    handle: JoinHandle<Result<WorkloadReport>>,
}

impl Workload {
    /// Starts a writer on `table` mirrored into `twin`, with a seeded random mix, pausing
    /// `pause` between transactions (zero = as fast as it can).
    pub async fn start(
        config: &tokio_postgres::Config,
        table: &str,
        twin: &str,
        seed: u64,
        pause: Duration,
    ) -> Result<Workload> {
        let client = crate::connect(config).await?;
        client
            .batch_execute("SET application_name = 'doppel workload'")
            .await?;
        let max_id: i64 = client
            .query_one(
                &format!("SELECT coalesce(max(id), 0) FROM {}", ident(table)),
                &[],
            )
            .await?
            .get(0);
        let (tx, rx) = watch::channel(false);
        let (table, twin) = (ident(table), ident(twin));
        let handle =
            tokio::spawn(
                async move { write_loop(client, table, twin, seed, pause, max_id, rx).await },
            );
        Ok(Workload { stop: tx, handle })
    }

    /// Stops the writer and returns what it saw.
    pub async fn stop(self) -> Result<WorkloadReport> {
        self.stop.send_replace(true);
        self.handle.await.context("workload task panicked")?
    }
}

async fn write_loop(
    mut client: Client,
    t: String,
    w: String,
    seed: u64,
    pause: Duration,
    mut max_id: i64,
    stop: watch::Receiver<bool>,
) -> Result<WorkloadReport> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = WorkloadReport::default();
    let mut latencies: Vec<Duration> = Vec::new();
    while !*stop.borrow() {
        let ops = if rng.random_range(0..10) == 0 {
            rng.random_range(2..5)
        } else {
            1
        };
        let statements: Vec<String> = (0..ops)
            .map(|_| random_op(&mut rng, &t, &w, &mut max_id))
            .collect();
        let started = Instant::now();
        let result = async {
            let tx = client.transaction().await?;
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
            Err(e) => {
                report.errors += 1;
                if report.first_errors.len() < 5 {
                    report.first_errors.push(format!("{e:#}"));
                }
            }
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    latencies.sort();
    if !latencies.is_empty() {
        report.p50 = latencies[latencies.len() / 2];
        report.p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    }
    Ok(report)
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

// ---------------------------------------------------------------------------------------------
// The type matrix: columns of many types with their edge values, as SQL expressions, for the
// oracle tests (tests/suite/type_matrix.rs, tests/suite/randomized_oracle.rs).
// ---------------------------------------------------------------------------------------------

/// The enum and domain types the matrix columns use (`mood`, `posint`).
pub const MATRIX_TYPES_SQL: &str = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'very happy', 'it''s');
     CREATE DOMAIN posint AS integer CHECK (VALUE > 0);";

/// One column of the type matrix: its name, type and values as SQL expressions of that type.
#[derive(Debug, Clone)]
pub struct MatrixColumn {
    /// Column name.
    pub name: &'static str,
    /// SQL type, as `CREATE TABLE` writes it.
    pub sql_type: &'static str,
    /// Edge values (NULL, NaN, ±infinity, empty arrays, TOASTed values, ...) as SQL
    /// expressions; each is written with an explicit cast to the column's type unless the
    /// column is meant to take untyped literals.
    pub edges: Vec<String>,
    /// Out-of-line storage (`SET STORAGE EXTERNAL`): large values are TOASTed uncompressed.
    pub external: bool,
    ordinary: fn(u64) -> String,
}

impl MatrixColumn {
    /// An ordinary (non-edge) value derived from `n`, as a SQL expression; deterministic.
    pub fn ordinary(&self, n: u64) -> String {
        (self.ordinary)(n)
    }

    /// A random value: an edge value one time in four, an ordinary one otherwise.
    pub fn random_value(&self, rng: &mut StdRng) -> String {
        if !self.edges.is_empty() && rng.random_range(0..4) == 0 {
            self.edges[rng.random_range(0..self.edges.len())].clone()
        } else {
            self.ordinary(rng.random_range(0..u64::MAX))
        }
    }
}

/// `'<value>'::<type>`, quoted.
fn typed(value: &str, ty: &str) -> String {
    format!("{}::{ty}", literal(value))
}

/// Typed literals of `values`, with `"NULL"` meaning SQL NULL.
fn typed_all(values: &[&str], ty: &str) -> Vec<String> {
    values
        .iter()
        .map(|v| {
            if *v == "NULL" {
                format!("NULL::{ty}")
            } else {
                typed(v, ty)
            }
        })
        .collect()
}

/// A deterministic, incompressible text of about 4 kB with non-ASCII separators (stored out
/// of line), derived from `key`.
pub fn big_text_sql(key: u64) -> String {
    format!("(SELECT string_agg(md5('{key}:' || g), 'ß') FROM generate_series(1, 120) AS g)")
}

/// A deterministic, incompressible bytea of 2.4 kB (stored out of line), derived from `key`.
pub fn big_bytea_sql(key: u64) -> String {
    format!(
        "(SELECT decode(string_agg(md5('{key}/' || g), ''), 'hex') FROM generate_series(1, 150) AS g)"
    )
}

/// A deterministic, compressible jsonb array of 1,000 numbers (compressed; out of line or
/// not depending on the server's TOAST decisions), derived from `key`.
pub fn big_jsonb_sql(key: u64) -> String {
    format!(
        "(SELECT jsonb_agg(g + {}) FROM generate_series(1, 1000) AS g)",
        key % 1000
    )
}

fn signed(n: u64, modulus: u64) -> i64 {
    (n % modulus) as i64 - (modulus / 2) as i64
}

/// The type matrix (36 columns, 37 with `xml`): integers, numeric (NaN, ±Infinity, huge
/// precision), floats (NaN, ±Infinity, -0, subnormals, extremes), text with non-ASCII
/// characters and `''` vs NULL, a TOASTed text, char(n), varchar(n), bytea (empty, NUL bytes,
/// TOASTed), uuid, date/time/timetz/timestamp/timestamptz (±infinity, BC, extremes),
/// interval, jsonb (`null` vs NULL, large), json (duplicate keys and whitespace kept), arrays
/// (empty, NULL elements, non-default lower bound, two dimensions), an enum, a domain, inet,
/// cidr, macaddr, bit, varbit, tsvector, point, int4range, tstzrange, money; and xml when
/// `with_xml` (servers built without libxml lack it, see [`server_has_xml`]).
pub fn matrix_columns(with_xml: bool) -> Vec<MatrixColumn> {
    let mut c = vec![
        MatrixColumn {
            name: "c_int2",
            sql_type: "smallint",
            edges: typed_all(&["-32768", "32767", "0", "NULL"], "smallint"),
            external: false,
            ordinary: |n| format!("{}::smallint", signed(n, 60_000)),
        },
        MatrixColumn {
            name: "c_int4",
            sql_type: "integer",
            edges: typed_all(&["-2147483648", "2147483647", "0", "NULL"], "integer"),
            external: false,
            ordinary: |n| format!("{}::integer", signed(n, 4_000_000_000)),
        },
        MatrixColumn {
            name: "c_int8",
            sql_type: "bigint",
            edges: typed_all(
                &["-9223372036854775808", "9223372036854775807", "NULL"],
                "bigint",
            ),
            external: false,
            ordinary: |n| format!("'{}'::bigint", n.wrapping_mul(0x9E37_79B9_7F4A_7C15) as i64),
        },
        MatrixColumn {
            name: "c_numeric",
            sql_type: "numeric",
            edges: typed_all(
                &[
                    "NaN",
                    "Infinity",
                    "-Infinity",
                    "0",
                    "-0.0",
                    "1.50",
                    "123456789012345678901234567890.123456789012345678901234567890",
                    "0.000000000000000000000000000001",
                    "-99999999999999999999.9999",
                    "NULL",
                ],
                "numeric",
            ),
            external: false,
            ordinary: |n| format!("'{}.{:03}'::numeric", signed(n, 2_000_000), n % 1000),
        },
        MatrixColumn {
            name: "c_numeric_p",
            sql_type: "numeric(12,2)",
            edges: typed_all(
                &[
                    "0.005",
                    "-0.005",
                    "9999999999.99",
                    "-9999999999.99",
                    "0",
                    "NULL",
                ],
                "numeric(12,2)",
            ),
            external: false,
            ordinary: |n| {
                let cents = signed(n, 200_000_000);
                let sign = if cents < 0 { "-" } else { "" };
                let cents = cents.abs();
                format!("'{sign}{}.{:02}'::numeric(12,2)", cents / 100, cents % 100)
            },
        },
        MatrixColumn {
            name: "c_float4",
            sql_type: "real",
            edges: typed_all(
                &[
                    "NaN",
                    "Infinity",
                    "-Infinity",
                    "-0",
                    "1.17549435e-38",
                    "3.4028235e38",
                    "1e-45",
                    "0.1",
                    "NULL",
                ],
                "real",
            ),
            external: false,
            ordinary: |n| format!("'{:?}'::real", signed(n, 2_000_000) as f32 / 7.0),
        },
        MatrixColumn {
            name: "c_float8",
            sql_type: "double precision",
            edges: typed_all(
                &[
                    "NaN",
                    "Infinity",
                    "-Infinity",
                    "-0",
                    "5e-324",
                    "1.7976931348623157e308",
                    "2.2250738585072014e-308",
                    "0.30000000000000004",
                    "NULL",
                ],
                "double precision",
            ),
            external: false,
            ordinary: |n| {
                format!(
                    "'{:?}'::double precision",
                    signed(n, 2_000_000_000) as f64 / 3.0
                )
            },
        },
        MatrixColumn {
            name: "c_bool",
            sql_type: "boolean",
            edges: typed_all(&["true", "false", "NULL"], "boolean"),
            external: false,
            ordinary: |n| format!("{}", n % 2 == 0),
        },
        MatrixColumn {
            name: "c_text",
            sql_type: "text",
            edges: typed_all(
                &[
                    "",
                    "NULL",
                    "ü",
                    "δοκιμή ✓ 日本語 😀",
                    "a'b\"c\\d",
                    " padded ",
                    "tab\there\nnew line",
                    "null",
                ],
                "text",
            ),
            external: false,
            ordinary: |n| format!("'t{} ü'::text", n % 1_000_000),
        },
        MatrixColumn {
            name: "c_doc",
            sql_type: "text",
            edges: vec![
                "NULL::text".into(),
                "''::text".into(),
                big_text_sql(1),
                big_text_sql(2),
            ],
            external: true,
            ordinary: |n| {
                if n % 5 == 0 {
                    big_text_sql(n % 100_000)
                } else {
                    format!("'doc {} ✓'::text", n % 1_000_000)
                }
            },
        },
        MatrixColumn {
            name: "c_char",
            sql_type: "character(5)",
            edges: typed_all(&["ab", "", "üöäß", "NULL"], "character(5)"),
            external: false,
            ordinary: |n| format!("'c{}'::character(5)", n % 1000),
        },
        MatrixColumn {
            name: "c_varchar",
            sql_type: "character varying(12)",
            edges: typed_all(
                &["x", "", "ünïcödé", "123456789012", "NULL"],
                "character varying(12)",
            ),
            external: false,
            ordinary: |n| format!("'v{}'::character varying(12)", n % 1_000_000),
        },
        MatrixColumn {
            name: "c_bytea",
            sql_type: "bytea",
            edges: {
                let mut e = typed_all(&["\\x", "\\x00", "\\x00ff7f80", "NULL"], "bytea");
                e.push(big_bytea_sql(1));
                e
            },
            external: false,
            ordinary: |n| {
                if n % 7 == 0 {
                    big_bytea_sql(n % 100_000)
                } else {
                    format!("'\\x{:08x}'::bytea", n as u32)
                }
            },
        },
        MatrixColumn {
            name: "c_uuid",
            sql_type: "uuid",
            edges: typed_all(
                &[
                    "00000000-0000-0000-0000-000000000000",
                    "ffffffff-ffff-ffff-ffff-ffffffffffff",
                    "NULL",
                ],
                "uuid",
            ),
            external: false,
            ordinary: |n| format!("md5('{n}')::uuid"),
        },
        MatrixColumn {
            name: "c_date",
            sql_type: "date",
            edges: typed_all(
                &[
                    "infinity",
                    "-infinity",
                    "4713-01-01 BC",
                    "5874897-12-31",
                    "2000-02-29",
                    "NULL",
                ],
                "date",
            ),
            external: false,
            ordinary: |n| format!("('2000-01-01'::date + {})", n % 40_000),
        },
        MatrixColumn {
            name: "c_time",
            sql_type: "time without time zone",
            edges: typed_all(
                &["24:00:00", "00:00:00", "23:59:59.999999", "NULL"],
                "time without time zone",
            ),
            external: false,
            ordinary: |n| {
                format!(
                    "'{:02}:{:02}:{:02}.{:06}'::time without time zone",
                    n % 24,
                    n / 24 % 60,
                    n / 1440 % 60,
                    n % 1_000_000
                )
            },
        },
        MatrixColumn {
            name: "c_timetz",
            sql_type: "time with time zone",
            edges: typed_all(
                &[
                    "12:00:00+14",
                    "00:00:00-12",
                    "23:59:59.999999+05:45",
                    "NULL",
                ],
                "time with time zone",
            ),
            external: false,
            ordinary: |n| {
                format!(
                    "'{:02}:{:02}:00{:+03}'::time with time zone",
                    n % 24,
                    n / 24 % 60,
                    signed(n / 7, 25)
                )
            },
        },
        MatrixColumn {
            name: "c_ts",
            sql_type: "timestamp without time zone",
            edges: typed_all(
                &[
                    "infinity",
                    "-infinity",
                    "4713-01-01 00:00:00 BC",
                    "294276-12-31 23:59:59.999999",
                    "2000-01-01 00:00:00.000001",
                    "NULL",
                ],
                "timestamp without time zone",
            ),
            external: false,
            ordinary: |n| {
                format!(
                    "('2020-01-01 00:00:00'::timestamp without time zone + {} * interval '1 microsecond')",
                    signed(n, 1 << 50)
                )
            },
        },
        MatrixColumn {
            name: "c_tstz",
            sql_type: "timestamp with time zone",
            edges: typed_all(
                &[
                    "infinity",
                    "-infinity",
                    "4713-01-01 00:00:00+00 BC",
                    "294276-12-31 23:59:59.999999+00",
                    "2026-03-29 01:30:00+00",
                    "NULL",
                ],
                "timestamp with time zone",
            ),
            external: false,
            ordinary: |n| {
                format!(
                    "('2020-01-01 00:00:00+00'::timestamp with time zone + {} * interval '1 microsecond')",
                    signed(n, 1 << 50)
                )
            },
        },
        MatrixColumn {
            name: "c_interval",
            sql_type: "interval",
            edges: typed_all(
                &[
                    "-178000000 years",
                    "178000000 years",
                    "1 day -24 hours",
                    "1 mon -30 days",
                    "00:00:00.000001",
                    "-1 days +02:03:04.5",
                    "0",
                    "NULL",
                ],
                "interval",
            ),
            external: false,
            ordinary: |n| {
                format!(
                    "'{} mons {} days {} seconds'::interval",
                    signed(n, 100),
                    signed(n / 100, 100),
                    signed(n / 10_000, 1_000_000)
                )
            },
        },
        MatrixColumn {
            name: "c_jsonb",
            sql_type: "jsonb",
            edges: {
                let mut e = typed_all(
                    &[
                        "{}",
                        "[]",
                        "null",
                        "\"\"",
                        "{\"a\": \"ü\", \"n\": 1.50, \"big\": 1e400, \"nested\": [null, {}]}",
                        "NULL",
                    ],
                    "jsonb",
                );
                e.push(big_jsonb_sql(1));
                e
            },
            external: false,
            ordinary: |n| {
                if n % 11 == 0 {
                    big_jsonb_sql(n)
                } else {
                    format!(
                        "jsonb_build_object('n', {}, 's', 'ü{}')",
                        n % 1_000_000,
                        n % 97
                    )
                }
            },
        },
        MatrixColumn {
            name: "c_json",
            sql_type: "json",
            edges: typed_all(
                &["{\"a\":1,  \"a\":2}", "  [1, 2 ]  ", "null", "NULL"],
                "json",
            ),
            external: false,
            ordinary: |n| format!("'{{\"n\": {}}}'::json", n % 1_000_000),
        },
        MatrixColumn {
            name: "c_int_arr",
            sql_type: "integer[]",
            edges: typed_all(
                &[
                    "{}",
                    "{NULL}",
                    "{1,NULL,3}",
                    "[0:2]={7,8,9}",
                    "{{1,2},{3,4}}",
                    "NULL",
                ],
                "integer[]",
            ),
            external: false,
            ordinary: |n| format!("ARRAY[{}, {}]::integer[]", n % 1000, n % 7),
        },
        MatrixColumn {
            name: "c_text_arr",
            sql_type: "text[]",
            edges: vec![
                "'{}'::text[]".into(),
                "ARRAY['', NULL, 'a b', 'ü', '\"q\"', 'NULL', 'a,b{}']::text[]".into(),
                "ARRAY[NULL]::text[]".into(),
                "NULL::text[]".into(),
            ],
            external: false,
            ordinary: |n| format!("ARRAY['x{}', 'ü']::text[]", n % 1000),
        },
        MatrixColumn {
            name: "c_enum",
            sql_type: "mood",
            edges: typed_all(&["sad", "very happy", "it's", "NULL"], "mood"),
            external: false,
            ordinary: |n| typed(["sad", "ok", "very happy"][(n % 3) as usize], "mood"),
        },
        MatrixColumn {
            name: "c_domain",
            sql_type: "posint",
            edges: typed_all(&["1", "2147483647", "NULL"], "posint"),
            external: false,
            ordinary: |n| format!("{}::posint", 1 + n % 1_000_000),
        },
        MatrixColumn {
            name: "c_inet",
            sql_type: "inet",
            edges: typed_all(
                &["::1", "10.1.2.3/8", "2001:db8::1/64", "0.0.0.0/0", "NULL"],
                "inet",
            ),
            external: false,
            ordinary: |n| {
                format!(
                    "'10.{}.{}.{}'::inet",
                    n % 256,
                    n / 256 % 256,
                    n / 65536 % 256
                )
            },
        },
        MatrixColumn {
            name: "c_cidr",
            sql_type: "cidr",
            edges: typed_all(&["10.0.0.0/8", "::/0", "192.168.1.0/24", "NULL"], "cidr"),
            external: false,
            ordinary: |n| format!("'10.{}.0.0/16'::cidr", n % 256),
        },
        MatrixColumn {
            name: "c_macaddr",
            sql_type: "macaddr",
            edges: typed_all(
                &["08:00:2b:01:02:03", "ff:ff:ff:ff:ff:ff", "NULL"],
                "macaddr",
            ),
            external: false,
            ordinary: |n| {
                let b = n.to_be_bytes();
                format!(
                    "'{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}'::macaddr",
                    b[2], b[3], b[4], b[5], b[6], b[7]
                )
            },
        },
        MatrixColumn {
            name: "c_bit",
            sql_type: "bit(8)",
            edges: typed_all(&["00000000", "10101010", "NULL"], "bit(8)"),
            external: false,
            ordinary: |n| format!("'{:08b}'::bit(8)", n as u8),
        },
        MatrixColumn {
            name: "c_varbit",
            sql_type: "bit varying",
            edges: typed_all(&["", "1", "1010101010101", "NULL"], "bit varying"),
            external: false,
            ordinary: |n| format!("'{:b}'::bit varying", n % 100_000),
        },
        MatrixColumn {
            name: "c_tsvector",
            sql_type: "tsvector",
            edges: typed_all(&["", "a fat cat", "'ü':1A 'x y':2B", "NULL"], "tsvector"),
            external: false,
            ordinary: |n| format!("'w{} ü{}'::tsvector", n % 1000, n % 7),
        },
        MatrixColumn {
            name: "c_point",
            sql_type: "point",
            edges: typed_all(&["(0,0)", "(-0,1.5)", "(NaN,Infinity)", "NULL"], "point"),
            external: false,
            ordinary: |n| format!("'({:?},{})'::point", (n % 10_000) as f64 / 3.0, n % 7),
        },
        MatrixColumn {
            name: "c_range",
            sql_type: "int4range",
            edges: typed_all(&["empty", "[1,10)", "(,5]", "(,)", "NULL"], "int4range"),
            external: false,
            ordinary: |n| format!("int4range({}, {})", n % 1000, 1000 + n % 1000),
        },
        MatrixColumn {
            name: "c_tstzrange",
            sql_type: "tstzrange",
            edges: typed_all(
                &["empty", "[2020-01-01 00:00:00+00,infinity)", "(,)", "NULL"],
                "tstzrange",
            ),
            external: false,
            ordinary: |n| {
                format!(
                    "tstzrange('2020-01-01 00:00:00+00'::timestamptz + {} * interval '1 second', NULL)",
                    n % 1_000_000
                )
            },
        },
        MatrixColumn {
            name: "c_money",
            sql_type: "money",
            edges: typed_all(
                &["-92233720368547758.08", "92233720368547758.07", "0", "NULL"],
                "money",
            ),
            external: false,
            ordinary: |n| format!("'{}.{:02}'::numeric::money", signed(n, 2_000_000), n % 100),
        },
    ];
    if with_xml {
        c.push(MatrixColumn {
            name: "c_xml",
            sql_type: "xml",
            edges: typed_all(
                &["<a b=\"1\">ü</a>", "text only", "<!-- c --><x/>", "NULL"],
                "xml",
            ),
            external: false,
            ordinary: |n| format!("'<r n=\"{}\"/>'::xml", n % 1_000_000),
        });
    }
    c
}

/// Columns whose type changes round (numeric, float8 → integer; timestamptz → date; text →
/// integer through `USING`), with the values where rounding rules differ: halves both ways,
/// midnight in the session's time zone, digits with spaces and signs. `r_digits` takes
/// untyped literals (it is meant to be changed with `USING trim(r_digits)::integer`, after
/// which a typed text could not be assigned).
pub fn rounding_columns() -> Vec<MatrixColumn> {
    vec![
        MatrixColumn {
            name: "r_numeric",
            sql_type: "numeric",
            edges: typed_all(
                &[
                    "2.5",
                    "-2.5",
                    "0.5",
                    "1.5",
                    "-0.5",
                    "-1.5",
                    "2.4999999999",
                    "1000000000.5",
                    "2147483647.49",
                    "NULL",
                ],
                "numeric",
            ),
            external: false,
            ordinary: |n| format!("'{}.{}'::numeric", signed(n, 20_000), n % 10),
        },
        MatrixColumn {
            name: "r_float",
            sql_type: "double precision",
            edges: typed_all(
                &[
                    "2.5",
                    "-2.5",
                    "0.5",
                    "1.5",
                    "3.5",
                    "-0.5",
                    "-0",
                    "1e-300",
                    "0.49999999999999994",
                    "NULL",
                ],
                "double precision",
            ),
            external: false,
            ordinary: |n| format!("'{:?}'::double precision", signed(n, 20_000) as f64 / 4.0),
        },
        MatrixColumn {
            name: "r_tstz",
            sql_type: "timestamp with time zone",
            edges: typed_all(
                &[
                    "2026-01-01 18:14:59.999999+00",
                    "2026-01-01 18:15:00+00",
                    "2026-01-01 23:59:59.999999+00",
                    "2026-01-02 00:00:00+00",
                    "2026-03-29 01:30:00+01",
                    "infinity",
                    "-infinity",
                    "NULL",
                ],
                "timestamp with time zone",
            ),
            external: false,
            ordinary: |n| {
                format!(
                    "('2026-01-01 00:00:00+00'::timestamp with time zone + {} * interval '1 minute')",
                    n % 2_000_000
                )
            },
        },
        MatrixColumn {
            name: "r_digits",
            sql_type: "text",
            edges: [
                "'12'",
                "' 7 '",
                "'-3'",
                "'+4'",
                "'007'",
                "'2147483647'",
                "NULL",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            external: false,
            ordinary: |n| format!("'{}'", signed(n, 2_000_000)),
        },
    ]
}

/// Whether the server has the `xml` type (built with libxml).
pub async fn server_has_xml(client: &Client) -> bool {
    client.simple_query("SELECT '<a/>'::xml").await.is_ok()
}

/// Creates `table` (`id integer PRIMARY KEY` and `columns`, large values of the `external`
/// ones stored out of line uncompressed) and its twin `twin` (same columns, primary key, no
/// TOAST storage settings). The matrix types ([`MATRIX_TYPES_SQL`]) must exist.
///
/// Errors: a statement fails (e.g. the tables exist).
pub async fn create_matrix_tables(
    client: &Client,
    table: &str,
    twin: &str,
    columns: &[MatrixColumn],
) -> Result<()> {
    let (t, w) = (ident(table), ident(twin));
    let defs: Vec<String> = columns
        .iter()
        .map(|c| format!("{} {}", ident(c.name), c.sql_type))
        .collect();
    let mut sql = format!(
        "CREATE TABLE {t} (id integer PRIMARY KEY, {});",
        defs.join(", ")
    );
    for c in columns.iter().filter(|c| c.external) {
        sql.push_str(&format!(
            "ALTER TABLE {t} ALTER COLUMN {} SET STORAGE EXTERNAL;",
            ident(c.name)
        ));
    }
    sql.push_str(&format!(
        "CREATE TABLE {w} (LIKE {t}); ALTER TABLE {w} ADD PRIMARY KEY (id);"
    ));
    client
        .batch_execute(&sql)
        .await
        .with_context(|| format!("creating {table} and {twin}"))
}

/// `INSERT INTO {t} (id, <columns>) VALUES ..` for `rows` (key and one SQL expression per
/// column); `{t}` is left for [`Mirror`] to fill in.
pub fn insert_template(columns: &[MatrixColumn], rows: &[(i64, Vec<String>)]) -> String {
    let names: Vec<String> = columns.iter().map(|c| ident(c.name)).collect();
    let values: Vec<String> = rows
        .iter()
        .map(|(id, values)| format!("({id}, {})", values.join(", ")))
        .collect();
    format!(
        "INSERT INTO {{t}} (id, {}) VALUES {}",
        names.join(", "),
        values.join(", ")
    )
}

/// The edge rows of `columns`: row `k` (key `first_id + k`) holds edge value `k` (modulo
/// the column's count) of every column, so every edge value of every column appears in the
/// first `max edges` rows.
pub fn edge_rows(columns: &[MatrixColumn], first_id: i64) -> Vec<(i64, Vec<String>)> {
    let n = columns.iter().map(|c| c.edges.len()).max().unwrap_or(0);
    (0..n)
        .map(|k| {
            (
                first_id + k as i64,
                columns
                    .iter()
                    .map(|c| c.edges[k % c.edges.len()].clone())
                    .collect(),
            )
        })
        .collect()
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
