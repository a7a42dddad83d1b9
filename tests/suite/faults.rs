//! Faults and hostile events during a run: the server terminating doppel's replication
//! connection, TRUNCATE and DDL on the original. Each ends with the original untouched and
//! nothing of doppel's left; plus invariant I4 (no snapshot held longer than about one chunk).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use doppel::cancel::Cancel;
use doppel::run;
use doppel_testkit::workload;

use crate::common::{self, Tune};

/// The ALTER of every run.
const ALTER: &str = "ALTER COLUMN v TYPE bigint";

/// Creates `t` with `rows` rows and its twin.
async fn setup(client: &tokio_postgres::Client, rows: i64) {
    workload::create_id_v_table(client, "t", rows)
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE twin AS SELECT * FROM t")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walsender_terminated_by_the_server_aborts_cleanly() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    setup(&client, 20_000).await;
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let options = common::options(dir.path(), "t", &[ALTER]).slow(30.0);
    let run = tokio::spawn(async move { run::run(&config, &options, &Cancel::never()).await });
    common::wait_copying(&client, "t").await;
    let killed = common::scalar(
        &client,
        "SELECT count(*) FROM (SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE active) k",
    )
    .await;
    assert_eq!(killed, 1);
    let err = run.await.unwrap().expect_err("the run must stop");
    assert!(
        format!("{err:#}").contains("replication"),
        "says the stream failed: {err:#}"
    );
    common::assert_no_doppel_objects(&client).await;
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM (SELECT * FROM t EXCEPT SELECT * FROM twin) d"
        )
        .await,
        0,
        "the original is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_during_the_run_aborts_and_says_why() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    setup(&client, 20_000).await;
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let options = common::options(dir.path(), "t", &[ALTER]).slow(30.0);
    let run = tokio::spawn(async move { run::run(&config, &options, &Cancel::never()).await });
    common::wait_copying(&client, "t").await;
    client.batch_execute("TRUNCATE t").await.unwrap();
    let err = run.await.unwrap().expect_err("the run must abort");
    assert!(format!("{err:#}").contains("TRUNCATE"), "{err:#}");
    common::assert_no_doppel_objects(&client).await;
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM t").await,
        0,
        "the TRUNCATE itself stands"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_on_the_original_during_the_run_aborts_and_says_why() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    setup(&client, 20_000).await;
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let options = common::options(dir.path(), "t", &[ALTER]).slow(30.0);
    let run = tokio::spawn(async move { run::run(&config, &options, &Cancel::never()).await });
    common::wait_copying(&client, "t").await;
    client
        .batch_execute(
            "ALTER TABLE t ADD COLUMN extra text; INSERT INTO t VALUES (999999, 1, 'x');",
        )
        .await
        .unwrap();
    let err = run.await.unwrap().expect_err("the run must abort");
    assert!(
        format!("{err:#}").contains("changed during the migration"),
        "{err:#}"
    );
    common::assert_no_doppel_objects(&client).await;
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM t").await,
        20_001
    );
}

/// I4: the snapshots (`backend_xmin`) of doppel's copy, apply and verify sessions are
/// short-lived: sampled throughout a run, none keeps the same xmin for much longer than one
/// chunk (5 ms here; the bound allows for the machine's scheduling and the verification
/// chunks). Index builds on the shadow (`CREATE INDEX`, `ALTER TABLE .. ADD CONSTRAINT`) and
/// its `VACUUM` hold one snapshot for their duration, as any such statement does; they are
/// left out and documented in the README.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_apply_and_verify_sessions_hold_no_snapshot_longer_than_a_chunk() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    setup(&client, 120_000).await;
    let writer = cluster.connect("postgres").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let options = common::options(dir.path(), "t", &[ALTER]).slow(30.0);
    let started = Instant::now();
    let run = tokio::spawn(async move { run::run(&config, &options, &Cancel::never()).await });
    // (pid, xmin) → first seen; the longest any one snapshot was observed.
    let mut first_seen: HashMap<(i32, String), Instant> = HashMap::new();
    let mut longest = Duration::ZERO;
    let mut samples = 0;
    while !run.is_finished() {
        // Keep xids moving so a held snapshot would show as an unchanged xmin.
        writer
            .batch_execute("UPDATE twin SET v = v WHERE id = 1")
            .await
            .unwrap();
        let rows = client
            .query(
                "SELECT pid, backend_xmin::text FROM pg_stat_activity
                 WHERE application_name LIKE 'doppel%' AND backend_xmin IS NOT NULL
                   AND query !~* '^\\s*(CREATE (UNIQUE )?INDEX|ALTER TABLE|VACUUM)'",
                &[],
            )
            .await
            .unwrap();
        let now = Instant::now();
        for r in rows {
            let key = (r.get::<_, i32>(0), r.get::<_, String>(1));
            let since = *first_seen.entry(key).or_insert(now);
            longest = longest.max(now - since);
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.await.unwrap().unwrap();
    let lasted = started.elapsed();
    assert!(samples > 20, "sampled the run {samples} times");
    // The bound must be well below the run's length, or the test could not fail.
    assert!(
        lasted > Duration::from_secs(3),
        "the run lasted only {lasted:?}"
    );
    assert!(
        longest < Duration::from_millis(1500),
        "a doppel session kept one snapshot for {longest:?} of a {lasted:?} run"
    );
}
