//! The long end-to-end check (left out of the default run; see README):
//! `cargo test --release --test suite e2e_pgbench -- --ignored --nocapture`.
//!
//! Starts a cluster, loads 1,000,000 rows (and the twin), runs a pgbench writer that mirrors
//! every change into the twin, and runs `doppel run --execute` meanwhile. Asserts no writer
//! errors, 0 rows differing from the twin, and no replication slot left behind.

use std::process::{Command, Stdio};
use std::time::Instant;

use doppel_testkit::workload;

use crate::common;

const SCRIPT: &str = r#"\set id random(1, 1000000)
\set c random(1, 100000)
WITH u AS (UPDATE orders SET amount = amount + 1, customer_id = :c WHERE id = :id RETURNING id, amount, customer_id) UPDATE orders_twin t SET amount = u.amount, customer_id = u.customer_id FROM u WHERE t.id = u.id;
WITH i AS (INSERT INTO orders (customer_id, status, amount, note) VALUES (:c, 'pgbench', 1.5, 'x') RETURNING id, customer_id, status, amount, note, created_at) INSERT INTO orders_twin (id, customer_id, status, amount, note, created_at) SELECT * FROM i;
\set d random(1, 1000000)
WITH d AS (DELETE FROM orders WHERE id = :d RETURNING id) DELETE FROM orders_twin WHERE id IN (SELECT id FROM d);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 1M rows with a pgbench writer; run with --ignored"]
async fn one_million_rows_under_pgbench_writer() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let load = Instant::now();
    workload::create_tables(&client, "orders", "orders_twin", 1_000_000)
        .await
        .unwrap();
    println!(
        "loaded 1,000,000 rows in {:.1} s",
        load.elapsed().as_secs_f64()
    );
    let script = cluster.scratch_dir().join("writer.sql");
    std::fs::write(&script, SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut doppel = Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args([
            "run",
            "--dsn",
            &cluster.conninfo("postgres"),
            "--table",
            "public.orders",
            "--alter",
            "ALTER COLUMN customer_id TYPE bigint",
            "--alter",
            "ADD COLUMN note2 text",
            "--execute",
            "--progress",
            "lines",
            "--status-interval",
            "5",
        ])
        .arg("--work-dir")
        .arg(dir.path())
        .arg("--rollback-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("doppel starts");

    let mut rounds = 0;
    let mut failed_lines = Vec::new();
    let mut transactions = 0u64;
    while doppel.try_wait().unwrap().is_none() {
        let out = cluster
            .command("pgbench")
            .args(["-n", "-c", "4", "-j", "2", "-R", "1000", "-T", "2", "-f"])
            .arg(&script)
            .output()
            .expect("pgbench runs");
        rounds += 1;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        for line in text.lines() {
            if line.contains("number of transactions actually processed") {
                transactions += line
                    .split(':')
                    .nth(1)
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.split('/').next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            let failed = line.contains("number of failed transactions") && !line.contains(": 0 ");
            if failed || line.contains("aborted") || line.contains("ERROR") {
                failed_lines.push(line.to_string());
            }
        }
        assert!(out.status.success(), "pgbench failed: {text}");
    }
    let output = doppel.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    println!(
        "doppel took {:.1} s; pgbench: {rounds} rounds, {transactions} transactions",
        started.elapsed().as_secs_f64()
    );
    assert!(output.status.success(), "doppel failed");
    assert!(failed_lines.is_empty(), "writer errors: {failed_lines:?}");
    assert!(transactions > 1000, "the writer ran during the migration");
    let mismatches = workload::mismatches(&client, "orders", "orders_twin")
        .await
        .unwrap();
    println!("rows differing from the twin: {mismatches}");
    assert_eq!(mismatches, 0);
    let slots: i64 = client
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "no replication slot left behind");
}
