//! Parallel apply by key hash (`--apply-workers`, issue 17, docs/design.md §2.5), checked with
//! the twin oracle:
//!
//! - the randomized oracle (inserts, updates with and without the TOASTed columns, deletes,
//!   delete + re-insert, single and multi-row primary-key changes, savepoints, large
//!   transactions; random ALTERs) with four apply sessions: the new table equals the twin;
//! - a `--resumable` run killed with SIGKILL between the commits of a parallel batch's shares
//!   (pause point `apply-shares`: the other shares committed, the one recording the batch in
//!   the checkpoint not), under the mirrored writer of `kill_phases.rs` (inserts, updates with
//!   TOASTed values, deletes, key changes `id = -id`), then `--resume`d: the replayed batch
//!   is idempotent and the new table equals the twin;
//! - the same against the deliberately broken commit order
//!   (`Broken::CheckpointBeforeShares`: the checkpoint's share commits first): the resumed run
//!   skips the batch and loses the other shares' changes, so it must not end equal to the twin.

use std::process::{Child, Command, Stdio};

use crate::common;
use crate::kill_phases::Stand;
use crate::resume::{assert_completed, exit_code};

const ALTER: &str = "ALTER COLUMN customer_id TYPE bigint";
const WORKERS: &str = "4";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workloads_with_four_apply_workers_equal_the_oracles() {
    crate::randomized_oracle::run_seeds_with(
        2,
        2_000..5_000,
        "cargo test --test suite parallel_apply::random_workloads",
        Some(4),
    )
    .await;
}

/// Starts `doppel run --execute --apply-workers 4` on the stand with `extra` arguments and
/// `point` armed, under the broken ordering `broken` when given; output in `<name>.out` and
/// `<name>.err` in the stand's directory.
fn start(
    stand: &Stand,
    point: Option<&str>,
    extra: &[&str],
    broken: Option<&str>,
    name: &str,
) -> Child {
    let dir = stand.dir.path();
    let pause_dir = common::pause_dir(dir);
    if let Some(point) = point {
        doppel::testing::arm(&pause_dir, point).unwrap();
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_doppel"));
    command.env(doppel::testing::PAUSE_DIR_VAR, &pause_dir);
    if let Some(broken) = broken {
        command.env(doppel::testing::BROKEN_VAR, broken);
    }
    command
        .args([
            "run",
            "--dsn",
            &stand.dsn(),
            "--table",
            "orders",
            "--alter",
            ALTER,
        ])
        .args([
            "--execute",
            "--progress",
            "lines",
            "--apply-workers",
            WORKERS,
        ])
        .arg("--work-dir")
        .arg(dir)
        .arg("--rollback-dir")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
        .spawn()
        .expect("doppel starts")
}

/// A resumable run killed with SIGKILL at `apply-shares` (under `broken` when given), then
/// `--resume`d with four apply sessions: the stand, the resumed run's exit code and output.
async fn kill_between_shares_then_resume(broken: Option<&str>) -> (Stand, Option<i32>, String) {
    let stand = Stand::new().await;
    let mut child = start(
        &stand,
        Some("apply-shares"),
        &["--resumable"],
        broken,
        "run",
    );
    let detail = stand.wait_reached(&mut child, "apply-shares").await;
    assert_eq!(
        detail,
        format!("shares={WORKERS}"),
        "a batch split four ways"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    doppel::testing::release(&common::pause_dir(stand.dir.path()), "apply-shares").unwrap();
    let resumed = start(&stand, None, &["--resume"], None, "resume");
    let code = exit_code(resumed).await;
    let output = stand.output_of("resume");
    (stand, code, output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_the_shares_commits_then_resume_equals_the_twin() {
    let (mut stand, code, output) = kill_between_shares_then_resume(None).await;
    assert_completed(&mut stand, code, &output).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_committed_before_the_other_shares_loses_changes_on_resume() {
    let (mut stand, code, output) =
        kill_between_shares_then_resume(Some("CheckpointBeforeShares")).await;
    let report = stand.writer.take().unwrap().stop().await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    let mismatches = doppel_testkit::workload::mismatches(&stand.client, "orders", "orders_twin")
        .await
        .unwrap();
    println!(
        "broken commit order: the resumed run exited {code:?}; {mismatches} rows differ from the twin"
    );
    assert!(
        code != Some(0) || mismatches > 0,
        "the broken commit order should lose the uncommitted shares' changes: exit {code:?}, {mismatches} mismatches: {output}"
    );
    assert!(
        code == Some(6) || mismatches > 0,
        "verification refuses the cutover (exit 6) or the table differs: exit {code:?}: {output}"
    );
}
