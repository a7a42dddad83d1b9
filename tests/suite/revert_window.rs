//! The revert window (issue 13): after the cutover, doppel streams every change made to the
//! new table back into the kept old table, so `doppel ctl .. revert` swaps back losing no
//! write. Under a writer mirrored into a twin in the same transaction through the cutover and
//! the revert, the restored table equals the twin; a change that cannot be written back makes
//! the revert refuse unless forced; `finalize` and expiry leave no slot or publication; a
//! trigger of the table fires once per write, never for the write-back.

use crate::common::{self, Tune};

use std::path::{Path, PathBuf};
use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::run::{self, Outcome, RunOptions, RunReport, WindowEnd};
use doppel_testkit::cluster::LocalCluster;
use doppel_testkit::workload::{self, Workload};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// A run with a revert window of `window`, its control socket in `dir`.
fn options(dir: &Path, table: &str, alters: &[&str], window: Duration) -> RunOptions {
    common::options(dir, table, alters)
        .control_socket(socket(dir))
        .status_interval(Duration::from_secs(60))
        .cutover_retries(20)
        .fence_timeout(Duration::from_millis(2000))
        .revert_window(window)
}

fn socket(dir: &Path) -> PathBuf {
    dir.join("ctl.sock")
}

type Running = JoinHandle<anyhow::Result<Outcome>>;

fn start(cluster: &LocalCluster, options: RunOptions) -> Running {
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    tokio::spawn(async move { run::run(&config, &options, &Cancel::never()).await })
}

/// `status --json` of the run, parsed (`None` while the socket does not answer).
async fn status(dir: &Path) -> Option<serde_json::Value> {
    let reply = doppel::ops::control::send(&socket(dir), "status --json")
        .await
        .ok()?;
    serde_json::from_str(&reply).ok()
}

/// Waits until the run's revert window streams (the cutover's marker came through).
async fn wait_streaming(dir: &Path, run: &mut Running) {
    let streaming = common::wait_until_async(Duration::from_secs(120), || async {
        run.is_finished()
            || status(dir)
                .await
                .is_some_and(|s| s["window"]["streaming"] == true)
    })
    .await;
    if run.is_finished() {
        let outcome = (&mut *run).await.unwrap();
        panic!("the run ended before its window streamed: {outcome:?}");
    }
    assert!(streaming, "the revert window did not start streaming");
}

/// Sends `command` on the run's socket and returns the reply (a revert waits for its end).
async fn ctl(dir: &Path, command: &str) -> String {
    doppel::ops::control::send_waiting(&socket(dir), command, Duration::from_secs(300))
        .await
        .unwrap()
}

async fn finished(run: Running) -> RunReport {
    match run.await.unwrap().unwrap() {
        Outcome::Migrated(report) => *report,
        other => panic!("expected a migration, got {other:?}"),
    }
}

/// doppel's replication slots and publications still on the server.
async fn doppel_objects(client: &Client) -> i64 {
    common::scalar(
        client,
        "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'doppel%')
              + (SELECT count(*) FROM pg_publication WHERE pubname LIKE 'doppel%')",
    )
    .await
}

/// Waits until the window has written back `n` changes at least.
async fn wait_applied(dir: &Path, n: u64) {
    let done = common::wait_until_async(Duration::from_secs(60), || async {
        status(dir)
            .await
            .is_some_and(|s| s["window"]["applied"].as_u64().unwrap_or(0) >= n)
    })
    .await;
    assert!(done, "the window did not write back {n} change(s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_under_a_writer_loses_no_write() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_tables(&client, "orders", "orders_twin", 20_000)
        .await
        .unwrap();
    let original = common::oid_of(&client, "orders").await;
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let writer = Workload::start(&config, "orders", "orders_twin", 11, Duration::ZERO)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let alters = [
        "ALTER COLUMN customer_id TYPE bigint",
        "ADD COLUMN note2 text DEFAULT 'x'",
        "ALTER COLUMN amount TYPE numeric(14,2)",
    ];
    let mut run = start(
        &cluster,
        options(dir.path(), "orders", &alters, Duration::from_secs(600)),
    );
    wait_streaming(dir.path(), &mut run).await;
    // The writer keeps writing to the new table; its changes stream back.
    wait_applied(dir.path(), 300).await;
    let reply = ctl(dir.path(), "revert").await;
    assert!(reply.starts_with("ok: reverted"), "{reply}");
    // Writes go on across the revert, now to the restored table.
    let committed = common::scalar(&client, "SELECT count(*) FROM orders_twin").await;
    assert!(
        common::wait_until_async(Duration::from_secs(30), || async {
            common::scalar(&client, "SELECT count(*) FROM orders_twin").await != committed
        })
        .await
    );
    let report = writer.stop().await.unwrap();
    let run = finished(run).await;
    assert_eq!(report.errors, 0, "writer errors: {:?}", report.first_errors);
    let window = run.window.expect("a revert window");
    let WindowEnd::Reverted(outcome) = &window.end else {
        panic!("expected a revert, got {:?}", window.end)
    };
    assert!(outcome.lost.is_empty());
    assert!(window.applied >= 300);
    assert_eq!(
        common::oid_of(&client, "orders").await,
        original,
        "the original is back"
    );
    assert_eq!(
        workload::mismatches(&client, "orders", "orders_twin")
            .await
            .unwrap(),
        0,
        "the restored table equals the twin"
    );
    assert_eq!(
        doppel_objects(&client).await,
        0,
        "no slot or publication left"
    );
    eprintln!(
        "revert under the writer: lock held {:.1} ms, {} changes written back in {:.1} s ({:.0} changes/s), writer {} transactions, p99 {:?}, worst {:?}",
        outcome.swap.lock_held.as_secs_f64() * 1000.0,
        window.applied,
        window.open_for.as_secs_f64(),
        window.applied as f64 / window.open_for.as_secs_f64(),
        report.transactions,
        report.p99,
        report.max_latency
    );
}

const SMALL: &str = "
CREATE TABLE public.parent (id int PRIMARY KEY);
INSERT INTO public.parent SELECT generate_series(1, 10);
CREATE TABLE public.t (id bigint PRIMARY KEY, n int NOT NULL,
  parent_id int REFERENCES public.parent (id), note text);
INSERT INTO public.t SELECT i, i, 1 + i % 10, 'row ' || i FROM generate_series(1, 2000) i;
CREATE TABLE public.audit (k bigserial PRIMARY KEY, op text NOT NULL, id bigint);
CREATE FUNCTION public.audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.audit (op, id) VALUES (TG_OP, NEW.id);
  RETURN NULL;
END $$;
CREATE TRIGGER t_audit AFTER INSERT OR UPDATE ON public.t
  FOR EACH ROW EXECUTE FUNCTION public.audit_fn();";

/// A cluster with [`SMALL`] and a run (`n` to bigint) whose window streams.
async fn small_window(window: Duration) -> (LocalCluster, Client, tempfile::TempDir, Running) {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client.batch_execute(SMALL).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut run = start(
        &cluster,
        options(
            dir.path(),
            "public.t",
            &["ALTER COLUMN n TYPE bigint"],
            window,
        ),
    );
    wait_streaming(dir.path(), &mut run).await;
    (cluster, client, dir, run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_be_written_back_makes_revert_refuse_unless_forced() {
    let (_cluster, client, dir, run) = small_window(Duration::from_secs(600)).await;
    client
        .batch_execute(
            "INSERT INTO public.t VALUES (5000, 3000000000, 1, 'too big for integer');
             INSERT INTO public.t VALUES (5001, 7, 1, 'fits')",
        )
        .await
        .unwrap();
    let lossy = common::wait_until_async(Duration::from_secs(60), || async {
        status(dir.path())
            .await
            .is_some_and(|s| s["window"]["lossless"] == false)
    })
    .await;
    assert!(
        lossy,
        "the window reports that a revert is no longer lossless"
    );
    let s = status(dir.path()).await.unwrap();
    let rejected = s["window"]["rejected"][0].as_str().unwrap().to_string();
    assert!(rejected.contains("5000"), "names the key: {rejected}");
    assert!(
        rejected.contains("out of range") || rejected.contains("does not convert back"),
        "says why: {rejected}"
    );
    assert!(
        s["line"]
            .as_str()
            .unwrap()
            .contains("revert is no longer lossless"),
        "{}",
        s["line"]
    );
    // A plain revert refuses and changes nothing.
    let reply = ctl(dir.path(), "revert").await;
    assert!(
        reply.starts_with("error: revert is no longer lossless"),
        "{reply}"
    );
    let new = common::oid_of(&client, "public.t").await;
    // The rest streamed on: the row that fits is in the old table.
    let old = s["window"]["state"].as_str().unwrap().to_string();
    assert!(old.starts_with("open"), "{old}");
    // Forced, it reverts and says which key it lost.
    let reply = ctl(dir.path(), "revert --force").await;
    assert!(reply.starts_with("ok: reverted"), "{reply}");
    let report = finished(run).await;
    let window = report.window.unwrap();
    let WindowEnd::Reverted(outcome) = &window.end else {
        panic!("expected a revert, got {:?}", window.end)
    };
    assert_eq!(outcome.lost.len(), 1);
    assert_eq!(outcome.lost[0].0, vec![Some("5000".to_string())]);
    assert_ne!(common::oid_of(&client, "public.t").await, new);
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM public.t WHERE id = 5001").await,
        1
    );
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM public.t WHERE id = 5000").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_back_fires_no_trigger_and_foreign_keys_are_valid_after_the_revert() {
    let (_cluster, client, dir, run) = small_window(Duration::from_secs(600)).await;
    let before = common::scalar(&client, "SELECT count(*) FROM public.audit").await;
    client
        .batch_execute(
            "INSERT INTO public.t VALUES (3001, 1, 2, 'a'), (3002, 2, 3, 'b');
             UPDATE public.t SET note = 'changed' WHERE id = 10;
             DELETE FROM public.t WHERE id = 11;",
        )
        .await
        .unwrap();
    wait_applied(dir.path(), 4).await;
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM public.audit").await,
        before + 3,
        "the trigger fired once per write on the new table, not for the write-back"
    );
    let reply = ctl(dir.path(), "revert").await;
    assert!(reply.starts_with("ok: reverted"), "{reply}");
    finished(run).await;
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM public.t WHERE id IN (3001, 3002) OR (id = 10 AND note = 'changed')").await,
        3
    );
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM public.t WHERE id = 11").await,
        0
    );
    let type_of_n: String = client
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.t'::regclass AND attname = 'n'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(type_of_n, "integer");
    let valid: bool = client
        .query_one(
            "SELECT bool_and(convalidated) FROM pg_constraint WHERE conrelid = 'public.t'::regclass AND contype = 'f'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(valid, "the restored table's foreign keys are validated");
    // The trigger is back on the restored table.
    client
        .batch_execute("INSERT INTO public.t VALUES (3003, 3, 4, 'c')")
        .await
        .unwrap();
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM public.audit").await,
        before + 4
    );
    assert_eq!(doppel_objects(&client).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalize_ends_the_window_and_leaves_no_slot_or_publication() {
    let (_cluster, client, dir, run) = small_window(Duration::from_secs(600)).await;
    let new = common::oid_of(&client, "public.t").await;
    assert!(
        common::scalar(
            &client,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'doppel%\\_rev'"
        )
        .await
            == 1,
        "the window's slot exists while it is open"
    );
    let reply = ctl(dir.path(), "finalize").await;
    assert!(reply.starts_with("ok: finalizing"), "{reply}");
    let report = finished(run).await;
    assert!(matches!(report.window.unwrap().end, WindowEnd::Finalized));
    assert_eq!(
        common::oid_of(&client, "public.t").await,
        new,
        "the migration stands"
    );
    assert_eq!(doppel_objects(&client).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_expires_by_itself() {
    let (_cluster, client, _dir, run) = small_window(Duration::from_secs(3)).await;
    let report = finished(run).await;
    assert!(matches!(report.window.unwrap().end, WindowEnd::Expired));
    assert_eq!(doppel_objects(&client).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_and_finalize_without_a_window_are_refused() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client.batch_execute(SMALL).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(
        dir.path(),
        "public.t",
        &["ALTER COLUMN n TYPE bigint"],
        Duration::from_secs(600),
    );
    opts.revert_window = None;
    opts.postpone_cutover_flag_file = Some(dir.path().join("postpone"));
    std::fs::write(dir.path().join("postpone"), "").unwrap();
    let run = start(&cluster, opts);
    assert!(
        common::wait_until_async(Duration::from_secs(60), || async {
            status(dir.path()).await.is_some()
        })
        .await
    );
    let reply = ctl(dir.path(), "revert").await;
    assert!(
        reply.starts_with("error: no revert window is open"),
        "{reply}"
    );
    let reply = ctl(dir.path(), "finalize").await;
    assert!(
        reply.starts_with("error: no revert window is open"),
        "{reply}"
    );
    std::fs::remove_file(dir.path().join("postpone")).unwrap();
    finished(run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_says_what_a_revert_loses_and_using_is_refused() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client.batch_execute(SMALL).await.unwrap();
    let dsn = cluster.conninfo("postgres");
    let plan = std::process::Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args(["run", "--dsn", &dsn, "--table", "public.t"])
        .args(["--alter", "ALTER COLUMN n TYPE bigint"])
        .args(["--alter", "ADD COLUMN extra text"])
        .args(["--alter", "DROP COLUMN note"])
        .args(["--revert-window", "30m"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.status.success(), "{text}");
    assert!(text.contains("revert window: 30m"), "{text}");
    assert!(text.contains("possible only while doppel runs"), "{text}");
    assert!(
        text.contains("column n: written back from bigint to integer")
            && text.contains("revert refuses without --force"),
        "{text}"
    );
    assert!(
        text.contains("column note (dropped by the ALTER)"),
        "{text}"
    );
    assert!(text.contains("column extra (added by the ALTER)"), "{text}");
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args(["run", "--dsn", &dsn, "--table", "public.t"])
        .args(["--alter", "ALTER COLUMN n TYPE bigint USING n * 2"])
        .args(["--revert-window", "30m"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("cannot invert the USING expression"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_window_leaves_the_guarded_rollback_script_and_cleanup() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client.batch_execute(SMALL).await.unwrap();
    let original = common::oid_of(&client, "public.t").await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args([
            "run",
            "--dsn",
            &cluster.conninfo("postgres"),
            "--table",
            "public.t",
        ])
        .args(["--alter", "ALTER COLUMN n TYPE bigint", "--execute"])
        .args(["--revert-window", "10m", "--progress", "lines"])
        .arg("--work-dir")
        .arg(dir.path())
        .arg("--rollback-dir")
        .arg(dir.path())
        .arg("--control-socket")
        .arg(socket(dir.path()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let streaming = common::wait_until_async(Duration::from_secs(120), || async {
        status(dir.path())
            .await
            .is_some_and(|s| s["window"]["streaming"] == true)
    })
    .await;
    assert!(streaming);
    child.kill().unwrap();
    child.wait().unwrap();
    // The TEMPORARY slot went with the connection; the window's publication is left.
    let gone = common::wait_until_async(Duration::from_secs(30), || async {
        common::scalar(
            &client,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'doppel%'",
        )
        .await
            == 0
    })
    .await;
    assert!(gone, "no slot outlives doppel");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args([
            "cleanup",
            "--dsn",
            &cluster.conninfo("postgres"),
            "--table",
            "public.t",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("publication doppel_{original}_rev")),
        "{said}"
    );
    assert_eq!(doppel_objects(&client).await, 0);
    // The migration stands; the guarded rollback script can still undo it.
    assert_ne!(common::oid_of(&client, "public.t").await, original);
}

/// The revert's lock hold over ten reverts under a writer (`cargo test --release --test suite
/// revert_window::revert_lock_hold -- --ignored --nocapture`): p50 and max printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: ten migrations and reverts"]
async fn revert_lock_hold_over_ten_reverts() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_tables(&client, "orders", "orders_twin", 10_000)
        .await
        .unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let writer = Workload::start(
        &config,
        "orders",
        "orders_twin",
        5,
        Duration::from_millis(2),
    )
    .await
    .unwrap();
    let mut holds = Vec::new();
    let mut rates = Vec::new();
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let alters = ["ALTER COLUMN customer_id TYPE bigint"];
        let mut run = start(
            &cluster,
            options(dir.path(), "orders", &alters, Duration::from_secs(600)),
        );
        wait_streaming(dir.path(), &mut run).await;
        wait_applied(dir.path(), 200).await;
        let reply = ctl(dir.path(), "revert").await;
        assert!(reply.starts_with("ok: reverted"), "round {round}: {reply}");
        let report = finished(run).await;
        let window = report.window.unwrap();
        let WindowEnd::Reverted(outcome) = &window.end else {
            panic!("round {round}: {:?}", window.end)
        };
        holds.push(outcome.swap.lock_held);
        rates.push(window.applied as f64 / window.open_for.as_secs_f64());
        // What the reverts left: the old table is the table again; the new one is dropped.
        let old = client
            .query("SELECT oid::regclass::text FROM pg_class WHERE relname LIKE '\\_doppel\\_%\\_new\\_orders'", &[])
            .await
            .unwrap();
        for row in old {
            let name: String = row.get(0);
            client
                .batch_execute(&format!("DROP TABLE {name}"))
                .await
                .unwrap();
        }
    }
    let report = writer.stop().await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    assert_eq!(
        workload::mismatches(&client, "orders", "orders_twin")
            .await
            .unwrap(),
        0
    );
    holds.sort();
    eprintln!(
        "revert lock hold over {} reverts under a writer: p50 {:.1} ms, max {:.1} ms; write-back {:.0} changes/s (median of windows); writer p99 {:?}, worst {:?}",
        holds.len(),
        holds[holds.len() / 2].as_secs_f64() * 1000.0,
        holds[holds.len() - 1].as_secs_f64() * 1000.0,
        {
            rates.sort_by(f64::total_cmp);
            rates[rates.len() / 2]
        },
        report.p99,
        report.max_latency
    );
}

/// The write-back's throughput on a backlog (`cargo test --release --test suite
/// revert_window::write_back_rate -- --ignored --nocapture`): 50,000 updates and 20,000
/// inserts committed on the new table at once, timed until the window has written them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: a 70,000-change backlog"]
async fn write_back_rate() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE public.t (id bigint PRIMARY KEY, n int NOT NULL, note text);
             INSERT INTO public.t SELECT i, i, 'row ' || i FROM generate_series(1, 50000) i;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut run = start(
        &cluster,
        options(
            dir.path(),
            "public.t",
            &["ALTER COLUMN n TYPE bigint"],
            Duration::from_secs(600),
        ),
    );
    wait_streaming(dir.path(), &mut run).await;
    let committed = std::time::Instant::now();
    client
        .batch_execute(
            "BEGIN;
             UPDATE public.t SET note = note || ' changed';
             INSERT INTO public.t SELECT i, i, 'new ' || i FROM generate_series(50001, 70000) i;
             COMMIT;",
        )
        .await
        .unwrap();
    wait_applied(dir.path(), 70_000).await;
    let took = committed.elapsed();
    let reply = ctl(dir.path(), "finalize").await;
    assert!(reply.starts_with("ok: finalizing"), "{reply}");
    finished(run).await;
    eprintln!(
        "write-back of a 70,000-change backlog: {:.2} s, {:.0} changes/s",
        took.as_secs_f64(),
        70_000.0 / took.as_secs_f64()
    );
}
