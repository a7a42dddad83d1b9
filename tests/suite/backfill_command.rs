//! `doppel backfill` (issue 16, point 4): a dry run changes nothing; killed mid-way (`kill -9`)
//! it resumes after the last chunk that committed and does not visit a finished chunk again
//! (every row up to the checkpoint was updated, none after it; those rows are not rewritten);
//! held while the throttle flag file exists; a run again changes 0 rows; each run is in the
//! history with its outcome.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use doppel_testkit::workload::ledger;
use tokio_postgres::Client;

use crate::common;

const ROWS: i64 = 30_000;

const STATE_ID: &str = "state_id = (SELECT id FROM transaction_state s WHERE s.name = status)";

/// The ledger with an empty `state_id` column.
async fn setup(client: &Client) {
    ledger::create(client, ROWS).await.unwrap();
    client
        .batch_execute(
            "ALTER TABLE transactions ADD COLUMN state_id smallint REFERENCES transaction_state(id)",
        )
        .await
        .unwrap();
}

/// `doppel backfill --set STATE_ID --where 'state_id IS NULL' [--execute] <extra>`.
fn command(conninfo: &str, dir: &Path, execute: bool, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_doppel"));
    cmd.args(["backfill", "--dsn", conninfo, "--table", "transactions"])
        .args([
            "--set",
            STATE_ID,
            "--where",
            "state_id IS NULL",
            "--progress",
            "lines",
        ])
        .arg("--work-dir")
        .arg(dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if execute {
        cmd.arg("--execute");
    }
    cmd
}

/// Runs a command to its end; its stdout, or a panic with both streams.
async fn succeeds(mut cmd: tokio::process::Command) -> String {
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("doppel backfill finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The chunks the latest backfill's history row has checkpointed.
async fn chunks_done(client: &Client) -> i64 {
    if common::scalar(
        client,
        "SELECT count(*) FROM pg_class WHERE oid = to_regclass('doppel.migrations')",
    )
    .await
        == 0
    {
        return 0;
    }
    common::scalar(
        client,
        "SELECT coalesce((SELECT (details->>'chunks')::bigint FROM doppel.migrations
                          WHERE kind = 'backfill' ORDER BY id DESC LIMIT 1), 0)",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backfill_resumes_without_redoing_finished_chunks() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    setup(&client).await;
    let dsn = cluster.conninfo("postgres");
    let dir = tempfile::tempdir().unwrap();

    // Dry run: the plan, nothing changed.
    let plan = succeeds(command(&dsn, dir.path(), false, &[])).await;
    assert!(plan.contains("dry run: nothing was changed"), "{plan}");
    assert!(plan.contains("IS DISTINCT FROM"), "{plan}");
    assert_eq!(
        common::scalar(&client, "SELECT count(state_id) FROM transactions").await,
        0
    );

    // A slow run, killed once it has committed 20 chunks.
    let slow = ["--chunk-time", "5", "--nice-ratio", "10"];
    let mut child = command(&dsn, dir.path(), true, &slow).spawn().unwrap();
    let progressed = common::wait_until_async(Duration::from_secs(120), || async {
        chunks_done(&client).await >= 20
    })
    .await;
    assert!(progressed, "the backfill committed 20 chunks");
    // The run registers itself in its --work-dir, where `doppel ctl --work-dir` and
    // `doppel cleanup` look, not in the system's temp directory.
    let oid = common::oid_of(&client, "transactions").await;
    let entry = format!("doppel-run-{oid}-{}.json", child.id().unwrap());
    assert!(
        dir.path().join(&entry).exists(),
        "{entry} is in the run's --work-dir"
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let gone = common::wait_until_async(Duration::from_secs(15), || async {
        common::scalar(
            &client,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'doppel%'",
        )
        .await
            == 0
    })
    .await;
    assert!(gone, "the killed run's sessions ended");
    let checkpoint: i64 = client
        .query_one(
            "SELECT (details->'resume_after'->>0)::bigint FROM doppel.migrations
             WHERE kind = 'backfill' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let done = |sql: &str| sql.replace("{k}", &checkpoint.to_string());
    // Each chunk committed with its checkpoint: every row up to it is updated, none after.
    assert_eq!(
        common::scalar(
            &client,
            &done("SELECT count(*) FROM transactions WHERE id <= {k} AND state_id IS NULL")
        )
        .await,
        0
    );
    assert_eq!(
        common::scalar(
            &client,
            &done("SELECT count(*) FROM transactions WHERE id > {k} AND state_id IS NOT NULL")
        )
        .await,
        0
    );
    let finished_versions = common::text(
        &client,
        &done(
            "SELECT md5(string_agg(xmin::text, ',' ORDER BY id)) FROM transactions WHERE id <= {k}",
        ),
    )
    .await;
    let rest = common::scalar(
        &client,
        &done("SELECT count(*) FROM transactions WHERE id > {k}"),
    )
    .await;
    println!("killed after key {checkpoint}; {rest} rows left");
    assert!(rest > 0, "the run was killed before the end");

    // The next run resumes after the checkpoint and goes through the rest only.
    let second = succeeds(command(&dsn, dir.path(), true, &[])).await;
    println!("{second}");
    assert!(
        second.contains(&format!("resumed after key ({checkpoint})")),
        "{second}"
    );
    assert!(
        second.contains(&format!("{rest} row(s) changed of {rest} examined")),
        "{second}"
    );
    assert!(
        second.contains("rows still matching --where: 0"),
        "{second}"
    );
    assert!(second.contains("mismatches none"), "{second}");
    assert!(
        second.contains("orphans of foreign key \"transactions_state_id_fkey\": none"),
        "{second}"
    );
    assert_eq!(
        common::text(
            &client,
            &done("SELECT md5(string_agg(xmin::text, ',' ORDER BY id)) FROM transactions WHERE id <= {k}")
        )
        .await,
        finished_versions,
        "rows of finished chunks were not rewritten"
    );
    assert_eq!(ledger_mismatches_by_status(&client).await, 0);

    // Run again: nothing to change.
    let third = succeeds(command(&dsn, dir.path(), true, &[])).await;
    assert!(third.contains("0 row(s) changed"), "{third}");

    let outcomes: Vec<String> = client
        .query(
            "SELECT outcome FROM doppel.migrations WHERE kind = 'backfill' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(outcomes, ["interrupted", "succeeded", "succeeded"]);
}

/// Rows whose `state_id` is not the one of their `status`.
async fn ledger_mismatches_by_status(client: &Client) -> i64 {
    common::scalar(
        client,
        "SELECT count(*) FROM transactions t
         WHERE t.state_id IS DISTINCT FROM (SELECT id FROM transaction_state s WHERE s.name = t.status)",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_waits_while_the_throttle_flag_file_exists() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    setup(&client).await;
    let dsn = cluster.conninfo("postgres");
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("throttle");
    std::fs::write(&flag, "").unwrap();
    let socket = dir.path().join("backfill.sock");
    let flag_arg = flag.to_string_lossy().into_owned();
    let socket_arg = socket.to_string_lossy().into_owned();
    let child = command(
        &dsn,
        dir.path(),
        true,
        &[
            "--throttle-flag-file",
            &flag_arg,
            "--control-socket",
            &socket_arg,
        ],
    )
    .spawn()
    .unwrap();
    let throttled = common::wait_until_async(Duration::from_secs(60), || async {
        doppel::ops::control::send(&socket, "status --json")
            .await
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
            .is_some_and(|s| s["throttled"] == true)
    })
    .await;
    assert!(throttled, "the backfill reports itself throttled");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        common::scalar(&client, "SELECT count(state_id) FROM transactions").await,
        0,
        "no chunk ran while throttled"
    );
    std::fs::remove_file(&flag).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the backfill finished once the flag was removed")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM transactions WHERE state_id IS NULL"
        )
        .await,
        0
    );
}
