//! Behaviour that differs between PostgreSQL majors. Each test states the majors it applies
//! to and returns early (saying so) on others; `scripts/test-all-versions.sh` runs the suite
//! on every supported major.

use doppel::cancel::Cancel;
use doppel::run::{self, Outcome};

use crate::common;

async fn migrate(
    cluster: &doppel_testkit::cluster::LocalCluster,
    table: &str,
    alters: &[&str],
) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let options = common::options(dir.path(), table, alters);
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    run::run(&config, &options, &Cancel::never()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_generated_columns_are_recomputed_by_the_new_table() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE prices (id int PRIMARY KEY, net numeric NOT NULL,
                                  gross numeric GENERATED ALWAYS AS (net * 1.2) STORED, label int);
             INSERT INTO prices (id, net, label) SELECT i, i, i FROM generate_series(1, 300) i;",
        )
        .await
        .unwrap();
    assert!(matches!(
        migrate(&cluster, "prices", &["ALTER COLUMN label TYPE bigint"]).await,
        Outcome::Migrated(_)
    ));
    let wrong: i64 = client
        .query_one(
            "SELECT count(*) FROM prices WHERE gross IS DISTINCT FROM net * 1.2",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0);
    let kind: String = client
        .query_one("SELECT attgenerated::text FROM pg_attribute WHERE attrelid = 'prices'::regclass AND attname = 'gross'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kind, "s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_18_virtual_columns_and_not_null_names_survive() {
    let cluster = common::cluster().await;
    if cluster.server_version_num() < 180000 {
        eprintln!(
            "skipped: virtual generated columns and named NOT NULL constraints are PostgreSQL 18 features"
        );
        return;
    }
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE parts (id int PRIMARY KEY, w int CONSTRAINT w_required NOT NULL,
                                 double_w int GENERATED ALWAYS AS (w * 2) VIRTUAL, label int);
             INSERT INTO parts (id, w, label) SELECT i, i, i FROM generate_series(1, 300) i;",
        )
        .await
        .unwrap();
    assert!(matches!(
        migrate(&cluster, "parts", &["ALTER COLUMN label TYPE bigint"]).await,
        Outcome::Migrated(_)
    ));
    let row = client
        .query_one(
            "SELECT (SELECT attgenerated::text FROM pg_attribute WHERE attrelid = 'parts'::regclass AND attname = 'double_w'),
                    EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'parts'::regclass AND conname = 'w_required'),
                    (SELECT sum(double_w) FROM parts)::bigint",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "v", "the column stays virtual");
    assert!(
        row.get::<_, bool>(1),
        "the NOT NULL constraint keeps its name"
    );
    assert_eq!(row.get::<_, i64>(2), 2 * (300 * 301 / 2));
}
