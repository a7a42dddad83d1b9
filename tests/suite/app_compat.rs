//! What the application sees at the cutover (docs/design.md §4.6): the plan's compatibility
//! lines for an `ADD COLUMN`, a type change and an `ADD CHECK`; a server-side prepared
//! statement returning the whole row (`SELECT o FROM t o`) fails with 0A000 after doppel's
//! swap, even for an `ADD CHECK`, and not after the same plain `ALTER TABLE`, while a prepared
//! `SELECT *` of unchanged columns keeps working.

use doppel::cancel::Cancel;
use doppel::run::{self, Outcome, RunOptions};
use tokio_postgres::Client;

use crate::common;

async fn tables(client: &Client) {
    client
        .batch_execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, v int);
             INSERT INTO t SELECT i, i FROM generate_series(1, 2000) i;
             CREATE TABLE u (LIKE t INCLUDING ALL);
             INSERT INTO u SELECT * FROM t;",
        )
        .await
        .unwrap();
}

/// The dry run's compatibility lines for `alter` on `t` through the shadow (`--strategy
/// shadow`: by default an `ADD COLUMN` or `ADD CHECK` runs on the table itself, with no swap).
async fn lines(cluster: &doppel_testkit::cluster::LocalCluster, alter: &str) -> Vec<String> {
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = RunOptions {
        work_dir: dir.path().to_path_buf(),
        rollback_dir: dir.path().to_path_buf(),
        force_shadow: true,
        ..RunOptions::new("t", &[alter])
    };
    match run::run(&config, &options, &Cancel::never()).await.unwrap() {
        Outcome::Planned(migration) => migration.shadow.expect("a shadow plan").compatibility,
        _ => panic!("expected a plan"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_says_which_results_change_type() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    tables(&client).await;

    let added = lines(&cluster, "ADD COLUMN note text").await;
    assert!(
        added[0].contains("changes result type (added note)") && added[0].contains("0A000"),
        "{added:?}"
    );
    let retyped = lines(&cluster, "ALTER COLUMN v TYPE bigint").await;
    assert!(
        retyped[0].contains("changes result type (v integer -> bigint)"),
        "{retyped:?}"
    );
    let checked = lines(&cluster, "ADD CONSTRAINT v_nonneg CHECK (v >= 0)").await;
    assert!(checked[0].contains("are unchanged"), "{checked:?}");
    for plan in [&added, &retyped, &checked] {
        assert!(
            plan.iter()
                .any(|l| l.starts_with("whole-row references change type at every swap")),
            "{plan:?}"
        );
        assert!(plan.iter().any(|l| l.contains("DISCARD ALL")), "{plan:?}");
        assert!(
            plan.iter().any(|l| l.contains("--old-snapshot-timeout")),
            "{plan:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_whole_row_select_fails_after_the_swap_not_after_the_plain_alter() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    tables(&client).await;
    let app = cluster.connect("postgres").await.unwrap();
    let whole_row = app
        .prepare("SELECT o FROM t o WHERE o.id = $1")
        .await
        .unwrap();
    let star = app.prepare("SELECT * FROM t WHERE id = $1").await.unwrap();
    let plain_whole_row = app
        .prepare("SELECT o FROM u o WHERE o.id = $1")
        .await
        .unwrap();
    for statement in [&whole_row, &star, &plain_whole_row] {
        assert_eq!(app.query(statement, &[&7i64]).await.unwrap().len(), 1);
    }
    let type_before = whole_row.columns()[0].type_().oid();

    let check = "ADD CONSTRAINT v_nonneg CHECK (v >= 0)";
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let mut options = common::options(dir.path(), "t", &[check]);
    options.force_shadow = true;
    let Outcome::Migrated(_) = run::run(&config, &options, &Cancel::never()).await.unwrap() else {
        panic!("expected a migration")
    };
    client
        .batch_execute(&format!("ALTER TABLE u {check}"))
        .await
        .unwrap();

    // The plain ALTER keeps the row type: the statement works on.
    assert_eq!(
        app.query(&plain_whole_row, &[&7i64]).await.unwrap().len(),
        1
    );
    // The same columns: `SELECT *` works on after the swap.
    assert_eq!(app.query(&star, &[&7i64]).await.unwrap().len(), 1);
    // The row type changed: the statement fails on every execution until prepared again.
    for _ in 0..2 {
        let err = app.query(&whole_row, &[&7i64]).await.unwrap_err();
        let db = err.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "0A000", "{db}");
        assert!(
            db.message()
                .contains("cached plan must not change result type"),
            "{db}"
        );
    }
    let again = app
        .prepare("SELECT o FROM t o WHERE o.id = $1")
        .await
        .unwrap();
    assert_eq!(app.query(&again, &[&7i64]).await.unwrap().len(), 1);
    let type_after = again.columns()[0].type_().oid();
    assert_ne!(type_before, type_after, "a new row type");
    println!("row type of t: OID {type_before} before the cutover, {type_after} after");
}
