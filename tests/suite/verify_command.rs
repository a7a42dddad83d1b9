//! `doppel verify`: the verify phase's chunked count + hash comparison on demand.
//!
//! - After a completed migration, the new table compared with the kept old table (its columns
//!   projected onto the new table's by name) is equal: exit 0.
//! - A row changed, deleted or added directly in the new table is reported by key with how it
//!   differs: exit 6.
//! - A `USING` expression is taken from the run's `--alter` when given.
//! - The run's verification launches no parallel query worker by default, some with
//!   `--verify-parallel-workers 2` (counted by PostgreSQL 18's `pg_stat_database`).
//! - During a run stopped at the `verifying` pause point, with a writer going, the original
//!   and its shadow compare equal (differences the live stream has not applied yet settle on
//!   re-check); a difference that goes away while it is re-checked is not reported, one that
//!   stays is.

use std::io::BufRead;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use doppel_testkit::cluster::LocalCluster;
use doppel_testkit::workload::{self, Workload};
use tokio_postgres::Client;

use crate::common;

fn doppel(dsn: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args(args)
        .args(["--dsn", dsn])
        .output()
        .expect("doppel runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Migrates `table` with `alters` to completion; the kept old table's name.
async fn migrate(cluster: &LocalCluster, client: &Client, table: &str, alters: &[&str]) -> String {
    let oid = common::oid_of(client, table).await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["run", "--table", table, "--execute", "--progress", "lines"];
    for a in alters {
        args.extend(["--alter", a]);
    }
    let dir_arg = dir.path().to_str().unwrap();
    args.extend(["--work-dir", dir_arg, "--rollback-dir", dir_arg]);
    let out = doppel(&cluster.conninfo("postgres"), &args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "migration failed: {stdout}{stderr}");
    format!("public._doppel_{oid}_old_{table}")
}

/// The number before `word` in `line` (e.g. `4 chunks`).
fn number_before(line: &str, word: &str) -> i64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| w.trim_end_matches(',') == word)
        .unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
    words[i - 1]
        .trim_start_matches('(')
        .parse()
        .unwrap_or_else(|_| panic!("no number before {word:?} in {line:?}"))
}

async fn orders_cluster(rows: i64) -> (LocalCluster, Client) {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_tables(&client, "orders", "orders_twin", rows)
        .await
        .unwrap();
    (cluster, client)
}

const ORDERS_ALTER: [&str; 2] = [
    "ALTER COLUMN customer_id TYPE bigint",
    "ADD COLUMN note2 text",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_after_a_completed_migration_against_the_kept_old_table() {
    let (cluster, client) = orders_cluster(3_000).await;
    let dsn = cluster.conninfo("postgres");
    let old = migrate(&cluster, &client, "orders", &ORDERS_ALTER).await;
    let out = doppel(
        &dsn,
        &[
            "verify",
            "--table",
            "orders",
            "--against",
            &old,
            "--chunk-rows",
            "1000",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let summary = lines[0];
    assert!(
        summary.starts_with(&format!(
            "compared \"public\".\"{}\" with \"public\".\"orders\"",
            old.trim_start_matches("public.")
        )),
        "{stdout}"
    );
    assert!(number_before(summary, "chunks") >= 3, "{summary}");
    assert_eq!(number_before(summary, "rows"), 3_000, "{summary}");
    assert!(
        summary.contains("(3000 in \"public\".\"orders\")"),
        "{summary}"
    );
    assert!(
        stdout.contains("columns compared: id, customer_id, status,"),
        "the changed column is compared through its cast: {stdout}"
    );
    assert!(
        stdout.contains("not compared (only in \"public\".\"orders\"): note2"),
        "the added column is named as not compared: {stdout}"
    );
    assert_eq!(lines.last(), Some(&"equal"), "{stdout}");

    // After the cutover the table has no shadow: without --against the command says where
    // to look.
    let out = doppel(&dsn, &["verify", "--table", "orders"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("--against {old}")),
        "names the kept old table: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_changed_in_the_new_table_are_reported_by_key_with_exit_6() {
    let (cluster, client) = orders_cluster(3_000).await;
    let dsn = cluster.conninfo("postgres");
    let old = migrate(&cluster, &client, "orders", &ORDERS_ALTER).await;
    client
        .batch_execute(
            "UPDATE orders SET customer_id = customer_id + 1 WHERE id = 42;
             DELETE FROM orders WHERE id = 77;",
        )
        .await
        .unwrap();
    let added: i64 = client
        .query_one(
            "INSERT INTO orders (customer_id, status, amount) VALUES (1, 'new', 1) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let out = doppel(
        &dsn,
        &[
            "verify",
            "--table",
            "orders",
            "--against",
            &old,
            "--chunk-rows",
            "1000",
            "--rechecks",
            "1",
            "--recheck-interval",
            "10",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(6),
        "exit 6: verification found a difference; {stdout}{stderr}"
    );
    let summary = stdout.lines().next().unwrap();
    assert_eq!(number_before(summary, "rows"), 3_000, "{summary}");
    assert!(
        summary.contains("(3000 in \"public\".\"orders\")"),
        "one deleted, one added: {summary}"
    );
    assert!(stdout.contains("differing keys (3):"), "{stdout}");
    assert!(stdout.contains("  (42): values differ\n"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "  (77): only in \"public\".\"{}\"\n",
            old.trim_start_matches("public.")
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("  ({added}): only in \"public\".\"orders\"\n")),
        "{stdout}"
    );
    assert!(stdout.ends_with("not equal\n"), "{stdout}");
    assert!(
        stderr.contains("error: ") && stderr.contains("differ"),
        "{stderr}"
    );

    // One key listed at most: the rest is said to be left out.
    let out = doppel(
        &dsn,
        &[
            "verify",
            "--table",
            "orders",
            "--against",
            &old,
            "--rechecks",
            "0",
            "--max-keys",
            "1",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(
        stdout.contains("differing keys (1, more not listed):"),
        "{stdout}"
    );

    // Hundreds of rows differ in one chunk: past twice the key limit in differing hash
    // buckets, the examples are listed by the statement that sets the sides against each
    // other; every one listed is a changed row.
    client
        .batch_execute("UPDATE orders SET amount = amount + 1 WHERE id BETWEEN 1001 AND 1500")
        .await
        .unwrap();
    let out = doppel(
        &dsn,
        &[
            "verify",
            "--table",
            "orders",
            "--against",
            &old,
            "--rechecks",
            "0",
            "--max-keys",
            "10",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(
        stdout.contains("differing keys (10, more not listed):"),
        "{stdout}"
    );
    let listed: Vec<i64> = stdout
        .lines()
        .filter(|l| l.starts_with("  (") && l.ends_with("values differ"))
        .map(|l| l[3..l.find(')').unwrap()].parse().unwrap())
        .collect();
    assert_eq!(listed.len(), 10, "{stdout}");
    assert!(
        listed.iter().all(|k| (1001..=1500).contains(k)),
        "{listed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_using_expression_is_taken_from_the_runs_alter() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, w text);
             INSERT INTO t SELECT i, i, 'w' || i FROM generate_series(1, 500) i;",
        )
        .await
        .unwrap();
    let alter = "ALTER COLUMN v TYPE bigint USING v * 2";
    let old = migrate(&cluster, &client, "t", &[alter]).await;
    let dsn = cluster.conninfo("postgres");
    let base = [
        "verify",
        "--table",
        "t",
        "--against",
        &old,
        "--rechecks",
        "0",
    ];
    // Cast alone: every row differs in v.
    let out = doppel(&dsn, &base);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(stdout.contains("more not listed"), "{stdout}");
    // With the run's --alter: equal.
    let mut args = base.to_vec();
    args.extend(["--alter", alter]);
    let out = doppel(&dsn, &args);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.ends_with("equal\n"), "{stdout}");
}

/// A `doppel verify` child whose stderr lines arrive on a channel.
struct Watched {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

fn spawn_verify(dsn: &str, args: &[&str]) -> Watched {
    let mut child = Command::new(env!("CARGO_BIN_EXE_doppel"))
        .arg("verify")
        .args(args)
        .args(["--dsn", dsn])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("doppel verify starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Watched { child, lines }
}

impl Watched {
    /// Waits for a stderr line containing every one of `needles`.
    async fn line_with(&mut self, needles: &[&str]) -> String {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = self.lines.recv().await {
                if needles.iter().all(|n| line.contains(n)) {
                    return Some(line);
                }
                seen.push(line);
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!("no stderr line with {needles:?}; saw: {seen:#?}"),
        }
    }

    async fn finish(self) -> Output {
        tokio::task::spawn_blocking(move || self.child.wait_with_output())
            .await
            .unwrap()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_paused_run_the_shadow_compares_equal() {
    let (cluster, client) = orders_cluster(5_000).await;
    let dsn = cluster.conninfo("postgres");
    let oid = common::oid_of(&client, "orders").await;
    let shadow = format!("public._doppel_{oid}_new_orders");
    let dir = tempfile::tempdir().unwrap();
    doppel::testing::arm(&common::pause_dir(dir.path()), "verifying").unwrap();
    let mut run = Command::new(env!("CARGO_BIN_EXE_doppel"))
        .env(
            doppel::testing::PAUSE_DIR_VAR,
            common::pause_dir(dir.path()),
        )
        .args(["run", "--dsn", &dsn, "--table", "orders", "--execute"])
        .args(["--progress", "lines"])
        .args(ORDERS_ALTER.iter().flat_map(|a| ["--alter", a]))
        .arg("--work-dir")
        .arg(dir.path())
        .arg("--rollback-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("run.out")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("run.err")).unwrap())
        .spawn()
        .unwrap();
    let run_output = || {
        std::fs::read_to_string(dir.path().join("run.err")).unwrap_or_default()
            + &std::fs::read_to_string(dir.path().join("run.out")).unwrap_or_default()
    };
    let reached = common::wait_until(Duration::from_secs(180), || {
        doppel::testing::reached(&common::pause_dir(dir.path()), "verifying").is_some()
            || run.try_wait().unwrap().is_some()
    });
    assert!(
        reached && doppel::testing::reached(&common::pause_dir(dir.path()), "verifying").is_some(),
        "the run reached its verify phase: {}",
        run_output()
    );

    // The shadow is complete and the applier follows the live stream; a writer keeps
    // changing the original meanwhile.
    let config: tokio_postgres::Config = dsn.parse().unwrap();
    let writer = Workload::start(
        &config,
        "orders",
        "orders_twin",
        11,
        Duration::from_millis(10),
    )
    .await
    .unwrap();
    let out = doppel(
        &dsn,
        &[
            "verify",
            "--table",
            "orders",
            "--chunk-rows",
            "1000",
            "--rechecks",
            "20",
            "--recheck-interval",
            "200",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let summary = stdout.lines().next().unwrap();
    assert!(
        summary.starts_with(&format!(
            "compared \"public\".\"orders\" with \"public\".\"_doppel_{oid}_new_orders\""
        )),
        "{summary}"
    );
    assert!(number_before(summary, "chunks") >= 5, "{summary}");
    assert!(number_before(summary, "rows") >= 4_000, "{summary}");
    assert!(stdout.ends_with("equal\n"), "{stdout}");
    let report = writer.stop().await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    assert!(report.transactions > 0);

    // A difference that goes away while it is re-checked (as a change the stream has not
    // applied yet does) is not reported.
    let key: i64 = client
        .query_one("SELECT min(id) FROM orders WHERE id > 0", &[])
        .await
        .unwrap()
        .get(0);
    let corrupt = format!("UPDATE {shadow} SET customer_id = customer_id + 1 WHERE id = {key}");
    let repair = format!(
        "UPDATE {shadow} s SET customer_id = o.customer_id FROM orders o WHERE o.id = s.id AND s.id = {key}"
    );
    client.batch_execute(&corrupt).await.unwrap();
    let mut verify = spawn_verify(
        &dsn,
        &[
            "--table",
            "orders",
            "--rechecks",
            "50",
            "--recheck-interval",
            "100",
        ],
    );
    verify
        .line_with(&[
            "1 key(s) still in flight",
            &format!("({key})"),
            "comparing them again",
        ])
        .await;
    client.batch_execute(&repair).await.unwrap();
    let out = verify.finish().await;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(number_before(&stdout, "re-checks") >= 1, "{stdout}");
    assert!(stdout.ends_with("equal\n"), "{stdout}");

    // One that stays is reported by key, exit 6.
    client.batch_execute(&corrupt).await.unwrap();
    let out = doppel(
        &dsn,
        &[
            "verify",
            "--table",
            "orders",
            "--rechecks",
            "2",
            "--recheck-interval",
            "50",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("  ({key}): values differ\n")),
        "{stdout}"
    );
    client.batch_execute(&repair).await.unwrap();

    // The run goes on and completes; the result matches the oracle.
    doppel::testing::release(&common::pause_dir(dir.path()), "verifying").unwrap();
    let status = tokio::task::spawn_blocking(move || run.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the run completes: {}", run_output());
    assert_eq!(
        workload::mismatches(&client, "orders", "orders_twin")
            .await
            .unwrap(),
        0
    );
}

/// Parallel query workers launched on the database so far (PostgreSQL 18+:
/// `pg_stat_database.parallel_workers_launched`, counted by the executor).
async fn parallel_workers_launched(client: &Client) -> i64 {
    client
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    common::scalar(
        client,
        "SELECT parallel_workers_launched FROM pg_stat_database WHERE datname = current_database()",
    )
    .await
}

/// Migrates a 300,000-row `orders` with `extra` arguments; the parallel query workers the
/// server launched meanwhile.
async fn parallel_workers_of_a_run(extra: &[&str]) -> Option<i64> {
    let (cluster, client) = orders_cluster(300_000).await;
    if cluster.server_version_num() < 180_000 {
        eprintln!("skipped: pg_stat_database counts parallel workers from PostgreSQL 18");
        return None;
    }
    client.batch_execute("ANALYZE orders").await.unwrap();
    let before = parallel_workers_launched(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let mut args = vec![
        "run",
        "--table",
        "orders",
        "--alter",
        ORDERS_ALTER[0],
        "--execute",
        "--work-dir",
        dir_arg,
        "--rollback-dir",
        dir_arg,
    ];
    args.extend(extra);
    let out = doppel(&cluster.conninfo("postgres"), &args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "migration failed: {stdout}{stderr}");
    Some(parallel_workers_launched(&client).await - before)
}

/// The run's verification reads both tables in full; by default it takes no parallel query
/// worker from the pool the application's queries share (on a busy 2-core server the
/// writers' latency went from 30 ms to 340-810 ms at p50 while a parallel verification ran).
/// With `--verify-parallel-workers 2` the same run launches some, which shows the planner
/// would have used them on this table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verification_takes_no_parallel_worker_unless_allowed() {
    let Some(by_default) = parallel_workers_of_a_run(&[]).await else {
        return;
    };
    assert_eq!(
        by_default, 0,
        "parallel workers launched during a default run"
    );
    let allowed = parallel_workers_of_a_run(&["--verify-parallel-workers", "2"])
        .await
        .unwrap();
    assert!(
        allowed > 0,
        "with --verify-parallel-workers 2 the verification uses parallel workers ({allowed}), so the default's 0 is its doing"
    );
}

/// A table whose name holds `$1`: the statement that lists many differences (here 500 rows of
/// a bounded 1,000-row chunk, past twice the key limit in differing buckets) numbers its
/// parameters twice over, and must leave the names alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_differences_are_listed_in_a_table_named_with_a_dollar_sign() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            r#"CREATE TABLE "ord$1" (id bigint PRIMARY KEY, v int NOT NULL);
               INSERT INTO "ord$1" SELECT i, i FROM generate_series(1, 3000) i;"#,
        )
        .await
        .unwrap();
    let oid = common::oid_of(&client, r#""ord$1""#).await;
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let dsn = cluster.conninfo("postgres");
    let out = doppel(
        &dsn,
        &[
            "run",
            "--table",
            r#""ord$1""#,
            "--alter",
            "ALTER COLUMN v TYPE bigint",
            "--execute",
            "--progress",
            "lines",
            "--work-dir",
            dir_arg,
            "--rollback-dir",
            dir_arg,
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "migration failed: {stdout}{stderr}");
    client
        .batch_execute(r#"UPDATE "ord$1" SET v = v + 1 WHERE id BETWEEN 1001 AND 1500"#)
        .await
        .unwrap();
    let old = format!(r#"public."_doppel_{oid}_old_ord$1""#);
    let out = doppel(
        &dsn,
        &[
            "verify",
            "--table",
            r#""ord$1""#,
            "--against",
            &old,
            "--chunk-rows",
            "1000",
            "--rechecks",
            "0",
            "--max-keys",
            "10",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(
        stdout.contains("differing keys (10, more not listed):"),
        "{stdout}{stderr}"
    );
}

/// Whether the session of `pid` waits for a lock.
async fn waits_for_a_lock(client: &Client, pid: i32) -> bool {
    common::scalar(
        client,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND wait_event_type = 'Lock'"
        ),
    )
    .await
        == 1
}

/// A run held where verification is about to read the next chunk's bound (`verify-bound`),
/// with the chunk's transactions open, and a session that then asks for `ACCESS EXCLUSIVE`
/// on `t` (the way an `ALTER TABLE` or a partition drop would) and waits behind the control
/// session's lock. Returns the run (released), the locker's session, its pid and its
/// pending `LOCK`.
async fn lock_queued_at_the_bound(
    config: &tokio_postgres::Config,
    client: &Client,
    broken: Option<doppel::testing::Broken>,
) -> (
    common::race::Run,
    std::sync::Arc<Client>,
    i32,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    common::race::create_tables(client, 2_000, i64::MAX).await;
    let mut run = common::race::Run::start(config, broken, &[("verify-bound", "")], |o| {
        o.verify_chunk_rows = 500;
    });
    run.reached("verifying").await;
    run.release("verifying");
    run.reached("verify-bound").await;
    let held = common::wait_until_async(Duration::from_secs(30), || async {
        common::scalar(
            client,
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
              WHERE l.relation = 't'::regclass AND l.granted AND l.mode = 'AccessShareLock'
                AND a.application_name = 'doppel' AND a.state = 'idle in transaction'",
        )
        .await
            == 1
    })
    .await;
    assert!(
        held,
        "the control session holds its lock on t, its hash done"
    );
    let locker = std::sync::Arc::new(doppel_testkit::connect(config).await.unwrap());
    let pid: i32 = locker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    locker.batch_execute("BEGIN").await.unwrap();
    let l = locker.clone();
    let lock = tokio::spawn(async move {
        l.batch_execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
            .await
    });
    let queued =
        common::wait_until_async(Duration::from_secs(30), || waits_for_a_lock(client, pid)).await;
    assert!(
        queued,
        "the ACCESS EXCLUSIVE request waits behind the verification"
    );
    run.release("verify-bound");
    (run, locker, pid, lock)
}

/// An `ACCESS EXCLUSIVE` request on the original queued while verification holds a chunk's
/// transactions open is granted once the chunk is done (the next bound is read on the
/// session that already holds the lock), and the run then goes on and migrates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_queued_on_the_original_during_verification_is_granted_after_the_chunk() {
    let (_cluster, client, config) = common::race::stand().await;
    let (run, locker, _pid, lock) = lock_queued_at_the_bound(&config, &client, None).await;
    let granted = tokio::time::timeout(Duration::from_secs(60), lock).await;
    assert!(
        matches!(granted, Ok(Ok(Ok(())))),
        "the ACCESS EXCLUSIVE request is granted after the chunk: {granted:?}"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    match run.outcome().await {
        Ok(doppel::run::Outcome::Migrated(_)) => {}
        other => panic!("expected a migration, got {other:?}"),
    }
}

/// The broken variant, the bound read on the peer inside its transaction: the peer queues
/// behind the `ACCESS EXCLUSIVE` request, which waits for the control session, which waits
/// in doppel for the peer. The server sees no deadlock (none is reported); the cycle is
/// seen whole past `deadlock_timeout`, and lasts until the locker gives up (or the peer's
/// `lock_timeout`, 5 s, fails the run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_bound_read_on_the_peer_a_queued_lock_waits_in_a_cycle() {
    let (_cluster, client, config) = common::race::stand().await;
    let broken = Some(doppel::testing::Broken::BoundOnPeer);
    let (run, locker, pid, lock) = lock_queued_at_the_bound(&config, &client, broken).await;
    let peer_waits = common::wait_until_async(Duration::from_secs(30), || async {
        common::scalar(
            &client,
            "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = 'doppel verify' AND wait_event_type = 'Lock'",
        )
        .await
            == 1
    })
    .await;
    assert!(
        peer_waits,
        "the peer waits behind the ACCESS EXCLUSIVE request"
    );
    // Past deadlock_timeout (1 s) the server would have broken a cycle it could see: the
    // locker has waited twice that and still waits.
    let long_wait = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND wait_event_type = 'Lock'
            AND clock_timestamp() - state_change > interval '2 s'"
    );
    let waited = common::wait_until_async(Duration::from_secs(30), || async {
        common::scalar(&client, &long_wait).await == 1
    })
    .await;
    assert!(waited, "the locker waits past the deadlock check");
    assert!(!lock.is_finished(), "the LOCK has not been granted");
    client
        .batch_execute(&format!("SELECT pg_cancel_backend({pid})"))
        .await
        .unwrap();
    let cancelled = lock.await.unwrap();
    assert!(cancelled.is_err(), "the LOCK was cancelled, not granted");
    locker.batch_execute("ROLLBACK").await.unwrap();
    run.finish(&client, "id, v::bigint").await;
}

/// A chunk with too many differences for the bucket listing is listed by one statement on
/// the control session, which reads the compared table (here the migrated `orders`) too.
/// The peer's transaction, holding that table's lock from the bucket pass, has ended by
/// then (pause point `verify-except`): an `ACCESS EXCLUSIVE` request on `orders` made there
/// is granted at once, the listing waits for it, and the command reports the differences
/// once it is released. Kept open, the peer's lock would queue the request, and the
/// listing behind the request, in a cycle the server cannot detect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_taken_before_a_chunk_is_listed_whole_does_not_wait_for_the_peer() {
    let (cluster, client) = orders_cluster(3_000).await;
    let dsn = cluster.conninfo("postgres");
    let old = migrate(&cluster, &client, "orders", &ORDERS_ALTER).await;
    client
        .batch_execute("UPDATE orders SET status = 'changed' WHERE id <= 600")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pause = common::pause_dir(dir.path());
    doppel::testing::arm(&pause, "verify-except").unwrap();
    let args = [
        "verify",
        "--table",
        "orders",
        "--against",
        &old,
        "--chunk-rows",
        "1000",
        "--max-keys",
        "1",
        "--rechecks",
        "0",
        "--dsn",
        &dsn,
    ];
    let child = Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args(args)
        .env(doppel::testing::PAUSE_DIR_VAR, &pause)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("doppel verify starts");
    let reached =
        doppel::testing::wait_reached(&pause, "verify-except", Duration::from_secs(60)).await;
    assert!(reached.is_some(), "the listing of a whole chunk is reached");
    let locker = cluster.connect("postgres").await.unwrap();
    locker.batch_execute("BEGIN").await.unwrap();
    let granted = tokio::time::timeout(
        Duration::from_secs(30),
        locker.batch_execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"),
    )
    .await;
    assert!(
        matches!(granted, Ok(Ok(()))),
        "nothing of the verification holds orders while its chunk is listed whole: {granted:?}"
    );
    doppel::testing::release(&pause, "verify-except").unwrap();
    locker.batch_execute("ROLLBACK").await.unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stdout}{stderr}");
    assert!(
        stdout.contains("values differ") && stdout.ends_with("not equal\n"),
        "the differing rows are reported: {stdout}"
    );
}
