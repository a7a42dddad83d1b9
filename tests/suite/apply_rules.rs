//! The applier's rules (docs/design.md §2) exercised while a backfill is in progress: UPDATEs that
//! pgoutput sends without their unchanged TOASTed values (`u`), primary-key changes, delete and
//! re-insert of one key, and a transaction that spans many keys. Every statement is mirrored
//! into a twin table in the same transaction; afterwards the new table must equal the twin.

use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::run::{self, Outcome};

use crate::common::{self, Tune};

/// Runs `statement` on `t` and the same on `twin`, in one transaction.
async fn mirrored(client: &mut tokio_postgres::Client, statement: &str) {
    let tx = client.transaction().await.unwrap();
    tx.batch_execute(statement).await.unwrap();
    tx.batch_execute(
        &statement
            .replace("{t}", "twin")
            .replace("UPDATE t ", "UPDATE twin ")
            .replace("FROM t ", "FROM twin ")
            .replace("INTO t ", "INTO twin "),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toast_key_change_and_reinsert_during_the_backfill_end_equal_to_the_twin() {
    let cluster = common::cluster().await;
    let mut client = cluster.connect("postgres").await.unwrap();
    // Incompressible ~8 kB values are stored out of line (TOAST).
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, doc text);
             ALTER TABLE t ALTER COLUMN doc SET STORAGE EXTERNAL;
             INSERT INTO t SELECT i, i,
                    CASE WHEN i % 50 = 0 THEN (SELECT string_agg(md5(i::text || g), '') FROM generate_series(1, 250) g) END
             FROM generate_series(1, 20000) i;
             CREATE TABLE twin AS SELECT * FROM t;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let options = common::options(dir.path(), "t", &["ALTER COLUMN v TYPE bigint"]).slow(30.0);
    let run = tokio::spawn(async move { run::run(&config, &options, &Cancel::never()).await });
    let copying = common::wait_until_async(Duration::from_secs(60), || async {
        common::scalar(
            &client,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_%\\_new\\_t' AND pg_relation_size(oid) > 0",
        )
        .await
            == 1
    })
    .await;
    assert!(copying, "the backfill started");
    // Rows on both sides of the copy position: TOASTed doc left unchanged (pgoutput 'u').
    mirrored(
        &mut client,
        "UPDATE t SET v = v + 1000000 WHERE id % 50 = 0",
    )
    .await;
    // A TOASTed row's key changes (k1 → k2), again leaving doc unchanged.
    mirrored(
        &mut client,
        "UPDATE t SET id = -id WHERE id IN (100, 19900)",
    )
    .await;
    // Delete and re-insert the same key with different values.
    mirrored(&mut client, "DELETE FROM t WHERE id IN (150, 19950)").await;
    mirrored(
        &mut client,
        "INSERT INTO t VALUES (150, -1, 'back'), (19950, -2, NULL)",
    )
    .await;
    // A large transaction over many keys.
    mirrored(
        &mut client,
        "UPDATE t SET v = v + 1 WHERE id BETWEEN 1 AND 20000 AND id % 7 = 0",
    )
    .await;
    let Outcome::Migrated(report) = run.await.unwrap().unwrap() else {
        panic!("expected a migration")
    };
    assert!(
        report.applied_changes > 3000,
        "the stream carried the updates: {}",
        report.applied_changes
    );
    let differing = common::scalar(
        &client,
        "SELECT (SELECT count(*) FROM (SELECT id, v::int, doc FROM t EXCEPT ALL SELECT * FROM twin) a)
              + (SELECT count(*) FROM (SELECT * FROM twin EXCEPT ALL SELECT id, v::int, doc FROM t) b)",
    )
    .await;
    assert_eq!(differing, 0);
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM t WHERE doc IS NOT NULL AND length(doc) = 8000"
        )
        .await,
        398
    );
}
