//! Sequences and identity of a partitioned table (issue 15: "identity and sequences
//! carried"): a tree whose key is a `bigserial` (a sequence owned by the parent's column) and,
//! on PostgreSQL 17+ (the first that allows an identity column on a partitioned table), one
//! whose key is `GENERATED ALWAYS AS IDENTITY`. After `ALTER COLUMN amount TYPE bigint` the new
//! tree's inserts go on numbering where the original stopped (no duplicate key, no reset),
//! the sequence is owned by the new parent's column, and dropping the kept old tree leaves the
//! sequence and the numbering in place.

use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::run::Outcome;
use tokio_postgres::Client;

use crate::common::{self, Tune, scalar, text};

const SERIAL_TREE: &str = "
CREATE TABLE ser (id bigserial, k int NOT NULL, amount int NOT NULL, PRIMARY KEY (id, k))
  PARTITION BY RANGE (k);
CREATE TABLE ser_low PARTITION OF ser FOR VALUES FROM (0) TO (50);
CREATE TABLE ser_high PARTITION OF ser FOR VALUES FROM (50) TO (100);
INSERT INTO ser (k, amount) SELECT i % 100, i FROM generate_series(1, 1000) i;";

const IDENTITY_TREE: &str = "
CREATE TABLE ide (id bigint GENERATED ALWAYS AS IDENTITY, k int NOT NULL, amount int NOT NULL,
  PRIMARY KEY (id, k)) PARTITION BY LIST (k);
CREATE TABLE ide_a PARTITION OF ide FOR VALUES IN (0, 1, 2);
CREATE TABLE ide_b PARTITION OF ide DEFAULT;
INSERT INTO ide (k, amount) SELECT i % 5, i FROM generate_series(1, 1000) i;";

/// Migrates `table` (`amount` to bigint) in-process; the kept old tree's name.
async fn migrate(config: &tokio_postgres::Config, table: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let options = common::options(dir.path(), table, &["ALTER COLUMN amount TYPE bigint"])
        .status_interval(Duration::from_secs(600));
    match common::run_paused(config, &options, &Cancel::never()).await {
        Ok(Outcome::Migrated(report)) => report.plan.names.old_qualified(),
        Ok(other) => panic!("expected a migration, got {other:?}"),
        Err(e) => panic!("expected a migration, got: {e:#}"),
    }
}

/// Inserts three rows through the parent (one in each partition and a third); their ids.
async fn insert_three(client: &Client, table: &str) -> Vec<i64> {
    client
        .query(
            &format!("INSERT INTO {table} (k, amount) VALUES (1, 1), (60, 2), (4, 3) RETURNING id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The tree `table` (created by `ddl`, ids 1..=1000) migrated: numbering goes on past the
/// original's, the sequence belongs to the new parent and survives the old tree's drop.
/// Skipped on servers older than `min_version`.
async fn numbering_goes_on(ddl: &str, table: &str, min_version: u32) {
    let cluster = common::cluster().await;
    if cluster.server_version_num() < min_version {
        eprintln!("skipped: {table} needs PostgreSQL {}", min_version / 10_000);
        return;
    }
    let client = cluster.connect("postgres").await.unwrap();
    client.batch_execute(ddl).await.unwrap();
    let before = insert_three(&client, table).await;
    assert_eq!(before, vec![1001, 1002, 1003], "numbered before the run");
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let old = migrate(&config, table).await;
    let after = insert_three(&client, table).await;
    assert_eq!(
        after,
        vec![1004, 1005, 1006],
        "the new tree numbers on from the original's sequence"
    );
    let owner = text(
        &client,
        &format!("SELECT pg_get_serial_sequence('{table}', 'id')"),
    )
    .await;
    assert!(
        owner.is_some(),
        "the new parent's id column owns a sequence (serial or identity)"
    );
    let amount = text(
        &client,
        &format!(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = '{table}'::regclass AND attname = 'amount'"
        ),
    )
    .await;
    assert_eq!(amount.as_deref(), Some("bigint"), "the ALTER took effect");
    client
        .batch_execute(&format!("DROP TABLE {old}"))
        .await
        .unwrap();
    let last = insert_three(&client, table).await;
    assert_eq!(
        last,
        vec![1007, 1008, 1009],
        "dropping the kept old tree leaves the sequence and its position"
    );
    assert_eq!(
        scalar(&client, &format!("SELECT count(DISTINCT id) FROM {table}")).await,
        1009,
        "every id once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bigserial_key_numbers_on_after_the_tree_is_migrated() {
    numbering_goes_on(SERIAL_TREE, "ser", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_key_numbers_on_after_the_tree_is_migrated() {
    // PostgreSQL 17 is the first to allow an identity column on a partitioned table.
    numbering_goes_on(IDENTITY_TREE, "ide", 170_000).await;
}
