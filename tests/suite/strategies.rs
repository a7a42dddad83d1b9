//! The strategy per clause (docs/design.md §1.10): for every clause form of the issue, the plan
//! says which strategy it takes (a table of clause -> strategy), and `--execute` takes it:
//! the direct and online ones on the table itself (its OID unchanged) while a writer runs and
//! sees no wait longer than the lock timeout (and a monitor of `pg_locks` sees no lock that
//! blocks writes held longer than it), the shadow ones through a cutover (a new OID). A
//! failing `VALIDATE`, NOT NULL or unique build leaves nothing behind and names the offending
//! keys (exit 8). `doppel history` shows every run with its outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use doppel::cancel::Cancel;
use doppel::plan::Strategy;
use doppel::run::{self, Outcome};
use tokio_postgres::Client;

use crate::common::locks::LockWatch;
use crate::common::{self, Tune};

/// `--lock-timeout` of these runs.
const LOCK_TIMEOUT: Duration = Duration::from_millis(200);

/// What the writer may wait beyond the lock timeout: the lock's own hold (milliseconds) and
/// the scheduling noise of a shared 2-core machine.
const SLACK: Duration = Duration::from_millis(400);

/// Rows of each clause's table.
const ROWS: i64 = 20_000;

/// One row of the clause -> strategy table.
struct Case {
    /// The clause.
    clause: &'static str,
    /// The strategy the plan must choose.
    strategy: Strategy,
    /// The table has no primary key (for `ADD PRIMARY KEY`).
    no_key: bool,
    /// More setup on the table `{t}`.
    setup: &'static str,
    /// A query over `{t}` that is true once the clause took effect.
    effect: &'static str,
}

const fn case(clause: &'static str, strategy: Strategy, effect: &'static str) -> Case {
    Case {
        clause,
        strategy,
        no_key: false,
        setup: "",
        effect,
    }
}

/// Every clause form named by the issue, with the strategy it must take.
const CASES: &[Case] = &[
    // metadata-only: direct
    case("ADD COLUMN extra int", Strategy::Direct, "SELECT count(extra) = 0 FROM {t}"),
    case(
        "ADD COLUMN flag boolean NOT NULL DEFAULT false",
        Strategy::Direct,
        "SELECT bool_and(NOT flag) FROM {t}",
    ),
    case(
        "DROP COLUMN dropme",
        Strategy::Direct,
        "SELECT NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{t}'::regclass AND attname = 'dropme' AND NOT attisdropped)",
    ),
    case(
        "RENAME COLUMN note TO remark",
        Strategy::Direct,
        "SELECT count(remark) > 0 FROM {t}",
    ),
    case(
        "ALTER COLUMN v SET DEFAULT 7",
        Strategy::Direct,
        "SELECT EXISTS (SELECT 1 FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = '{t}'::regclass AND a.attname = 'v' AND pg_get_expr(d.adbin, d.adrelid) = '7')",
    ),
    case(
        "ALTER COLUMN note DROP DEFAULT",
        Strategy::Direct,
        "SELECT NOT EXISTS (SELECT 1 FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = '{t}'::regclass AND a.attname = 'note')",
    ),
    case(
        "ALTER COLUMN must DROP NOT NULL",
        Strategy::Direct,
        "SELECT NOT attnotnull FROM pg_attribute WHERE attrelid = '{t}'::regclass AND attname = 'must'",
    ),
    case(
        "ALTER COLUMN code TYPE varchar(40)",
        Strategy::Direct,
        "SELECT format_type(atttypid, atttypmod) = 'character varying(40)' FROM pg_attribute WHERE attrelid = '{t}'::regclass AND attname = 'code'",
    ),
    // scan-only: PostgreSQL's online recipes
    case(
        "ALTER COLUMN v SET NOT NULL",
        Strategy::Online,
        "SELECT attnotnull FROM pg_attribute WHERE attrelid = '{t}'::regclass AND attname = 'v'",
    ),
    Case {
        // About 100 µs a row: the VALIDATE scans for a second or more, longer than the lock
        // timeout, so a write-blocking lock held through it would show.
        setup: "CREATE FUNCTION slow_positive(n int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE
                AS $$ DECLARE x bigint := 0; BEGIN FOR i IN 1..1500 LOOP x := x + i; END LOOP; RETURN n > 0; END $$",
        ..case(
            "ADD CONSTRAINT v_slow_positive CHECK (slow_positive(v))",
            Strategy::Online,
            "SELECT convalidated FROM pg_constraint WHERE conrelid = '{t}'::regclass AND conname = 'v_slow_positive'",
        )
    },
    case(
        "ADD CONSTRAINT {t}_parent_fk FOREIGN KEY (parent_id) REFERENCES parents(id)",
        Strategy::Online,
        "SELECT convalidated FROM pg_constraint WHERE conrelid = '{t}'::regclass AND contype = 'f'",
    ),
    case(
        "ADD COLUMN parent2 int REFERENCES parents(id)",
        Strategy::Online,
        "SELECT convalidated FROM pg_constraint WHERE conrelid = '{t}'::regclass AND contype = 'f'",
    ),
    case(
        "ADD CONSTRAINT {t}_code_key UNIQUE (code)",
        Strategy::Online,
        "SELECT count(*) = 1 FROM pg_constraint c JOIN pg_index i ON i.indexrelid = c.conindid WHERE c.conrelid = '{t}'::regclass AND c.contype = 'u' AND i.indisvalid",
    ),
    Case {
        no_key: true,
        ..case(
            "ADD PRIMARY KEY (id)",
            Strategy::Online,
            "SELECT count(*) = 1 FROM pg_index WHERE indrelid = '{t}'::regclass AND indisprimary AND indisvalid",
        )
    },
    // rewrites, and what PostgreSQL refuses directly: the shadow
    case(
        "ALTER COLUMN v TYPE bigint",
        Strategy::Shadow,
        "SELECT format_type(atttypid, atttypmod) = 'bigint' FROM pg_attribute WHERE attrelid = '{t}'::regclass AND attname = 'v'",
    ),
    case(
        "ADD COLUMN stamp timestamptz DEFAULT clock_timestamp()",
        Strategy::Shadow,
        "SELECT count(stamp) > 0 FROM {t}",
    ),
    Case {
        setup: "CREATE VIEW {t}_codes AS SELECT id, code FROM {t}",
        ..case(
            "ALTER COLUMN code TYPE varchar(40)",
            Strategy::Shadow,
            "SELECT format_type(atttypid, atttypmod) = 'character varying(40)' FROM pg_attribute WHERE attrelid = '{t}'::regclass AND attname = 'code'",
        )
    },
    case(
        "ADD CONSTRAINT {t}_v_excl EXCLUDE USING btree (v WITH =)",
        Strategy::Shadow,
        "SELECT count(*) = 1 FROM pg_constraint WHERE conrelid = '{t}'::regclass AND contype = 'x'",
    ),
];

/// Creates `parents` (ids 1 to 10).
async fn create_parents(client: &Client) {
    client
        .batch_execute(
            "CREATE TABLE parents (id int PRIMARY KEY);
             INSERT INTO parents SELECT generate_series(1, 10)",
        )
        .await
        .unwrap();
}

/// Creates the table `t` of a case with [`ROWS`] rows: `id`, `v` (nullable, all positive),
/// `code varchar(20)` (unique values), `note` (default), `must` (NOT NULL), `dropme`,
/// `parent_id` (valid), and `w`, the column the writer updates.
async fn create_case_table(client: &Client, t: &str, no_key: bool, setup: &str) {
    let key = if no_key { "" } else { " PRIMARY KEY" };
    client
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int{key}, v int, code varchar(20), note text DEFAULT 'n',
                               must int NOT NULL DEFAULT 1, dropme int, parent_id int, w int NOT NULL DEFAULT 0);
             INSERT INTO {t} (id, v, code, parent_id) SELECT i, i, 'c' || i, 1 + i % 10 FROM generate_series(1, {ROWS}) i;
             CREATE SEQUENCE {t}_ids START {start};
             {setup};
             ANALYZE {t};",
            start = ROWS + 1,
            setup = setup.replace("{t}", t),
        ))
        .await
        .unwrap();
}

/// A writer on a case table: updates `w` of random rows and inserts valid rows, one
/// statement per transaction, recording the worst latency and any error.
struct Writer {
    stop: Arc<AtomicBool>,
    worst_us: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<(u64, Vec<String>)>,
}

impl Writer {
    async fn start(config: &tokio_postgres::Config, t: &str) -> Writer {
        let client = doppel_testkit::connect(config).await.unwrap();
        client
            .batch_execute("SET application_name = 'case writer'")
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let worst_us = Arc::new(AtomicU64::new(0));
        let (s, w, t) = (stop.clone(), worst_us.clone(), t.to_string());
        let handle = tokio::spawn(async move {
            let (mut done, mut errors, mut n) = (0u64, Vec::new(), 0u64);
            while !s.load(Ordering::SeqCst) {
                n += 1;
                let sql = if n % 4 == 0 {
                    format!(
                        "INSERT INTO {t} (id, v, code, parent_id) SELECT x, x, 'c' || x, 1 + x % 10 FROM nextval('{t}_ids') x"
                    )
                } else {
                    format!(
                        "UPDATE {t} SET w = w + 1 WHERE id = {}",
                        1 + (n * 7919) % ROWS as u64
                    )
                };
                let started = Instant::now();
                match client.batch_execute(&sql).await {
                    Ok(()) => done += 1,
                    Err(e) if errors.len() < 5 => errors.push(format!("{sql}: {e}")),
                    Err(_) => {}
                }
                w.fetch_max(started.elapsed().as_micros() as u64, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (done, errors)
        });
        Writer {
            stop,
            worst_us,
            handle,
        }
    }

    /// Stops it: transactions done, errors, worst latency.
    async fn stop(self) -> (u64, Vec<String>, Duration) {
        self.stop.store(true, Ordering::SeqCst);
        let (done, errors) = self.handle.await.unwrap();
        (
            done,
            errors,
            Duration::from_micros(self.worst_us.load(Ordering::SeqCst)),
        )
    }
}

/// The options of a case's run: the per-clause strategy, the lock timeout of this module.
fn case_options(dir: &std::path::Path, t: &str, clause: &str) -> run::RunOptions {
    let mut options = common::options(dir, t, &[clause]).strategy_auto();
    options.lock_timeout = LOCK_TIMEOUT;
    options.cutover_retries = 20;
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_clause_takes_the_strategy_its_plan_names() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    create_parents(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let mut table = Vec::new();
    for (n, c) in CASES.iter().enumerate() {
        let t = format!("c{n}");
        let clause = c.clause.replace("{t}", &t);
        create_case_table(&client, &t, c.no_key, c.setup).await;
        let oid = common::oid_of(&client, &t).await;

        let dry = run::RunOptions {
            execute: false,
            ..case_options(dir.path(), &t, &clause)
        };
        let Outcome::Planned(plan) = run::run(&config, &dry, &Cancel::never()).await.unwrap()
        else {
            panic!("a dry run")
        };
        assert_eq!(plan.clauses.len(), 1, "{clause}");
        assert_eq!(
            plan.clauses[0].strategy, c.strategy,
            "{clause}: {:?}",
            plan.clauses[0]
        );

        let writer = Writer::start(&config, &t).await;
        let watch = LockWatch::start(&config, oid).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let outcome = run::run(
            &config,
            &case_options(dir.path(), &t, &clause),
            &Cancel::never(),
        )
        .await
        .unwrap_or_else(|e| panic!("{clause}: {e:#}"));
        let took = started.elapsed();
        let longest_lock = watch.stop().await;
        let (writes, errors, worst) = writer.stop().await;
        let oid_after = common::oid_of(&client, &t).await;
        let effect = c.effect.replace("{t}", &t);
        let took_effect: bool = client
            .query_one(&effect, &[])
            .await
            .unwrap_or_else(|e| panic!("{clause}: {effect}: {e}"))
            .get(0);
        assert!(took_effect, "{clause}: {effect}");
        assert!(errors.is_empty(), "{clause}: the writer failed: {errors:?}");
        assert!(writes > 0, "{clause}: the writer wrote nothing");
        match (c.strategy, outcome) {
            (Strategy::Shadow, Outcome::Migrated(_)) => assert_ne!(oid_after, oid, "{clause}"),
            (Strategy::Direct | Strategy::Online, Outcome::Altered(report)) => {
                assert_eq!(oid_after, oid, "{clause}: the OID changed");
                assert_eq!(report.oid_after, oid);
                assert!(
                    worst < LOCK_TIMEOUT + SLACK,
                    "{clause}: the writer waited {worst:?}"
                );
                assert!(
                    longest_lock < LOCK_TIMEOUT,
                    "{clause}: a lock blocking writes was held {longest_lock:?}"
                );
            }
            (s, other) => panic!("{clause}: planned {s:?}, ran {other:?}"),
        }
        table.push(format!(
            "{:<62} {:<7} {:>7.0} ms  writer worst {:>5.1} ms  longest write-blocking lock {:>5.1} ms",
            clause,
            c.strategy.label(),
            took.as_secs_f64() * 1000.0,
            worst.as_secs_f64() * 1000.0,
            longest_lock.as_secs_f64() * 1000.0
        ));
    }
    println!("clause -> strategy ({ROWS} rows each, lock_timeout {LOCK_TIMEOUT:?}):");
    for line in &table {
        println!("  {line}");
    }
    assert_history_lists(&cluster, CASES.len()).await;
    assert_no_leftovers(&client).await;
}

/// Nothing of a run is left but the old tables the shadow runs keep: no slot, publication,
/// shadow table, recipe index or helper constraint.
async fn assert_no_leftovers(client: &Client) {
    common::wait_until_async(Duration::from_secs(15), || async {
        common::scalar(client, "SELECT count(*) FROM pg_replication_slots").await == 0
    })
    .await;
    let left: Vec<String> = client
        .query(
            "SELECT 'slot ' || slot_name FROM pg_replication_slots
             UNION ALL SELECT 'publication ' || pubname FROM pg_publication
             UNION ALL SELECT 'relation ' || relname FROM pg_class
               WHERE relname LIKE '\\_doppel\\_%' AND relname NOT LIKE '\\_doppel\\_%\\_old\\_%'
             UNION ALL SELECT 'constraint ' || conname FROM pg_constraint
               WHERE conname LIKE '\\_doppel\\_%' AND conname NOT LIKE '\\_doppel\\_%\\_old\\_%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `doppel history --json` lists `runs` succeeded runs, each with its strategy.
async fn assert_history_lists(cluster: &doppel_testkit::cluster::LocalCluster, runs: usize) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args(["history", "--json", "--dsn", &cluster.conninfo("postgres")])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let executed: Vec<&serde_json::Value> = rows.iter().filter(|r| r["kind"] == "run").collect();
    assert_eq!(executed.len(), runs, "{rows:#?}");
    for r in executed {
        assert_eq!(r["outcome"], "succeeded", "{r}");
        assert_eq!(r["exit_code"], 0, "{r}");
        assert!(r["strategies"][0]["strategy"].is_string(), "{r}");
        assert!(
            !r["operator"].as_str().unwrap_or_default().is_empty(),
            "{r}"
        );
        assert!(!r["ended_at"].is_null(), "{r}");
    }
}

/// The table's constraints and indexes (with validity), and its OID and row digest.
async fn shape(client: &Client, t: &str) -> (u32, Vec<String>, Vec<String>, String) {
    let row = client
        .query_one(
            &format!(
                "SELECT '{t}'::regclass::oid,
                        ARRAY(SELECT conname || ':' || convalidated FROM pg_constraint WHERE conrelid = '{t}'::regclass ORDER BY 1),
                        ARRAY(SELECT indexrelid::regclass::text || ':' || indisvalid FROM pg_index WHERE indrelid = '{t}'::regclass ORDER BY 1),
                        (SELECT md5(string_agg(x::text, ',' ORDER BY id)) FROM {t} x)"
            ),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_validate_or_unique_build_leaves_nothing_and_names_the_keys() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    create_parents(&client).await;
    let dir = tempfile::tempdir().unwrap();
    create_case_table(&client, "f", false, "").await;
    // Offenders: v <= 0 at ids 17 and 4242, a NULL v at id 99, code 'c5' twice, an orphan.
    client
        .batch_execute(
            "UPDATE f SET v = -1 WHERE id IN (17, 4242);
             UPDATE f SET v = NULL WHERE id = 99;
             UPDATE f SET code = 'c5' WHERE id = 6;
             UPDATE f SET parent_id = 77 WHERE id = 123;",
        )
        .await
        .unwrap();
    let before = shape(&client, "f").await;
    let cases: [(&str, &[&str]); 4] = [
        (
            "ADD CONSTRAINT f_v_positive CHECK (v > 0)",
            &["(id)=(17)", "(id)=(4242)"],
        ),
        ("ALTER COLUMN v SET NOT NULL", &["(id)=(99)"]),
        (
            "ADD CONSTRAINT f_code_key UNIQUE (code)",
            &["(code)=(c5) appears 2 times"],
        ),
        (
            "ADD CONSTRAINT f_parent_fk FOREIGN KEY (parent_id) REFERENCES parents(id)",
            &["(id)=(123): (parent_id)=(77)"],
        ),
    ];
    for (clause, keys) in cases {
        let e = run::run(
            &config,
            &case_options(dir.path(), "f", clause),
            &Cancel::never(),
        )
        .await
        .expect_err(clause);
        let message = format!("{e:#}");
        assert_eq!(doppel::failure::exit_code(&e), 8, "{clause}: {message}");
        for key in keys {
            assert!(
                message.contains(key),
                "{clause}: {key} not named: {message}"
            );
        }
        assert!(
            message.contains("nothing of the unfinished clauses is left"),
            "{clause}: {message}"
        );
        assert!(message.contains("; removed: "), "{clause}: {message}");
        if clause.contains("UNIQUE") {
            assert!(
                message.contains("DROP INDEX CONCURRENTLY IF EXISTS"),
                "{message}"
            );
        }
        assert_eq!(
            shape(&client, "f").await,
            before,
            "{clause}: something was left"
        );
        println!("{clause}: {message}");
    }
    assert_no_leftovers(&client).await;
    // Each failure is in the history, with its exit code.
    let failed = common::scalar(
        &client,
        "SELECT count(*) FROM doppel.migrations WHERE outcome = 'failed' AND exit_code = 8 AND error LIKE '%offending rows%'",
    )
    .await;
    assert_eq!(failed, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_killed_recipe_left_is_refused_then_removed_by_cleanup() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    create_parents(&client).await;
    create_case_table(&client, "k", false, "UPDATE k SET code = 'c1' WHERE id = 2").await;
    let oid = common::oid_of(&client, "k").await;
    // What a run killed during its recipes leaves: the invalid index of a concurrent build
    // that failed, a helper check.
    let failed = client
        .batch_execute(&format!(
            "CREATE UNIQUE INDEX CONCURRENTLY _doppel_{oid}_u1 ON k (code)"
        ))
        .await;
    assert!(failed.is_err(), "the build fails on the duplicate");
    client
        .batch_execute(&format!(
            "ALTER TABLE k ADD CONSTRAINT _doppel_{oid}_nn1 CHECK (v IS NOT NULL) NOT VALID"
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = run::run(
        &config,
        &case_options(dir.path(), "k", "ALTER COLUMN v SET NOT NULL"),
        &Cancel::never(),
    )
    .await
    .expect_err("refused");
    assert_eq!(doppel::failure::exit_code(&e), 2);
    let message = format!("{e:#}");
    assert!(
        message.contains(&format!("index _doppel_{oid}_u1 on")),
        "{message}"
    );
    assert!(
        message.contains(&format!("constraint _doppel_{oid}_nn1 on")),
        "{message}"
    );
    assert!(message.contains("doppel cleanup"), "{message}");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args([
            "cleanup",
            "--dsn",
            &cluster.conninfo("postgres"),
            "--table",
            "k",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("invalid index _doppel_{oid}_u1")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("constraint _doppel_{oid}_nn1")),
        "{stdout}"
    );
    assert_no_leftovers(&client).await;
    let Outcome::Altered(_) = run::run(
        &config,
        &case_options(dir.path(), "k", "ALTER COLUMN v SET NOT NULL"),
        &Cancel::never(),
    )
    .await
    .unwrap() else {
        panic!("altered directly")
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_steps_wait_for_the_throttle_answer_the_socket_and_abort_cleanly() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    create_parents(&client).await;
    create_case_table(&client, "o", false, "").await;
    let before = shape(&client, "o").await;
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("throttle");
    let socket = dir.path().join("o.sock");
    std::fs::write(&flag, "").unwrap();
    let clause = "ADD CONSTRAINT o_v_positive CHECK (v > 0)";
    let mut options = case_options(dir.path(), "o", clause).control_socket(socket.clone());
    options.throttle.throttle_flag_file = Some(flag.clone());
    options.history.enabled = false;

    // Throttled: nothing runs; the socket says so; `abort` ends the run with exit 3.
    let (run_config, run_options) = (config.clone(), options.clone());
    let run =
        tokio::spawn(async move { run::run(&run_config, &run_options, &Cancel::never()).await });
    let status = || async {
        doppel::ops::control::send(&socket, "status --json")
            .await
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
    };
    let throttled = common::wait_until_async(Duration::from_secs(30), || async {
        status()
            .await
            .is_some_and(|s| s["throttled"] == true && s["phase"] == "altering directly")
    })
    .await;
    assert!(
        throttled,
        "the direct run reports itself throttled: {:?}",
        status().await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        shape(&client, "o").await,
        before,
        "nothing ran while throttled"
    );
    assert!(doppel::ops::control::send(&socket, "abort").await.is_ok());
    let e = run.await.unwrap().expect_err("aborted");
    assert_eq!(doppel::failure::exit_code(&e), 3, "{e:#}");
    assert_eq!(shape(&client, "o").await, before);

    // Once the flag is gone it runs; --no-history leaves no row.
    std::fs::remove_file(&flag).unwrap();
    let Outcome::Altered(_) = run::run(&config, &options, &Cancel::never()).await.unwrap() else {
        panic!("altered directly")
    };
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM pg_class WHERE oid = to_regclass('doppel.migrations')"
        )
        .await,
        0,
        "--no-history writes no history"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_key_through_the_shadow_is_validated_after_the_cutover_naming_its_orphans() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    create_parents(&client).await;
    create_case_table(
        &client,
        "s",
        false,
        "UPDATE s SET parent_id = 77 WHERE id IN (5, 6)",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let clauses = [
        "ALTER COLUMN v TYPE bigint",
        "ADD CONSTRAINT s_parent_fk FOREIGN KEY (parent_id) REFERENCES parents(id)",
    ];
    let options = common::options(dir.path(), "s", &clauses).strategy_auto();
    let Outcome::Migrated(report) = run::run(&config, &options, &Cancel::never()).await.unwrap()
    else {
        panic!("a shadow run")
    };
    assert!(
        report
            .clauses
            .iter()
            .all(|c| c.strategy == Strategy::Shadow)
    );
    assert!(
        report.clauses[1].reason.contains("rides in the shadow"),
        "{:?}",
        report.clauses
    );
    let (name, why) = &report.cutover.unvalidated[0];
    assert_eq!(name, "s_parent_fk");
    assert!(why.contains("orphan keys: 2 row(s)"), "{why}");
    assert!(why.contains("(id)=(5): (parent_id)=(77)"), "{why}");
    // The key is there, NOT VALID, and enforced for new rows.
    assert_eq!(
        common::text(&client, "SELECT convalidated::text FROM pg_constraint WHERE conname = 's_parent_fk' AND conrelid = 's'::regclass").await.as_deref(),
        Some("false")
    );
    assert!(
        client
            .batch_execute("INSERT INTO s (id, parent_id) VALUES (-1, 99)")
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_expressions_doppel_cannot_use_are_refused() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    create_parents(&client).await;
    create_case_table(
        &client,
        "b",
        false,
        "ALTER TABLE b ADD COLUMN g int GENERATED ALWAYS AS (v * 2) STORED",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    for (backfill, check, said) in [
        (
            "nope = 1",
            doppel::failure::Check::Backfill,
            "has no column \"nope\"",
        ),
        (
            "id = 1",
            doppel::failure::Check::Backfill,
            "primary-key column",
        ),
        (
            "g = 1",
            doppel::failure::Check::Backfill,
            "generated column",
        ),
        (
            "extra",
            doppel::failure::Check::Backfill,
            "column = expression",
        ),
        (
            "extra = no_such_column + 1",
            doppel::failure::Check::Projection,
            "no_such_column",
        ),
        (
            "extra = xmin::text::int",
            doppel::failure::Check::Projection,
            "a streamed row",
        ),
    ] {
        let options = common::options(dir.path(), "b", &["ADD COLUMN extra int"])
            .strategy_auto()
            .backfills(&[backfill]);
        let e = run::run(&config, &options, &Cancel::never())
            .await
            .expect_err(backfill);
        let refused = e
            .downcast_ref::<doppel::failure::Refused>()
            .unwrap_or_else(|| panic!("{backfill}: {e:#}"));
        let r = refused
            .find(check)
            .unwrap_or_else(|| panic!("{backfill}: {refused}"));
        assert!(r.to_string().contains(said), "{backfill}: {r}");
    }
    common::assert_no_doppel_objects(&client).await;
}
