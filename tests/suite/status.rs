//! The status names what doppel waits for, read from the control socket while it holds
//! (`status` and `status --json`): a postponed cutover and why (the flag file, `ctl
//! postpone`), a cutover attempt waiting for its lock with the session that blocks it (pid,
//! role, state, transaction age), and the row estimate from the start, for a table never
//! analysed too.

use std::path::Path;
use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::ops::control;
use doppel::run::{Outcome, RunOptions};
use doppel_testkit::workload;
use tokio::task::JoinHandle;

use crate::common::{self, Tune};

type Run = JoinHandle<anyhow::Result<Outcome>>;

fn start(cluster: &doppel_testkit::cluster::LocalCluster, options: RunOptions) -> Run {
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    tokio::spawn(async move { common::run_paused(&config, &options, &Cancel::never()).await })
}

async fn status(socket: &Path) -> String {
    control::send(socket, "status").await.unwrap_or_default()
}

async fn status_json(socket: &Path) -> serde_json::Value {
    let reply = control::send(socket, "status --json")
        .await
        .unwrap_or_default();
    serde_json::from_str(&reply).unwrap_or_default()
}

/// Waits until the status line contains `text`; the last line seen otherwise.
async fn status_says(socket: &Path, text: &str) -> Result<(), String> {
    let said = common::wait_until_async(Duration::from_secs(60), || async {
        status(socket).await.contains(text)
    })
    .await;
    if said {
        Ok(())
    } else {
        Err(status(socket).await)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postponed_cutover_says_who_postponed_it() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_id_v_table(&client, "t", 2000)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    let flag = dir.path().join("hold");
    std::fs::write(&flag, b"").unwrap();
    let mut options = common::options(dir.path(), "t", &["ALTER COLUMN v TYPE bigint"])
        .control_socket(socket.clone());
    options.postpone_cutover_flag_file = Some(flag.clone());
    let run = start(&cluster, options);

    let by_flag = format!("State: cutover, postponed (flag file {});", flag.display());
    status_says(&socket, &by_flag)
        .await
        .unwrap_or_else(|line| panic!("expected {by_flag:?}, got {line}"));
    let json = status_json(&socket).await;
    assert_eq!(json["phase"], "cutover", "{json}");
    assert_eq!(json["postponed"], true, "{json}");
    assert_eq!(json["waiting"]["kind"], "postponed", "{json}");
    assert_eq!(
        json["waiting"]["by"],
        format!("flag file {}", flag.display()),
        "{json}"
    );
    assert_eq!(json["rows_verified"], 2000, "{json}");

    // The operator's postponement holds once the file is gone.
    assert!(
        control::send(&socket, "postpone")
            .await
            .unwrap()
            .starts_with("ok")
    );
    std::fs::remove_file(&flag).unwrap();
    status_says(&socket, "State: cutover, postponed (ctl postpone);")
        .await
        .unwrap_or_else(|line| panic!("expected the ctl postponement, got {line}"));
    assert_eq!(status_json(&socket).await["waiting"]["by"], "ctl postpone");
    assert!(!run.is_finished());

    control::send(&socket, "cut-over").await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run ends")
        .unwrap()
        .unwrap();
    assert!(matches!(outcome, Outcome::Migrated(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_attempt_names_the_session_that_blocks_it() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_id_v_table(&client, "t", 2000)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    let flag = dir.path().join("hold");
    std::fs::write(&flag, b"").unwrap();
    let mut options = common::options(dir.path(), "t", &["ALTER COLUMN v TYPE bigint"])
        .control_socket(socket.clone())
        .cutover_retries(100);
    // Each attempt waits long enough to be read from the socket.
    options.lock_timeout = Duration::from_secs(2);
    options.max_lock_hold = Duration::from_secs(3);
    options.postpone_cutover_flag_file = Some(flag.clone());
    let run = start(&cluster, options);
    status_says(&socket, "postponed (flag file")
        .await
        .unwrap_or_else(|line| panic!("the run reaches its cutover: {line}"));

    // An idle-in-transaction session holding a lock on the table blocks the attempts.
    let blocker = cluster.connect("postgres").await.unwrap();
    let pid = common::scalar(&blocker, "SELECT pg_backend_pid()::bigint").await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS SHARE MODE")
        .await
        .unwrap();
    std::fs::remove_file(&flag).unwrap();
    let expected = format!(
        "State: cutover, waiting for lock (blocked by pid {pid}: postgres, idle in transaction, "
    );
    status_says(&socket, &expected)
        .await
        .unwrap_or_else(|line| panic!("expected {expected:?}, got {line}"));
    let json = status_json(&socket).await;
    let waiting = &json["waiting"];
    if waiting["kind"] == "lock" {
        assert_eq!(waiting["blockers"][0]["pid"], pid, "{json}");
        assert_eq!(waiting["blockers"][0]["user"], "postgres", "{json}");
        assert_eq!(
            waiting["blockers"][0]["state"], "idle in transaction",
            "{json}"
        );
    } else {
        // Between two attempts (the backoff) nothing is waited for.
        assert!(waiting.is_null(), "{json}");
    }
    assert_eq!(json["postponed"], false, "{json}");

    blocker.batch_execute("ROLLBACK").await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run ends")
        .unwrap()
        .unwrap();
    assert!(matches!(outcome, Outcome::Migrated(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_row_estimate_is_shown_from_the_start_even_for_a_table_never_analysed() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL) WITH (autovacuum_enabled = off);
             INSERT INTO t SELECT i, i FROM generate_series(1, 20000) i;",
        )
        .await
        .unwrap();
    assert_eq!(
        common::scalar(
            &client,
            "SELECT reltuples::bigint FROM pg_class WHERE oid = 't'::regclass"
        )
        .await,
        -1,
        "never analysed"
    );
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    let pause = common::pause_dir(dir.path());
    doppel::testing::arm(&pause, "after-preflight").unwrap();
    let options = common::options(dir.path(), "t", &["ALTER COLUMN v TYPE bigint"])
        .control_socket(socket.clone());
    let run = start(&cluster, options);
    assert!(
        doppel::testing::wait_reached(&pause, "after-preflight", Duration::from_secs(60))
            .await
            .is_some()
    );
    let json = status_json(&socket).await;
    let estimate = json["rows_estimate"].as_u64().unwrap();
    assert!(
        (10_000..=40_000).contains(&estimate),
        "the planner's estimate of 20,000 rows: {json}"
    );
    let line = status(&socket).await;
    assert!(
        line.starts_with(&format!("Copy: 0/{estimate} 0.0%;")),
        "{line}"
    );
    doppel::testing::release(&pause, "after-preflight").unwrap();
    assert!(matches!(run.await.unwrap().unwrap(), Outcome::Migrated(_)));
}
