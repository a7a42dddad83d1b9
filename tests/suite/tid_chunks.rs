//! The backfill by TID range (`--chunk-by tid`, `src/phases/tid_chunks.rs`, docs/design.md
//! §1.4): chunks of heap pages, each under its own snapshot, so a row updated between two
//! chunks can be copied twice (its old version in a chunk read before the update, its new
//! version in a chunk read after it). The rows of every key the stream changed during the
//! copy are removed before the primary key is built and replayed by the applier; the forced
//! races below show the duplicate (an update, a key change, a delete and re-insert), and the
//! broken variant that keeps it fails the primary key build. A rewrite of the table during the copy (VACUUM FULL) stops the run.

use doppel::run::Outcome;
use doppel::testing::Broken;
use tokio_postgres::Client;

use crate::common;
use crate::common::race::{self, Run, Writer};
use doppel::phases::backfill::ChunkBy;

/// The compared columns of `t` and its twin.
const COLUMNS: &str = "id, v::bigint, doc";

/// `t` and its twin with 2,000 rows and no TOASTed value: about ten full heap pages, one
/// page per chunk (the race harness's 100-row, zero-time chunks).
async fn stand() -> (
    doppel_testkit::cluster::LocalCluster,
    Client,
    tokio_postgres::Config,
) {
    let (cluster, client, config) = race::stand().await;
    race::create_tables(&client, 2_000, i64::MAX).await;
    (cluster, client, config)
}

/// The heap page of row `id` of `t`.
async fn page_of(client: &Client, id: i64) -> i64 {
    common::scalar(
        client,
        &format!("SELECT (ctid::text::point)[0]::bigint FROM t WHERE id = {id}"),
    )
    .await
}

/// Holds the TID-range run after its first chunk (from page 0), updates row 10 (on page 0,
/// full: the new version goes to a page after the chunk's, which the test checks), and lets
/// the run go on.
async fn update_between_chunks(
    client: &Client,
    config: &tokio_postgres::Config,
    broken: Option<Broken>,
) -> Run {
    writes_between_chunks(
        client,
        config,
        broken,
        &["UPDATE {t} SET v = v + 1 WHERE id = 10"],
        10,
        None,
    )
    .await
}

/// Holds the TID-range run after its first chunk (from page 0), runs `statements` in one
/// mirrored transaction, checks that the row of key `moved` is now on a page after the
/// chunk's (rows on page 0 are full), and lets the run go on. `set_size`: the run's
/// `key_set_size` (distinct changed keys moved to the server at a time), else the default.
async fn writes_between_chunks(
    client: &Client,
    config: &tokio_postgres::Config,
    broken: Option<Broken>,
    statements: &[&str],
    moved: i64,
    set_size: Option<usize>,
) -> Run {
    assert_eq!(page_of(client, 10).await, 0);
    assert_eq!(page_of(client, 20).await, 0);
    let mut run = Run::start(config, broken, &[("copying", "block=0")], |o| {
        o.copy.chunk_by = ChunkBy::Tid;
        if let Some(size) = set_size {
            o.copy.key_set_size = size;
        }
    });
    let detail = run.reached("copying").await;
    let first_upper: i64 = detail
        .strip_prefix("range=((0,0), (")
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not the first TID range: {detail}"));
    let writer = Writer::new(config).await;
    writer.transaction(statements).await;
    let moved_to = page_of(client, moved).await;
    assert!(
        moved_to >= first_upper,
        "the new version is on page {moved_to}, inside the copied range (0, {first_upper})"
    );
    run.release("copying");
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_updated_between_two_tid_chunks_is_copied_once() {
    let (_cluster, client, config) = stand().await;
    let mut run = update_between_chunks(&client, &config, None).await;
    let diff = run.shadow_diff(&client, COLUMNS).await;
    assert!(
        diff.is_empty(),
        "the shadow differs from the twin: {diff:?}"
    );
    run.finish(&client, COLUMNS).await;
}

/// A key change and a delete with a re-insert of the same key between two chunks: the old
/// key 10 copied from page 0 becomes 15 on a later page, and key 20, copied from page 0, is
/// deleted and inserted again on a later page (copied a second time). The migrated table
/// equals the twin; without the removal the re-inserted key fails the primary key build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_and_a_re_insert_between_two_tid_chunks_are_applied_once() {
    let statements = [
        "UPDATE {t} SET id = 15 WHERE id = 10",
        "DELETE FROM {t} WHERE id = 20",
        "INSERT INTO {t} (id, v) VALUES (20, -20)",
    ];
    let (_cluster, client, config) = stand().await;
    let mut run = writes_between_chunks(&client, &config, None, &statements, 20, None).await;
    assert!(page_of(&client, 15).await > 0);
    let diff = run.shadow_diff(&client, COLUMNS).await;
    assert!(
        diff.is_empty(),
        "the shadow differs from the twin: {diff:?}"
    );
    run.finish(&client, COLUMNS).await;

    let (_cluster, client, config) = stand().await;
    let run = writes_between_chunks(
        &client,
        &config,
        Some(Broken::NoTidDedupe),
        &statements,
        20,
        None,
    )
    .await;
    let err = run
        .outcome()
        .await
        .expect_err("the duplicate key fails the run");
    assert!(format!("{err:#}").contains("(id)=(20)"), "{err:#}");
}

/// More changed keys than doppel holds in memory at once (sets of 2 here, 100,000 by
/// default): keys 10, 20, 30 and 40 of page 0 change, key 10 twice and in two sets, so the
/// server's key set receives it twice. Every set's rows are removed: the migrated table equals
/// the twin (a removal of the first set only would leave keys 30 and 40 twice in the shadow
/// and fail the primary key build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_keys_beyond_one_set_in_memory_are_all_removed() {
    let statements = [
        "UPDATE {t} SET v = v + 1 WHERE id = 10",
        "UPDATE {t} SET v = v + 1 WHERE id = 20",
        "UPDATE {t} SET v = v + 1 WHERE id = 10",
        "UPDATE {t} SET v = v + 1 WHERE id = 30",
        "DELETE FROM {t} WHERE id = 40",
        "INSERT INTO {t} (id, v) VALUES (40, -40)",
    ];
    let (_cluster, client, config) = stand().await;
    for id in [30, 40] {
        assert_eq!(page_of(&client, id).await, 0, "row {id} is on page 0");
    }
    let mut run = writes_between_chunks(&client, &config, None, &statements, 30, Some(2)).await;
    let diff = run.shadow_diff(&client, COLUMNS).await;
    assert!(
        diff.is_empty(),
        "the shadow differs from the twin: {diff:?}"
    );
    run.finish(&client, COLUMNS).await;
}

/// The broken variant: without the removal the key is in the shadow twice, and the primary
/// key build fails on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_removal_the_primary_key_build_fails_on_the_duplicate() {
    let (_cluster, client, config) = stand().await;
    let run = update_between_chunks(&client, &config, Some(Broken::NoTidDedupe)).await;
    let err = run
        .outcome()
        .await
        .expect_err("the duplicate key fails the run");
    let text = format!("{err:#}");
    assert!(
        text.contains("could not create unique index") && text.contains("(id)=(10)"),
        "{text}"
    );
}

/// `VACUUM FULL` between two chunks moves every row: the run stops with exit 8, saying the
/// table was rewritten, and leaves `t` as it was and nothing of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vacuum_full_during_the_tid_copy_stops_the_run() {
    let (_cluster, client, config) = stand().await;
    let before = common::text(
        &client,
        "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM t",
    )
    .await
    .unwrap();
    let mut run = Run::start(&config, None, &[("copying", "block=0")], |o| {
        o.copy.chunk_by = ChunkBy::Tid;
    });
    run.reached("copying").await;
    client.batch_execute("VACUUM FULL t").await.unwrap();
    run.release("copying");
    let err = match run.outcome().await {
        Err(e) => e,
        Ok(Outcome::Migrated(_)) => panic!("the run migrated a rewritten table"),
        Ok(other) => panic!("unexpected outcome {other:?}"),
    };
    assert_eq!(doppel::failure::exit_code(&err), 8, "{err:#}");
    assert!(
        format!("{err:#}").contains("was rewritten or truncated during the backfill"),
        "{err:#}"
    );
    let after = common::text(
        &client,
        "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM t",
    )
    .await
    .unwrap();
    assert_eq!(before, after);
    for leftovers in [
        "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_%'",
        "SELECT count(*) FROM pg_replication_slots",
        "SELECT count(*) FROM pg_publication",
    ] {
        assert_eq!(common::scalar(&client, leftovers).await, 0, "{leftovers}");
    }
}
