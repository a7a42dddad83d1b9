//! Faults a resumable run survives (issue 14, "Survive faults on hour five"), each against a
//! real `doppel run --execute` child under a writer mirrored into a twin table (the oracle):
//!
//! - the server restarted (`pg_ctl stop -m fast`, and `-m immediate`: a crash, then crash
//!   recovery) while the run is stopped mid-copy or in the catch-up: the same doppel process
//!   reconnects by itself and finishes (exit 0), the new table equals the twin, and nothing
//!   of doppel's is left but the kept old table;
//! - its WAL sender terminated 5 times in a row while the cutover is postponed: each time
//!   the postponed wait notices the dead stream and the run reconnects; it cuts over once
//!   the flag file is removed; and once while the applier is also held by a throttle (it
//!   reads nothing, so the postponed wait must check the stream itself);
//! - its spool's filesystem full (a 2 MiB tmpfs): exit 9 with the original untouched and
//!   the checkpoint, slot and shadow kept; `--resume` finishes once there is space;
//! - its slot invalidated (`max_slot_wal_keep_size`) while it was down: `--resume` is
//!   refused (exit 2) naming `doppel cleanup`, which removes everything;
//! - the seeded chaos runner: a run on a 30,000-row table killed with SIGKILL 3 to 5 times at
//!   seeded moments (a random delay, or a random pause point), resumed with `--resume` each
//!   time, then let complete: the new table equals the twin. `chaos_two_seeds` runs 2 seeds;
//!   `scripts/chaos.sh N` runs the ignored `chaos_long` for N seeds. Seeds are random and
//!   printed; `DOPPEL_SEED=<n>` (with `DOPPEL_SEEDS=<count>`) replays them (the moments are
//!   the seed's; where a delay lands still depends on the machine's speed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::common;
use crate::kill_phases::{DOPPEL_SESSIONS, ROWS, Stand};
use crate::resume::{assert_completed, checkpoints, exit_code, kill_resumable_at};

/// How the server is restarted under the run.
#[derive(Debug, Clone, Copy)]
enum Restart {
    /// `pg_ctl stop -m fast`: sessions are terminated (SQLSTATE 57P01), a shutdown
    /// checkpoint is written.
    Fast,
    /// `pg_ctl stop -m immediate`: every server process exits at once; the start runs crash
    /// recovery, and the slot comes back with the position of the last checkpoint.
    Immediate,
}

/// How many lines of `output` contain `needle`.
fn count(output: &str, needle: &str) -> usize {
    output.lines().filter(|l| l.contains(needle)).count()
}

/// The `confirmed_flush_lsn` of the replication slot `slot`, as text.
async fn confirmed_flush(stand: &Stand, slot: &str) -> String {
    common::text(
        &stand.client,
        &format!(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ),
    )
    .await
    .unwrap_or_else(|| panic!("the slot {slot} exists"))
}

/// Stops a resumable run at `point` under a reconnecting writer, restarts the server,
/// releases the point and checks that the same doppel process reconnects and completes.
async fn restart_at(point: &str, mode: Restart) {
    let started = Instant::now();
    let mut stand = Stand::with(ROWS, true).await;
    let mut child = stand.start_run_with(Some(point), &["--resumable"], "run");
    stand.wait_reached(&mut child, point).await;
    if point == "copying" {
        let copied = common::shadow_rows(&stand.client, "orders").await;
        assert!(
            copied > 0 && copied < ROWS,
            "restarted mid-copy ({copied} of {ROWS} rows copied)"
        );
    }
    let slot = format!("doppel_{}", stand.oid);
    let before = confirmed_flush(&stand, &slot).await;
    let port = stand.cluster.port();
    match mode {
        Restart::Fast => stand.cluster.restart().await.unwrap(),
        Restart::Immediate => stand.cluster.restart_immediate().await.unwrap(),
    }
    assert_eq!(
        stand.cluster.port(),
        port,
        "the server came back on its port"
    );
    stand.reconnect_client().await;
    let after = confirmed_flush(&stand, &slot).await;
    doppel::testing::release(&common::pause_dir(stand.dir.path()), point).unwrap();
    let code = exit_code(child).await;
    let output = stand.output_of("run");
    assert!(
        output.contains("reconnecting for up to") && output.contains("reconnected"),
        "the run reconnected by itself: {output}"
    );
    // The spool holds at least what the slot had confirmed before the restart (each
    // confirmation is synced to it first), so the stream resumes there even when the slot
    // came back older (-m immediate: its position as of the last checkpoint).
    let stream_from = output
        .split("stream_from=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the resume logs where the stream restarts: {output}"))
        .to_string();
    let not_behind: bool = stand
        .client
        .query_one(
            "SELECT $1::text::pg_lsn >= $2::text::pg_lsn",
            &[&stream_from, &before],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        not_behind,
        "the stream resumed at {stream_from}, not before the slot's position before the restart {before} (after it: {after}): {output}"
    );
    let report = assert_completed(&mut stand, code, &output).await;
    assert!(
        report.reconnects > 0,
        "the writer lost its session in the restart and reconnected: {report:?}"
    );
    eprintln!(
        "restart -m {mode:?} at {point}: slot confirmed {before} before, {after} after the restart, stream resumed at {stream_from}; doppel reconnected {} time(s); writer: {} transactions, {} interrupted, {} reconnects; {:.1} s",
        count(&output, "reconnected"),
        report.transactions,
        report.interrupted,
        report.reconnects,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_restart_mid_copy_is_survived_in_process() {
    restart_at("copying", Restart::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_restart_during_catch_up_is_survived_in_process() {
    restart_at("catch-up", Restart::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_restart_mid_copy_is_survived_in_process() {
    restart_at("copying", Restart::Immediate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_restart_during_catch_up_is_survived_in_process() {
    restart_at("catch-up", Restart::Immediate).await;
}

/// The backend pid of the WAL sender streaming doppel's slot, if it is active.
async fn walsender_pid(stand: &Stand) -> Option<i32> {
    stand
        .client
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&format!("doppel_{}", stand.oid)],
        )
        .await
        .unwrap()
        .and_then(|r| r.get(0))
}

/// While the cutover is postponed the stream and the applier keep running; a terminated WAL
/// sender must be noticed there (not only once the cutover starts). Five times: the run is
/// postponed (for the n-th time), its slot is streamed by a new WAL sender, which is
/// terminated; the run reconnects, verifies again and is postponed again. Then the flag file
/// is removed and it cuts over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walsender_terminated_5_times_while_postponed_then_cuts_over() {
    const TERMINATIONS: usize = 5;
    let started = Instant::now();
    let mut stand = Stand::new().await;
    let flag = stand.dir.path().join("postpone-cutover");
    std::fs::write(&flag, "").unwrap();
    let flag_arg = flag.to_str().unwrap().to_string();
    let mut child = stand.start_run_with(
        None,
        &["--resumable", "--postpone-cutover-flag-file", &flag_arg],
        "run",
    );
    let mut last: Option<i32> = None;
    for n in 1..=TERMINATIONS {
        let postponed = common::wait_until(Duration::from_secs(180), || {
            count(&stand.output_of("run"), "cutover postponed") >= n
                || child.try_wait().unwrap().is_some()
        });
        let output = stand.output_of("run");
        assert!(
            postponed && count(&output, "cutover postponed") >= n,
            "the run is postponed for the {n}. time: {output}"
        );
        let pid = std::cell::Cell::new(None);
        let streaming = common::wait_until_async(Duration::from_secs(60), || async {
            pid.set(walsender_pid(&stand).await.filter(|p| Some(*p) != last));
            pid.get().is_some()
        })
        .await;
        assert!(streaming, "a new WAL sender streams doppel's slot ({n}.)");
        let pid = pid.get();
        let terminated: bool = stand
            .client
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap()
            .get(0);
        assert!(terminated, "WAL sender {pid:?} terminated ({n}.)");
        last = pid;
    }
    // The last termination is noticed while postponed too: the run reconnects and is
    // postponed once more before the flag file goes.
    let again = common::wait_until(Duration::from_secs(180), || {
        count(&stand.output_of("run"), "cutover postponed") > TERMINATIONS
            || child.try_wait().unwrap().is_some()
    });
    let output = stand.output_of("run");
    assert!(
        again && count(&output, "reconnected") == TERMINATIONS,
        "each termination was noticed while postponed and survived by reconnecting: {output}"
    );
    std::fs::remove_file(&flag).unwrap();
    let code = exit_code(child).await;
    let output = stand.output_of("run");
    assert_completed(&mut stand, code, &output).await;
    eprintln!(
        "{TERMINATIONS} WAL sender terminations while postponed: {} reconnects, cut over; {:.1} s",
        count(&output, "reconnected"),
        started.elapsed().as_secs_f64()
    );
}

/// The `Applied: N` counts of the status lines in `output`, in order.
fn applied_counts(output: &str) -> Vec<u64> {
    output
        .lines()
        .filter_map(|l| l.split("Applied: ").nth(1))
        .filter_map(|rest| rest.split(';').next()?.trim().parse().ok())
        .collect()
}

/// A throttled applier reads nothing from the spool, so it cannot notice that the stream
/// feeding it died: while the cutover is postponed and the applier is held by a throttle,
/// the postponed wait must notice the dead stream itself and reconnect, rather than leave
/// the slot without a consumer until the throttle clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walsender_terminated_while_postponed_and_throttled_is_noticed() {
    let started = Instant::now();
    let mut stand = Stand::new().await;
    let flag = stand.dir.path().join("postpone-cutover");
    let throttle = stand.dir.path().join("throttle");
    std::fs::write(&flag, "").unwrap();
    let (flag_arg, throttle_arg) = (
        flag.to_str().unwrap().to_string(),
        throttle.to_str().unwrap().to_string(),
    );
    let mut child = stand.start_run_with(
        None,
        &[
            "--resumable",
            "--postpone-cutover-flag-file",
            &flag_arg,
            "--throttle-flag-file",
            &throttle_arg,
            "--status-interval",
            "1",
        ],
        "run",
    );
    let postponed = common::wait_until(Duration::from_secs(180), || {
        stand.output_of("run").contains("cutover postponed") || child.try_wait().unwrap().is_some()
    });
    assert!(
        postponed,
        "the run is postponed: {}",
        stand.output_of("run")
    );
    std::fs::write(&throttle, "").unwrap();
    // Held: two status lines after the throttle began show the same count of applied
    // changes while the writer goes on writing.
    let held = common::wait_until(Duration::from_secs(60), || {
        let output = stand.output_of("run");
        let Some((_, since)) = output.split_once("throttled: ") else {
            return false;
        };
        let counts = applied_counts(since);
        counts.len() >= 3 && counts[counts.len() - 1] == counts[counts.len() - 2]
    });
    assert!(held, "the applier is held: {}", stand.output_of("run"));
    let pid = walsender_pid(&stand)
        .await
        .expect("doppel's slot is streamed");
    stand
        .client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let noticed = common::wait_until(Duration::from_secs(30), || {
        stand.output_of("run").contains("reconnected") || child.try_wait().unwrap().is_some()
    });
    let output = stand.output_of("run");
    assert!(
        noticed && output.contains("reconnected"),
        "the dead stream was noticed while postponed and throttled, and the run reconnected: {output}"
    );
    let streaming = common::wait_until_async(Duration::from_secs(30), || async {
        walsender_pid(&stand).await.is_some_and(|p| p != pid)
    })
    .await;
    assert!(
        streaming,
        "the slot is streamed again while still throttled"
    );
    std::fs::remove_file(&throttle).unwrap();
    std::fs::remove_file(&flag).unwrap();
    let code = exit_code(child).await;
    let output = stand.output_of("run");
    assert_completed(&mut stand, code, &output).await;
    eprintln!(
        "WAL sender terminated while postponed and throttled: reconnected, cut over; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A tmpfs mounted on a directory for the life of the value; unmounted on drop, whatever
/// happened (a failed assertion included).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`2m`: 2 MiB) on `dir` (created). Needs root.
    ///
    /// Errors: why it cannot (not root, `mount` failed), for the test to say it is skipped.
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("mounting a tmpfs needs root".into());
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        run_mount(
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            dir,
        )?;
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// Changes the filesystem's size to `size`, keeping its files.
    fn resize(&self, size: &str) {
        run_mount(&["-o", &format!("remount,size={size}")], &self.dir).unwrap();
    }

    /// Bytes free on the filesystem.
    fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("df output: {out:?}"))
    }
}

/// `mount <args> <dir>`.
fn run_mount(args: &[&str], dir: &Path) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .arg(dir)
        .output()
        .map_err(|e| format!("running mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {args:?} {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a process that has not exited yet): detach it now, freed once
            // unused.
            Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status()
                .ok();
        }
    }
}

/// The spool's filesystem fills up while the run is stopped in the catch-up (the stream
/// keeps spooling the writer's changes): exit 9, the original untouched and the resumable
/// state kept; with space again, `--resume` in the same work directory completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_filesystem_exits_9_and_resume_completes() {
    let mut stand = Stand::new().await;
    let work_dir = stand.dir.path().join("spool");
    // Declared after the stand: unmounted before the stand's directory is removed.
    let tmpfs = match Tmpfs::mount(&work_dir, "2m") {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    let mut child = stand.start_run_in(&work_dir, Some("catch-up"), &["--resumable"], "full");
    stand.wait_reached(&mut child, "catch-up").await;
    let free_at_catch_up = tmpfs.free_bytes();
    // The stream stops at ENOSPC and closes its replication connection.
    let slot = format!("doppel_{}", stand.oid);
    let stopped = common::wait_until_async(Duration::from_secs(180), || async {
        common::scalar(
            &stand.client,
            &format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND NOT active"
            ),
        )
        .await
            == 1
    })
    .await;
    assert!(
        stopped,
        "the writer filled the spool's 2 MiB ({free_at_catch_up} bytes free at the catch-up) and the stream stopped: {}",
        stand.output_of("full")
    );
    doppel::testing::release(&common::pause_dir(stand.dir.path()), "catch-up").unwrap();
    let code = exit_code(child).await;
    let output = stand.output_of("full");
    assert_eq!(
        code,
        Some(9),
        "exit 9: the spool's filesystem is full: {output}"
    );
    assert!(output.contains("filesystem is full"), "says why: {output}");
    assert_eq!(
        common::oid_of(&stand.client, "public.orders").await,
        stand.oid,
        "the original is still in place"
    );
    assert_eq!(
        doppel_testkit::workload::mismatches(&stand.client, "orders", "orders_twin")
            .await
            .unwrap(),
        0,
        "the original holds exactly the twin's rows"
    );
    assert_eq!(checkpoints(&stand).await, 1, "the checkpoint is kept");
    assert_eq!(
        common::scalar(
            &stand.client,
            &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'")
        )
        .await,
        1,
        "the slot is kept"
    );
    assert!(stand.shadow_exists().await, "the shadow is kept");

    tmpfs.resize("256m");
    let child = stand.start_run_in(&work_dir, None, &["--resume"], "resume");
    let code = exit_code(child).await;
    let output = stand.output_of("resume");
    assert_completed(&mut stand, code, &output).await;
    eprintln!(
        "spool full: exit 9 ({free_at_catch_up} bytes free at the catch-up); resumed: exit 0"
    );
}

/// The `wal_status` of the replication slot `slot` (`reserved`, `extended`, `unreserved`,
/// `lost`), if it exists.
async fn wal_status(stand: &Stand, slot: &str) -> Option<String> {
    stand
        .client
        .query_opt(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .and_then(|r| r.get(0))
}

/// A resumable run killed mid-copy whose slot the server then invalidated (it retained more
/// WAL than `max_slot_wal_keep_size`) cannot be resumed: the changes since are gone. The
/// resume is refused (exit 2), saying so and naming `doppel cleanup`, which removes the
/// run's slot, shadow, publication and checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_an_invalidated_slot_is_refused_and_cleanup_removes_everything() {
    let mut stand = Stand::new().await;
    kill_resumable_at(&stand, "copying").await;
    stand
        .cluster
        .alter_system("max_slot_wal_keep_size", "1MB")
        .await
        .unwrap();
    // The reload is asynchronous: each new statement of a session reads it.
    let reloaded = common::wait_until_async(Duration::from_secs(30), || async {
        common::text(&stand.client, "SHOW max_slot_wal_keep_size")
            .await
            .as_deref()
            == Some("1MB")
    })
    .await;
    assert!(reloaded, "the reload took effect");
    stand
        .client
        .batch_execute("CREATE TABLE wal_filler (id int, pad text)")
        .await
        .unwrap();
    let slot = format!("doppel_{}", stand.oid);
    // Each round writes about 4 MiB of WAL, switches to a new segment and checkpoints: the
    // checkpoint removes segments past the slot's allowance and invalidates the slot.
    let lost = common::wait_until_async(Duration::from_secs(120), || async {
        stand
            .client
            .batch_execute(
                "INSERT INTO wal_filler SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 4000) g;
                 SELECT pg_switch_wal(); CHECKPOINT;",
            )
            .await
            .unwrap();
        wal_status(&stand, &slot).await.as_deref() == Some("lost")
    })
    .await;
    assert!(
        lost,
        "the slot was invalidated (wal_status {:?})",
        wal_status(&stand, &slot).await
    );
    let dir = stand.dir.path().to_str().unwrap().to_string();
    let out = stand.doppel(&[
        "run",
        "--table",
        "orders",
        "--alter",
        "ALTER COLUMN customer_id TYPE bigint",
        "--execute",
        "--resume",
        "--work-dir",
        &dir,
        "--rollback-dir",
        &dir,
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "the resume is refused: {text}");
    assert!(
        text.contains(&format!("replication slot {slot} was invalidated"))
            && text.contains("doppel cleanup --table"),
        "says the slot was invalidated and names doppel cleanup: {text}"
    );
    if let Some(line) = text.lines().find(|l| l.contains("was invalidated")) {
        eprintln!("refusal: {}", line.trim());
    }
    assert_eq!(checkpoints(&stand).await, 1, "the refusal changed nothing");
    assert!(stand.shadow_exists().await, "the shadow is still there");

    let out = stand.doppel(&["cleanup", "--table", "orders", "--work-dir", &dir]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cleanup succeeds: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for removed in [
        format!("replication slot {slot}"),
        "shadow table".to_string(),
        "publication".to_string(),
        "checkpoint".to_string(),
    ] {
        assert!(
            text.contains(&removed),
            "cleanup removed the {removed}: {text}"
        );
    }
    eprintln!("cleanup: {}", text.trim().replace('\n', "; "));
    assert_eq!(checkpoints(&stand).await, 0, "no checkpoint is left");
    stand.assert_nothing_left().await;
    let report = stand.writer.take().unwrap().stop().await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    assert_eq!(
        doppel_testkit::workload::mismatches(&stand.client, "orders", "orders_twin")
            .await
            .unwrap(),
        0,
        "the original holds exactly the twin's rows"
    );
}

/// Rows of the chaos runner's table.
const CHAOS_ROWS: i64 = 30_000;

/// Pause points a chaos kill may strike at, in the order a run passes them (`committed`, after
/// which a resume only finishes, is kept for the last kill).
const CHAOS_POINTS: &[&str] = &[
    "after-preflight",
    "shadow-built",
    "copying",
    "chunk-open",
    "index-built",
    "catch-up",
    "verifying",
    "cutover-locked",
];

/// The point every killed run is also stopped at if nothing else killed it sooner: a run
/// never cuts over before its planned kill.
const BACKSTOP: &str = "cutover-locked";

/// When a chaos kill strikes a run.
#[derive(Debug, Clone)]
enum Moment {
    /// At a pause point, armed with a condition (`key=N` for `chunk-open`, else none).
    Point(&'static str, String),
    /// After this long since the run started.
    Delay(Duration),
}

/// What one chaos seed did.
#[derive(Debug, Default)]
struct ChaosSeed {
    seed: u64,
    /// Where each kill struck: the pause point, or the delay and the phase the run's
    /// checkpoint had reached.
    kills: Vec<String>,
    mismatched: i64,
    writer_transactions: u64,
    /// Why the seed failed (a run that exited on its own with an error, the final run not
    /// completing, writer errors, doppel objects left).
    failure: Option<String>,
    seconds: f64,
}

impl std::fmt::Display for ChaosSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chaos seed {}: {} kills ({}), {} writer transactions, {:.1} s: ",
            self.seed,
            self.kills.len(),
            self.kills.join(", "),
            self.writer_transactions,
            self.seconds
        )?;
        match &self.failure {
            Some(e) => write!(f, "FAILED: {e}"),
            None => write!(f, "mismatched rows: {}", self.mismatched),
        }
    }
}

/// The last `n` lines of `output`.
fn tail(output: &str, n: usize) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The phase the table's checkpoint records, `none` without one.
async fn checkpoint_phase(stand: &Stand) -> String {
    if checkpoints(stand).await == 0 {
        return "none".into();
    }
    common::text(&stand.client, "SELECT phase FROM doppel.checkpoints")
        .await
        .unwrap_or_default()
}

/// Chooses the moment of kill `k` of `kills`.
fn choose_moment(rng: &mut StdRng, k: usize, kills: usize) -> Moment {
    if rng.random_range(0..2) == 0 {
        return Moment::Delay(Duration::from_millis(rng.random_range(100..4_000)));
    }
    if k + 1 == kills && rng.random_range(0..4) == 0 {
        return Moment::Point("committed", String::new());
    }
    let point = CHAOS_POINTS[rng.random_range(0..CHAOS_POINTS.len())];
    let condition = if point == "chunk-open" {
        format!("key={}", rng.random_range(1..CHAOS_ROWS))
    } else {
        String::new()
    };
    Moment::Point(point, condition)
}

/// Starts run `name` (`--resumable` for the first, `--resume` after) and SIGKILLs it at
/// `moment` (or at the backstop). Returns where it struck; an error if the run exited on its
/// own first.
async fn kill_run(
    stand: &Stand,
    moment: &Moment,
    first: bool,
    name: &str,
) -> Result<String, String> {
    let pause = common::pause_dir(stand.dir.path());
    let mut armed = Vec::new();
    if let Moment::Point(point, condition) = moment {
        doppel::testing::arm_when(&pause, point, condition).unwrap();
        armed.push(*point);
    }
    // `committed` comes after the backstop: a kill there is the last, the cutover goes ahead.
    if !armed.contains(&BACKSTOP) && !armed.contains(&"committed") {
        doppel::testing::arm(&pause, BACKSTOP).unwrap();
        armed.push(BACKSTOP);
    }
    let mode = if first { "--resumable" } else { "--resume" };
    let mut child = stand.start_run_with(None, &[mode], name);
    let started = Instant::now();
    let mut struck = None;
    let ended = common::wait_until(Duration::from_secs(180), || {
        struck = armed
            .iter()
            .find(|p| doppel::testing::reached(&pause, p).is_some())
            .map(|p| p.to_string());
        if struck.is_none()
            && let Moment::Delay(delay) = moment
            && started.elapsed() >= *delay
        {
            struck = Some(format!("after {:.1} s", delay.as_secs_f64()));
        }
        struck.is_some() || child.try_wait().unwrap().is_some()
    });
    let exited = child.try_wait().unwrap();
    child.kill().ok();
    child.wait().unwrap();
    for point in &armed {
        doppel::testing::release(&pause, point).unwrap();
    }
    match (ended, exited, struck) {
        (_, Some(status), _) => Err(format!(
            "run {name} exited on its own ({status}) before its kill:\n{}",
            tail(&stand.output_of(name), 15)
        )),
        (true, None, Some(at))
            if matches!(moment, Moment::Delay(_)) && at.starts_with("after ") =>
        {
            Ok(format!("{at} in {}", checkpoint_phase(stand).await))
        }
        (true, None, Some(at)) => Ok(match moment {
            Moment::Point(point, _) if *point != at => format!("{at} ({point} not reached)"),
            Moment::Delay(delay) => format!("{at} (before {:.1} s)", delay.as_secs_f64()),
            Moment::Point(..) => at,
        }),
        _ => Err(format!(
            "run {name} reached no kill moment within 180 s:\n{}",
            tail(&stand.output_of(name), 15)
        )),
    }
}

/// One chaos seed: a resumable run under the mirrored writer on a 30,000-row table, killed
/// with SIGKILL 3 to 5 times at seeded moments (a random delay, or a random pause point),
/// each time resumed with `--resume`, and finally let complete; the new table must equal the
/// twin.
async fn chaos_seed(seed: u64) -> ChaosSeed {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stand = Stand::with(CHAOS_ROWS, false).await;
    let mut result = ChaosSeed {
        seed,
        ..ChaosSeed::default()
    };
    let kills = rng.random_range(3..=5);
    for k in 0..kills {
        let moment = choose_moment(&mut rng, k, kills);
        match kill_run(&stand, &moment, k == 0, &format!("run{k}")).await {
            Ok(at) => result.kills.push(at),
            Err(e) => {
                result.failure = Some(e);
                break;
            }
        }
        let gone = common::wait_until_async(Duration::from_secs(30), || async {
            common::scalar(&stand.client, DOPPEL_SESSIONS).await == 0
        })
        .await;
        assert!(gone, "the killed run's sessions end");
    }
    if result.failure.is_none() {
        let child = stand.start_run_with(None, &["--resume"], "final");
        let code = exit_code(child).await;
        if code != Some(0) {
            result.failure = Some(format!(
                "the final run exited with {code:?}:\n{}",
                tail(&stand.output_of("final"), 15)
            ));
        }
    }
    let report = stand.writer.take().unwrap().stop().await.unwrap();
    result.writer_transactions = report.transactions;
    if report.errors > 0 && result.failure.is_none() {
        result.failure = Some(format!("writer errors: {:?}", report.first_errors));
    }
    result.mismatched =
        doppel_testkit::workload::mismatches(&stand.client, "orders", "orders_twin")
            .await
            .unwrap();
    let left = common::scalar(&stand.client, "SELECT count(*) FROM pg_replication_slots").await
        + common::scalar(&stand.client, "SELECT count(*) FROM pg_publication").await
        + checkpoints(&stand).await;
    if left > 0 && result.failure.is_none() {
        result.failure = Some(format!("{left} slots, publications or checkpoints left"));
    }
    result.seconds = started.elapsed().as_secs_f64();
    result
}

/// Runs the chaos seeds ([`crate::randomized_oracle::seeds`]: `DOPPEL_SEED`,
/// `DOPPEL_SEEDS`, else `default_count` random ones), prints a line per seed and the totals,
/// and fails if any seed failed or mismatched.
async fn run_chaos(default_count: u64, replay: &str) {
    let seeds = crate::randomized_oracle::seeds(default_count);
    println!("chaos: seeds {seeds:?} (replay one: DOPPEL_SEED=<seed> {replay})");
    let started = Instant::now();
    let mut results = Vec::new();
    for &seed in &seeds {
        let result = chaos_seed(seed).await;
        println!("{result}");
        results.push(result);
    }
    let mismatched: i64 = results.iter().map(|r| r.mismatched).sum();
    let kills: usize = results.iter().map(|r| r.kills.len()).sum();
    let failed: Vec<u64> = results
        .iter()
        .filter(|r| r.failure.is_some())
        .map(|r| r.seed)
        .collect();
    println!(
        "failed seeds: {} {failed:?}; total {:.0} s",
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "seeds: {}, kills: {kills}, mismatched rows: {mismatched}",
        results.len()
    );
    assert!(
        mismatched == 0 && failed.is_empty(),
        "{mismatched} mismatched rows, failed seeds {failed:?} (replay: DOPPEL_SEED=<seed> {replay})"
    );
}

/// Two chaos seeds (random, printed; `DOPPEL_SEED` replays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_two_seeds() {
    run_chaos(2, "cargo test --test suite reconnect::chaos_two_seeds").await;
}

/// The long chaos run (`scripts/chaos.sh`): 20 seeds (`DOPPEL_SEEDS`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 20 seeds; run by scripts/chaos.sh"]
async fn chaos_long() {
    run_chaos(
        20,
        "cargo test --release --test suite reconnect::chaos_long -- --ignored",
    )
    .await;
}
