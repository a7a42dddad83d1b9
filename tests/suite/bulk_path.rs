//! The bulk path's means of issue 17 on a real server. On PostgreSQL 16+ the copy sessions
//! mark their writes with replication origins and doppel's stream asks pgoutput for `origin
//! 'none'`, so the WAL sender drops the copied rows while decoding: the copy's commits are
//! recorded under the origins, the new table still equals the twin under a concurrent writer
//! (nothing the shadow needs was dropped), and the origins are gone afterwards. Before 16 and
//! with `copy_origin` off (`--no-copy-origin`), no origin is created; a subscription of another
//! database does not keep the copy from its origins. Where the WAL sender decodes the copied
//! rows, the chunks stay within its `logical_decoding_work_mem`: nothing spills.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinHandle;

use doppel::cancel::Cancel;
use doppel::run::Outcome;
use doppel_testkit::workload::{self, Workload};

use crate::common::{self, Tune};

const ALTER: &str = "ALTER COLUMN customer_id TYPE bigint";

/// Starts doppel on `orders` (work directory `dir`), with the copy under origins or not, and
/// waits until it stops after a chunk is copied: the run and the pause directory where
/// `copying` is released.
async fn start_paused_after_a_chunk(
    config: &tokio_postgres::Config,
    dir: &Path,
    copy_origin: bool,
) -> (JoinHandle<anyhow::Result<Outcome>>, PathBuf) {
    let mut opts = common::options(dir, "orders", &[ALTER])
        .chunk_time(Duration::from_millis(20))
        .initial_rows(500)
        .cutover_retries(20)
        .fence_timeout(Duration::from_millis(2000))
        .status_interval(Duration::from_secs(60));
    opts.copy_origin = copy_origin;
    spawn_paused_at(config, dir, opts, "copying").await
}

/// Starts doppel with `opts` (work directory `dir`) and waits until it stops at pause point
/// `point`: the run and the pause directory where `point` is released.
async fn spawn_paused_at(
    config: &tokio_postgres::Config,
    dir: &Path,
    opts: doppel::run::RunOptions,
    point: &str,
) -> (JoinHandle<anyhow::Result<Outcome>>, PathBuf) {
    let pause = common::pause_dir(dir);
    doppel::testing::arm(&pause, point).unwrap();
    let config = config.clone();
    let run =
        tokio::spawn(async move { common::run_paused(&config, &opts, &Cancel::never()).await });
    assert!(
        doppel::testing::wait_reached(&pause, point, Duration::from_secs(60))
            .await
            .is_some(),
        "the run reaches {point}"
    );
    (run, pause)
}

/// Runs doppel on `orders` under the twin writer, pausing once after a chunk is copied to
/// read `pg_replication_origin_status`; returns the copy origins' local commit positions seen
/// there and the mismatches with the twin afterwards.
async fn migrate_under_writer(copy_origin: bool) -> Option<(Vec<(String, String)>, i64)> {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    if copy_origin && cluster.server_version_num() < 160_000 {
        eprintln!("skipped: pgoutput's origin option is a PostgreSQL 16 feature");
        return None;
    }
    workload::create_tables(&client, "orders", "orders_twin", 30_000)
        .await
        .unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let writer = Workload::start(&config, "orders", "orders_twin", 5, Duration::ZERO)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (run, pause) = start_paused_after_a_chunk(&config, dir.path(), copy_origin).await;
    let origins: Vec<(String, String)> = client
        .query(
            "SELECT o.roname, s.local_lsn::text FROM pg_replication_origin o
             JOIN pg_replication_origin_status s ON s.local_id = o.roident
             WHERE o.roname LIKE 'doppel\\_%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    doppel::testing::release(&pause, "copying").unwrap();
    let outcome = run.await.unwrap().unwrap();
    let report = writer.stop().await.unwrap();
    assert!(matches!(outcome, Outcome::Migrated(_)), "{outcome:?}");
    assert_eq!(report.errors, 0, "writer errors: {:?}", report.first_errors);
    let left: i64 = common::scalar(&client, "SELECT count(*) FROM pg_replication_origin").await;
    assert_eq!(left, 0, "the copy's origins are dropped");
    let mismatches = workload::mismatches(&client, "orders", "orders_twin")
        .await
        .unwrap();
    Some((origins, mismatches))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_under_origins_is_kept_out_of_the_stream_and_matches_the_twin() {
    let Some((origins, mismatches)) = migrate_under_writer(true).await else {
        return;
    };
    assert!(
        origins
            .iter()
            .any(|(name, lsn)| name.contains("_copy") && lsn != "0/0"),
        "the copy's commits are recorded under its origins: {origins:?}"
    );
    assert_eq!(mismatches, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_copy_origin_no_origin_is_created() {
    let (origins, mismatches) = migrate_under_writer(false).await.unwrap();
    assert!(origins.is_empty(), "{origins:?}");
    assert_eq!(mismatches, 0);
}

/// A PostgreSQL 16+ cluster (`None`, with a note, before 16: pgoutput has no origin option
/// there) with `orders` and its twin of 30,000 rows, and a session to it.
async fn origin_stand() -> Option<(
    doppel_testkit::cluster::LocalCluster,
    tokio_postgres::Client,
)> {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    if cluster.server_version_num() < 160_000 {
        eprintln!("skipped: pgoutput's origin option is a PostgreSQL 16 feature");
        return None;
    }
    workload::create_tables(&client, "orders", "orders_twin", 30_000)
        .await
        .unwrap();
    Some((cluster, client))
}

/// The names of the server's replication origins.
async fn origin_names(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query("SELECT roname FROM pg_replication_origin", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// With the copy under origins the stream skips every change that carries an origin, so a
/// replication origin that appears during the run (a subscription created meanwhile, whose
/// changes would then be missing from the shadow) aborts it: exit 7, the original untouched,
/// nothing of doppel's left (its own origins included), the foreign origin kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_created_during_a_copy_under_origins_aborts_the_run() {
    let Some((cluster, client)) = origin_stand().await else {
        return;
    };
    let before: i64 = common::scalar(&client, "SELECT count(*) FROM orders").await;
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (run, pause) = start_paused_after_a_chunk(&config, dir.path(), true).await;
    client
        .batch_execute("SELECT pg_replication_origin_create('sub_made_mid_run')")
        .await
        .unwrap();
    doppel::testing::release(&pause, "copying").unwrap();
    let err = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run ends")
        .unwrap()
        .expect_err("aborted");
    assert_eq!(doppel::failure::exit_code(&err), 7, "{err:#}");
    assert!(
        format!("{err:#}").contains("replication origin sub_made_mid_run"),
        "{err:#}"
    );
    common::assert_no_doppel_objects(&client).await;
    let origins = origin_names(&client).await;
    assert_eq!(
        origins,
        ["sub_made_mid_run"],
        "only the foreign origin is left"
    );
    let after: i64 = common::scalar(&client, "SELECT count(*) FROM orders").await;
    assert_eq!(after, before, "the original is untouched");
}

/// A subscription of another database, created during a copy under origins, has an origin
/// (`pg_<oid>`) but applies its changes in that database, which doppel's slot does not decode:
/// the run goes on under its origins and migrates, and the subscription's origin is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_databases_subscription_does_not_abort_a_copy_under_origins() {
    let Some((cluster, client)) = origin_stand().await else {
        return;
    };
    client.batch_execute("CREATE DATABASE other").await.unwrap();
    let other = cluster.connect("other").await.unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (run, pause) = start_paused_after_a_chunk(&config, dir.path(), true).await;
    let copy_origins: i64 = common::scalar(
        &client,
        "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'doppel\\_%'",
    )
    .await;
    assert!(copy_origins > 0, "the copy runs under its origins");
    other
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION elsewhere CONNECTION '{}' PUBLICATION p WITH (connect = false)",
            cluster.conninfo("postgres")
        ))
        .await
        .unwrap();
    let subscription_origin: String = common::text(
        &client,
        "SELECT roname FROM pg_replication_origin WHERE roname NOT LIKE 'doppel\\_%'",
    )
    .await
    .expect("the subscription has its origin");
    doppel::testing::release(&pause, "copying").unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run ends")
        .unwrap()
        .unwrap();
    assert!(matches!(outcome, Outcome::Migrated(_)), "{outcome:?}");
    let origins = origin_names(&client).await;
    assert_eq!(
        origins,
        [subscription_origin],
        "only the subscription's origin is left"
    );
    let mismatches = workload::mismatches(&client, "orders", "orders_twin")
        .await
        .unwrap();
    assert_eq!(mismatches, 0);
}

/// The spill counters of the server's replication slots, once they show a decoded
/// transaction: `(total_txns, spill_txns)` of `pg_stat_replication_slots` (PostgreSQL 14+;
/// the WAL sender reports them as it decodes, so they are awaited, at most 30 s).
async fn slot_spills(client: &tokio_postgres::Client) -> (i64, i64) {
    const DECODED: &str =
        "SELECT coalesce(sum(total_txns), 0)::int8 FROM pg_stat_replication_slots";
    let reported = common::wait_until_async(Duration::from_secs(30), || async {
        common::scalar(client, DECODED).await > 0
    })
    .await;
    assert!(
        reported,
        "the slot's decoding statistics show no transaction"
    );
    let row = client
        .query_one(
            "SELECT coalesce(sum(total_txns), 0)::int8, coalesce(sum(spill_txns), 0)::int8
             FROM pg_stat_replication_slots",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// While the WAL sender decodes the copied rows (`--no-copy-origin`, as on PostgreSQL 14-15),
/// chunks are held within its `logical_decoding_work_mem`: with 1MB of it and 5 s chunks,
/// which would grow past it within a few chunks on a 30,000-row table, the decoding spills
/// no transaction by the time verification starts, and the run migrates. Without the cap
/// (chunks sized by time alone) the same run spills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoded_chunks_stay_within_the_wal_senders_decoding_memory() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_tables(&client, "orders", "orders_twin", 30_000)
        .await
        .unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::options(dir.path(), "orders", &[ALTER])
        .chunk_time(Duration::from_secs(5))
        .initial_rows(500)
        .status_interval(Duration::from_secs(60));
    opts.copy_origin = false;
    opts.logical_decoding_work_mem = "1MB".into();
    let (run, pause) = spawn_paused_at(&config, dir.path(), opts, "verifying").await;
    let (decoded, spilled) = slot_spills(&client).await;
    doppel::testing::release(&pause, "verifying").unwrap();
    let outcome = run.await.unwrap().unwrap();
    assert!(matches!(outcome, Outcome::Migrated(_)), "{outcome:?}");
    assert_eq!(
        spilled, 0,
        "the WAL sender spilled {spilled} of {decoded} decoded transactions to disk"
    );
}
