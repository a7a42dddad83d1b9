//! A concurrent writer with a twin-table oracle (DESIGN.md §2, "the oracle test pattern"),
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
use tokio_postgres::Client;

use crate::conninfo;
use crate::sql::ident;

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
/// exact counterpart in the other, plus the difference in counts: 0 means equal multisets.
pub async fn mismatches(client: &Client, table: &str, twin: &str) -> Result<i64> {
    let cols = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&ident(twin)],
        )
        .await?;
    let projected: Vec<String> = cols
        .iter()
        .map(|r| format!("{}::{}", ident(r.get::<_, &str>(0)), r.get::<_, &str>(1)))
        .collect();
    let plain: Vec<String> = cols.iter().map(|r| ident(r.get::<_, &str>(0))).collect();
    let (t, w) = (ident(table), ident(twin));
    let sql = format!(
        "SELECT (SELECT count(*) FROM (SELECT {p} FROM {t} EXCEPT ALL SELECT {c} FROM {w}) a)
              + (SELECT count(*) FROM (SELECT {c} FROM {w} EXCEPT ALL SELECT {p} FROM {t}) b)
              + abs((SELECT count(*) FROM {t}) - (SELECT count(*) FROM {w}))",
        p = projected.join(", "),
        c = plain.join(", ")
    );
    Ok(client.query_one(&sql, &[]).await?.get(0))
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
        let client = conninfo::connect(config).await?;
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
                big_text_sql(rng)
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
        55..=64 => sets(&format!("note = {}", big_text_sql(rng))),
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
fn big_text_sql(rng: &mut StdRng) -> String {
    format!(
        "(SELECT string_agg(md5(random()::text || {}), '') FROM generate_series(1, 300))",
        rng.random_range(0..1_000_000)
    )
}
