//! An ALTER that adds a unique (or exclusion) constraint the rows violate fails before the
//! cutover, names the conflicting key values, leaves the original untouched (same OID, same
//! rows) and leaves nothing behind (no slot, publication or shadow). Both for rows that were
//! there before the run and for a duplicate written by a live session during the run: while
//! the backfill copies (the unique index build then fails) and after the unique index exists
//! on the shadow (the applier then fails). The same for an added CHECK constraint, which the
//! copy (existing rows) or the applier (a live write) meets. Every one exits 8.

use std::time::Duration;

use doppel::cancel::Cancel;
use tokio_postgres::Client;

use crate::common;

/// 3000 rows with `x = id`, `y = 'r' || id`.
const SCHEMA: &str = "
CREATE TABLE public.u (id int PRIMARY KEY, x int NOT NULL, y text NOT NULL);
INSERT INTO public.u SELECT g, g, 'r' || g FROM generate_series(1, 3000) g;
";

/// The original's identity and content: OID, row count, a digest of every row in key order,
/// and its constraint and index names.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    oid: u32,
    rows: i64,
    digest: String,
    constraints: Vec<String>,
    indexes: Vec<String>,
}

async fn snapshot(client: &Client) -> Snapshot {
    let row = client
        .query_one(
            "SELECT 'public.u'::regclass::oid, count(*), md5(string_agg(u::text, ',' ORDER BY id)),
                    ARRAY(SELECT conname::text FROM pg_constraint WHERE conrelid = 'public.u'::regclass ORDER BY 1),
                    ARRAY(SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'public.u'::regclass ORDER BY 1)
             FROM public.u",
            &[],
        )
        .await
        .unwrap();
    Snapshot {
        oid: row.get(0),
        rows: row.get(1),
        digest: row.get(2),
        constraints: row.get(3),
        indexes: row.get(4),
    }
}

/// Nothing of the run is left: no replication slot (the temporary slot goes with its
/// session, which ends just after the run returns), no doppel publication, no relation named
/// after the table's OID.
async fn assert_nothing_left(client: &Client, oid: u32) {
    let gone = common::wait_until_async(Duration::from_secs(10), || async {
        common::scalar(client, "SELECT count(*) FROM pg_replication_slots").await == 0
    })
    .await;
    assert!(gone, "the replication slot is gone");
    assert_eq!(
        common::scalar(
            client,
            "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'doppel%'"
        )
        .await,
        0,
        "no publication left"
    );
    assert_eq!(
        common::scalar(
            client,
            &format!("SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_{oid}\\_%'")
        )
        .await,
        0,
        "no shadow (or its indexes) left"
    );
}

/// Runs the migration adding `alter` and returns its error, as text with its causes.
async fn run_expecting_failure(
    cluster: &doppel_testkit::cluster::LocalCluster,
    alter: &str,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let result = common::run_paused(
        &config,
        &common::options(dir.path(), "public.u", &[alter]),
        &Cancel::never(),
    )
    .await;
    let err = match result {
        Ok(outcome) => panic!("the migration must fail, got {outcome:?}"),
        Err(e) => e,
    };
    format!("{err:#}")
}

/// Pre-existing rows violate `alter`: the run fails naming `key`, and the original and the
/// database are as before.
async fn existing_rows_violate(setup: &str, alter: &str, key: &str) {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client.batch_execute(SCHEMA).await.unwrap();
    client.batch_execute(setup).await.unwrap();
    let before = snapshot(&client).await;
    let msg = run_expecting_failure(&cluster, alter).await;
    assert!(msg.contains(key), "names the conflicting key {key}: {msg}");
    assert!(
        !msg.split("Statement:").next().unwrap().contains("_doppel_"),
        "names the user's constraint, not doppel's temporary one (the statement on the shadow follows): {msg}"
    );
    assert!(
        msg.contains("untouched"),
        "says the original is untouched: {msg}"
    );
    assert_eq!(snapshot(&client).await, before, "the original is untouched");
    assert_nothing_left(&client, before.oid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_duplicates_fail_an_added_unique_constraint_naming_the_key() {
    existing_rows_violate(
        "UPDATE public.u SET x = 10 WHERE id = 2000",
        "ADD CONSTRAINT u_x UNIQUE (x)",
        "Key (x)=(10) is duplicated",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_duplicates_name_the_constraint_and_exit_as_a_conflict() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client.batch_execute(SCHEMA).await.unwrap();
    client
        .batch_execute("UPDATE public.u SET x = 10 WHERE id = 2000")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let err = common::run_paused(
        &config,
        &common::options(dir.path(), "public.u", &["ADD CONSTRAINT u_x UNIQUE (x)"]),
        &Cancel::never(),
    )
    .await
    .expect_err("duplicates refuse the unique constraint");
    let msg = format!("{err:#}");
    assert!(msg.contains("\"u_x\""), "names u_x: {msg}");
    assert_eq!(doppel::failure::exit_code(&err), 8, "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_duplicates_fail_a_multi_column_unique_naming_every_value() {
    existing_rows_violate(
        "UPDATE public.u SET x = 10, y = 'dup' WHERE id IN (10, 2500)",
        "ADD UNIQUE (x, y)",
        "Key (x, y)=(10, dup) is duplicated",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_conflicts_fail_an_added_exclusion_constraint_naming_the_keys() {
    existing_rows_violate(
        "UPDATE public.u SET x = 10 WHERE id = 2000",
        "ADD CONSTRAINT u_x_excl EXCLUDE USING btree (x WITH =)",
        "Key (x)=(10) conflicts with key (x)=(10)",
    )
    .await;
}

/// Existing rows violate an added CHECK: the copy meets them; the run exits 8 naming the
/// constraint, the original is untouched and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_rows_violating_an_added_check_exit_as_a_conflict() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client.batch_execute(SCHEMA).await.unwrap();
    client
        .batch_execute("UPDATE public.u SET x = -5 WHERE id = 1500")
        .await
        .unwrap();
    let before = snapshot(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let err = common::run_paused(
        &config,
        &common::options(
            dir.path(),
            "public.u",
            &["ADD CONSTRAINT u_x_positive CHECK (x >= 0)"],
        ),
        &Cancel::never(),
    )
    .await
    .expect_err("a row violates the CHECK");
    let msg = format!("{err:#}");
    assert!(msg.contains("u_x_positive"), "names the constraint: {msg}");
    assert!(msg.contains("untouched"), "{msg}");
    assert_eq!(doppel::failure::exit_code(&err), 8, "{msg}");
    assert_eq!(snapshot(&client).await, before, "the original is untouched");
    assert_nothing_left(&client, before.oid).await;
}

/// Runs the migration adding `UNIQUE (x)`, stopped at pause point `point`; there a live
/// session inserts a row duplicating `x = 10`. Returns the run's error and the original's
/// snapshot taken after the live write.
async fn live_duplicate_at(
    point: &str,
) -> (
    String,
    Snapshot,
    Client,
    doppel_testkit::cluster::LocalCluster,
) {
    let (msg, code, snapshot, client, cluster) = live_write_at(
        point,
        "ADD CONSTRAINT u_x UNIQUE (x)",
        "INSERT INTO public.u VALUES (5001, 10, 'live')",
    )
    .await;
    assert_eq!(code, 8, "a conflict: {msg}");
    (msg, snapshot, client, cluster)
}

/// Runs the migration with `alter`, stopped at pause point `point`; there a live session runs
/// `write`. Returns the run's error, its exit code and the original's snapshot taken after the
/// live write.
async fn live_write_at(
    point: &str,
    alter: &str,
    write: &str,
) -> (
    String,
    u8,
    Snapshot,
    Client,
    doppel_testkit::cluster::LocalCluster,
) {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client.batch_execute(SCHEMA).await.unwrap();
    let oid = snapshot(&client).await.oid;
    let dir = tempfile::tempdir().unwrap();
    doppel::testing::arm(&common::pause_dir(dir.path()), point).unwrap();
    let opts = common::options(dir.path(), "public.u", &[alter]);
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let run =
        tokio::spawn(async move { common::run_paused(&config, &opts, &Cancel::never()).await });
    let work_dir = dir.path().to_path_buf();
    let point_name = point.to_string();
    assert!(
        common::wait_until(Duration::from_secs(60), || {
            doppel::testing::reached(&common::pause_dir(&work_dir), &point_name).is_some()
        }),
        "the run reaches {point}"
    );
    client.batch_execute(write).await.unwrap();
    let after_write = snapshot(&client).await;
    assert_eq!(after_write.oid, oid);
    doppel::testing::release(&common::pause_dir(dir.path()), point).unwrap();
    let err = match tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run ends")
        .unwrap()
    {
        Ok(outcome) => panic!("the migration must fail, got {outcome:?}"),
        Err(e) => e,
    };
    let code = doppel::failure::exit_code(&err);
    (format!("{err:#}"), code, after_write, client, cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_duplicate_written_during_the_copy_fails_the_unique_build_naming_the_key() {
    // Paused once the first chunk is committed: the duplicate reaches the shadow through the
    // stream, before the unique index is built.
    let (msg, after_write, client, _cluster) = live_duplicate_at("copying").await;
    assert!(
        msg.contains("Key (x)=(10) is duplicated"),
        "names the conflicting key: {msg}"
    );
    assert!(
        msg.contains("untouched"),
        "says the original is untouched: {msg}"
    );
    assert_eq!(
        snapshot(&client).await,
        after_write,
        "the original is untouched"
    );
    assert_nothing_left(&client, after_write.oid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_duplicate_written_after_the_unique_index_exists_aborts_naming_the_key() {
    // Paused before verification: the shadow has its unique index; the applier meets the
    // duplicate.
    let (msg, after_write, client, _cluster) = live_duplicate_at("verifying").await;
    assert!(msg.contains("live write"), "blames the live write: {msg}");
    assert!(
        msg.contains("Key (x)=(10) already exists"),
        "names the conflicting key: {msg}"
    );
    assert!(
        msg.contains("near key 5001"),
        "names the written row: {msg}"
    );
    assert!(
        msg.contains("untouched"),
        "says the original is untouched: {msg}"
    );
    assert_eq!(
        snapshot(&client).await,
        after_write,
        "the original is untouched"
    );
    assert_nothing_left(&client, after_write.oid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_write_violating_an_added_check_exits_as_a_conflict_naming_the_key() {
    // Paused before verification: the applier meets the row the shadow's CHECK refuses.
    let (msg, code, after_write, client, _cluster) = live_write_at(
        "verifying",
        "ADD CONSTRAINT u_x_positive CHECK (x >= 0)",
        "INSERT INTO public.u VALUES (5002, -7, 'live')",
    )
    .await;
    assert!(msg.contains("live write"), "blames the live write: {msg}");
    assert!(msg.contains("u_x_positive"), "names the constraint: {msg}");
    assert!(
        msg.contains("near key 5002"),
        "names the written row: {msg}"
    );
    assert_eq!(code, 8, "a conflict: {msg}");
    assert_eq!(
        snapshot(&client).await,
        after_write,
        "the original is untouched"
    );
    assert_nothing_left(&client, after_write.oid).await;
}
