//! The copy/stream handoff is exact for every column type (issue 3, docs/design.md §2 I1).
//!
//! A table of 36 column types (37 with `xml`) holding their edge values — NaN, ±infinity,
//! -0, subnormal floats, huge numerics, BC dates, empty arrays and arrays with NULLs or a
//! non-default lower bound, `''` vs NULL, json `null` vs SQL NULL, TOASTed text, bytea and
//! jsonb — is migrated while rows arrive through both paths:
//!
//! - the **copy path**: rows present before the run, and rows written while the run is stopped
//!   at the `copying` pause point (first chunk committed, one copy worker) into key ranges not
//!   copied yet;
//! - the **stream/apply path**: rows written at that pause into the range already copied, and
//!   everything written while the run is stopped at `catch-up` (backfill and primary key done):
//!   inserts, updates that leave a TOASTed value unchanged (pgoutput `u`), updates of every
//!   column to edge values, deletes, key changes across the copy position, delete + re-insert
//!   of a key, a rolled-back savepoint.
//!
//! Every write goes to the table and to an untouched twin in the same transaction; afterwards
//! the migrated table projected onto the twin's columns equals the twin exactly, compared by
//! text (`EXCEPT ALL` both ways plus counts), so `-0` vs `0` or `1.5` vs `1.50` would count.
//!
//! Type changes that round (numeric/float8 → integer, timestamptz → date in a non-UTC session
//! time zone, text → integer `USING`, numeric → numeric(6,1), float8 → real) must give the same
//! value on both paths as PostgreSQL's own `ALTER TABLE .. TYPE` applied to the twin.

use std::path::Path;
use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::run::{Outcome, RunOptions, RunReport};
use doppel::testing as pause;
use doppel_testkit::workload::{self, MatrixColumn, Mirror};
use tokio::task::JoinHandle;

use crate::common::{self, Tune};

/// Options for a run stopped at pause points: one copy worker (so the `copying` pause stops
/// the whole backfill after its first chunk), a first chunk of 200 rows, small chunks.
fn options(dir: &Path, table: &str, alters: &[&str]) -> RunOptions {
    common::options(dir, table, alters)
        .copy_workers(1)
        .cutover_retries(20)
        .fence_timeout(Duration::from_millis(2000))
        .status_interval(Duration::from_secs(60))
        .chunk_time(Duration::from_millis(20))
        .initial_rows(200)
}

type Run = JoinHandle<anyhow::Result<Outcome>>;

/// Starts the migration in the background.
fn spawn_run(config: &tokio_postgres::Config, options: RunOptions) -> Run {
    let config = config.clone();
    tokio::spawn(async move { common::run_paused(&config, &options, &Cancel::never()).await })
}

/// Waits until the run stopped at pause point `name`; panics with the run's outcome if it
/// ended instead, or after 120 s.
async fn wait_paused(dir: &Path, name: &str, run: &mut Run) -> String {
    let stopped = common::wait_until_async(Duration::from_secs(120), || async {
        pause::reached(&common::pause_dir(dir), name).is_some() || run.is_finished()
    })
    .await;
    if let Some(detail) = pause::reached(&common::pause_dir(dir), name) {
        return detail;
    }
    if run.is_finished() {
        let outcome = run.await;
        panic!("the run ended before pause point {name}: {outcome:?}");
    }
    assert!(stopped, "the run did not reach pause point {name} in 120 s");
    unreachable!()
}

/// Awaits the run and returns its report; panics on any other outcome.
async fn migrated(run: Run) -> Box<RunReport> {
    match run.await.expect("the run task panicked") {
        Ok(Outcome::Migrated(report)) => report,
        Ok(other) => panic!("expected a shadow migration, got {other:?}"),
        Err(e) => panic!("the migration failed: {e:#}"),
    }
}

/// Ordinary values of every matrix column, derived from `n` (for a key: `n` = the key, so
/// `c_doc` is TOASTed for multiples of 5, `c_bytea` for multiples of 7).
fn ordinary_row(columns: &[MatrixColumn], n: u64) -> Vec<String> {
    columns.iter().map(|c| c.ordinary(n)).collect()
}

/// `UPDATE {t} SET (<all columns>) = (<edge row k>) WHERE id = <id>`.
fn set_all_to_edges(columns: &[MatrixColumn], k: usize, id: i64) -> String {
    let names: Vec<&str> = columns.iter().map(|c| c.name).collect();
    let values: Vec<String> = columns
        .iter()
        .map(|c| c.edges[k % c.edges.len()].clone())
        .collect();
    format!(
        "UPDATE {{t}} SET ({}) = ({}) WHERE id = {id}",
        names.join(", "),
        values.join(", ")
    )
}

/// Keys of the loaded table: edge rows at 1..=E (inside the first chunk), ordinary rows at
/// 100..3100 (big `c_doc` when the key is a multiple of 5, big `c_bytea` for multiples of 7
/// in the derived number), edge rows again at 90_001.. (the last chunk).
const BULK: std::ops::Range<i64> = 100..3100;

/// The writes of one phase (one inner list per transaction), every one mirrored into the
/// twin. `p` (0 or 1) keeps the keys of the phases apart. In phase 0 the copy has done keys
/// up to about 290: keys below that are carried by the stream only, keys above by the copy
/// too; in phase 1 everything is copied.
fn phase_writes(columns: &[MatrixColumn], p: i64) -> Vec<Vec<String>> {
    let mut txs: Vec<Vec<String>> = Vec::new();
    let edges = workload::edge_rows(columns, 0);
    // Inserts of every edge row: in the copied range (keys 20.., below the bulk), before the
    // first key (negative), and past the last key (not copied yet in phase 0).
    for base in [20 + 35 * p, -1000 - 100 * p, 200_000 + 1000 * p] {
        let rows: Vec<(i64, Vec<String>)> = edges
            .iter()
            .map(|(k, values)| (base + k, values.clone()))
            .collect();
        txs.push(vec![workload::insert_template(columns, &rows)]);
    }
    // Updates leaving the TOASTed c_doc (and c_bytea) unchanged (pgoutput 'u'): rows whose
    // c_doc is big, on both sides of the copy position, and a large multi-row one.
    txs.push(vec![format!(
        "UPDATE {{t}} SET c_int2 = {}::smallint, c_text = 'toast kept {p} ✓', c_float8 = '-0'::float8
         WHERE id IN (100, 105, 150, 1000, 2005, 3000)",
        7 + p
    )]);
    txs.push(vec![format!(
        "UPDATE {{t}} SET c_bool = NOT c_bool, c_numeric = '{p}.10'::numeric
         WHERE id BETWEEN {} AND {} AND id % 5 = 0",
        BULK.start, BULK.end
    )]);
    // Updates of the TOASTed column itself: a new big value, NULL, ''.
    txs.push(vec![
        format!(
            "UPDATE {{t}} SET c_doc = {} WHERE id IN (110, 2010)",
            workload::big_text_sql(7000 + p as u64)
        ),
        "UPDATE {t} SET c_doc = NULL WHERE id IN (115, 2015)".to_string(),
        "UPDATE {t} SET c_doc = '' WHERE id IN (120, 2020)".to_string(),
    ]);
    // Every column to an edge value, on rows on both sides of the copy position.
    let mut all = Vec::new();
    for k in 0..edges.len() {
        for id in [130 + k as i64 + 10 * p, 2100 + k as i64 + 10 * p] {
            all.push(set_all_to_edges(columns, k, id));
        }
    }
    txs.push(all);
    // Deletes on both sides.
    txs.push(vec![format!(
        "DELETE FROM {{t}} WHERE id IN ({}, {}, {})",
        161 + p,
        2161 + p,
        90_001 + p
    )]);
    // Key changes: copied → past the end, not copied → before the start, a TOASTed row whose
    // c_doc is unchanged, and a key change with other columns in the same statement.
    txs.push(vec![
        format!(
            "UPDATE {{t}} SET id = {} WHERE id = {}",
            300_000 + p,
            170 + p
        ),
        format!("UPDATE {{t}} SET id = {} WHERE id = {}", -5000 - p, 2170 + p),
        format!("UPDATE {{t}} SET id = {} WHERE id = {}", 310_000 + p, 175 + 5 * p),
        format!(
            "UPDATE {{t}} SET id = {}, c_text = 'moved', c_int_arr = '{{}}'::integer[] WHERE id = {}",
            -6000 - p,
            2175 + 5 * p
        ),
    ]);
    // Delete and re-insert the same key with other values, in one transaction and across two.
    let reinsert =
        |id: i64, n: u64| workload::insert_template(columns, &[(id, ordinary_row(columns, n))]);
    txs.push(vec![
        format!("DELETE FROM {{t}} WHERE id IN ({}, {})", 181 + p, 2181 + p),
        reinsert(181 + p, 999_001),
        reinsert(2181 + p, 999_002),
    ]);
    txs.push(vec![format!("DELETE FROM {{t}} WHERE id = {}", 185 + p)]);
    txs.push(vec![reinsert(185 + p, 999_003)]);
    // A savepoint rolled back: none of its writes may appear.
    txs.push(vec![
        format!(
            "UPDATE {{t}} SET c_text = 'kept {p}' WHERE id = {}",
            190 + p
        ),
        "SAVEPOINT s".to_string(),
        format!(
            "UPDATE {{t}} SET c_text = 'rolled back' WHERE id = {}",
            191 + p
        ),
        format!("DELETE FROM {{t}} WHERE id = {}", 2191 + p),
        reinsert(400_000 + p, 999_004),
        "ROLLBACK TO SAVEPOINT s".to_string(),
        format!(
            "UPDATE {{t}} SET c_text = 'after {p}' WHERE id = {}",
            192 + p
        ),
    ]);
    txs
}

/// Runs `txs` mirrored, each inner list one transaction; `SAVEPOINT`/`ROLLBACK TO` run once.
async fn run_mirrored(client: &mut tokio_postgres::Client, mirror: &Mirror, txs: &[Vec<String>]) {
    for statements in txs {
        let tx = client.transaction().await.unwrap();
        for s in statements {
            if s.starts_with("SAVEPOINT") || s.starts_with("ROLLBACK TO") {
                tx.batch_execute(s).await.unwrap();
            } else {
                mirror
                    .execute(&tx, s)
                    .await
                    .unwrap_or_else(|e| panic!("{e:#}\n{s}"));
            }
        }
        tx.commit().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_edge_value_arrives_exactly_through_copy_and_apply() {
    let cluster = common::cluster().await;
    let mut client = cluster.connect("postgres").await.unwrap();
    let with_xml = workload::server_has_xml(&client).await;
    let columns = workload::matrix_columns(with_xml);
    assert!(columns.len() >= 36, "{} column types", columns.len());
    println!("{} column types (xml: {with_xml})", columns.len());
    client
        .batch_execute(workload::MATRIX_TYPES_SQL)
        .await
        .unwrap();
    workload::create_matrix_tables(&client, "m", "m_twin", &columns)
        .await
        .unwrap();
    let mirror = Mirror::new("m", "m_twin");
    let mut load = vec![
        vec![workload::insert_template(
            &columns,
            &workload::edge_rows(&columns, 1),
        )],
        vec![workload::insert_template(
            &columns,
            &workload::edge_rows(&columns, 90_001),
        )],
    ];
    let bulk: Vec<i64> = BULK.collect();
    for keys in bulk.chunks(250) {
        let rows: Vec<(i64, Vec<String>)> = keys
            .iter()
            .map(|&id| (id, ordinary_row(&columns, id as u64)))
            .collect();
        load.push(vec![workload::insert_template(&columns, &rows)]);
    }
    run_mirrored(&mut client, &mirror, &load).await;
    client.batch_execute("VACUUM ANALYZE m").await.unwrap();
    // The big values really are out of line.
    let toasted = common::scalar(
        &client,
        "SELECT count(*) FROM m WHERE pg_column_size(c_doc) > 3000",
    )
    .await;
    let toast_table: String = client
        .query_one(
            "SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = 'm'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let toast_chunks =
        common::scalar(&client, &format!("SELECT count(*) FROM {toast_table}")).await;
    assert!(
        toasted > 500 && toast_chunks > 1000,
        "{toasted} TOASTed c_doc values, {toast_chunks} TOAST chunks"
    );

    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let alters = [
        "ALTER COLUMN id TYPE bigint",
        "ADD COLUMN added text DEFAULT 'd'",
    ];
    pause::arm(&common::pause_dir(dir.path()), "copying").unwrap();
    pause::arm(&common::pause_dir(dir.path()), "catch-up").unwrap();
    let mut run = spawn_run(&config, options(dir.path(), "m", &alters));

    // Phase 0: the first chunk is committed, nothing else copied yet.
    let detail = wait_paused(dir.path(), "copying", &mut run).await;
    let shadow_keys = client
        .query_one(
            "SELECT format('SELECT min(id)::int, max(id)::int, count(*)::int FROM %I', relname)
             FROM pg_class WHERE relname LIKE '\\_doppel\\_%\\_new\\_m'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    let (lo, hi, n): (i32, i32, i32) = {
        let r = client.query_one(&shadow_keys, &[]).await.unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert!(
        lo == 1 && (200..2000).contains(&hi) && n < 1000,
        "one chunk copied at the pause ({detail}): keys {lo}..={hi}, {n} rows"
    );
    run_mirrored(&mut client, &mirror, &phase_writes(&columns, 0)).await;
    pause::release(&common::pause_dir(dir.path()), "copying").unwrap();

    // Phase 1: everything copied, the primary key built; only the stream carries these.
    wait_paused(dir.path(), "catch-up", &mut run).await;
    run_mirrored(&mut client, &mirror, &phase_writes(&columns, 1)).await;
    pause::release(&common::pause_dir(dir.path()), "catch-up").unwrap();

    let report = migrated(run).await;
    assert!(
        report.applied_changes > 600,
        "the stream carried the phase writes: {} changes applied",
        report.applied_changes
    );
    let twin = workload::compare_with_twin(&client, "m", "m_twin")
        .await
        .unwrap();
    assert_eq!(twin.rows(), 0, "migrated table vs twin: {twin}");
    let alters: Vec<String> = alters.iter().map(|a| a.to_string()).collect();
    let reference = workload::compare_with_reference(&client, "m", "m_twin", "m_ref", &alters)
        .await
        .unwrap();
    assert_eq!(
        reference.rows(),
        0,
        "migrated table vs ALTER TABLE: {reference}"
    );
    // The oracle was not vacuous: the apply-only writes are there.
    let edges = workload::edge_rows(&columns, 0).len() as i64;
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM m WHERE id BETWEEN 55 AND 99 OR id BETWEEN -1100 AND -1001"
        )
        .await,
        2 * edges,
        "edge rows inserted at catch-up"
    );
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM m WHERE c_text = 'rolled back'
             OR id IN (400000, 400001, 161, 162, 2161, 2162, 90001, 90002, 170, 171, 2170, 2171)"
        )
        .await,
        0,
        "rolled-back, deleted and moved keys are gone"
    );
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM m WHERE id IN (2191, 2192, 300000, 300001, -5000, -5001)"
        )
        .await,
        6,
        "rows deleted only in a rolled-back savepoint, and moved keys, are there"
    );
    // The comparison is exact: a -0 turned into 0 (equal under `=`) is one row on each side.
    client
        .batch_execute(
            "UPDATE m SET c_float8 = 0 WHERE id = (SELECT min(id) FROM m WHERE c_float8::text = '-0')",
        )
        .await
        .unwrap();
    let tampered = workload::compare_with_twin(&client, "m", "m_twin")
        .await
        .unwrap();
    assert_eq!(tampered.rows(), 2, "the oracle sees -0 → 0: {tampered}");
}

/// The rounding test's table: `k` indexes the value list, `path` says how the row arrived.
const ROUNDING_TABLE: &str =
    "CREATE TABLE r (id integer PRIMARY KEY, k integer NOT NULL, path text NOT NULL,
        r_numeric numeric, r_float double precision, r_tstz timestamp with time zone,
        r_digits text, r_scale numeric, r_single double precision);
     CREATE TABLE r_twin (LIKE r); ALTER TABLE r_twin ADD PRIMARY KEY (id);";

/// Source values, one row per index `k`: halves both ways (numeric rounds half away from
/// zero, float8 → integer rounds half to even), midnight in Asia/Kathmandu (+05:45),
/// digit strings with spaces and signs, scale and single-precision rounding.
const ROUNDING_VALUES: &[(&str, &str, &str, &str, &str, &str)] = &[
    // r_numeric, r_float, r_tstz, r_digits, r_scale, r_single
    (
        "2.5",
        "2.5",
        "2026-01-01 18:14:59.999999+00",
        "12",
        "0.25",
        "0.1",
    ),
    (
        "-2.5",
        "-2.5",
        "2026-01-01 18:15:00+00",
        " 7 ",
        "-0.25",
        "16777217",
    ),
    (
        "0.5",
        "0.5",
        "2026-01-01 23:59:59.999999+00",
        "-3",
        "0.35",
        "0.30000000000000004",
    ),
    (
        "1.5",
        "1.5",
        "2026-01-02 00:00:00+00",
        "+4",
        "0.05",
        "1.0000001192092896",
    ),
    (
        "-0.5",
        "3.5",
        "2026-03-29 01:30:00+01",
        "007",
        "12345.45",
        "-0",
    ),
    ("-1.5", "-0.5", "infinity", "2147483", "-12345.45", "NaN"),
    (
        "2.4999999999",
        "-0",
        "-infinity",
        "0",
        "0.04999",
        "Infinity",
    ),
    (
        "1000000000.5",
        "0.49999999999999994",
        "2000-02-29 18:15:00+00",
        "-0",
        "9999.95",
        "-Infinity",
    ),
    (
        "2147483647.49",
        "1e-300",
        "4713-01-01 00:00:00+00 BC",
        "  -12  ",
        "-99999.94",
        "3.4028234663852886e38",
    ),
];

const ROUNDING_ALTERS: &[&str] = &[
    "ALTER COLUMN r_numeric TYPE integer",
    "ALTER COLUMN r_float TYPE integer",
    "ALTER COLUMN r_tstz TYPE date",
    "ALTER COLUMN r_digits TYPE integer USING trim(r_digits)::integer * 10 + 1",
    "ALTER COLUMN r_scale TYPE numeric(6,1)",
    "ALTER COLUMN r_single TYPE real",
];

/// `INSERT INTO {t}` of every value row at keys `base + k`, marked `path`.
fn rounding_insert(base: i64, path: &str) -> String {
    let rows: Vec<String> = ROUNDING_VALUES
        .iter()
        .enumerate()
        .map(|(k, (n, f, ts, d, s, single))| {
            format!(
                "({}, {k}, '{path}', '{n}'::numeric, '{f}'::float8, '{ts}'::timestamptz, '{d}', '{s}'::numeric, '{single}'::float8)",
                base + k as i64
            )
        })
        .collect();
    format!("INSERT INTO {{t}} VALUES {}", rows.join(", "))
}

/// `UPDATE {t}` of the rows at keys `base + k` to value row `k`, marked `path`.
fn rounding_update(base: i64, path: &str) -> Vec<String> {
    ROUNDING_VALUES
        .iter()
        .enumerate()
        .map(|(k, (n, f, ts, d, s, single))| {
            format!(
                "UPDATE {{t}} SET k = {k}, path = '{path}', r_numeric = '{n}', r_float = '{f}', r_tstz = '{ts}',
                 r_digits = '{d}', r_scale = '{s}', r_single = '{single}' WHERE id = {}",
                base + k as i64
            )
        })
        .collect()
}

/// Filler rows at keys `from..to` (value row 0, marked `filler`), later updated.
fn rounding_filler(from: i64, to: i64) -> String {
    format!(
        "INSERT INTO {{t}} SELECT g, 0, 'filler', 1, 1, '2026-01-01 12:00:00+00', '1', 1, 1
         FROM generate_series({from}, {to}) AS g"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounding_type_changes_agree_on_both_paths_with_alter_table() {
    let cluster = common::cluster().await;
    {
        let c = cluster.connect("postgres").await.unwrap();
        // Every new session (doppel's and the reference ALTER's) converts in this zone.
        c.batch_execute("ALTER DATABASE postgres SET timezone TO 'Asia/Kathmandu'")
            .await
            .unwrap();
    }
    let mut client = cluster.connect("postgres").await.unwrap();
    client.batch_execute(ROUNDING_TABLE).await.unwrap();
    let mirror = Mirror::new("r", "r_twin");
    // Before the run: filler keys 100..=999 (the first chunk of 200 rows is 100..=299), the
    // copy-path value rows, and rows to be updated later.
    run_mirrored(
        &mut client,
        &mirror,
        &[vec![
            rounding_filler(100, 999),
            rounding_insert(1000, "copy"),
            rounding_filler(7000, 7100),
        ]],
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    pause::arm(&common::pause_dir(dir.path()), "copying").unwrap();
    pause::arm(&common::pause_dir(dir.path()), "catch-up").unwrap();
    let mut run = spawn_run(&config, options(dir.path(), "r", ROUNDING_ALTERS));

    wait_paused(dir.path(), "copying", &mut run).await;
    // Keys below 100 and updates of 100..=108 are in the copied range: stream only. Keys
    // 5000.. are past the copy position: the copy carries them (and the stream replays them).
    let mut during_copy = vec![
        rounding_insert(10, "insert in copied range"),
        rounding_insert(5000, "insert ahead of the copy"),
    ];
    during_copy.extend(rounding_update(100, "update in copied range"));
    during_copy.extend(rounding_update(900, "update ahead of the copy"));
    run_mirrored(&mut client, &mirror, &[during_copy]).await;
    pause::release(&common::pause_dir(dir.path()), "copying").unwrap();

    wait_paused(dir.path(), "catch-up", &mut run).await;
    let mut after_copy = vec![rounding_insert(6000, "insert after the copy")];
    after_copy.extend(rounding_update(7000, "update after the copy"));
    run_mirrored(&mut client, &mirror, &[after_copy]).await;
    pause::release(&common::pause_dir(dir.path()), "catch-up").unwrap();

    migrated(run).await;
    let alters: Vec<String> = ROUNDING_ALTERS.iter().map(|a| a.to_string()).collect();
    let reference = workload::compare_with_reference(&client, "r", "r_twin", "r_ref", &alters)
        .await
        .unwrap();
    assert_eq!(
        reference.rows(),
        0,
        "migrated table vs ALTER TABLE: {reference}"
    );

    // Every value row arrived through all seven paths and converted the same way on each.
    let paths = 7;
    let per_value = client
        .query(
            "SELECT k, count(DISTINCT path)::int, count(DISTINCT (r_numeric, r_float, r_tstz, r_digits, r_scale, r_single)::text)::int
             FROM r WHERE path <> 'filler' GROUP BY k ORDER BY k",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(per_value.len(), ROUNDING_VALUES.len());
    for row in &per_value {
        let (k, p, distinct): (i32, i32, i32) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            (p, distinct),
            (paths, 1),
            "value row {k}: {p} paths, {distinct} distinct results"
        );
    }
    // And the way PostgreSQL rounds: numeric half away from zero, float8 half to even,
    // timestamptz → date at midnight in the session's zone, the USING expression.
    let got: Vec<(i32, i32, i32, String, i32)> = client
        .query(
            "SELECT k, r_numeric, r_float, r_tstz::text, r_digits FROM r
             WHERE path = 'insert after the copy' AND k < 4 ORDER BY k",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 3, 2, "2026-01-01".to_string(), 121),
            (1, -3, -2, "2026-01-02".to_string(), 71),
            (2, 1, 0, "2026-01-02".to_string(), -29),
            (3, 2, 2, "2026-01-02".to_string(), 41),
        ]
    );
}

/// Runs a migration with writes at `catch-up` (stream only) on a cluster whose database has
/// `settings` (`ALTER DATABASE postgres SET ..` statements): the walsender formats streamed
/// values with the database's settings, so the applier must receive (or parse) them exactly.
async fn streamed_values_survive_database_settings(settings: &str) {
    let cluster = common::cluster().await;
    {
        let c = cluster.connect("postgres").await.unwrap();
        c.batch_execute(settings).await.unwrap();
    }
    let mut client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE s (id integer PRIMARY KEY, f8 double precision, f4 real, d date,
                 ts timestamp, i interval, p point);
             CREATE TABLE s_twin (LIKE s); ALTER TABLE s_twin ADD PRIMARY KEY (id);",
        )
        .await
        .unwrap();
    let mirror = Mirror::new("s", "s_twin");
    let insert = |base: i64| {
        format!(
            "INSERT INTO {{t}} SELECT {base} + g, 0.1::float8 * g + 0.2::float8, 0.1::real * g,
                 '2026-02-03'::date + g, '2026-02-03 04:05:06.789'::timestamp + g * interval '1 day',
                 interval '1 mon -2 days 03:04:05.5' * g, point(0.1::float8 * g, 1.0::float8 / 3)
             FROM generate_series(1, 500) AS g"
        )
    };
    run_mirrored(&mut client, &mirror, &[vec![insert(0)]]).await;
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    pause::arm(&common::pause_dir(dir.path()), "catch-up").unwrap();
    let mut run = spawn_run(
        &config,
        options(dir.path(), "s", &["ALTER COLUMN id TYPE bigint"]),
    );
    wait_paused(dir.path(), "catch-up", &mut run).await;
    run_mirrored(
        &mut client,
        &mirror,
        &[vec![
            insert(1000),
            "UPDATE {t} SET f8 = f8 * 3, i = i * 3, p = point(p[0] / 7, p[1]) WHERE id % 3 = 0"
                .to_string(),
        ]],
    )
    .await;
    pause::release(&common::pause_dir(dir.path()), "catch-up").unwrap();
    migrated(run).await;
    let twin = workload::compare_with_twin(&client, "s", "s_twin")
        .await
        .unwrap();
    assert_eq!(twin.rows(), 0, "migrated table vs twin: {twin}");
}

/// Day-first dates and SQL-standard intervals in the database's settings: the walsender
/// prints them that way and the applier, in a session with the same settings, parses them
/// back exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_and_interval_styles_of_the_database_do_not_change_streamed_values() {
    streamed_values_survive_database_settings(
        "ALTER DATABASE postgres SET DateStyle = 'SQL, DMY';
         ALTER DATABASE postgres SET IntervalStyle = 'sql_standard';",
    )
    .await;
}

/// `extra_float_digits = 0` in the database's (or role's) settings makes the walsender print
/// float4/float8 (and point) values rounded to 15/6 significant digits, so the applier writes
/// other values than the original's and verification refuses the cutover. PostgreSQL's own
/// subscriber connects with `options=-c extra_float_digits=3` (and `datestyle=ISO`,
/// `intervalstyle=postgres`) for this reason; doppel's replication connection sets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn float_output_precision_of_the_database_does_not_change_streamed_values() {
    streamed_values_survive_database_settings(
        "ALTER DATABASE postgres SET extra_float_digits = 0;",
    )
    .await;
}

/// An UPDATE that leaves a TOASTed value unchanged (pgoutput `u`), committed while the
/// cutover waits for its lock, reaches the applier after the lock is granted. The applier
/// must apply it without touching the locked original, or the fence is never reached inside
/// the lock: the attempt holds ACCESS EXCLUSIVE for the whole `fence_timeout` (blocking every
/// query on the table) and rolls back — and on a table with a steady stream of such updates
/// the cutover never succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toast_unchanged_update_committed_as_the_cutover_waits_does_not_stall_the_fence() {
    let cluster = common::cluster().await;
    let mut client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE u (id integer PRIMARY KEY, v integer NOT NULL, doc text);
             ALTER TABLE u ALTER COLUMN doc SET STORAGE EXTERNAL;
             INSERT INTO u SELECT g, g, CASE WHEN g % 10 = 0 THEN {} END FROM generate_series(1, 2000) AS g;
             CREATE TABLE u_twin AS SELECT * FROM u;",
            workload::big_text_sql(1)
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let mut o = options(dir.path(), "u", &["ALTER COLUMN v TYPE bigint"]);
    // One attempt, with time to spare: the lock wait is long, the fence budget is 2 s.
    o.cutover_retries = 1;
    o.lock_timeout = Duration::from_secs(20);
    o.fence_timeout = Duration::from_secs(2);
    pause::arm(&common::pause_dir(dir.path()), "verifying").unwrap();
    let mut run = spawn_run(&config, o);
    wait_paused(dir.path(), "verifying", &mut run).await;

    // An update of a row with a TOASTed doc, not touching doc, open across the lock request.
    let mirror = Mirror::new("u", "u_twin");
    let tx = client.transaction().await.unwrap();
    mirror
        .execute(&tx, "UPDATE {t} SET v = v + 1000000 WHERE id = 10")
        .await
        .unwrap();
    pause::release(&common::pause_dir(dir.path()), "verifying").unwrap();
    let observer = cluster.connect("postgres").await.unwrap();
    let waiting = common::wait_until_async(Duration::from_secs(60), || async {
        common::scalar(
            &observer,
            "SELECT count(*) FROM pg_locks
             WHERE relation = 'u'::regclass AND mode = 'AccessExclusiveLock' AND NOT granted",
        )
        .await
            > 0
    })
    .await;
    assert!(waiting, "the cutover did not request its lock");
    tx.commit().await.unwrap();

    let report = migrated(run).await;
    assert_eq!(report.cutover.attempts, 1);
    assert!(
        report.cutover.lock_held < Duration::from_secs(1),
        "lock held {:?}",
        report.cutover.lock_held
    );
    let twin = workload::compare_with_twin(&client, "u", "u_twin")
        .await
        .unwrap();
    assert_eq!(twin.rows(), 0, "{twin}");
}
