//! Decoded before visible (docs/design.md F3): a transaction's commit record can be in WAL — and so
//! decoded, spooled and applied — before new snapshots see it. The window is forced, not
//! waited for: `synchronous_standby_names` names a standby that does not exist, every session
//! of doppel and of the test runs with `synchronous_commit=local`, and only the workload's
//! writer commits with `synchronous_commit=on`, so its COMMIT stays in WAL (decodable) and
//! invisible until the test releases it with `pg_cancel_backend` (the commit then completes
//! locally).
//!
//! Three cases, each run against a deliberately wrong ordering (expecting the exact mismatch)
//! and against doppel's (expecting the shadow, and after cutover the new table, to equal the
//! twin that every write goes to in the same transaction):
//!
//! - the slot's exported snapshot counts a commit that is not visible yet (docs/design.md §1.3):
//!   the copy must wait for it (`wait_exported_visible` in migration.rs);
//! - a DELETE decoded (and, with a concurrent applier, applied) while invisible, before the
//!   next chunk copies the row (the races table's "A applied a DELETE, then C's next snapshot
//!   does not yet see it"): ordering (a) applies it after the copy;
//! - a partial UPDATE (`u`) whose key is absent from the shadow is re-read from the original:
//!   the re-read must wait until the event's transaction is visible.

use std::time::Duration;

use doppel::testing::{self as pause, Broken};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::common;
use crate::common::race::{Diff, Run, WAIT, Writer, chunk_range, create_tables, slot_waits_for};

/// Compared columns (TOASTed values shown by an md5 prefix).
const COLUMNS: &str = "id, v::bigint, CASE WHEN doc IS NULL THEN 'null' ELSE left(md5(doc), 8) END";

/// The standby `synchronous_standby_names` waits for; it never connects.
const ABSENT_STANDBY: &str = "doppel_absent_standby";

/// A private cluster whose commits wait for an absent synchronous standby unless the session
/// sets `synchronous_commit=local` (as the returned session and configuration do).
async fn stand() -> (
    doppel_testkit::cluster::LocalCluster,
    Client,
    tokio_postgres::Config,
) {
    let cluster = common::cluster().await;
    cluster
        .alter_system("synchronous_standby_names", ABSENT_STANDBY)
        .await
        .unwrap();
    let mut config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    config.options("-c synchronous_commit=local");
    let client = doppel::conninfo::connect(&config).await.unwrap();
    // New sessions see the reloaded setting once the postmaster has processed the reload.
    assert!(
        common::wait_until_async(WAIT, || async {
            let fresh = doppel::conninfo::connect(&config).await.unwrap();
            let names: String = fresh
                .query_one("SHOW synchronous_standby_names", &[])
                .await
                .unwrap()
                .get(0);
            names == ABSENT_STANDBY
        })
        .await
    );
    (cluster, client, config)
}

/// A writer transaction whose COMMIT waits for the absent standby: committed in WAL (and
/// decodable), invisible to other sessions until [`Stuck::release`].
struct Stuck {
    pid: i32,
    commit: JoinHandle<Result<(), tokio_postgres::Error>>,
}

/// Opens the writer's transaction with `synchronous_commit=on`; returns the writer and xid.
async fn begin_stuck(config: &tokio_postgres::Config) -> (Writer, u32) {
    let writer = Writer::new(config).await;
    writer
        .client
        .batch_execute("SET synchronous_commit = on")
        .await
        .unwrap();
    let xid = writer.begin().await;
    (writer, xid)
}

impl Stuck {
    /// Sends the writer's COMMIT and waits until it waits for the standby.
    async fn commit(writer: Writer, client: &Client) -> Stuck {
        let pid: i32 = writer
            .client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let commit = tokio::spawn(async move { writer.client.batch_execute("COMMIT").await });
        let waiting = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND wait_event = 'SyncRep'"
        );
        assert!(
            common::wait_until_async(WAIT, || async {
                common::scalar(client, &waiting).await == 1
            })
            .await,
            "the writer's COMMIT does not wait for the absent standby"
        );
        Stuck { pid, commit }
    }

    /// Cancels the wait: the transaction completes (committed locally) and becomes visible.
    async fn release(self, client: &Client) {
        client
            .execute("SELECT pg_cancel_backend($1)", &[&self.pid])
            .await
            .unwrap();
        self.commit
            .await
            .unwrap()
            .expect("a COMMIT whose standby wait is cancelled completes");
    }
}

/// Whether doppel's control session has run `SELECT pg_current_snapshot()` outside a
/// transaction at two different times: the wait before the backfill is polling.
async fn polls_for_visibility(client: &Client, seen: &mut Vec<String>) -> bool {
    let started: Option<String> = client
        .query_opt(
            "SELECT query_start::text FROM pg_stat_activity
             WHERE application_name = 'doppel' AND state = 'idle'
               AND query = 'SELECT pg_current_snapshot()::text'",
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    if let Some(s) = started
        && !seen.contains(&s)
    {
        seen.push(s);
    }
    seen.len() >= 2
}

/// The slot-creation case (docs/design.md §1.3). Two transactions the test holds keep the slot
/// building its snapshot; meanwhile the writer commits (decoded: the slot's snapshot counts it
/// as committed, and its changes are before the slot's consistent point, so never streamed)
/// without becoming visible. The backfill must not start before the commit is visible, or its
/// changes are lost.
///
/// Recent PostgreSQL minor releases close this window in the server: exporting the slot's
/// snapshot waits for such a transaction to end (the walsender waits on its xid). Returns the
/// shadow's difference and whether the server waited so.
async fn commit_invisible_at_slot_snapshot(broken: Option<Broken>) -> (Diff, bool) {
    let (_cluster, client, config) = stand().await;
    create_tables(&client, 3000, i64::MAX).await;
    let hold1 = Writer::new(&config).await;
    let hold2 = Writer::new(&config).await;
    let y1 = hold1.begin().await;
    let mut run = Run::start(&config, broken, &[("copying", "")], |_| {});
    assert!(
        common::wait_until_async(WAIT, || slot_waits_for(&client, y1)).await,
        "the slot did not wait for the first held transaction"
    );
    let y2 = hold2.begin().await;
    hold1.client.batch_execute("ROLLBACK").await.unwrap();
    assert!(
        common::wait_until_async(WAIT, || slot_waits_for(&client, y2)).await,
        "the slot did not wait for the second held transaction"
    );
    // The writer starts after the slot's second wait began, so the slot does not wait for it
    // to become consistent.
    let (writer, x) = begin_stuck(&config).await;
    writer
        .run(&[
            "UPDATE {t} SET v = -1 WHERE id = 50",
            "INSERT INTO {t} VALUES (5, 5, NULL)",
        ])
        .await;
    let stuck = Stuck::commit(writer, &client).await;
    // The slot becomes consistent with the writer committed, yet in progress for every new
    // snapshot.
    hold2.client.batch_execute("ROLLBACK").await.unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let (server_waits, held, copied) = loop {
        let server_waits = slot_waits_for(&client, x).await;
        let copied = pause::reached(&common::pause_dir(run.dir()), "copying").is_some();
        let held = polls_for_visibility(&client, &mut seen).await;
        if server_waits || copied || held {
            break (server_waits, held, copied);
        }
        run.check_running("the slot, the backfill or the visibility wait")
            .await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "neither the slot, the backfill nor the visibility wait moved"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    if server_waits {
        assert!(
            !copied && !held,
            "the slot's snapshot was exported while it waited"
        );
    } else if broken.is_some() {
        assert!(
            copied,
            "the broken run copies a chunk while the commit is invisible"
        );
    } else {
        assert!(
            held && !copied,
            "the backfill must wait until the commit is visible (waiting {held}, copied {copied}); \
             a commit still in the ProcArray can be at or above a new snapshot's xmax rather than \
             in its in-progress list: see applier::committed_but_not_visible"
        );
    }
    stuck.release(&client).await;
    run.release("copying");
    let d = run.shadow_diff(&client, COLUMNS).await;
    run.finish(&client, COLUMNS).await;
    (d, server_waits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_snapshot_counts_a_commit_not_yet_visible() {
    let (broken, server_waits) =
        commit_invisible_at_slot_snapshot(Some(Broken::NoVisibilityWait)).await;
    if server_waits {
        // This server waits for the transaction before exporting the snapshot: the window
        // is closed before doppel's own wait could matter, and no ordering of doppel's can
        // lose the writer's changes.
        assert!(broken.is_empty(), "{broken:?}");
    } else {
        assert_eq!(
            (broken.new_keys(), broken.twin_keys()),
            (vec![50], vec![5, 50]),
            "without the wait the writer's update and insert are lost: {broken:?}"
        );
    }
    let (correct, _) = commit_invisible_at_slot_snapshot(None).await;
    assert!(correct.is_empty(), "{correct:?}");
}

/// The writer deletes a row of a range not copied yet; its commit is decoded (and, under
/// [`Broken::ApplyDuringCopy`], applied) but invisible when the copy reaches that range, so
/// the chunk copies the row.
async fn delete_decoded_before_its_chunk(broken: Option<Broken>) -> Diff {
    let (_cluster, client, config) = stand().await;
    create_tables(&client, 3000, i64::MAX).await;
    let mut run = Run::start(
        &config,
        broken,
        &[("chunk-open", "key=5000"), ("copying", "key=25000")],
        |_| {},
    );
    run.reached("chunk-open").await;
    let (writer, xid) = begin_stuck(&config).await;
    run.arm("spooled", &format!("xid={xid}"));
    run.expect_applied_during_copy(xid);
    writer.run(&["DELETE FROM {t} WHERE id = 25000"]).await;
    let stuck = Stuck::commit(writer, &client).await;
    run.reached("spooled").await;
    run.release("spooled");
    run.applied_during_copy(&client, xid).await;
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM t WHERE id = 25000").await,
        1,
        "the delete is decoded but not visible"
    );
    run.release("chunk-open");
    let detail = run.reached("copying").await;
    let (lo, hi) = chunk_range(&detail);
    assert!(lo < 25000 && 25000 <= hi, "{detail}");
    let copied = common::scalar(
        &client,
        &format!(
            "SELECT count(*) FROM {} WHERE id = 25000",
            common::shadow_name(&client, "t").await
        ),
    )
    .await;
    assert_eq!(
        copied, 1,
        "the chunk copied the row whose delete it cannot see"
    );
    stuck.release(&client).await;
    run.release("copying");
    let d = run.shadow_diff(&client, COLUMNS).await;
    run.finish(&client, COLUMNS).await;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_decoded_before_visible_is_applied_after_the_chunk_copies_the_row() {
    let broken = delete_decoded_before_its_chunk(Some(Broken::ApplyDuringCopy)).await;
    assert_eq!(
        broken.new_keys(),
        vec![25000],
        "applied during the copy, the delete leaves the row the next chunk copied: {broken:?}"
    );
    assert!(broken.only_twin.is_empty(), "{broken:?}");
    let correct = delete_decoded_before_its_chunk(None).await;
    assert!(correct.is_empty(), "{correct:?}");
}

/// The writer moves a TOASTed row to a new key (`doc` unchanged: pgoutput `u`) and stays
/// invisible through the copy, which copies the row under its old key. At apply time the new
/// key is absent from the shadow, so the partial image is completed by a re-read from the
/// original, which sees the row under its new key only once the writer is visible.
async fn reread_of_an_invisible_event(broken: Option<Broken>) -> Diff {
    let (_cluster, client, config) = stand().await;
    create_tables(&client, 3000, 500).await;
    let mut run = Run::start(&config, broken, &[("chunk-open", "key=5000")], |_| {});
    run.reached("chunk-open").await;
    let (writer, xid) = begin_stuck(&config).await;
    run.arm("visibility-wait", "");
    run.arm("applied", &format!("xid={xid}"));
    writer
        .run(&["UPDATE {t} SET id = 25005 WHERE id = 25000"])
        .await;
    let stuck = Stuck::commit(writer, &client).await;
    run.release("chunk-open");
    let deadline = tokio::time::Instant::now() + WAIT;
    let (waited, applied) = loop {
        let waited = pause::reached(&common::pause_dir(run.dir()), "visibility-wait").is_some();
        let applied = pause::reached(&common::pause_dir(run.dir()), "applied").is_some();
        if waited || applied {
            break (waited, applied);
        }
        run.check_running("the applier").await;
        assert!(tokio::time::Instant::now() < deadline, "nothing happened");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    if broken.is_some() {
        assert!(applied && !waited, "the broken run re-read without waiting");
    } else {
        assert!(
            waited && !applied,
            "the applier must wait for the writer before re-reading"
        );
    }
    stuck.release(&client).await;
    run.release("visibility-wait");
    run.release("applied");
    let d = run.shadow_diff(&client, COLUMNS).await;
    run.finish(&client, COLUMNS).await;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reread_waits_until_the_event_is_visible() {
    let broken = reread_of_an_invisible_event(Some(Broken::NoVisibilityWait)).await;
    assert_eq!(
        broken.twin_keys(),
        vec![25005],
        "a re-read before the writer is visible finds nothing and loses the row: {broken:?}"
    );
    assert!(broken.only_new.is_empty(), "{broken:?}");
    let correct = reread_of_an_invisible_event(None).await;
    assert!(correct.is_empty(), "{correct:?}");
}
