//! The ledger scenario (issue 16): `transactions.status` text moves to a `state_id` foreign
//! key on `transaction_state`, under a writer that plays the application and mirrors every
//! change into an untouched twin.
//!
//! - Expand/contract on the table itself: `ADD COLUMN state_id smallint REFERENCES
//!   transaction_state(id)` directly (the OID unchanged), `doppel backfill` of `state_id` from
//!   `status` while the old application writes `status` only, the switch to dual write, a
//!   second backfill (0 mismatches, 0 orphans) and a third that changes 0 rows, `SET NOT NULL`
//!   by the recipe (the writer's worst wait and the longest write-blocking lock measured against
//!   the lock timeout), `status` made nullable, the switch to the new application, and the
//!   contract (`DROP COLUMN status`). The table then equals the twin with `state_id` derived from `status`.
//! - The same change in one shadow run with `--backfill` and the foreign key: rows written
//!   during the migration get `state_id` through the applier from the same expression as the
//!   copied ones; the new table equals the twin, the foreign key is validated, `doppel verify
//!   --backfill` agrees.
//!
//! `doppel history` shows each run and backfill with its strategy and outcome.

use std::time::{Duration, Instant};

use doppel::cancel::Cancel;
use doppel::plan::Strategy;
use doppel::run::{self, BackfillOptions, BackfillOutcome, BackfillReport, Outcome};
use doppel_testkit::workload::ledger::{self, LedgerWriter, Mode};
use tokio_postgres::Client;

use crate::common::locks::LockWatch;
use crate::common::{self, Tune};

/// Rows of the ledger.
const ROWS: i64 = 200_000;

/// `--lock-timeout` of the runs.
const LOCK_TIMEOUT: Duration = Duration::from_millis(200);

/// The backfill expression.
const STATE_ID: &str = "state_id = (SELECT id FROM transaction_state s WHERE s.name = status)";

/// Expand, dual write and contract clauses.
const EXPAND: &str = "ADD COLUMN state_id smallint REFERENCES transaction_state(id)";
const NOT_NULL: &str = "ALTER COLUMN state_id SET NOT NULL";
const RELAX: &str = "ALTER COLUMN status DROP NOT NULL";
const CONTRACT: &str = "DROP COLUMN status";

fn options(dir: &std::path::Path, clause: &str) -> run::RunOptions {
    let mut options = common::options(dir, "transactions", &[clause]).strategy_auto();
    options.lock_timeout = LOCK_TIMEOUT;
    options.cutover_retries = 20;
    options
}

/// Runs `clause` on the table itself and checks it took the strategy `expected`, kept the
/// OID and left the writer waiting no longer than the lock timeout (plus scheduling noise).
/// Returns the writer's worst wait, the longest write-blocking lock seen, and the report.
async fn direct(
    config: &tokio_postgres::Config,
    client: &Client,
    writer: &LedgerWriter,
    dir: &std::path::Path,
    clause: &str,
    expected: Strategy,
) -> (Duration, Duration, Box<run::AlterReport>) {
    let oid = common::oid_of(client, "transactions").await;
    writer.start_window();
    let watch = LockWatch::start(config, oid).await;
    let outcome = run::run(config, &options(dir, clause), &Cancel::never())
        .await
        .unwrap_or_else(|e| panic!("{clause}: {e:#}"));
    let longest = watch.stop().await;
    let worst = writer.window();
    let Outcome::Altered(report) = outcome else {
        panic!("{clause}: {outcome:?}")
    };
    assert_eq!(report.clauses[0].strategy, expected, "{clause}");
    assert_eq!(report.oid_after, oid, "{clause}: the OID changed");
    assert_eq!(common::oid_of(client, "transactions").await, oid);
    for line in doppel::run::render_steps(&report.direct) {
        println!("  {clause}: {line}");
    }
    println!(
        "  {clause}: writer worst {:.1} ms, longest write-blocking lock {:.1} ms (lock_timeout {} ms)",
        worst.as_secs_f64() * 1000.0,
        longest.as_secs_f64() * 1000.0,
        LOCK_TIMEOUT.as_millis()
    );
    assert!(
        longest < LOCK_TIMEOUT,
        "{clause}: a write-blocking lock was held {longest:?}"
    );
    assert!(
        worst < LOCK_TIMEOUT * 3,
        "{clause}: the writer waited {worst:?}"
    );
    assert!(
        report.direct.longest_blocking_hold() < LOCK_TIMEOUT,
        "{clause}"
    );
    (worst, longest, report)
}

/// `doppel backfill --set STATE_ID [--where <filter>] --execute`.
async fn backfill(
    config: &tokio_postgres::Config,
    dir: &std::path::Path,
    filter: Option<&str>,
) -> BackfillReport {
    let mut options = BackfillOptions::new("transactions", &[STATE_ID]);
    options.filter = filter.map(str::to_string);
    options.execute = true;
    options.work_dir = dir.to_path_buf();
    let BackfillOutcome::Done(report) = run::backfill(config, &options, &Cancel::never())
        .await
        .expect("backfill")
    else {
        panic!("a dry run")
    };
    let u = &report.update;
    println!(
        "  backfill: {} changed of {} examined in {} chunks ({} retried) in {:.1} s; {}",
        u.rows_changed,
        u.rows_examined,
        u.chunks,
        u.retries,
        u.elapsed.as_secs_f64(),
        report.validation.lines().join("; ")
    );
    *report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expand_backfill_constraints_contract_on_the_table_itself() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    ledger::create(&client, ROWS).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let oid = common::oid_of(&client, "transactions").await;
    let writer = LedgerWriter::start(&config, Mode::Old, 16, Duration::from_millis(2))
        .await
        .unwrap();
    println!("ledger: {ROWS} rows, writer running");

    // Expand: the column and its foreign key, on the table itself.
    direct(
        &config,
        &client,
        &writer,
        dir.path(),
        EXPAND,
        Strategy::Online,
    )
    .await;
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'transactions'::regclass AND contype = 'f' AND convalidated").await,
        1
    );

    // Backfill the NULLs while the old application writes status only: the rows it inserts
    // or updates afterwards are reported as mismatches.
    let first = backfill(&config, dir.path(), Some("state_id IS NULL")).await;
    assert!(first.update.rows_changed as i64 >= ROWS * 9 / 10);
    // Dual write, then a pass over every row: it changes only the rows that differ.
    writer.switch(Mode::Dual).await;
    let second = backfill(&config, dir.path(), None).await;
    assert!(second.validation.clean(), "{:?}", second.validation.lines());
    assert_eq!(second.validation.columns[0].mismatches.count, 0);
    assert_eq!(second.validation.columns[0].orphans.len(), 1);
    assert_eq!(second.validation.columns[0].orphans[0].1.count, 0);
    assert!(second.update.rows_changed < first.update.rows_changed / 10);
    let third = backfill(&config, dir.path(), None).await;
    assert_eq!(
        third.update.rows_changed, 0,
        "a backfill run again changes nothing"
    );
    assert!(third.validation.clean());

    // The constraint, by the recipe.
    let started = Instant::now();
    let (worst, longest, report) = direct(
        &config,
        &client,
        &writer,
        dir.path(),
        NOT_NULL,
        Strategy::Online,
    )
    .await;
    // The scan ran under SHARE UPDATE EXCLUSIVE: each ACCESS EXCLUSIVE step held its lock for
    // less than the scan took (a SET NOT NULL that scanned would hold it at least that long).
    let scan = report
        .direct
        .steps
        .iter()
        .find(|s| s.lock == doppel::plan::LockMode::ShareUpdateExclusive)
        .expect("a VALIDATE step")
        .held;
    for s in report
        .direct
        .steps
        .iter()
        .filter(|s| s.lock == doppel::plan::LockMode::AccessExclusive)
    {
        assert!(
            s.held < scan,
            "{}: held {:?}, the scan took {scan:?}",
            s.what,
            s.held
        );
    }
    println!(
        "SET NOT NULL by the recipe in {:.0} ms: writer worst latency {:.1} ms, longest write-blocking lock {:.1} ms, lock_timeout {} ms",
        started.elapsed().as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0,
        longest.as_secs_f64() * 1000.0,
        LOCK_TIMEOUT.as_millis()
    );

    // Contract: status may be NULL, the application stops writing it, then it goes.
    direct(
        &config,
        &client,
        &writer,
        dir.path(),
        RELAX,
        Strategy::Direct,
    )
    .await;
    writer.switch(Mode::New).await;
    direct(
        &config,
        &client,
        &writer,
        dir.path(),
        CONTRACT,
        Strategy::Direct,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = writer.stop().await.unwrap();
    println!(
        "writer: {} transactions, {} errors, worst {:.1} ms, p99 {:.1} ms",
        report.transactions,
        report.errors,
        report.max_latency.as_secs_f64() * 1000.0,
        report.p99.as_secs_f64() * 1000.0
    );
    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    assert_eq!(common::oid_of(&client, "transactions").await, oid);
    assert_eq!(ledger::mismatches(&client).await.unwrap(), 0);
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'transactions'::regclass AND attname = 'state_id' AND attnotnull").await,
        1
    );
    let history = history_json(&cluster).await;
    let kinds: Vec<(String, String)> = history
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("run", "succeeded"),
            ("backfill", "succeeded"),
            ("backfill", "succeeded"),
            ("backfill", "succeeded"),
            ("run", "succeeded"),
            ("run", "succeeded"),
            ("run", "succeeded")
        ]
        .map(|(k, o)| (k.to_string(), o.to_string())),
        "{history:#?}"
    );
    assert_eq!(history[0]["strategies"][0]["strategy"], "online");
    assert_eq!(history[6]["strategies"][0]["strategy"], "direct");
    assert!(history[4]["lock_hold_ms"].as_f64().unwrap() < LOCK_TIMEOUT.as_millis() as f64);
    print_history(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_change_in_one_shadow_run_with_backfill_and_foreign_key() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    ledger::create(&client, ROWS / 4).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("postpone");
    std::fs::write(&flag, "").unwrap();
    let socket = dir.path().join("ledger.sock");
    let writer = LedgerWriter::start(&config, Mode::Old, 61, Duration::from_millis(1))
        .await
        .unwrap();
    let mut options = common::options(dir.path(), "transactions", &[EXPAND, NOT_NULL, CONTRACT])
        .strategy_auto()
        .backfills(&[STATE_ID])
        .slow(0.5)
        .control_socket(socket.clone());
    options.postpone_cutover_flag_file = Some(flag.clone());
    let run_config = config.clone();
    let migration =
        tokio::spawn(async move { run::run(&run_config, &options, &Cancel::never()).await });
    // The old application writes through the copy and the catch-up; once the cutover waits,
    // it stops (its statements name `status`, which the new table drops).
    let postponed = common::wait_until_async(Duration::from_secs(180), || async {
        doppel::ops::control::send(&socket, "status --json")
            .await
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
            .is_some_and(|s| s["phase"] == "cutover")
    })
    .await;
    assert!(postponed, "the run reached its postponed cutover");
    let report = writer.stop().await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    assert!(
        report.transactions > 100,
        "the writer wrote during the migration"
    );
    std::fs::remove_file(&flag).unwrap();
    let Outcome::Migrated(run) = migration.await.unwrap().expect("the shadow run") else {
        panic!("a shadow run")
    };
    assert!(
        run.clauses.iter().all(|c| c.strategy == Strategy::Shadow),
        "{:?}",
        run.clauses
    );
    println!(
        "shadow run: {} rows copied, {} changes applied through the backfill expression, lock held {:.1} ms",
        run.copy.rows,
        run.applied_changes,
        run.cutover.lock_held.as_secs_f64() * 1000.0
    );
    assert!(run.applied_changes > 0);
    assert!(
        run.cutover.unvalidated.is_empty(),
        "{:?}",
        run.cutover.unvalidated
    );
    assert_eq!(ledger::mismatches(&client).await.unwrap(), 0);
    let constraints: Vec<String> = client
        .query("SELECT conname || ' ' || contype::text || ' ' || convalidated::text || ' ' || conrelid::regclass::text FROM pg_constraint WHERE contype = 'f'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'transactions'::regclass AND contype = 'f' AND convalidated").await,
        1,
        "the foreign key is validated on the new table: {constraints:?} {:?}", run.cutover
    );
    let verify = tokio::process::Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args([
            "verify",
            "--dsn",
            &cluster.conninfo("postgres"),
            "--table",
            "transactions",
            "--against",
            &run.plan.names.old_qualified(),
            "--backfill",
            STATE_ID,
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        stdout.contains("columns compared: ") && stdout.contains("state_id"),
        "{stdout}"
    );
    let history = history_json(&cluster).await;
    assert_eq!(history.len(), 1);
    let h = &history[0];
    assert_eq!(h["outcome"], "succeeded");
    assert!(h["cutover_lsn"].is_string(), "{h}");
    assert!(
        h["rollback_script"]
            .as_str()
            .unwrap_or_default()
            .contains("RENAME TO"),
        "{h}"
    );
    assert_eq!(h["rows_copied"], run.copy.rows);
    assert!(h["clauses"].to_string().contains("--backfill"), "{h}");
}

/// `doppel history --json` of the cluster's database.
async fn history_json(cluster: &doppel_testkit::cluster::LocalCluster) -> Vec<serde_json::Value> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args([
            "history",
            "--json",
            "--table",
            "transactions",
            "--dsn",
            &cluster.conninfo("postgres"),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Prints `doppel history` as a DBA sees it.
async fn print_history(cluster: &doppel_testkit::cluster::LocalCluster) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args(["history", "--dsn", &cluster.conninfo("postgres")])
        .output()
        .await
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
}
