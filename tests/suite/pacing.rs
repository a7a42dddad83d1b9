//! Latency-targeted pacing (`--max-write-latency`, issue 17) on a real server: the probe's
//! controller backs off when the probe's latency rises above the target and recovers when it
//! falls, and a paced run under a concurrent writer ends equal to the twin.
//!
//! The latency is raised by holding a lock that conflicts with the probe's UPDATE on its own
//! table (`LOCK TABLE doppel.write_probe IN EXCLUSIVE MODE`): a probe in flight is sampled
//! while it waits, so the controller sees the rise without waiting for the lock to go.

use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::ops::pacing::{Decision, MIN_LEVEL, Pacer};
use doppel::run::Outcome;
use doppel_testkit::workload::{self, Workload};

use crate::common::{self, Tune};

/// Waits until the pacing state satisfies `ok`, at most `within`; returns it.
async fn wait_state(
    pacer: &Pacer,
    within: Duration,
    ok: impl Fn(&doppel::ops::pacing::PaceState) -> bool,
) -> Option<doppel::ops::pacing::PaceState> {
    let mut rx = pacer.handle().watch();
    tokio::time::timeout(within, async {
        loop {
            {
                let s = rx.borrow_and_update();
                if ok(&s) {
                    return s.clone();
                }
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_backs_off_under_a_held_lock_and_recovers() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let oid = common::oid_of(&client, "t").await;
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    // A target well above an idle probe (about 1 ms here) and well below the lock's hold.
    let target = Duration::from_millis(200);
    let pacer = Pacer::spawn(&config, target, oid).await.unwrap();
    let calm = wait_state(&pacer, Duration::from_secs(10), |s| {
        s.probes >= 5 && s.level == 1.0
    })
    .await;
    assert!(calm.is_some(), "an idle server: full speed");

    let locker = cluster.connect("postgres").await.unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE doppel.write_probe IN EXCLUSIVE MODE")
        .await
        .unwrap();
    // Each 300 ms cooldown halves the level: 1 -> 0.02 takes 6 decreases, about 2 s.
    let backed_off = wait_state(&pacer, Duration::from_secs(10), |s| s.level <= MIN_LEVEL).await;
    let backed_off = backed_off.expect("the controller backs off to its floor under the lock");
    assert!(
        backed_off.over(),
        "the probe is above its target: {backed_off:?}"
    );
    assert!(backed_off.probe_ms.unwrap() > 200.0, "{backed_off:?}");
    let handle = pacer.handle();
    assert_eq!(backed_off.workers(2), 1, "one copy worker at the floor");
    assert!(
        backed_off.pause_after(Duration::from_millis(10)) >= Duration::from_millis(400),
        "a long pause after each unit of work at the floor"
    );
    // While over the target, a unit of work waits (at most the gate's limit).
    let started = std::time::Instant::now();
    handle.gate(Duration::from_millis(500)).await;
    assert!(started.elapsed() >= Duration::from_millis(450));

    locker.batch_execute("ROLLBACK").await.unwrap();
    let recovered = wait_state(&pacer, Duration::from_secs(30), |s| s.level == 1.0).await;
    let recovered = recovered.expect("the controller recovers once the lock goes");
    assert!(!recovered.over(), "{recovered:?}");
    assert_ne!(recovered.decision, Decision::BackOff);
    pacer.finish(&config).await;
    let left: bool = client
        .query_one("SELECT to_regclass('doppel.write_probe') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!left, "the probe's table is dropped once no run uses it");
}

/// A paced run with a target the probe cannot always meet on a busy 2-core machine (1 ms)
/// under the twin writer: it backs off, still finishes, the new table equals the twin, the
/// status reports the pacing, and nothing of the probe is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_run_under_a_writer_matches_the_twin() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_tables(&client, "orders", "orders_twin", 30_000)
        .await
        .unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let writer = Workload::start(&config, "orders", "orders_twin", 11, Duration::ZERO)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    let mut opts = common::options(
        dir.path(),
        "orders",
        &["ALTER COLUMN customer_id TYPE bigint"],
    )
    .chunk_time(Duration::from_millis(50))
    .initial_rows(500)
    .cutover_retries(20)
    .fence_timeout(Duration::from_millis(2000))
    .control_socket(socket.clone())
    .status_interval(Duration::from_secs(60));
    opts.max_write_latency = Some(Duration::from_millis(1));
    doppel::testing::arm(&common::pause_dir(dir.path()), "verifying").unwrap();
    let run_config = config.clone();
    let run =
        tokio::spawn(async move { common::run_paused(&run_config, &opts, &Cancel::never()).await });
    assert!(
        doppel::testing::wait_reached(
            &common::pause_dir(dir.path()),
            "verifying",
            Duration::from_secs(120)
        )
        .await
        .is_some(),
        "the run reaches verification"
    );
    let json = doppel::ops::control::send(&socket, "status --json")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let pacing = &v["pacing"];
    assert_eq!(pacing["target_ms"].as_f64(), Some(1.0), "{json}");
    assert!(pacing["probes"].as_u64().unwrap() > 0, "{json}");
    assert!(pacing["level"].as_f64().unwrap() <= 1.0, "{json}");
    let line = doppel::ops::control::send(&socket, "status").await.unwrap();
    assert!(
        line.contains("Probe: ") && line.contains("Pace: "),
        "{line}"
    );
    doppel::testing::release(&common::pause_dir(dir.path()), "verifying").unwrap();
    let outcome = run.await.unwrap();
    let report = writer.stop().await.unwrap();
    assert!(
        matches!(outcome.unwrap(), Outcome::Migrated(_)),
        "the paced run migrates"
    );
    assert_eq!(report.errors, 0, "writer errors: {:?}", report.first_errors);
    assert_eq!(
        workload::mismatches(&client, "orders", "orders_twin")
            .await
            .unwrap(),
        0
    );
    let left: bool = client
        .query_one("SELECT to_regclass('doppel.write_probe') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!left, "the probe's table is removed at the end");
}
