//! `--resumable` and `--resume` (issue 14): a resumable run killed with SIGKILL at every pause
//! point, under a writer mirrored into a twin table, is continued by a second doppel process
//! with `--resume`; the migration completes, the new table equals the twin (0 mismatches) and
//! nothing of doppel's is left but the kept old table. Mid-copy, the resumed backfill copies
//! again at most one chunk per copy worker. A checkpoint that cannot be resumed (another
//! ALTER, a changed table, a dropped slot) is refused with its reason and `doppel cleanup` as
//! the way out, changing nothing; a run without `--resume` that finds one says how to resume.

use std::process::Child;
use std::time::Duration;

use doppel_testkit::workload::WorkloadReport;

use crate::common;
use crate::kill_phases::{DOPPEL_RELATIONS, DOPPEL_SESSIONS, ROWS, Stand};

const ALTER: &str = "ALTER COLUMN customer_id TYPE bigint";

/// Waits for `child` to exit (at most 5 minutes); its exit code.
pub(crate) async fn exit_code(child: Child) -> Option<i32> {
    let mut child = child;
    let waited = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                child.kill().ok();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    waited.and_then(|s| s.code())
}

/// Starts a resumable run stopping at `point`, waits for it there and kills it with SIGKILL.
/// The detail of the pause point.
pub(crate) async fn kill_resumable_at(stand: &Stand, point: &str) -> String {
    let mut child = stand.start_run_with(Some(point), &["--resumable"], "first");
    let detail = stand.wait_reached(&mut child, point).await;
    child.kill().unwrap();
    child.wait().unwrap();
    // Disarmed, so that the resumed run passes the point.
    doppel::testing::release(&common::pause_dir(stand.dir.path()), point).unwrap();
    detail
}

/// The number of checkpoint rows of doppel's (0 once a run finished or was cleaned up).
pub(crate) async fn checkpoints(stand: &Stand) -> i64 {
    let exists: bool = stand
        .client
        .query_one("SELECT to_regclass('doppel.checkpoints') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    if !exists {
        return 0;
    }
    common::scalar(&stand.client, "SELECT count(*) FROM doppel.checkpoints").await
}

/// Runs `--resume` to completion and checks the result ([`assert_completed`]). The resumed
/// run's output.
async fn resume_and_check(stand: &mut Stand) -> String {
    let child = stand.start_run_with(None, &["--resume"], "resume");
    let code = exit_code(child).await;
    let output = stand.output_of("resume");
    assert_completed(stand, code, &output).await;
    output
}

/// Checks a finished run (exit `code`, `output`): exit 0, `customer_id` is bigint, the new
/// table equals the twin once the writer stopped (which must have seen no error), and only
/// the kept old table is left: no slot, publication, checkpoint or shadow. Stops the writer
/// and returns its report.
pub(crate) async fn assert_completed(
    stand: &mut Stand,
    code: Option<i32>,
    output: &str,
) -> WorkloadReport {
    assert_eq!(code, Some(0), "the run completes: {output}");
    let report = stand.writer.take().unwrap().stop().await.unwrap();
    assert_eq!(
        report.errors, 0,
        "the writer saw no error: {:?}",
        report.first_errors
    );
    let ty = common::text(
        &stand.client,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
         WHERE attrelid = 'orders'::regclass AND attname = 'customer_id'",
    )
    .await;
    assert_eq!(
        ty.as_deref(),
        Some("bigint"),
        "the migration took effect: {output}"
    );
    let mismatches = doppel_testkit::workload::mismatches(&stand.client, "orders", "orders_twin")
        .await
        .unwrap();
    assert_eq!(mismatches, 0, "the new table equals the twin: {output}");
    assert_eq!(
        common::scalar(&stand.client, "SELECT count(*) FROM pg_replication_slots").await,
        0,
        "the permanent slot was dropped"
    );
    assert_eq!(
        common::scalar(&stand.client, "SELECT count(*) FROM pg_publication").await,
        0,
        "the publication was dropped"
    );
    assert_eq!(checkpoints(stand).await, 0, "the checkpoint was removed");
    assert_eq!(
        common::scalar(
            &stand.client,
            &format!("{DOPPEL_RELATIONS} AND relname NOT LIKE '\\_doppel\\_%\\_old\\_%'")
        )
        .await,
        0,
        "no shadow or other object of doppel's is left but the kept old table"
    );
    report
}

async fn kill_then_resume(point: &str) -> (Stand, String, String) {
    let mut stand = Stand::new().await;
    let detail = kill_resumable_at(&stand, point).await;
    let output = resume_and_check(&mut stand).await;
    (stand, detail, output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_kill_9_after_preflight_starts_a_new_run() {
    let (_, _, output) = kill_then_resume("after-preflight").await;
    assert!(
        output.contains("no checkpoint"),
        "nothing was created: the resume starts anew: {output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_kill_9_with_the_shadow_built_sets_up_again() {
    let (_, _, output) = kill_then_resume("shadow-built").await;
    assert!(
        output.contains("had not finished its setup"),
        "the resume removed the half-made setup and started it again: {output}"
    );
}

/// Killed while a copy worker holds a chunk's transaction open (inserted, not committed):
/// that chunk rolls back and is copied again, and only the chunks in flight are: at most
/// one per copy worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_kill_9_mid_copy_copies_again_at_most_one_chunk_per_worker() {
    let mut stand = Stand::new().await;
    doppel::testing::arm_when(
        &common::pause_dir(stand.dir.path()),
        "chunk-open",
        "key=5000",
    )
    .unwrap();
    let mut child = stand.start_run_with(None, &["--resumable"], "first");
    stand.wait_reached(&mut child, "chunk-open").await;
    child.kill().unwrap();
    child.wait().unwrap();
    doppel::testing::release(&common::pause_dir(stand.dir.path()), "chunk-open").unwrap();
    // The other worker's chunk may have been committing when doppel died: its server session
    // finishes the commit (rows and checkpoint mark together) before it goes, so the rows are
    // counted once every session of the killed run is gone.
    let gone = common::wait_until_async(Duration::from_secs(30), || async {
        common::scalar(&stand.client, DOPPEL_SESSIONS).await == 0
    })
    .await;
    assert!(gone, "the killed run's sessions end");
    let copied = common::shadow_rows(&stand.client, "orders").await;
    assert!(
        copied > 0 && copied < ROWS,
        "killed mid-copy ({copied} rows)"
    );
    let output = resume_and_check(&mut stand).await;
    let again: u64 = output
        .split("chunks_copied_again=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the resumed backfill reports its chunks: {output}"));
    assert!(
        (1..=2).contains(&again),
        "the open chunks, at most one per copy worker, are copied again: {output}"
    );
    assert!(
        output.contains(&format!("rows_done={copied}")),
        "the resume starts from the {copied} rows the killed run committed: {output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_kill_9_during_index_builds_builds_only_the_missing_ones() {
    let (stand, detail, output) = kill_then_resume("index-built").await;
    assert!(detail.contains("CREATE INDEX"), "{detail}");
    let indexes = common::scalar(
        &stand.client,
        "SELECT count(*) FROM pg_index WHERE indrelid = 'orders'::regclass",
    )
    .await;
    assert_eq!(
        indexes, 3,
        "the primary key and both indexes, once each: {output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_kill_9_during_catch_up() {
    kill_then_resume("catch-up").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_kill_9_during_verify() {
    kill_then_resume("verifying").await;
}

/// Killed under the cutover lock before COMMIT: the server rolled the cutover back; the
/// resume finds it not committed (from the catalog) and cuts over again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_kill_9_inside_the_cutover_transaction_cuts_over_again() {
    let (_, _, output) = kill_then_resume("cutover-locked").await;
    assert!(output.contains("migrated"), "{output}");
}

/// Killed right after the cutover committed: the resume finds it committed (from the
/// catalog) and only finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_kill_9_after_the_cutover_committed_only_finishes() {
    let (_, _, output) = kill_then_resume("committed").await;
    assert!(
        output.contains("cutover had committed"),
        "the resume says the cutover had committed: {output}"
    );
}

/// A resumable run killed mid-copy, its checkpoint and objects left for the refusal tests.
async fn interrupted() -> Stand {
    let stand = Stand::new().await;
    kill_resumable_at(&stand, "copying").await;
    stand
}

/// Runs doppel with `args` (plus the DSN); its exit code and output together.
fn doppel(stand: &Stand, args: &[&str]) -> (Option<i32>, String) {
    let out = stand.doppel(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// `doppel run --execute` on `orders` with `alter` and `extra` arguments.
fn run_args<'a>(stand: &'a Stand, alter: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let dir = stand.dir.path().to_str().unwrap();
    let mut args = vec![
        "run",
        "--table",
        "orders",
        "--alter",
        alter,
        "--execute",
        "--work-dir",
        dir,
        "--rollback-dir",
        dir,
    ];
    args.extend_from_slice(extra);
    args
}

/// The refusal changed nothing: the checkpoint, the slot and the shadow are still there,
/// and `doppel cleanup` removes them, saying how much WAL the slot released.
async fn assert_kept_then_cleanup(stand: &Stand, refusal: &str) {
    assert_eq!(
        checkpoints(stand).await,
        1,
        "the checkpoint is kept: {refusal}"
    );
    assert!(stand.shadow_exists().await, "the shadow is kept");
    let (code, out) = doppel(stand, &["cleanup", "--table", "orders"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("released"),
        "cleanup says what WAL the slot released: {out}"
    );
    assert!(
        out.contains("checkpoint"),
        "cleanup removed the checkpoint: {out}"
    );
    assert_eq!(checkpoints(stand).await, 0);
    stand.assert_nothing_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_resume_that_finds_a_checkpoint_says_how_to_resume() {
    let stand = interrupted().await;
    let (code, out) = doppel(&stand, &run_args(&stand, ALTER, &[]));
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("--resume") && out.contains("doppel cleanup"),
        "{out}"
    );
    assert_kept_then_cleanup(&stand, &out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_another_alter_is_refused() {
    let stand = interrupted().await;
    let (code, out) = doppel(
        &stand,
        &run_args(
            &stand,
            "ALTER COLUMN status TYPE varchar(40)",
            &["--resume"],
        ),
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("ALTER was") && out.contains("doppel cleanup"),
        "{out}"
    );
    assert_kept_then_cleanup(&stand, &out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_the_table_changed_is_refused() {
    let stand = interrupted().await;
    stand
        .client
        .batch_execute("CREATE INDEX orders_due_idx ON orders (due)")
        .await
        .unwrap();
    let (code, out) = doppel(&stand, &run_args(&stand, ALTER, &["--resume"]));
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("changed since") && out.contains("doppel cleanup"),
        "{out}"
    );
    assert_kept_then_cleanup(&stand, &out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_the_slot_was_dropped_is_refused() {
    let stand = interrupted().await;
    let slot = format!("doppel_{}", stand.oid);
    let freed = common::wait_until_async(Duration::from_secs(30), || async {
        common::scalar(
            &stand.client,
            &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND NOT active"),
        )
        .await
            == 1
    })
    .await;
    assert!(freed, "the killed run's slot is released");
    stand
        .client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    let (code, out) = doppel(&stand, &run_args(&stand, ALTER, &["--resume"]));
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("no longer exists") && out.contains("doppel cleanup"),
        "{out}"
    );
    assert_eq!(checkpoints(&stand).await, 1, "the checkpoint is kept");
    let (code, out) = doppel(&stand, &["cleanup", "--table", "orders"]);
    assert_eq!(code, Some(0), "{out}");
    stand.assert_nothing_left().await;
}
