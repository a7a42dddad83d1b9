//! The cutover's lock budget: `--kill-blockers` cancels, then terminates, only the sessions
//! that block the lock; the lock hold is stored in the cutover record; and 20 cutovers in a
//! row under a pgbench-style writer fail no write and lose no row.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use doppel::cancel::Cancel;
use doppel::run::{self, Outcome};

use crate::common::{self, Tune};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_blockers_cancels_a_running_blocker_and_terminates_an_idle_one() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, v int);
             INSERT INTO events SELECT i, i FROM generate_series(1, 2000) i;",
        )
        .await
        .unwrap();
    // An idle-in-transaction session holding ACCESS SHARE: cancelling it does nothing.
    let mut idle = cluster.connect("postgres").await.unwrap();
    let idle_pid = common::scalar(&idle, "SELECT pg_backend_pid()::bigint").await;
    let idle_tx = idle.transaction().await.unwrap();
    idle_tx
        .batch_execute("SELECT count(*) FROM events")
        .await
        .unwrap();
    // A long statement reading the table: cancelling it releases its lock.
    let running = cluster.connect("postgres").await.unwrap();
    let running_pid = common::scalar(&running, "SELECT pg_backend_pid()::bigint").await;
    let running = Arc::new(running);
    let long_query = tokio::spawn({
        let running = running.clone();
        async move {
            running
                .batch_execute("SELECT pg_sleep(600) FROM events LIMIT 1")
                .await
        }
    });
    // A bystander with an open transaction that does not touch the table.
    let mut bystander = cluster.connect("postgres").await.unwrap();
    let bystander_tx = bystander.transaction().await.unwrap();
    bystander_tx.batch_execute("SELECT 1").await.unwrap();
    assert!(
        common::wait_until_async(Duration::from_secs(10), || async {
            common::scalar(
                &client,
                &format!("SELECT count(*) FROM pg_locks WHERE pid = {running_pid} AND relation = 'events'::regclass AND granted"),
            )
            .await
                > 0
        })
        .await,
        "the long statement holds its lock"
    );

    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let mut options = common::options(dir.path(), "events", &["ALTER COLUMN v TYPE bigint"])
        .chunk_time(Duration::from_millis(50));
    options.lock_timeout = Duration::from_millis(100);
    options.cutover_retries = 50;
    options.kill_blockers = Some(Duration::from_millis(300));
    let Outcome::Migrated(report) = run::run(&config, &options, &Cancel::never()).await.unwrap()
    else {
        panic!("expected a migration")
    };

    let killed = &report.cutover.killed;
    let mentions = |verb: &str, pid: i64| {
        killed
            .iter()
            .any(|k| k.starts_with(&format!("{verb} pid {pid} ")))
    };
    assert!(mentions("cancelled", running_pid), "{killed:?}");
    assert!(
        !mentions("terminated", running_pid),
        "a cancelled statement that released its lock is not terminated: {killed:?}"
    );
    assert!(mentions("cancelled", idle_pid), "{killed:?}");
    assert!(mentions("terminated", idle_pid), "{killed:?}");
    assert_eq!(killed.len(), 3, "nobody else: {killed:?}");

    let err = long_query
        .await
        .unwrap()
        .expect_err("the statement was cancelled");
    assert_eq!(
        err.as_db_error().map(|d| d.code().code()),
        Some("57014"),
        "{err}"
    );
    assert_eq!(
        common::scalar(&running, "SELECT 1::bigint").await,
        1,
        "the cancelled session lives on"
    );
    assert!(
        idle_tx.commit().await.is_err(),
        "the idle blocker's connection was terminated"
    );
    bystander_tx.commit().await.unwrap();
    assert_eq!(
        common::scalar(&bystander, "SELECT count(*) FROM events").await,
        2000
    );

    // The record stores the lock hold and every attempt with its blockers.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report.cutover.record_path).unwrap())
            .unwrap();
    let held = record["lock_held_ms"].as_f64().unwrap();
    assert!(
        (held - report.cutover.lock_held.as_secs_f64() * 1000.0).abs() < 0.001,
        "{record}"
    );
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len() as u32, report.cutover.attempts);
    assert_eq!(attempts.last().unwrap()["outcome"], "granted");
    assert!(
        attempts.iter().any(|a| {
            a["outcome"] == "lock timeout"
                && a["blocking_pids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p.as_i64() == Some(idle_pid))
        }),
        "{record}"
    );
}

/// One pgbench-style writer: transactions that update, insert and delete rows of `events`
/// and mirror each change into `twin` in the same transaction, at up to about 500 tx/s. Returns
/// (transactions, errors, latencies).
async fn writer(
    client: tokio_postgres::Client,
    id: i64,
    stop: Arc<AtomicBool>,
) -> (u64, Vec<String>, Vec<Duration>) {
    let mut client = client;
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    let mut n: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = (n * 7919 + id * 13) % 4000 + 1;
        let fresh = 1_000_000 * (id + 1) + n;
        let sql = match n % 4 {
            0 => format!(
                "INSERT INTO events VALUES ({fresh}, {n}); INSERT INTO twin VALUES ({fresh}, {n})"
            ),
            1 => format!(
                "DELETE FROM events WHERE id = {}; DELETE FROM twin WHERE id = {}",
                fresh - 1,
                fresh - 1
            ),
            _ => format!(
                "UPDATE events SET v = v + 1 WHERE id = {key}; UPDATE twin SET v = v + 1 WHERE id = {key}"
            ),
        };
        let started = Instant::now();
        let result = async {
            let tx = client.transaction().await?;
            tx.batch_execute(&sql).await?;
            tx.commit().await
        }
        .await;
        latencies.push(started.elapsed());
        if let Err(e) = result {
            errors.push(format!("{sql}: {e}"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (n as u64, errors, latencies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_cutovers_under_a_writer_fail_no_write_and_lose_no_row() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, v int NOT NULL);
             INSERT INTO events SELECT i, i FROM generate_series(1, 4000) i;
             CREATE TABLE twin AS TABLE events;",
        )
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for id in 0..4 {
        let c = cluster.connect("postgres").await.unwrap();
        writers.push(tokio::spawn(writer(c, id, stop.clone())));
    }
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let mut holds = Vec::new();
    let mut old_waits = Vec::new();
    let mut windowed = Vec::new();
    let mut rechecks = Vec::new();
    for i in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let ty = if i % 2 == 0 { "bigint" } else { "integer" };
        let alter = format!("ALTER COLUMN v TYPE {ty}");
        let options = common::options(dir.path(), "events", &[alter.as_str()])
            .chunk_time(Duration::from_millis(50));
        let outcome = run::run(&config, &options, &Cancel::never())
            .await
            .unwrap_or_else(|e| panic!("cutover {i}: {e:#}"));
        let Outcome::Migrated(report) = outcome else {
            panic!("expected a migration")
        };
        assert!(report.cutover.record_path.exists());
        holds.push(report.cutover.lock_held);
        // The wait for older snapshots (docs/design.md §4.6): before the lock and inside it.
        old_waits.push(
            report
                .cutover
                .history
                .iter()
                .map(|a| a.old_snapshot_wait_ms)
                .sum::<f64>(),
        );
        rechecks.extend(
            report
                .cutover
                .inside_lock
                .iter()
                .filter(|(step, _)| *step == "old snapshots re-check")
                .map(|(_, d)| d.as_secs_f64() * 1000.0),
        );
        if !report.cutover.queued_old_snapshots.is_empty() {
            windowed.push((
                report.cutover.queued_old_snapshots.len(),
                report.cutover.changes_in_window,
            ));
        }
        if i == 19 {
            println!(
                "last cutover, inside the lock: {:?}",
                report.cutover.inside_lock
            );
        }
        client
            .batch_execute(&format!("DROP TABLE {}", report.plan.names.old_qualified()))
            .await
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let mut transactions = 0;
    let mut errors = Vec::new();
    let mut latencies = Vec::new();
    for w in writers {
        let (n, e, l) = w.await.unwrap();
        transactions += n;
        errors.extend(e);
        latencies.extend(l);
    }
    holds.sort();
    latencies.sort();
    let worst = latencies.last().copied().unwrap_or_default();
    let p99 = latencies[latencies.len() * 99 / 100];
    println!(
        "20 cutovers: lock held p50 {:.1} ms, max {:.1} ms; writer {} transactions, {} errors, latency p99 {:.1} ms, worst {:.1} ms",
        holds[holds.len() / 2].as_secs_f64() * 1000.0,
        holds.last().unwrap().as_secs_f64() * 1000.0,
        transactions,
        errors.len(),
        p99.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0,
    );
    old_waits.sort_by(f64::total_cmp);
    rechecks.sort_by(f64::total_cmp);
    println!(
        "20 cutovers: old-snapshot wait before the lock p50 {:.2} ms, max {:.2} ms; re-check under the lock p50 {:.2} ms, max {:.2} ms",
        old_waits[old_waits.len() / 2],
        old_waits.last().unwrap(),
        rechecks[rechecks.len() / 2],
        rechecks.last().unwrap(),
    );
    println!(
        "20 cutovers: {} with sessions queued on the lock holding a snapshot older than the fence (sessions, changes applied in the window): {windowed:?}",
        windowed.len()
    );
    assert!(errors.is_empty(), "writer errors: {errors:?}");
    assert!(transactions > 100, "the writer ran: {transactions}");
    let differing = common::scalar(
        &client,
        "SELECT (SELECT count(*) FROM (TABLE events EXCEPT ALL TABLE twin) a)
              + (SELECT count(*) FROM (TABLE twin EXCEPT ALL TABLE events) b)",
    )
    .await;
    assert_eq!(differing, 0, "events equals its twin after 20 cutovers");
    let ty: String = client
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'events'::regclass AND attname = 'v'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ty, "integer", "the 20th migration's type");
}
