//! Transactions whose snapshot is older than the cutover (docs/design.md §4.6): a REPEATABLE
//! READ transaction opened before the run and a SERIALIZABLE one opened mid-copy, both
//! reading the table only once doppel reached the cutover, read the complete old table (the
//! cutover waits for them) and the swap happens once they end; left open past
//! `--old-snapshot-timeout` they postpone the cutover (exit 5 naming the pid), and
//! `--kill-old-snapshots` ends them. The window that remains (a REPEATABLE READ statement
//! queued on the cutover lock with a snapshot taken before the drain under it) is forced with
//! pause points and reported as the docs say.

use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::run::{Outcome, RunOptions};
use doppel::testing;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::{self, Tune};

const ROWS: i64 = 3000;

/// `t (id bigint PRIMARY KEY, v int)` with `ROWS` rows.
async fn table(client: &Client) {
    client
        .batch_execute(&format!(
            "CREATE TABLE t (id bigint PRIMARY KEY, v int);
             INSERT INTO t SELECT i, i FROM generate_series(1, {ROWS}) i;"
        ))
        .await
        .unwrap();
}

/// A session in a transaction of `isolation` that has taken its snapshot (`SELECT 1`, which
/// reads no table), and its backend pid.
async fn snapshot_holder(
    cluster: &doppel_testkit::cluster::LocalCluster,
    isolation: &str,
) -> (Client, i64) {
    let session = cluster.connect("postgres").await.unwrap();
    let pid = common::scalar(&session, "SELECT pg_backend_pid()::bigint").await;
    session
        .batch_execute(&format!("BEGIN ISOLATION LEVEL {isolation}; SELECT 1"))
        .await
        .unwrap();
    (session, pid)
}

/// `SELECT count(*) FROM t` through the simple query protocol (the statement a transaction
/// takes its snapshot in when it is its first).
async fn count(session: &Client) -> Result<i64, tokio_postgres::Error> {
    let messages = session.simple_query("SELECT count(*) FROM t").await?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .unwrap())
}

/// Runs doppel in-process with `options` through the shadow (`--strategy shadow`: the
/// `ADD COLUMN` of these tests would otherwise run on the table itself, with no cutover).
fn start(
    cluster: &doppel_testkit::cluster::LocalCluster,
    mut options: RunOptions,
) -> tokio::task::JoinHandle<anyhow::Result<Outcome>> {
    options.force_shadow = true;
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    tokio::spawn(async move { common::run_paused(&config, &options, &Cancel::never()).await })
}

fn migrated(outcome: anyhow::Result<Outcome>) -> Box<doppel::run::RunReport> {
    match outcome {
        Ok(Outcome::Migrated(report)) => report,
        Ok(_) => panic!("expected a migration"),
        Err(e) => panic!("the run failed: {e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_repeatable_read_and_serializable_transactions_read_the_whole_old_table() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    table(&client).await;
    let oid = common::oid_of(&client, "t").await;
    // Opened before the run.
    let (before, before_pid) = snapshot_holder(&cluster, "REPEATABLE READ").await;

    let dir = tempfile::tempdir().unwrap();
    let pause = common::pause_dir(dir.path());
    testing::arm(&pause, "copying").unwrap();
    testing::arm(&pause, "old-snapshots").unwrap();
    let options =
        common::options(dir.path(), "t", &["ADD COLUMN note text"]).chunk_time(Duration::ZERO);
    let run = start(&cluster, options);

    // Opened mid-copy; rows inserted after its snapshot are not for it to see.
    testing::wait_reached(&pause, "copying", Duration::from_secs(60))
        .await
        .expect("the copy started");
    let (mid, mid_pid) = snapshot_holder(&cluster, "SERIALIZABLE").await;
    client
        .batch_execute("INSERT INTO t SELECT i, i FROM generate_series(100001, 100100) i")
        .await
        .unwrap();
    testing::release(&pause, "copying").unwrap();

    // doppel reaches the cutover: it either waits for them (the fix) or swaps (the old
    // behaviour, under which both read a partly filled new table).
    let waiting = common::wait_until_async(Duration::from_secs(120), || async {
        testing::reached(&pause, "old-snapshots").is_some()
            || common::oid_of(&client, "t").await != oid
    })
    .await;
    assert!(waiting, "doppel neither waited nor cut over");
    let detail = testing::reached(&pause, "old-snapshots");
    testing::release(&pause, "old-snapshots").unwrap();
    assert_eq!(
        count(&before).await.unwrap(),
        ROWS,
        "the REPEATABLE READ transaction opened before the run reads the whole old table"
    );
    assert_eq!(
        count(&mid).await.unwrap(),
        ROWS,
        "the SERIALIZABLE transaction opened mid-copy reads the old table as of its snapshot"
    );
    let detail = detail.expect("the cutover listed the sessions it waits for");
    assert!(
        detail.contains(&before_pid.to_string()) && detail.contains(&mid_pid.to_string()),
        "{detail}"
    );
    assert_eq!(common::oid_of(&client, "t").await, oid, "not swapped yet");
    before.batch_execute("COMMIT").await.unwrap();
    mid.batch_execute("COMMIT").await.unwrap();

    let report = migrated(run.await.unwrap());
    assert_ne!(common::oid_of(&client, "t").await, oid, "swapped");
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM t").await,
        ROWS + 100
    );
    let waited: f64 = report
        .cutover
        .history
        .iter()
        .map(|a| a.old_snapshot_wait_ms)
        .sum();
    println!(
        "old-snapshot wait before the cutover: {waited:.1} ms over {} attempt(s)",
        report.cutover.attempts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_snapshot_past_the_timeout_postpones_and_exits_5_naming_it() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    table(&client).await;
    let oid = common::oid_of(&client, "t").await;
    let (holder, pid) = snapshot_holder(&cluster, "REPEATABLE READ").await;

    let dir = tempfile::tempdir().unwrap();
    let mut options =
        common::options(dir.path(), "t", &["ADD COLUMN note text"]).cutover_retries(2);
    options.old_snapshot_timeout = Duration::from_millis(300);
    let err = match start(&cluster, options).await.unwrap() {
        Err(e) => e,
        Ok(_) => panic!("the cutover must not happen under an old snapshot"),
    };
    let message = format!("{err:#}");
    assert_eq!(doppel::failure::exit_code(&err), 5, "{message}");
    assert!(message.contains(&format!("pid {pid} ")), "{message}");
    assert!(message.contains("--kill-old-snapshots"), "{message}");
    assert_eq!(
        common::oid_of(&client, "t").await,
        oid,
        "the original is untouched"
    );
    common::assert_no_doppel_objects(&client).await;
    assert_eq!(count(&holder).await.unwrap(), ROWS);
    holder.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_old_snapshots_ends_the_transaction_and_cuts_over() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    table(&client).await;
    let (holder, pid) = snapshot_holder(&cluster, "SERIALIZABLE").await;

    let dir = tempfile::tempdir().unwrap();
    let mut options = common::options(dir.path(), "t", &["ADD COLUMN note text"]);
    options.old_snapshot_timeout = Duration::from_millis(200);
    options.kill_old_snapshots = Some(Duration::from_millis(200));
    let report = migrated(start(&cluster, options).await.unwrap());
    let killed = &report.cutover.killed;
    // Idle in transaction: the cancel does nothing, the termination ends it.
    assert!(
        killed
            .iter()
            .any(|k| k.starts_with(&format!("terminated pid {pid} "))),
        "{killed:?}"
    );
    assert!(
        holder.batch_execute("SELECT 1").await.is_err(),
        "terminated"
    );
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM t").await,
        ROWS
    );
}

/// The window that remains (docs/design.md §4.6): a REPEATABLE READ transaction whose first
/// statement queues on the granted cutover lock took its snapshot after a write committed but
/// before the drain under the lock applied it. doppel cannot wait for it (it waits for
/// doppel); the cutover reports it with the number of changes applied in the window, and
/// the transaction reads the new table without that write, as the docs say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_in_the_remaining_window_is_reported() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    table(&client).await;

    let dir = tempfile::tempdir().unwrap();
    let pause = common::pause_dir(dir.path());
    testing::arm(&pause, "verifying").unwrap();
    testing::arm(&pause, "lock-granted").unwrap();
    let mut options = common::options(dir.path(), "t", &["ADD COLUMN note text"])
        .fence_timeout(Duration::from_secs(5));
    options.lock_timeout = Duration::from_secs(60);
    // The test holds the granted lock at the pause point `lock-granted`.
    options.max_lock_hold = Duration::from_secs(60);
    let run = start(&cluster, options);

    // A writer W holds the table's ROW EXCLUSIVE lock, so the cutover's request waits for it.
    testing::wait_reached(&pause, "verifying", Duration::from_secs(60))
        .await
        .expect("verification started");
    let writer = cluster.connect("postgres").await.unwrap();
    writer
        .batch_execute("BEGIN; INSERT INTO t VALUES (100001, 1)")
        .await
        .unwrap();
    testing::release(&pause, "verifying").unwrap();
    let requested = common::wait_until_async(Duration::from_secs(60), || async {
        common::scalar(
            &client,
            "SELECT count(*) FROM pg_locks WHERE relation = 't'::regclass
               AND mode = 'AccessExclusiveLock' AND NOT granted",
        )
        .await
            > 0
    })
    .await;
    assert!(requested, "the cutover requested its lock");

    // Hold the applier after a transaction V (a logical message), so W stays unapplied.
    let marker = cluster.connect("postgres").await.unwrap();
    marker.batch_execute("BEGIN").await.unwrap();
    let v = common::scalar(
        &marker,
        "SELECT (pg_current_xact_id()::text::bigint % 4294967296)",
    )
    .await;
    testing::arm_when(&pause, "applied", &format!("xid={v}")).unwrap();
    marker
        .batch_execute("SELECT pg_logical_emit_message(true, 'test', 'v'); COMMIT")
        .await
        .unwrap();
    testing::wait_reached(&pause, "applied", Duration::from_secs(30))
        .await
        .expect("the applier applied V");
    writer.batch_execute("COMMIT").await.unwrap();
    testing::wait_reached(&pause, "lock-granted", Duration::from_secs(30))
        .await
        .expect("the cutover got its lock");

    // R: its first statement takes its snapshot (W visible, W not in the shadow) and queues.
    let reader = cluster.connect("postgres").await.unwrap();
    let reader_pid = common::scalar(&reader, "SELECT pg_backend_pid()::bigint").await;
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let read = tokio::spawn(async move {
        let n = count(&reader).await;
        (reader, n)
    });
    let queued = common::wait_until_async(Duration::from_secs(30), || async {
        common::scalar(
            &client,
            &format!("SELECT count(*) FROM pg_locks WHERE pid = {reader_pid} AND NOT granted"),
        )
        .await
            > 0
    })
    .await;
    assert!(queued, "R queued on the cutover lock");
    testing::release(&pause, "applied").unwrap();
    testing::release(&pause, "lock-granted").unwrap();

    let report = migrated(run.await.unwrap());
    let (reader, seen) = read.await.unwrap();
    let seen = seen.unwrap();
    let reported = &report.cutover.queued_old_snapshots;
    assert!(
        reported
            .iter()
            .any(|h| h.starts_with(&format!("pid {reader_pid} "))),
        "{reported:?}"
    );
    assert!(
        report.cutover.changes_in_window >= 1,
        "W was applied in the window"
    );
    assert_eq!(
        seen, ROWS,
        "R reads the new table without W, which it would have seen in the old one"
    );
    reader.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM t").await,
        ROWS + 1,
        "W is in the new table"
    );
    println!(
        "remaining window: {} queued session(s), {} change(s) applied in it",
        reported.len(),
        report.cutover.changes_in_window
    );
}
