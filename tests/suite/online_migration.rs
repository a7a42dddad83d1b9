//! End-to-end migrations on a real server with a concurrent writer and the twin-table oracle
//! (docs/design.md §2): after the migration the new table, projected onto the twin's columns,
//! equals the twin exactly.

use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::run::{self, Outcome};
use doppel_testkit::workload::{self, Workload};

use crate::common::{self, Tune};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writer_leaves_new_table_equal_to_twin() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_tables(&client, "orders", "orders_twin", 30_000)
        .await
        .unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let writer = Workload::start(&config, "orders", "orders_twin", 7, Duration::ZERO)
        .await
        .unwrap();
    // Let the writer produce changes (including TOASTed values) before the slot exists.
    assert!(
        common::wait_until_async(Duration::from_secs(30), || async {
            client
                .query_one(
                    "SELECT count(*) FROM orders WHERE id < 0 OR note IS NULL",
                    &[],
                )
                .await
                .map(|r| r.get::<_, i64>(0) > 3_000)
                .unwrap_or(false)
        })
        .await
    );
    let dir = tempfile::tempdir().unwrap();
    let opts = common::options(
        dir.path(),
        "orders",
        &[
            "ALTER COLUMN customer_id TYPE bigint",
            "ADD COLUMN note2 text DEFAULT 'x'",
            "ALTER COLUMN amount TYPE numeric(14,2)",
        ],
    )
    .chunk_time(Duration::from_millis(50))
    .initial_rows(500)
    .cutover_retries(20)
    .fence_timeout(Duration::from_millis(2000))
    .status_interval(Duration::from_secs(60));
    let outcome = run::run(&config, &opts, &Cancel::never()).await;
    let report = writer.stop().await.unwrap();
    let Outcome::Migrated(run) = outcome.unwrap() else {
        panic!("expected a migration")
    };
    assert_eq!(report.errors, 0, "writer errors: {:?}", report.first_errors);
    assert!(
        report.transactions > 100,
        "the writer ran {} transactions",
        report.transactions
    );
    assert!(run.applied_changes > 0, "changes were streamed and applied");
    assert_eq!(
        workload::mismatches(&client, "orders", "orders_twin")
            .await
            .unwrap(),
        0
    );
    let ty: String = client
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'customer_id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ty, "bigint");
    let leftovers: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        leftovers, 0,
        "slot and publication are dropped after the run"
    );
    // Indexes keep their names; the old table is kept; inserts keep numbering.
    let names: Vec<String> = client
        .query(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'orders'::regclass ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        names,
        vec!["orders_created_idx", "orders_customer_idx", "orders_pkey"]
    );
    let old = run.plan.names.old_qualified();
    let old_exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&old])
        .await
        .unwrap()
        .get(0);
    assert!(old_exists, "{old} is kept for rollback");
    let max_before: i64 = client
        .query_one("SELECT max(id) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    let new_id: i64 = client
        .query_one(
            "INSERT INTO orders (customer_id, status, amount) VALUES (1, 'new', 1) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        new_id > max_before,
        "the sequence continues after cutover ({new_id} > {max_before})"
    );
    assert!(run.cutover.rollback_path.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_script_restores_the_original_table() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_tables(&client, "orders", "orders_twin", 2_000)
        .await
        .unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = common::options(
        dir.path(),
        "public.orders",
        &["ALTER COLUMN customer_id TYPE bigint"],
    )
    .chunk_time(Duration::from_millis(50))
    .initial_rows(500)
    .cutover_retries(20)
    .fence_timeout(Duration::from_millis(2000))
    .status_interval(Duration::from_secs(60));
    let Outcome::Migrated(run) = run::run(&config, &opts, &Cancel::never()).await.unwrap() else {
        panic!("expected a migration")
    };
    let output = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &cluster.conninfo("postgres"),
            "-f",
        ])
        .arg(&run.cutover.rollback_path)
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "rollback failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ty: String = client
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'customer_id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ty, "integer", "the original table is back under its name");
    assert_eq!(
        workload::mismatches(&client, "orders", "orders_twin")
            .await
            .unwrap(),
        0
    );
    let pkey_on_orders: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = 'orders'::regclass AND indexrelid = 'orders_pkey'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(pkey_on_orders, "index names are restored with the table");
}
