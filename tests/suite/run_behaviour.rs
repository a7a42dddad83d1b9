//! Behaviour of a run beyond the happy path: grants and comments carried to the new table, a
//! live write that violates a constraint the ALTER adds, and a cutover that has to wait for
//! (and retry around) a lock held by another session.

use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::run::{self, Outcome};

use crate::common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_and_comments_are_carried_to_the_new_table() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE ROLE reader; CREATE ROLE clerk;
             CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL, note text);
             INSERT INTO accounts SELECT i, i * 10, 'n' || i FROM generate_series(1, 500) i;
             GRANT SELECT ON accounts TO reader;
             GRANT SELECT, INSERT ON accounts TO clerk WITH GRANT OPTION;
             GRANT UPDATE (note) ON accounts TO reader;
             COMMENT ON TABLE accounts IS 'customer balances';
             COMMENT ON COLUMN accounts.balance IS 'in cents';",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let outcome = run::run(
        &config,
        &common::options(
            dir.path(),
            "accounts",
            &["ALTER COLUMN balance TYPE bigint"],
        ),
        &Cancel::never(),
    )
    .await
    .unwrap();
    assert!(matches!(outcome, Outcome::Migrated(_)));
    let row = client
        .query_one(
            "SELECT has_table_privilege('reader', 'accounts', 'SELECT'),
                    has_table_privilege('reader', 'accounts', 'INSERT'),
                    has_table_privilege('clerk', 'accounts', 'INSERT WITH GRANT OPTION'),
                    has_column_privilege('reader', 'accounts', 'note', 'UPDATE'),
                    has_column_privilege('reader', 'accounts', 'balance', 'UPDATE'),
                    obj_description('accounts'::regclass, 'pg_class'),
                    col_description('accounts'::regclass, 2)",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "reader can still SELECT");
    assert!(!row.get::<_, bool>(1), "reader still cannot INSERT");
    assert!(
        row.get::<_, bool>(2),
        "clerk keeps INSERT WITH GRANT OPTION"
    );
    assert!(row.get::<_, bool>(3), "the column grant is kept");
    assert!(
        !row.get::<_, bool>(4),
        "no column grant appears that was not there"
    );
    assert_eq!(
        row.get::<_, Option<String>>(5).as_deref(),
        Some("customer balances")
    );
    assert_eq!(row.get::<_, Option<String>>(6).as_deref(), Some("in cents"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_write_violating_an_added_check_aborts_naming_the_row() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL);
             INSERT INTO items SELECT i, i FROM generate_series(1, 20000) i;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let mut options = common::options(
        dir.path(),
        "items",
        &["ADD CONSTRAINT qty_positive CHECK (qty > 0)"],
    );
    // Slow the backfill down so the violating write lands while the run is in progress.
    options.copy.chunk_time = Duration::from_millis(5);
    options.copy.nice_ratio = 20.0;
    options.copy_workers = 1;
    let run = tokio::spawn(async move { run::run(&config, &options, &Cancel::never()).await });
    // Wait until row 1 has been copied into the shadow: the violating version of it can then
    // only arrive through the stream.
    let shadow = client
        .query_one(
            "SELECT format('%I', '_doppel_' || 'items'::regclass::oid || '_new_items')",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    let copied = common::wait_until_async(Duration::from_secs(60), || async {
        client
            .query_one(&format!("SELECT count(*) FROM {shadow} WHERE id = 1"), &[])
            .await
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
    })
    .await;
    assert!(copied, "the first chunk was copied");
    client
        .batch_execute("UPDATE items SET qty = -5 WHERE id = 1")
        .await
        .unwrap();
    let err = run.await.unwrap().expect_err("the run must abort");
    let msg = format!("{err:#}");
    assert!(msg.contains("live write"), "blames the live write: {msg}");
    assert!(msg.contains("qty_positive"), "names the constraint: {msg}");
    assert!(msg.contains("near key 1"), "names the key: {msg}");
    assert!(
        msg.contains("untouched"),
        "says the original is untouched: {msg}"
    );
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_%'"
        )
        .await,
        0
    );
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM pg_publication").await,
        0
    );
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM pg_constraint WHERE conname = 'qty_positive'"
        )
        .await,
        0
    );
    assert_eq!(
        common::scalar(&client, "SELECT qty::bigint FROM items WHERE id = 1").await,
        -5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_retries_while_another_session_holds_a_lock() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, v int);
             INSERT INTO events SELECT i, i FROM generate_series(1, 5000) i;",
        )
        .await
        .unwrap();
    let mut holder = cluster.connect("postgres").await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("SELECT count(*) FROM events")
        .await
        .unwrap(); // ACCESS SHARE until commit
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let mut options = common::options(dir.path(), "events", &["ALTER COLUMN v TYPE bigint"]);
    options.lock_timeout = Duration::from_millis(50);
    options.cutover_retries = 1000;
    let run = tokio::spawn(async move { run::run(&config, &options, &Cancel::never()).await });
    // Wait until doppel has asked for the ACCESS EXCLUSIVE lock at least once (and been refused).
    let waited = common::wait_until_async(Duration::from_secs(60), || async {
        common::scalar(
            &client,
            "SELECT count(*) FROM pg_locks WHERE relation = 'events'::regclass AND mode = 'AccessExclusiveLock' AND NOT granted",
        )
        .await
            > 0
    })
    .await;
    assert!(waited, "doppel tried to lock the table");
    tx.commit().await.unwrap();
    let Outcome::Migrated(report) = run.await.unwrap().unwrap() else {
        panic!("expected a migration")
    };
    assert!(report.cutover.attempts >= 1);
    assert!(
        report.cutover.lock_held < Duration::from_secs(1),
        "lock held {:?}",
        report.cutover.lock_held
    );
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM events").await,
        5000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_gives_up_cleanly_when_the_lock_never_comes() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, v int);
             INSERT INTO events SELECT i, i FROM generate_series(1, 1000) i;",
        )
        .await
        .unwrap();
    let mut holder = cluster.connect("postgres").await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("SELECT count(*) FROM events")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let mut options = common::options(dir.path(), "events", &["ALTER COLUMN v TYPE bigint"]);
    options.lock_timeout = Duration::from_millis(20);
    options.cutover_retries = 3;
    let err = run::run(&config, &options, &Cancel::never())
        .await
        .expect_err("no lock, no cutover");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("not granted") && msg.contains("3 attempts"),
        "{msg}"
    );
    tx.rollback().await.unwrap();
    let ty: String = client
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'events'::regclass AND attname = 'v'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ty, "integer", "the original is untouched");
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_%'"
        )
        .await,
        0
    );
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM pg_replication_slots").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_triggers_foreign_keys_policies_and_publications_move_with_the_table() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE ROLE analyst;
             CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL, amount int NOT NULL);
             INSERT INTO orders SELECT i, i % 10, i FROM generate_series(1, 1000) i;
             CREATE TABLE order_lines (id int PRIMARY KEY, order_id int NOT NULL REFERENCES orders (id));
             CREATE TABLE refunds (id int PRIMARY KEY, order_id int REFERENCES orders (id) ON DELETE CASCADE);
             INSERT INTO order_lines SELECT i, i FROM generate_series(1, 100) i;
             INSERT INTO refunds SELECT i, 200 + i FROM generate_series(1, 10) i;
             CREATE VIEW big_orders AS SELECT id, amount FROM orders WHERE amount > 500;
             CREATE VIEW big_order_count AS SELECT count(*) AS n FROM big_orders;
             GRANT SELECT ON big_orders TO analyst;
             CREATE TABLE audit (order_id int, op text);
             CREATE FUNCTION audit_orders() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO audit VALUES (NEW.id, TG_OP); RETURN NEW; END $$;
             CREATE TRIGGER orders_audit AFTER INSERT OR UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION audit_orders();
             GRANT SELECT ON orders TO analyst;
             CREATE POLICY small_only ON orders FOR SELECT TO analyst USING (amount < 100);
             ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
             CREATE PUBLICATION reporting FOR TABLE orders;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let outcome = run::run(
        &config,
        &common::options(dir.path(), "orders", &["ALTER COLUMN amount TYPE bigint"]),
        &Cancel::never(),
    )
    .await
    .unwrap();
    let Outcome::Migrated(report) = outcome else {
        panic!("expected a migration")
    };
    assert!(
        report.cutover.unvalidated.is_empty(),
        "{:?}",
        report.cutover.unvalidated
    );

    client
        .batch_execute("INSERT INTO orders VALUES (5000, 1, 900)")
        .await
        .unwrap();
    // The views read the new table (and the column type changed under them).
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM big_orders WHERE id = 5000").await,
        1
    );
    assert_eq!(
        common::scalar(&client, "SELECT n FROM big_order_count").await,
        501
    );
    let view_type: String = client
        .query_one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'big_orders'::regclass AND attname = 'amount'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(view_type, "bigint");
    // The trigger fires once per write, on the new table only.
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM audit WHERE order_id = 5000").await,
        1
    );
    // Foreign keys from both children point at the new table and are validated.
    let orphan = client
        .batch_execute("INSERT INTO order_lines VALUES (9999, 424242)")
        .await;
    assert!(orphan.is_err(), "an orphan line is rejected");
    let validated = common::scalar(
        &client,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND confrelid = 'orders'::regclass AND convalidated",
    )
    .await;
    assert_eq!(validated, 2);
    client
        .batch_execute("DELETE FROM orders WHERE id = 205")
        .await
        .unwrap();
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM refunds WHERE order_id = 205").await,
        0,
        "ON DELETE CASCADE works"
    );
    // The policy still filters for the analyst; the grant on the view still allows.
    let mut analyst = cluster.connect("postgres").await.unwrap();
    let tx = analyst.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL ROLE analyst").await.unwrap();
    let visible: i64 = tx
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(visible, 99, "the policy filters the new table");
    let via_view: i64 = tx
        .query_one("SELECT count(*) FROM big_orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(via_view, 501);
    tx.rollback().await.unwrap();
    // The publication now contains the new table.
    let published = common::scalar(
        &client,
        "SELECT count(*) FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = 'reporting' AND pr.prrelid = 'orders'::regclass",
    )
    .await;
    assert_eq!(published, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postpone_flag_file_holds_the_cutover_until_removed() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE jobs (id int PRIMARY KEY, state text NOT NULL);
             INSERT INTO jobs SELECT i, 'queued' FROM generate_series(1, 2000) i;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("postpone");
    std::fs::write(&flag, b"").unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let mut options = common::options(dir.path(), "jobs", &["ALTER COLUMN state TYPE varchar(20)"]);
    options.postpone_cutover_flag_file = Some(flag.clone());
    let run = tokio::spawn(async move { run::run(&config, &options, &Cancel::never()).await });
    // The shadow was vacuumed: every phase before the cutover is done.
    let ready = common::wait_until_async(Duration::from_secs(60), || async {
        common::scalar(
            &client,
            "SELECT count(*) FROM pg_stat_user_tables WHERE relname LIKE '\\_doppel\\_%\\_new\\_jobs' AND vacuum_count > 0",
        )
        .await
            == 1
    })
    .await;
    assert!(ready, "the run reached the cutover");
    // While the flag exists the table is not swapped, and writes keep flowing to the shadow.
    let swapped_early = common::wait_until_async(Duration::from_secs(1), || async {
        common::scalar(
            &client,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_%\\_old\\_jobs'",
        )
        .await
            > 0
    })
    .await;
    assert!(!swapped_early, "no cutover while the flag file exists");
    client
        .batch_execute("INSERT INTO jobs VALUES (2001, 'late')")
        .await
        .unwrap();
    std::fs::remove_file(&flag).unwrap();
    let Outcome::Migrated(_) = run.await.unwrap().unwrap() else {
        panic!("expected a migration")
    };
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM jobs WHERE id = 2001 AND state = 'late'"
        )
        .await,
        1
    );
    let ty: String = client
        .query_one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'jobs'::regclass AND attname = 'state'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ty, "character varying(20)");
}
