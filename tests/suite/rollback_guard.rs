//! The rollback script and `doppel cleanup` cannot destroy writes made after the cutover
//! (issue 13, point 1): the script counts the rows written to the new table after the cutover
//! (against the snapshot the cutover recorded on the kept old table) and refuses when there
//! are any, changing nothing; with `-v force=1` it rolls back and marks the swapped-out
//! migrated table, which `doppel cleanup` then keeps unless given `--drop-new-table`. After a
//! rollback the restored table's foreign keys are validated, and one that fails is named.

use crate::common;

use std::process::Output;

use doppel::cancel::Cancel;
use doppel::model::names::Names;
use doppel::run::{self, Outcome, RunReport};
use doppel_testkit::cluster::LocalCluster;
use tokio_postgres::Client;

const SCHEMA: &str = "
CREATE TABLE public.parent (id int PRIMARY KEY);
INSERT INTO public.parent SELECT generate_series(1, 10);
CREATE TABLE public.t (id bigint PRIMARY KEY, amount int NOT NULL,
  parent_id int REFERENCES public.parent (id));
INSERT INTO public.t SELECT i, i * 10, 1 + i % 10 FROM generate_series(1, 1000) i;";

/// A cluster with [`SCHEMA`], migrated (`amount` to bigint); the report and the table's OID
/// before the migration.
async fn migrated() -> (LocalCluster, Client, RunReport, u32, tempfile::TempDir) {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client.batch_execute(SCHEMA).await.unwrap();
    let original = common::scalar(&client, "SELECT 'public.t'::regclass::oid::bigint").await;
    let dir = tempfile::tempdir().unwrap();
    let options = common::options(dir.path(), "public.t", &["ALTER COLUMN amount TYPE bigint"]);
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let Outcome::Migrated(report) = run::run(&config, &options, &Cancel::never()).await.unwrap()
    else {
        panic!("expected a migration")
    };
    (cluster, client, *report, original as u32, dir)
}

/// Runs the rollback script with psql (extra `-v` settings in `vars`).
fn rollback(cluster: &LocalCluster, report: &RunReport, vars: &[&str]) -> Output {
    let mut cmd = cluster.command("psql");
    cmd.args(["-X", "-v", "ON_ERROR_STOP=1"]);
    for v in vars {
        cmd.args(["-v", v]);
    }
    cmd.args(["-f", "-"])
        .stdin(std::fs::File::open(&report.cutover.rollback_path).unwrap())
        .output()
        .expect("psql runs")
}

/// `doppel cleanup --table public.t` with `extra` arguments.
fn cleanup(cluster: &LocalCluster, extra: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args(["cleanup", "--dsn", &cluster.conninfo("postgres")])
        .args(["--table", "public.t"])
        .args(extra)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_begins_by_saying_what_it_does_and_loses() {
    let (_cluster, _client, report, _, _dir) = migrated().await;
    let script = std::fs::read_to_string(&report.cutover.rollback_path).unwrap();
    let head: Vec<&str> = script.lines().take(12).collect();
    let head = head.join("\n");
    assert!(head.contains("WHAT IT DOES"), "{head}");
    assert!(head.contains("WHAT IT LOSES"), "{head}");
    assert!(head.contains("force=1"), "{head}");
    assert!(head.contains("revert"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_write_after_the_cutover_the_script_rolls_back_and_loses_nothing() {
    let (cluster, client, report, original, _dir) = migrated().await;
    let out = rollback(&cluster, &report, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the rollback loses nothing"),
        "{}",
        text(&out)
    );
    assert_eq!(common::oid_of(&client, "public.t").await, original);
    // Its comment is the original's again (none), not the cutover's mark.
    let comment: Option<String> = client
        .query_one(
            "SELECT obj_description('public.t'::regclass, 'pg_class')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(comment, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_the_cutover_make_the_script_refuse_and_change_nothing() {
    let (cluster, client, report, _, _dir) = migrated().await;
    let new = common::oid_of(&client, "public.t").await;
    client
        .batch_execute(
            "INSERT INTO public.t VALUES (1001, 1, 1), (1002, 2, 2), (1003, 3, 3);
             UPDATE public.t SET amount = 5 WHERE id = 10;
             DELETE FROM public.t WHERE id = 20;",
        )
        .await
        .unwrap();
    let out = rollback(&cluster, &report, &[]);
    assert!(!out.status.success(), "refused: {}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("received writes after the cutover: 4 row(s) inserted or updated"),
        "{said}"
    );
    assert!(said.contains("holds 1002 row(s) against 1000"), "{said}");
    assert!(said.contains("force=1"), "{said}");
    assert_eq!(
        common::oid_of(&client, "public.t").await,
        new,
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_alone_after_the_cutover_is_seen_too() {
    let (cluster, client, report, _, _dir) = migrated().await;
    let new = common::oid_of(&client, "public.t").await;
    client
        .batch_execute("DELETE FROM public.t WHERE id = 7")
        .await
        .unwrap();
    let out = rollback(&cluster, &report, &[]);
    assert!(!out.status.success(), "refused: {}", text(&out));
    assert!(
        text(&out).contains("0 row(s) inserted or updated, and it holds 999 row(s) against 1000"),
        "{}",
        text(&out)
    );
    assert_eq!(common::oid_of(&client, "public.t").await, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_rollback_keeps_the_writes_in_the_swapped_out_table_which_cleanup_keeps() {
    let (cluster, client, report, original, _dir) = migrated().await;
    let new = common::oid_of(&client, "public.t").await;
    client
        .batch_execute("INSERT INTO public.t VALUES (5000, 1, 1)")
        .await
        .unwrap();
    let out = rollback(&cluster, &report, &["force=1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(common::oid_of(&client, "public.t").await, original);
    let names = Names::new("public", "t", original);
    let swapped = names.shadow_qualified();
    assert_eq!(common::oid_of(&client, &swapped).await, new);
    assert_eq!(
        common::scalar(
            &client,
            &format!("SELECT count(*) FROM {swapped} WHERE id = 5000")
        )
        .await,
        1,
        "the write made after the cutover is in the swapped-out table"
    );

    // cleanup refuses, says what the table holds and names the flag; nothing is dropped.
    let out = cleanup(&cluster, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("holds 1001 row(s)"), "{said}");
    assert!(said.contains("--drop-new-table"), "{said}");
    assert!(
        said.contains("1 row(s) inserted or updated in it after the cutover"),
        "{said}"
    );
    assert_eq!(common::oid_of(&client, &swapped).await, new);

    // With the flag it is dropped.
    let out = cleanup(&cluster, &["--drop-new-table"]);
    assert!(out.status.success(), "{}", text(&out));
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&swapped])
        .await
        .unwrap()
        .get(0);
    assert!(!exists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_keys_are_validated_after_the_rollback_and_a_failure_is_named() {
    let (cluster, client, report, original, _dir) = migrated().await;
    // A row of the new table and its parent are deleted after the cutover; the kept old
    // table still has a row referencing that parent, so the restored foreign key cannot be
    // validated.
    client
        .batch_execute(
            "DELETE FROM public.t WHERE parent_id = 3;
             DELETE FROM public.parent WHERE id = 3;",
        )
        .await
        .unwrap();
    let out = rollback(&cluster, &report, &["force=1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(common::oid_of(&client, "public.t").await, original);
    let said = text(&out);
    assert!(
        said.contains("foreign key t_parent_id_fkey is still NOT VALID"),
        "{said}"
    );
    assert!(
        said.contains("VALIDATE CONSTRAINT \"t_parent_id_fkey\""),
        "{said}"
    );
    let validated: bool = client
        .query_one(
            "SELECT convalidated FROM pg_constraint WHERE conname = 't_parent_id_fkey' AND conrelid = 'public.t'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!validated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_keys_are_valid_after_a_clean_rollback() {
    let (cluster, client, report, _, _dir) = migrated().await;
    let out = rollback(&cluster, &report, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let validated: bool = client
        .query_one(
            "SELECT convalidated FROM pg_constraint WHERE conname = 't_parent_id_fkey' AND conrelid = 'public.t'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(validated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cutover_record_holds_the_script_path_the_database_and_the_commit_lsn() {
    let (_cluster, _client, report, _, _dir) = migrated().await;
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report.cutover.record_path).unwrap())
            .unwrap();
    let script = record["rollback_script"].as_str().unwrap();
    assert!(std::path::Path::new(script).is_absolute(), "{script}");
    assert!(std::path::Path::new(script).exists());
    assert_eq!(record["database"], "postgres");
    let lsn = record["commit_lsn"].as_str().expect("a commit LSN");
    assert!(lsn.contains('/'), "{lsn}");
    assert!(report.cutover.commit_lsn.is_some());
}
