//! An interrupted run leaves nothing behind: Ctrl-C / SIGTERM make doppel drop its slot,
//! publication and shadow by itself; after `kill -9` the TEMPORARY slot disappears with its
//! connection and `doppel cleanup` removes the rest. The original table is untouched.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use doppel_testkit::workload;

use crate::common;

fn start_slow_run(conninfo: &str, dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args([
            "run",
            "--dsn",
            conninfo,
            "--table",
            "orders",
            "--alter",
            "ALTER COLUMN customer_id TYPE bigint",
            "--execute",
            "--chunk-time",
            "5",
            "--nice-ratio",
            "20",
            "--progress",
            "lines",
        ])
        .arg("--work-dir")
        .arg(dir)
        .arg("--rollback-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("doppel starts")
}

const SHADOW_EXISTS: &str = "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_%'";

async fn original_intact(client: &tokio_postgres::Client) {
    assert_eq!(
        workload::mismatches(client, "orders", "orders_twin")
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
    assert_eq!(ty, "integer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_mid_copy_drops_slot_publication_and_shadow() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_tables(&client, "orders", "orders_twin", 50_000)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let child = start_slow_run(&cluster.conninfo("postgres"), dir.path());
    common::wait_copying(&client, "orders").await;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !status.status.success(),
        "an interrupted run exits non-zero"
    );
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(
        stderr.contains("interrupted"),
        "says why it stopped: {stderr}"
    );
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM pg_replication_slots").await,
        0
    );
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM pg_publication").await,
        0
    );
    assert_eq!(common::scalar(&client, SHADOW_EXISTS).await, 0);
    original_intact(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_copy_then_cleanup_removes_everything() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_tables(&client, "orders", "orders_twin", 50_000)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut child = start_slow_run(&cluster.conninfo("postgres"), dir.path());
    common::wait_copying(&client, "orders").await;
    child.kill().unwrap();
    child.wait().unwrap();
    // The TEMPORARY slot goes with its connection.
    let gone = common::wait_until_async(Duration::from_secs(30), || async {
        common::scalar(&client, "SELECT count(*) FROM pg_replication_slots").await == 0
    })
    .await;
    assert!(gone, "the temporary slot is dropped when doppel dies");
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM pg_publication").await,
        1
    );
    assert_eq!(common::scalar(&client, SHADOW_EXISTS).await, 1);
    original_intact(&client).await;

    // A new run refuses while the leftovers exist, and says how to remove them.
    let refused = Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args([
            "run",
            "--dsn",
            &cluster.conninfo("postgres"),
            "--table",
            "orders",
            "--alter",
            "ALTER COLUMN customer_id TYPE bigint",
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("doppel cleanup --table"));

    let cleanup = Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args([
            "cleanup",
            "--dsn",
            &cluster.conninfo("postgres"),
            "--table",
            "orders",
        ])
        .output()
        .unwrap();
    assert!(
        cleanup.status.success(),
        "{}",
        String::from_utf8_lossy(&cleanup.stderr)
    );
    let out = String::from_utf8_lossy(&cleanup.stdout);
    assert!(out.contains("removed publication doppel_"), "{out}");
    assert!(out.contains("removed shadow table"), "{out}");
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM pg_publication").await,
        0
    );
    assert_eq!(common::scalar(&client, SHADOW_EXISTS).await, 0);
    original_intact(&client).await;
}
