//! The query and retained-WAL throttles on a running migration, and their failing safe: a
//! `--throttle-query` throttles while it returns a positive value and while it fails (saying
//! so); a `--critical-query` aborts (exit 7) when positive and throttles while it fails;
//! `--max-retained-wal` throttles until `ctl max-retained-wal=0` lifts it;
//! `--critical-retained-wal` aborts (exit 7), leaving nothing behind.

use std::path::Path;
use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::ops::control;
use doppel::run::{Outcome, RunOptions};
use doppel_testkit::workload;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::common::{self, Tune};

type Run = JoinHandle<anyhow::Result<Outcome>>;

/// A slow run of `t` (100,000 rows) with a control socket, configured by `set`.
async fn start(
    cluster: &doppel_testkit::cluster::LocalCluster,
    dir: &Path,
    set: impl FnOnce(&mut RunOptions),
) -> Run {
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_id_v_table(&client, "t", 100_000)
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE switch (value int); INSERT INTO switch VALUES (0);")
        .await
        .unwrap();
    let mut options = common::options(dir, "t", &["ALTER COLUMN v TYPE bigint"])
        .slow(5.0)
        .control_socket(dir.join("ctl.sock"));
    set(&mut options);
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    tokio::spawn(async move { common::run_paused(&config, &options, &Cancel::never()).await })
}

/// The throttle reasons `status --json` reports: (kind, text).
async fn reasons(socket: &Path) -> Vec<(String, String)> {
    let reply = control::send(socket, "status --json")
        .await
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
    json["throttle"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["reason"].as_str().unwrap_or_default().to_string(),
                        r["text"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until a reason of `kind` whose text contains `text` is reported (or, with `None`,
/// until no reason is).
async fn wait_reason(socket: &Path, kind: Option<&str>, text: &str) -> bool {
    common::wait_until_async(Duration::from_secs(60), || async {
        let now = reasons(socket).await;
        match kind {
            Some(kind) => now.iter().any(|(k, t)| k == kind && t.contains(text)),
            None => now.is_empty(),
        }
    })
    .await
}

/// The backfill copies no row for 1 s (after the chunk in flight ended).
async fn copy_holds(client: &Client) -> bool {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = common::shadow_rows(client, "t").await;
    !common::wait_until_async(Duration::from_secs(1), || async {
        common::shadow_rows(client, "t").await != held
    })
    .await
}

async fn copy_moves(client: &Client) -> bool {
    let base = common::shadow_rows(client, "t").await.max(0);
    common::wait_until_async(Duration::from_secs(60), || async {
        common::shadow_rows(client, "t").await > base
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_query_throttles_while_positive_and_while_it_fails() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    let run = start(&cluster, dir.path(), |o| {
        o.throttle.throttle_query = Some("SELECT value FROM switch".into());
    })
    .await;
    assert!(copy_moves(&client).await, "the backfill runs");

    client
        .batch_execute("UPDATE switch SET value = 1")
        .await
        .unwrap();
    assert!(
        wait_reason(&socket, Some("throttle_query"), "returned a positive value").await,
        "{:?}",
        reasons(&socket).await
    );
    assert!(
        copy_holds(&client).await,
        "no chunk is copied while throttled"
    );
    client
        .batch_execute("UPDATE switch SET value = 0")
        .await
        .unwrap();
    assert!(wait_reason(&socket, None, "").await);
    assert!(copy_moves(&client).await, "the backfill resumes");

    // The query fails: doppel cannot tell, so it throttles, and says so.
    client
        .batch_execute("ALTER TABLE switch RENAME TO switch_gone")
        .await
        .unwrap();
    assert!(
        wait_reason(&socket, Some("throttle_query"), "--throttle-query failed").await,
        "{:?}",
        reasons(&socket).await
    );
    let line = control::send(&socket, "status").await.unwrap();
    assert!(
        line.contains("throttled (--throttle-query failed, throttling until it runs"),
        "{line}"
    );
    assert!(
        copy_holds(&client).await,
        "no chunk is copied while it fails"
    );
    client
        .batch_execute("ALTER TABLE switch_gone RENAME TO switch")
        .await
        .unwrap();
    assert!(wait_reason(&socket, None, "").await);
    assert!(matches!(run.await.unwrap().unwrap(), Outcome::Migrated(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_query_throttles_while_it_fails_and_aborts_when_positive() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    let run = start(&cluster, dir.path(), |o| {
        o.throttle.critical_query = Some("SELECT value FROM switch".into());
    })
    .await;
    assert!(copy_moves(&client).await, "the backfill runs");

    client
        .batch_execute("ALTER TABLE switch RENAME TO switch_gone")
        .await
        .unwrap();
    assert!(
        wait_reason(&socket, Some("critical_query"), "--critical-query failed").await,
        "{:?}",
        reasons(&socket).await
    );
    assert!(
        copy_holds(&client).await,
        "no chunk is copied while it fails"
    );
    assert!(
        !run.is_finished(),
        "a failing critical query does not abort"
    );
    client
        .batch_execute("ALTER TABLE switch_gone RENAME TO switch; UPDATE switch SET value = 1")
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the critical query ends the run")
        .unwrap()
        .expect_err("aborted");
    assert_eq!(doppel::failure::exit_code(&err), 7, "{err:#}");
    assert!(format!("{err:#}").contains("--critical-query"), "{err:#}");
    common::assert_no_doppel_objects(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retained_wal_throttles_until_lifted_on_the_socket() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    // Any WAL written after the slot's restart position is more than one byte.
    let run = start(&cluster, dir.path(), |o| {
        o.throttle.max_retained_wal = Some(1)
    })
    .await;
    assert!(
        wait_reason(&socket, Some("retained_wal"), "bytes of WAL > 1").await,
        "{:?}",
        reasons(&socket).await
    );
    assert!(
        copy_holds(&client).await,
        "no chunk is copied while throttled"
    );
    let reply = control::send(&socket, "status --json").await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert!(json["retained_wal_bytes"].as_u64().unwrap() > 1, "{json}");
    assert!(
        control::send(&socket, "max-retained-wal=0")
            .await
            .unwrap()
            .starts_with("ok: max-retained-wal=0 (was 1)")
    );
    assert!(wait_reason(&socket, None, "").await);
    assert!(matches!(run.await.unwrap().unwrap(), Outcome::Migrated(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_retained_wal_aborts_and_cleans_up() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = start(&cluster, dir.path(), |o| {
        o.throttle.critical_retained_wal = Some(1)
    })
    .await;
    let err = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the threshold ends the run")
        .unwrap()
        .expect_err("aborted");
    assert_eq!(doppel::failure::exit_code(&err), 7, "{err:#}");
    assert!(
        format!("{err:#}").contains("--critical-retained-wal 1"),
        "{err:#}"
    );
    common::assert_no_doppel_objects(&client).await;
}
