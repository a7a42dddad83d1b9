//! The cutover's lock budget holds per attempt (docs/design.md §4.2): every lock an attempt
//! takes — the table, its foreign-key children and parents, the other relations of its
//! views — waits within one `--lock-timeout` for the whole attempt, so an application query
//! that queues behind the attempt waits at most that long (plus a round trip); and the time
//! the locks are held is capped by `--max-lock-hold`. With both below `deadlock_timeout`,
//! the attempt, not the application, gives way in a lock cycle (`src/run/deadlock.rs`).
//!
//! Each test holds the run postponed until its blockers are in place, then measures the
//! queries of the application that queue behind the attempt.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use doppel::cancel::Cancel;
use doppel::run::{Outcome, RunOptions};
use doppel_testkit::cluster::ClusterOptions;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::common::{self, Tune};

/// `--lock-timeout` of every run here.
const LOCK_TIMEOUT: Duration = Duration::from_millis(200);
/// What a queued application query may wait beyond the lock timeout: the round trips of the
/// attempt's statements and its rollback.
const MARGIN: Duration = Duration::from_millis(20);

type Run = JoinHandle<anyhow::Result<Outcome>>;

/// The options of a run of `t` under `dir` with [`LOCK_TIMEOUT`] and `attempts` attempts.
fn run_options(dir: &Path, attempts: u32) -> RunOptions {
    let mut options = common::options(dir, "t", &["ALTER COLUMN v TYPE bigint"])
        .cutover_retries(attempts)
        .control_socket(dir.join("ctl.sock"));
    options.lock_timeout = LOCK_TIMEOUT;
    options
}

/// Starts a run of `table` postponed by a flag file under `dir`; returns it once the cutover
/// phase has begun (the rollback script is written) and the flag file's path.
async fn start_postponed(
    cluster: &doppel_testkit::cluster::LocalCluster,
    dir: &Path,
    options: RunOptions,
) -> (Run, std::path::PathBuf) {
    let flag = dir.join("postpone");
    std::fs::write(&flag, b"").unwrap();
    let mut options = options;
    options.postpone_cutover_flag_file = Some(flag.clone());
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let run =
        tokio::spawn(async move { common::run_paused(&config, &options, &Cancel::never()).await });
    let postponed = common::wait_until_async(Duration::from_secs(120), || async {
        std::fs::read_dir(dir).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("doppel-rollback-")
        })
    })
    .await;
    assert!(postponed, "the run reaches its postponed cutover");
    (run, flag)
}

/// Whether doppel's cutover session waits for a lock on `relation`.
async fn attempt_waits_on(client: &Client, relation: &str) -> bool {
    common::scalar(
        client,
        &format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
             WHERE NOT l.granted AND l.relation = '{relation}'::regclass
               AND a.application_name = 'doppel'"
        ),
    )
    .await
        > 0
}

/// Whether session `pid` waits for a lock.
async fn session_waits(client: &Client, pid: i64) -> bool {
    common::scalar(
        client,
        &format!("SELECT count(*) FROM pg_locks WHERE pid = {pid} AND NOT granted"),
    )
    .await
        > 0
}

/// A session that opens a transaction holding `mode` on `relation`.
async fn blocker(
    cluster: &doppel_testkit::cluster::LocalCluster,
    relation: &str,
    mode: &str,
) -> Client {
    let c = cluster.connect("postgres").await.unwrap();
    c.batch_execute(&format!("BEGIN; LOCK TABLE {relation} IN {mode} MODE"))
        .await
        .unwrap();
    c
}

/// The run's exit code (0 for a migration).
async fn exit_code(run: Run) -> u8 {
    match tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run ends")
        .unwrap()
    {
        Ok(_) => 0,
        Err(e) => {
            println!("run ended: {e:#}");
            doppel::failure::exit_code(&e)
        }
    }
}

/// An application reading `sql` in a loop until `stop`: the worst latency seen.
fn reader(client: Client, sql: &'static str, stop: Arc<AtomicBool>) -> JoinHandle<Duration> {
    tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            client.batch_execute(sql).await.unwrap();
            worst = worst.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        worst
    })
}

/// A foreign-key child blocked for most of the budget, then the table itself blocked: the
/// attempt gets the child once its blocker ends, then waits for the table only for what is
/// left of the one budget. A query on the child queued behind the attempt from its start
/// waits no longer than the lock timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_foreign_key_child_and_the_table_share_one_budget() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, v int NOT NULL);
             INSERT INTO t SELECT i, i FROM generate_series(1, 2000) i;
             CREATE TABLE c (id bigint PRIMARY KEY, t_id bigint NOT NULL REFERENCES t (id));
             INSERT INTO c SELECT i, i FROM generate_series(1, 100) i;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = run_options(dir.path(), 1);
    let (run, flag) = start_postponed(&cluster, dir.path(), options).await;

    let child_blocker = blocker(&cluster, "c", "ROW EXCLUSIVE").await;
    let table_blocker = blocker(&cluster, "t", "ACCESS SHARE").await;
    std::fs::remove_file(&flag).unwrap();
    assert!(
        common::wait_until_async(Duration::from_secs(60), || attempt_waits_on(&client, "c")).await,
        "the attempt waits for the child's lock"
    );
    // The application's query on the child queues behind the attempt's request.
    let app = cluster.connect("postgres").await.unwrap();
    let app_pid = common::scalar(&app, "SELECT pg_backend_pid()::bigint").await;
    let query = tokio::spawn(async move {
        let started = Instant::now();
        app.batch_execute("SELECT count(*) FROM c").await.unwrap();
        started.elapsed()
    });
    assert!(
        common::wait_until_async(Duration::from_secs(5), || session_waits(&client, app_pid)).await,
        "the application's query queues"
    );
    // The child's blocker ends after most of the budget has passed.
    tokio::time::sleep(LOCK_TIMEOUT * 3 / 5).await;
    child_blocker.batch_execute("COMMIT").await.unwrap();
    let waited = query.await.unwrap();
    println!(
        "application query on the foreign-key child waited {:.1} ms behind the attempt (lock timeout {} ms)",
        waited.as_secs_f64() * 1000.0,
        LOCK_TIMEOUT.as_millis()
    );
    assert_eq!(exit_code(run).await, 5, "the lock budget ran out");
    table_blocker.batch_execute("ROLLBACK").await.unwrap();
    assert!(
        waited <= LOCK_TIMEOUT + MARGIN,
        "a query queued behind the attempt waited {waited:?}, more than the lock timeout {LOCK_TIMEOUT:?} + {MARGIN:?}"
    );
}

/// A session takes ACCESS EXCLUSIVE on a table that a dependent view joins just before an
/// attempt asks for its locks: recreating (and re-reading) the view needs that table too, so
/// the attempt waits for it among its locks, within its budget, before the table's lock, and
/// is retried; the application reading the table meanwhile never waits longer than the lock
/// timeout, and the run ends on the lock budget (exit 5), the view untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocker_on_a_views_other_table_waits_within_the_budget() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, v int NOT NULL);
             INSERT INTO t SELECT i, i FROM generate_series(1, 2000) i;
             CREATE TABLE u (id bigint PRIMARY KEY, w text);
             INSERT INTO u SELECT i, 'w' || i FROM generate_series(1, 100) i;
             CREATE VIEW v AS SELECT t.id, t.v, u.w FROM t JOIN u USING (id);",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pause = common::pause_dir(dir.path());
    doppel::testing::arm(&pause, "cutover-attempt").unwrap();
    let options = run_options(dir.path(), 2);
    let (run, flag) = start_postponed(&cluster, dir.path(), options).await;
    std::fs::remove_file(&flag).unwrap();
    assert!(
        doppel::testing::wait_reached(&pause, "cutover-attempt", Duration::from_secs(60))
            .await
            .is_some(),
        "the first attempt is about to lock"
    );
    let other_blocker = blocker(&cluster, "u", "ACCESS EXCLUSIVE").await;
    let stop = Arc::new(AtomicBool::new(false));
    let app = reader(
        cluster.connect("postgres").await.unwrap(),
        "SELECT count(*) FROM t",
        stop.clone(),
    );
    doppel::testing::release(&pause, "cutover-attempt").unwrap();
    assert!(
        common::wait_until_async(Duration::from_secs(10), || attempt_waits_on(&client, "u")).await,
        "the attempt waits for the view's other table among its locks"
    );
    let code = exit_code(run).await;
    stop.store(true, Ordering::Relaxed);
    let worst = app.await.unwrap();
    println!(
        "application reading the table: worst wait {:.1} ms across the attempts (lock timeout {} ms)",
        worst.as_secs_f64() * 1000.0,
        LOCK_TIMEOUT.as_millis()
    );
    other_blocker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(code, 5, "the attempts time out on the lock and are retried");
    assert!(
        worst <= LOCK_TIMEOUT + MARGIN,
        "the application waited {worst:?}, more than the lock timeout {LOCK_TIMEOUT:?} + {MARGIN:?}"
    );
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM v").await,
        100,
        "the view is untouched"
    );
}

/// A statement under the lock waits for a lock no attempt can take beforehand (an identity
/// sequence a session holds through `nextval` in an open transaction; renaming it needs
/// ACCESS EXCLUSIVE): with a generous lock timeout, the hold is still cut at
/// `--max-lock-hold`, the attempt rolled back and retried; readers of the table wait no
/// longer than that, and the run ends with exit 5 naming the hold limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_hold_is_cut_at_max_lock_hold() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v int NOT NULL);
             INSERT INTO t (v) SELECT i FROM generate_series(1, 2000) i;",
        )
        .await
        .unwrap();
    let hold = Duration::from_millis(300);
    let dir = tempfile::tempdir().unwrap();
    let mut options = run_options(dir.path(), 2);
    options.lock_timeout = Duration::from_secs(5);
    options.max_lock_hold = hold;
    let (run, flag) = start_postponed(&cluster, dir.path(), options).await;
    let sequence_holder = cluster.connect("postgres").await.unwrap();
    sequence_holder
        .batch_execute("BEGIN; SELECT nextval(pg_get_serial_sequence('t', 'id'))")
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let app = reader(
        cluster.connect("postgres").await.unwrap(),
        "SELECT count(*) FROM t",
        stop.clone(),
    );
    std::fs::remove_file(&flag).unwrap();
    let code = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run ends")
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let worst = app.await.unwrap();
    sequence_holder.batch_execute("ROLLBACK").await.unwrap();
    let err = code.expect_err("the hold limit ends the attempts");
    println!(
        "application reading the table: worst wait {:.1} ms (max lock hold {} ms): {err:#}",
        worst.as_secs_f64() * 1000.0,
        hold.as_millis()
    );
    assert_eq!(doppel::failure::exit_code(&err), 5, "{err:#}");
    assert!(format!("{err:#}").contains("--max-lock-hold"), "{err:#}");
    assert!(
        worst <= hold + MARGIN,
        "the application waited {worst:?}, more than the hold limit {hold:?} + {MARGIN:?}"
    );
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM t").await,
        2000
    );
}

/// The applier cannot keep up (a trigger a test puts on the shadow makes each applied row
/// take 2 ms) while a writer inserts thousands of rows a second: no catch-up round can
/// predict a fit, and after `--cutover-retries` rounds the cutover gives up with exit 5,
/// saying the write rate exceeds the apply rate, with both rates; no lock was taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_gate_gives_up_when_writes_outpace_the_applier() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, v int NOT NULL);
             INSERT INTO t SELECT i, i FROM generate_series(1, 2000) i;
             CREATE FUNCTION slow_apply() RETURNS trigger LANGUAGE plpgsql
               AS $$BEGIN PERFORM pg_sleep(0.002); RETURN NEW; END$$;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = run_options(dir.path(), 3).fence_timeout(Duration::from_millis(200));
    let (run, flag) = start_postponed(&cluster, dir.path(), options).await;
    let shadow = common::shadow_name(&client, "t").await;
    client
        .batch_execute(&format!(
            "CREATE TRIGGER slow_apply BEFORE INSERT OR UPDATE ON {shadow}
             FOR EACH ROW EXECUTE FUNCTION slow_apply()"
        ))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let c = cluster.connect("postgres").await.unwrap();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut next = 1_000_000i64;
            while !stop.load(Ordering::Relaxed) {
                c.batch_execute(&format!(
                    "INSERT INTO t SELECT i, 0 FROM generate_series({next}, {}) i",
                    next + 199
                ))
                .await
                .unwrap();
                next += 200;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    std::fs::remove_file(&flag).unwrap();
    // While it catches up, the status says how far behind the applier is.
    let socket = dir.path().join("ctl.sock");
    let draining = common::wait_until_async(Duration::from_secs(60), || async {
        doppel::ops::control::send(&socket, "status")
            .await
            .is_ok_and(|line| {
                line.split("State: cutover, draining (")
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
    })
    .await;
    assert!(draining, "the status shows the drain and how far behind");
    let result = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the run ends")
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let err = result.expect_err("the cutover gives up");
    let message = format!("{err:#}");
    println!("{message}");
    assert_eq!(doppel::failure::exit_code(&err), 5, "{message}");
    assert!(
        message.contains("exceeds the apply rate"),
        "the message says why: {message}"
    );
    let rates: Vec<u64> = message
        .split(" changes/s")
        .filter_map(|part| part.rsplit('(').next()?.trim().parse().ok())
        .collect();
    assert_eq!(rates.len(), 2, "both rates are named: {message}");
    assert!(
        rates[0] > rates[1],
        "write rate above apply rate: {rates:?}"
    );
    assert!(
        !std::fs::read_dir(dir.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("doppel-rollback-")),
        "nothing was cut over: the rollback script is removed"
    );
}

/// The outcome of [`deadlock_cycle`]: the application's `LOCK` on the child (an error
/// message with its SQLSTATE when it failed), the run's exit code, the blockers of the first
/// attempt and the application's pid, and the warnings of the same options' dry run.
struct Cycle {
    app: Result<(), String>,
    exit: u8,
    blockers: Vec<i32>,
    app_pid: i32,
    warnings: Vec<String>,
}

/// The timings of [`deadlock_cycle`]: the run's `lock_timeout` and `max_lock_hold`, the
/// application session's `deadlock_timeout` and the server's (which doppel's sessions use and
/// its warning reads).
struct Timings {
    lock_timeout: Duration,
    max_lock_hold: Duration,
    app_deadlock_timeout: &'static str,
    server_deadlock_timeout: &'static str,
}

/// A lock cycle between an application transaction and a cutover attempt, the application
/// waiting first: the application holds ROW EXCLUSIVE on `p` (which `t`'s key references);
/// the attempt takes the child `c`, then waits for `t` behind a blocker; the application asks
/// for `c` and queues behind the attempt; the blocker commits, and the attempt asks for `p`.
async fn deadlock_cycle(timings: Timings) -> Cycle {
    let Timings {
        lock_timeout,
        max_lock_hold,
        app_deadlock_timeout,
        server_deadlock_timeout,
    } = timings;
    let cluster = common::cluster_with(ClusterOptions {
        extra_conf: vec![("deadlock_timeout".into(), server_deadlock_timeout.into())],
        ..ClusterOptions::default()
    })
    .await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE p (id bigint PRIMARY KEY);
             INSERT INTO p SELECT generate_series(1, 100);
             CREATE TABLE t (id bigint PRIMARY KEY, v int NOT NULL, p_id bigint REFERENCES p (id));
             INSERT INTO t SELECT i, i, 1 + i % 100 FROM generate_series(1, 2000) i;
             CREATE TABLE c (id bigint PRIMARY KEY, t_id bigint NOT NULL REFERENCES t (id));
             INSERT INTO c SELECT i, i FROM generate_series(1, 100) i;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut options = run_options(dir.path(), 5);
    options.lock_timeout = lock_timeout;
    options.max_lock_hold = max_lock_hold;
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let dry = RunOptions {
        execute: false,
        ..options.clone()
    };
    let Outcome::Planned(plan) = doppel::run::run(&config, &dry, &Cancel::never())
        .await
        .unwrap()
    else {
        panic!("a dry run")
    };
    let (run, flag) = start_postponed(&cluster, dir.path(), options).await;

    let app = cluster.connect("postgres").await.unwrap();
    // The pid is read before the transaction: a statement that takes a snapshot would make
    // the attempt wait for it before asking for any lock (docs/design.md §4.6).
    let app_pid = common::scalar(&app, "SELECT pg_backend_pid()::bigint").await;
    app.batch_execute(&format!(
        "SET deadlock_timeout = '{app_deadlock_timeout}'; BEGIN; LOCK TABLE p IN ROW EXCLUSIVE MODE"
    ))
    .await
    .unwrap();
    let table_blocker = blocker(&cluster, "t", "ROW EXCLUSIVE").await;
    std::fs::remove_file(&flag).unwrap();
    assert!(
        common::wait_until_async(Duration::from_secs(60), || attempt_waits_on(&client, "t")).await,
        "the attempt holds the child and waits for the table"
    );
    let lock = tokio::spawn(async move {
        let result = app
            .batch_execute("LOCK TABLE c IN ROW EXCLUSIVE MODE")
            .await
            .map_err(|e| format!("{:?}: {e}", e.code().map(|c| c.code().to_string())));
        app.batch_execute(if result.is_ok() { "COMMIT" } else { "ROLLBACK" })
            .await
            .unwrap();
        result
    });
    assert!(
        common::wait_until_async(Duration::from_secs(5), || session_waits(&client, app_pid)).await,
        "the application queues behind the attempt's lock on the child"
    );
    table_blocker.batch_execute("COMMIT").await.unwrap();
    let app = lock.await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run ends")
        .unwrap();
    let (exit, blockers) = match outcome {
        Ok(Outcome::Migrated(run)) => (0, run.cutover.history[0].blockers.clone()),
        Ok(_) => panic!("expected a migration"),
        Err(e) => (doppel::failure::exit_code(&e), Vec::new()),
    };
    Cycle {
        app,
        exit,
        blockers,
        app_pid: i32::try_from(app_pid).unwrap(),
        warnings: plan.warnings,
    }
}

/// With the lock budget below `deadlock_timeout` the attempt gives way: it times out while
/// the application waits, rolls back, and the application's transaction gets its lock and
/// commits; the next attempt migrates. The application is among the first attempt's blockers
/// (the cycle formed). No warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_deadlock_with_the_application_the_cutover_gives_way() {
    let cycle = deadlock_cycle(Timings {
        lock_timeout: Duration::from_millis(400),
        max_lock_hold: Duration::from_millis(600),
        app_deadlock_timeout: "1s",
        server_deadlock_timeout: "1s",
    })
    .await;
    assert_eq!(cycle.app, Ok(()), "the application's transaction goes on");
    assert_eq!(cycle.exit, 0);
    assert!(
        cycle.blockers.contains(&cycle.app_pid),
        "the first attempt waited for the application (pid {}): {:?}",
        cycle.app_pid,
        cycle.blockers
    );
    assert!(
        cycle
            .warnings
            .iter()
            .all(|w| !w.contains("deadlock_timeout")),
        "{:?}",
        cycle.warnings
    );
}

/// The broken variant of the test above, kept as a test of the warning: with a lock budget
/// above `deadlock_timeout` the application, waiting first, reaches its deadlock check while
/// the attempt still waits, and PostgreSQL aborts the application's transaction (40P01); the
/// dry run warned about exactly that. The application is the victim only if its deadlock
/// check comes after the cycle formed and before the attempt's: the application checks 4 s
/// after it starts waiting and doppel's sessions 5 s after theirs, so the blocker's commit
/// and the attempt's request for `p` have 4 s, not 1 s as with both at 1 s, where a loaded
/// machine once made the attempt the victim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_budget_above_deadlock_timeout_is_warned_about_and_can_abort_the_application() {
    let cycle = deadlock_cycle(Timings {
        lock_timeout: Duration::from_secs(10),
        max_lock_hold: Duration::from_secs(10),
        app_deadlock_timeout: "4s",
        server_deadlock_timeout: "5s",
    })
    .await;
    let aborted = cycle
        .app
        .expect_err("the application is the deadlock victim");
    assert!(aborted.contains("40P01"), "{aborted}");
    assert_eq!(cycle.exit, 0);
    assert!(
        cycle
            .warnings
            .iter()
            .any(|w| w.contains("deadlock_timeout = 5000 ms") && w.contains("40P01")),
        "{:?}",
        cycle.warnings
    );
}
