//! Race-forcing tests (docs/design.md §2, the races table): each case is forced by pause points
//! (src/pause.rs), not by timing luck, and checked with the twin oracle: every write goes to
//! `t` and to an untouched `twin` in the same transaction, and the shadow — compared when the
//! run reaches `verifying` (caught up, before verification could refuse or re-check) — must
//! equal the twin; a correct run then cuts over and the new `t` must equal the twin too.
//!
//! Each test runs its scenario twice: once against a deliberately wrong ordering
//! ([`doppel::testing::Broken`]) expecting the exact mismatch that ordering produces (so the test
//! is known to bite), then against doppel's ordering (a) expecting equality.
//!
//! The backfill runs with one copy worker and 100-row chunks, so chunks are copied strictly
//! in key order; `chunk-open` armed with `key=N` holds the chunk containing `N` between its
//! statement (its snapshot) and its commit: writes committed there are the races table's
//! "after C's snapshot, before C commits".
//!
//! | test | forced case | broken ordering that must fail, and how |
//! |---|---|---|
//! | `delete_committed_while_its_chunk_is_copied` | DELETE in the chunk's window | `ApplyDuringCopy`: ghost row |
//! | `key_change_committed_while_its_chunk_is_copied` | k1→k2 in the window (k2 in the same chunk, a copied range, a range not copied yet) | `ApplyDuringCopy`: ghost k1 |
//! | `key_change_from_an_uncopied_into_a_copied_range_and_back` | a TOASTed row moves into a copied range, its own range is copied without it, it moves back (`u` both times) | `NoReread`: the row is lost |
//! | `toast_unchanged_update_under_replica_identity_{default,full}` | `u` UPDATE of rows copied before, during (window) and after the event | `PartialAsFull`: `doc` NULL |
//! | `delete_and_reinsert_of_the_same_key` | delete + re-insert in one transaction and in two | `UnorderedBatch`: the rows are lost |
//! | `large_transaction_committed_while_a_chunk_is_copied` | 101,000 changes in one transaction (spilled while decoded, applied in several flushes) in the window | `ApplyDuringCopy`: ghosts of the window's deleted rows |
//! | `savepoints_rolled_back_in_a_chunk_window` | rolled-back and released savepoints in the window | `ApplyDuringCopy`: ghost of the released DELETE |
//! | `transaction_open_before_the_slot_committed_during_the_copy` | a transaction writing while the slot builds its snapshot, committed in the window | `ApplyDuringCopy`: ghost of its DELETE |

use std::time::Duration;

use doppel::testing::Broken;

use crate::common;
use crate::common::race::{
    Diff, Run, WAIT, Writer, chunk_range, create_tables, slot_waits_for, stand,
};

/// Compared columns of tables with a `doc` column (TOASTed values shown by an md5 prefix).
const DOC_COLUMNS: &str =
    "id, v::bigint, CASE WHEN doc IS NULL THEN 'null' ELSE left(md5(doc), 8) END";

/// Compared columns of tables without `doc`.
const PLAIN_COLUMNS: &str = "id, v::bigint";

// ---------------------------------------------------------------------------------------------

/// DELETE committed after the chunk's snapshot, before its commit (races table, row 1).
async fn delete_in_chunk_window(broken: Option<Broken>) -> Diff {
    let (_cluster, client, config) = stand().await;
    create_tables(&client, 3000, i64::MAX).await;
    let writer = Writer::new(&config).await;
    let mut run = Run::start(&config, broken, &[("chunk-open", "key=15000")], |_| {});
    let detail = run.reached("chunk-open").await;
    assert_eq!(chunk_range(&detail), (14000, 15000), "{detail}");
    let xid = writer.begin().await;
    run.expect_applied_during_copy(xid);
    writer
        .run(&["DELETE FROM {t} WHERE id IN (500, 14500, 29500)"])
        .await;
    writer.commit().await;
    run.applied_during_copy(&client, xid).await;
    run.release("chunk-open");
    let d = run.shadow_diff(&client, PLAIN_COLUMNS).await;
    run.finish(&client, PLAIN_COLUMNS).await;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_committed_while_its_chunk_is_copied() {
    let broken = delete_in_chunk_window(Some(Broken::ApplyDuringCopy)).await;
    assert_eq!(
        broken.new_keys(),
        vec![14500],
        "apply during the copy leaves the row deleted in the chunk's window as a ghost: {broken:?}"
    );
    assert!(broken.only_twin.is_empty(), "{broken:?}");
    let correct = delete_in_chunk_window(None).await;
    assert!(correct.is_empty(), "{correct:?}");
}

/// Key changes k1→k2 committed in the chunk's window (races table, row 2), to a key in the
/// same chunk, in a copied range and in a range not copied yet.
async fn key_change_in_chunk_window(broken: Option<Broken>) -> Diff {
    let (_cluster, client, config) = stand().await;
    create_tables(&client, 3000, i64::MAX).await;
    let writer = Writer::new(&config).await;
    let mut run = Run::start(&config, broken, &[("chunk-open", "key=15000")], |_| {});
    run.reached("chunk-open").await;
    let xid = writer.begin().await;
    run.expect_applied_during_copy(xid);
    writer
        .run(&[
            "UPDATE {t} SET id = 14505 WHERE id = 14500",
            "UPDATE {t} SET id = 25, v = -1 WHERE id = 14600",
            "UPDATE {t} SET id = 29995 WHERE id = 14700",
        ])
        .await;
    writer.commit().await;
    run.applied_during_copy(&client, xid).await;
    run.release("chunk-open");
    let d = run.shadow_diff(&client, PLAIN_COLUMNS).await;
    run.finish(&client, PLAIN_COLUMNS).await;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_change_committed_while_its_chunk_is_copied() {
    let broken = key_change_in_chunk_window(Some(Broken::ApplyDuringCopy)).await;
    assert_eq!(
        broken.new_keys(),
        vec![14500, 14600, 14700],
        "apply during the copy leaves every old key k1 as a ghost: {broken:?}"
    );
    assert!(broken.only_twin.is_empty(), "{broken:?}");
    let correct = key_change_in_chunk_window(None).await;
    assert!(correct.is_empty(), "{correct:?}");
}

/// A TOASTed row moves from a range not copied yet (25000) into a copied one (55), its
/// original range is copied while it is away, then it moves back (with `doc` unchanged both
/// times: pgoutput `u`). At apply time neither key is in the shadow: the partial image of the
/// move back must be completed by a re-read.
async fn key_moves_out_and_back(broken: Option<Broken>) -> Diff {
    let (_cluster, client, config) = stand().await;
    create_tables(&client, 3000, 500).await;
    let writer = Writer::new(&config).await;
    let mut run = Run::start(
        &config,
        broken,
        &[("chunk-open", "key=5000"), ("copying", "key=25000")],
        |_| {},
    );
    run.reached("chunk-open").await;
    writer
        .transaction(&["UPDATE {t} SET id = 55 WHERE id = 25000"])
        .await;
    run.release("chunk-open");
    let detail = run.reached("copying").await;
    let (lo, hi) = chunk_range(&detail);
    assert!(lo < 25000 && 25000 <= hi, "{detail}");
    writer
        .transaction(&["UPDATE {t} SET id = 25000, v = v + 7 WHERE id = 55"])
        .await;
    run.release("copying");
    let d = run.shadow_diff(&client, DOC_COLUMNS).await;
    run.finish(&client, DOC_COLUMNS).await;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_change_from_an_uncopied_into_a_copied_range_and_back() {
    let broken = key_moves_out_and_back(Some(Broken::NoReread)).await;
    assert_eq!(
        broken.twin_keys(),
        vec![25000],
        "without the re-read the row is lost: {broken:?}"
    );
    assert!(broken.only_new.is_empty(), "{broken:?}");
    let correct = key_moves_out_and_back(None).await;
    assert!(correct.is_empty(), "{correct:?}");
}

/// One UPDATE leaving the TOASTed `doc` unchanged (pgoutput `u`) on rows copied before
/// (500), during (14500, in the held chunk) and after (29500) the event, under `identity`.
async fn toast_unchanged_update(broken: Option<Broken>, identity: &str) -> Diff {
    let (_cluster, client, config) = stand().await;
    create_tables(&client, 3000, 500).await;
    client
        .batch_execute(&format!("ALTER TABLE t REPLICA IDENTITY {identity}"))
        .await
        .unwrap();
    let writer = Writer::new(&config).await;
    let mut run = Run::start(&config, broken, &[("chunk-open", "key=15000")], |_| {});
    run.reached("chunk-open").await;
    writer
        .transaction(&["UPDATE {t} SET v = v + 1000000 WHERE id IN (500, 14500, 29500)"])
        .await;
    run.release("chunk-open");
    let d = run.shadow_diff(&client, DOC_COLUMNS).await;
    run.finish(&client, DOC_COLUMNS).await;
    d
}

/// The mismatch of a partial image applied as a full row: `doc` NULL on every updated row.
fn assert_docs_lost(broken: &Diff) {
    assert_eq!(broken.new_keys(), vec![500, 14500, 29500], "{broken:?}");
    assert_eq!(broken.twin_keys(), vec![500, 14500, 29500], "{broken:?}");
    assert!(
        broken.only_new.iter().all(|r| r.ends_with(",null)")),
        "the shadow lost the unchanged TOASTed values: {broken:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toast_unchanged_update_under_replica_identity_default() {
    let broken = toast_unchanged_update(Some(Broken::PartialAsFull), "DEFAULT").await;
    assert_docs_lost(&broken);
    let correct = toast_unchanged_update(None, "DEFAULT").await;
    assert!(correct.is_empty(), "{correct:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toast_unchanged_update_under_replica_identity_full() {
    let broken = toast_unchanged_update(Some(Broken::PartialAsFull), "FULL").await;
    assert_docs_lost(&broken);
    let correct = toast_unchanged_update(None, "FULL").await;
    assert!(correct.is_empty(), "{correct:?}");
}

/// Delete and re-insert of one key: in one transaction (14500, in the held chunk) and in two
/// (500 copied before, 29500 copied after), all committed in the chunk's window.
async fn delete_and_reinsert(broken: Option<Broken>) -> Diff {
    let (_cluster, client, config) = stand().await;
    create_tables(&client, 3000, 500).await;
    let writer = Writer::new(&config).await;
    let mut run = Run::start(&config, broken, &[("chunk-open", "key=15000")], |_| {});
    run.reached("chunk-open").await;
    writer
        .transaction(&[
            "DELETE FROM {t} WHERE id = 14500",
            "INSERT INTO {t} VALUES (14500, -1, 'back')",
        ])
        .await;
    writer
        .transaction(&["DELETE FROM {t} WHERE id IN (500, 29500)"])
        .await;
    let last = writer.begin().await;
    run.arm("spooled", &format!("xid={last}"));
    writer
        .run(&["INSERT INTO {t} VALUES (500, -2, NULL), (29500, -3, repeat('z', 9000))"])
        .await;
    writer.commit().await;
    // All three transactions are in the spool before the applier starts (after the copy),
    // so its first batch holds them all.
    run.reached("spooled").await;
    run.release("spooled");
    run.release("chunk-open");
    let d = run.shadow_diff(&client, DOC_COLUMNS).await;
    run.finish(&client, DOC_COLUMNS).await;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_reinsert_of_the_same_key() {
    let broken = delete_and_reinsert(Some(Broken::UnorderedBatch)).await;
    assert_eq!(
        broken.twin_keys(),
        vec![500, 14500, 29500],
        "a batch that runs its deletes after its upserts loses the re-inserted rows: {broken:?}"
    );
    assert!(broken.only_new.is_empty(), "{broken:?}");
    let correct = delete_and_reinsert(None).await;
    assert!(correct.is_empty(), "{correct:?}");
}

/// One transaction of 101,000 row changes committed in the window of the chunk holding key
/// 50000: 2,000 deletes, 98,000 updates, 1,000 re-inserts of deleted keys. It is applied in
/// several flushes (more changes than the applier buffers) and decoded through the server's
/// spill files.
async fn large_transaction(broken: Option<Broken>) -> (Diff, (i64, i64)) {
    let (cluster, client, config) = stand().await;
    // Spill the transaction to disk while decoding it.
    cluster
        .alter_system("logical_decoding_work_mem", "1MB")
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO t SELECT i, i FROM generate_series(1, 100000) i;
             CREATE TABLE twin AS SELECT * FROM t;",
        )
        .await
        .unwrap();
    let writer = Writer::new(&config).await;
    let mut run = Run::start(&config, broken, &[("chunk-open", "key=50000")], |o| {
        // Chunks double from 2,000 rows: (-inf,2000], (2000,6000], .., (30000,62000], ..
        o.copy.initial_rows = 2000;
        o.copy.chunk_time = Duration::from_secs(3600);
    });
    let detail = run.reached("chunk-open").await;
    let window = chunk_range(&detail);
    let xid = writer.begin().await;
    run.expect_applied_during_copy(xid);
    writer
        .run(&[
            "DELETE FROM {t} WHERE id % 50 = 7",
            "UPDATE {t} SET v = v + 1",
            "INSERT INTO {t} SELECT i, -i FROM generate_series(7, 100000, 100) i",
        ])
        .await;
    writer.commit().await;
    run.applied_during_copy(&client, xid).await;
    run.release("chunk-open");
    let d = run.shadow_diff(&client, PLAIN_COLUMNS).await;
    run.finish(&client, PLAIN_COLUMNS).await;
    (d, window)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transaction_committed_while_a_chunk_is_copied() {
    let (broken, (lo, hi)) = large_transaction(Some(Broken::ApplyDuringCopy)).await;
    let ghosts: Vec<i64> = (lo + 1..=hi).filter(|k| k % 100 == 57).collect();
    assert!(ghosts.len() > 100, "window ({lo}, {hi}]");
    assert_eq!(
        broken.new_keys(),
        ghosts,
        "apply during the copy leaves the rows deleted in the held chunk as ghosts"
    );
    assert!(broken.only_twin.is_empty(), "{:?}", broken.only_twin);
    let (correct, _) = large_transaction(None).await;
    assert!(correct.is_empty(), "{correct:?}");
}

/// One transaction in the chunk's window with savepoints rolled back (their DELETE, INSERT,
/// key change never happened) and released (their changes did).
async fn savepoints(broken: Option<Broken>) -> Diff {
    let (_cluster, client, config) = stand().await;
    create_tables(&client, 3000, 500).await;
    let writer = Writer::new(&config).await;
    let mut run = Run::start(&config, broken, &[("chunk-open", "key=15000")], |_| {});
    run.reached("chunk-open").await;
    let xid = writer.begin().await;
    run.expect_applied_during_copy(xid);
    writer
        .run(&[
            "UPDATE {t} SET v = -1 WHERE id = 14100",
            "SAVEPOINT a",
            "DELETE FROM {t} WHERE id = 14200",
            "INSERT INTO {t} VALUES (14205, 0, 'rolled back')",
            "ROLLBACK TO SAVEPOINT a",
            "SAVEPOINT b",
            "UPDATE {t} SET v = -2 WHERE id = 500",
            "SAVEPOINT c",
            "DELETE FROM {t} WHERE id = 29500",
            "UPDATE {t} SET id = 14305 WHERE id = 14500",
            "ROLLBACK TO SAVEPOINT c",
            "RELEASE SAVEPOINT b",
            "SAVEPOINT d",
            "DELETE FROM {t} WHERE id = 14300",
            "RELEASE SAVEPOINT d",
            "SAVEPOINT e",
            "UPDATE {t} SET id = 14405, v = 0 WHERE id = 14400",
            "ROLLBACK TO SAVEPOINT e",
        ])
        .await;
    writer.commit().await;
    run.applied_during_copy(&client, xid).await;
    run.release("chunk-open");
    let d = run.shadow_diff(&client, DOC_COLUMNS).await;
    run.finish(&client, DOC_COLUMNS).await;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_rolled_back_in_a_chunk_window() {
    let broken = savepoints(Some(Broken::ApplyDuringCopy)).await;
    assert_eq!(
        broken.new_keys(),
        vec![14300],
        "apply during the copy keeps the row deleted under a released savepoint: {broken:?}"
    );
    assert!(broken.only_twin.is_empty(), "{broken:?}");
    let correct = savepoints(None).await;
    assert!(correct.is_empty(), "{correct:?}");
}

/// A transaction X that writes before the slot's snapshot is exported and commits during the
/// copy, in the window of the held chunk. Two transactions the test holds keep the slot
/// building its snapshot (the slot waits for each) until X has written: X is in progress in
/// the exported snapshot, so its changes — made before the slot was consistent — reach the
/// shadow only through the stream.
async fn transaction_spanning_the_copy_start(broken: Option<Broken>) -> Diff {
    let (_cluster, client, config) = stand().await;
    create_tables(&client, 3000, 500).await;
    let hold1 = Writer::new(&config).await;
    let hold2 = Writer::new(&config).await;
    let x = Writer::new(&config).await;
    let y1 = hold1.begin().await;
    let mut run = Run::start(&config, broken, &[("chunk-open", "key=15000")], |_| {});
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
    // X starts after the slot's second wait began, so the slot does not wait for X.
    let xid = x.begin().await;
    run.expect_applied_during_copy(xid);
    x.run(&[
        "UPDATE {t} SET v = -5 WHERE id = 50",
        "INSERT INTO {t} VALUES (25, 25, 'new')",
        "DELETE FROM {t} WHERE id = 14500",
        "UPDATE {t} SET v = -6 WHERE id = 29500",
    ])
    .await;
    hold2.client.batch_execute("ROLLBACK").await.unwrap();
    let detail = run.reached("chunk-open").await;
    assert_eq!(chunk_range(&detail), (14000, 15000), "{detail}");
    // The copy ran with X in progress: X's first write is not in the shadow.
    let shadow_v = common::scalar(
        &client,
        &format!(
            "SELECT v FROM {} WHERE id = 50",
            common::shadow_name(&client, "t").await
        ),
    )
    .await;
    assert_eq!(shadow_v, 50);
    x.commit().await;
    run.applied_during_copy(&client, xid).await;
    run.release("chunk-open");
    let d = run.shadow_diff(&client, DOC_COLUMNS).await;
    run.finish(&client, DOC_COLUMNS).await;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_open_before_the_slot_committed_during_the_copy() {
    let broken = transaction_spanning_the_copy_start(Some(Broken::ApplyDuringCopy)).await;
    assert_eq!(
        broken.new_keys(),
        vec![14500],
        "apply during the copy leaves the row X deleted in the held chunk: {broken:?}"
    );
    assert!(broken.only_twin.is_empty(), "{broken:?}");
    let correct = transaction_spanning_the_copy_start(None).await;
    assert!(correct.is_empty(), "{correct:?}");
}
