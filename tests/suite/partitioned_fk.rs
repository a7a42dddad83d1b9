//! Foreign keys from partitioned tables to the migrated table (issue 15, item 2): a key
//! defined on a partitioned parent (PostgreSQL clones it onto every partition, through a
//! sub-partitioned member down to the leaves) and keys defined on each partition of another
//! partitioned table reference the migrated table. Under the twin-table writer on the
//! migrated table (inserts, updates, deletes and key changes that cascade into the
//! partitions, moving rows between them) and a second writer inserting into the partitions,
//! the run migrates it; afterwards every key is where it was, under its name, validated,
//! references the new table and enforces itself on every leaf; the rollback script moves
//! them back the same way. Before PostgreSQL 18 the parent's key moves through its leaves
//! (`dependents/foreign_key/partitioned.rs`); on 18 it is re-added `NOT VALID` on the
//! parent. Run on another major with `DOPPEL_PG_BINDIR`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::run::{self, Outcome};
use doppel_testkit::workload::{self, Workload};
use tokio_postgres::Client;

use crate::common::{self, Tune};

/// `pay`: list-partitioned on `kind` (a member range-sub-partitioned on `id` with a
/// default, a default member), its key to `orders` defined on the parent with cascades (the
/// key is not in the partition key: the tree writer moves rows between partitions by
/// updating `kind`). `refund`: hash-partitioned, a key of its own on each partition.
const TREES: &str = "
CREATE TABLE pay (id bigserial, order_id bigint, kind int NOT NULL, amount int)
  PARTITION BY LIST (kind);
CREATE TABLE pay_k0 PARTITION OF pay FOR VALUES IN (0);
CREATE TABLE pay_k1 PARTITION OF pay FOR VALUES IN (1);
CREATE TABLE pay_k2 PARTITION OF pay FOR VALUES IN (2) PARTITION BY RANGE (id);
CREATE TABLE pay_k2_low PARTITION OF pay_k2 FOR VALUES FROM (MINVALUE) TO (2000);
CREATE TABLE pay_k2_rest PARTITION OF pay_k2 DEFAULT;
CREATE TABLE pay_default PARTITION OF pay DEFAULT;
ALTER TABLE pay ADD CONSTRAINT pay_order_fk FOREIGN KEY (order_id) REFERENCES orders (id)
  ON UPDATE CASCADE ON DELETE CASCADE;
CREATE TABLE refund (id bigserial, order_id bigint, amount int) PARTITION BY HASH (id);
CREATE TABLE refund_0 PARTITION OF refund FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE refund_1 PARTITION OF refund FOR VALUES WITH (MODULUS 2, REMAINDER 1);
ALTER TABLE refund_0 ADD CONSTRAINT refund_0_fk FOREIGN KEY (order_id) REFERENCES orders (id)
  ON UPDATE CASCADE ON DELETE CASCADE;
ALTER TABLE refund_1 ADD CONSTRAINT refund_1_fk FOREIGN KEY (order_id) REFERENCES orders (id)
  ON UPDATE CASCADE ON DELETE CASCADE;
INSERT INTO pay (order_id, kind, amount) SELECT id, id % 4, 1 FROM orders;
INSERT INTO refund (order_id, amount) SELECT id, 2 FROM orders WHERE id % 3 = 0;
";

/// Every foreign key of the two trees: relation, name, parent key's relation, validated,
/// definition and referenced table, one line each.
const KEYS: &str = "SELECT string_agg(format('%s %s parent=%s valid=%s %s -> %s',
         c.conrelid::regclass, c.conname, p.conrelid::regclass, c.convalidated,
         pg_get_constraintdef(c.oid), c.confrelid::regclass), E'\\n'
         ORDER BY c.conrelid::regclass::text, c.conname)
  FROM pg_constraint c LEFT JOIN pg_constraint p ON p.oid = c.conparentid
  WHERE c.contype = 'f' AND (c.conrelid::regclass::text LIKE 'pay%'
                             OR c.conrelid::regclass::text LIKE 'refund%')";

/// Inserts into both trees, each row referencing an existing order, and moves `pay` rows
/// between partitions, until `stop`; an insert that races a delete of its order fails with
/// a foreign key violation (23503) and is counted apart. Returns (statements committed,
/// statements refused).
///
/// A move can deadlock with the twin writer without doppel in the picture: the move locks
/// its `pay` row, then its key check waits for the order's row, while the twin writer's
/// change of that order's key holds the order's row and its cascade waits for the `pay` row
/// (reproduced with two pgbench scripts and no doppel: dozens of `40P01` in 30 s). The
/// writer's session sets `deadlock_timeout` to 20 ms so that it, not the twin writer whose
/// errors void the oracle, is the one PostgreSQL aborts; such a deadlock (40P01) is counted
/// with the refusals.
fn start_tree_writer(client: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        client
            .batch_execute("SET deadlock_timeout = '20ms'")
            .await
            .unwrap();
        let (inserted, refused) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let sql = match n % 3 {
                0 => {
                    "INSERT INTO pay (order_id, kind, amount)
                     SELECT id, (random() * 4)::int, 3 FROM orders ORDER BY random() LIMIT 1"
                }
                1 => "UPDATE pay SET kind = (kind + 1) % 5 WHERE id = (random() * 4000)::int",
                _ => {
                    "INSERT INTO refund (order_id, amount)
                     SELECT id, 4 FROM orders ORDER BY random() LIMIT 1"
                }
            };
            match client.batch_execute(sql).await {
                Ok(()) => inserted.fetch_add(1, Ordering::Relaxed),
                Err(e) if matches!(e.code().map(|c| c.code()), Some("23503" | "40P01")) => {
                    refused.fetch_add(1, Ordering::Relaxed)
                }
                Err(e) => panic!("tree writer: {e:?}"),
            };
        }
        (inserted.into_inner(), refused.into_inner())
    })
}

/// Every leaf of both trees refuses a row whose order does not exist (rows inserted through
/// the parents, with keys that reach every leaf).
async fn every_leaf_refuses_an_orphan(client: &Client) {
    let leaves = "SELECT count(DISTINCT tableoid) FROM ";
    for (parent, id, kind) in [
        ("pay", -1, 0),
        ("pay", -2, 1),
        ("pay", -3, 2),
        ("pay", 900_000, 2),
        ("pay", -4, 4),
        ("refund", -1, 0),
        ("refund", -2, 0),
        ("refund", -3, 0),
    ] {
        let columns = if parent == "pay" { ", kind" } else { "" };
        let kind = if parent == "pay" {
            format!(", {kind}")
        } else {
            String::new()
        };
        let sql =
            format!("INSERT INTO {parent} (id, order_id{columns}) VALUES ({id}, 999999999{kind})");
        assert_eq!(common::fails(client, &sql).await, "23503", "{sql}");
        // The same row with an existing order lands in the leaf that refused it.
        client
            .batch_execute(&format!(
                "INSERT INTO {parent} (id, order_id{columns})
                 SELECT {id}, min(id){kind} FROM orders WHERE id > 0"
            ))
            .await
            .unwrap();
    }
    assert_eq!(
        common::scalar(
            client,
            &format!("{leaves} pay WHERE id IN (-1, -2, -3, 900000, -4)")
        )
        .await,
        5
    );
    assert_eq!(
        common::scalar(client, &format!("{leaves} refund WHERE id IN (-1, -2, -3)")).await,
        2
    );
}

/// The rows of `pay` and `refund` whose order does not exist (0 when every key holds).
async fn orphans(client: &Client) -> i64 {
    common::scalar(
        client,
        "SELECT (SELECT count(*) FROM pay p WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = p.order_id))
              + (SELECT count(*) FROM refund r WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = r.order_id))",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_defined_on_partitioned_tables_and_on_partitions_move_and_stay_valid() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_tables(&client, "orders", "orders_twin", 3_000)
        .await
        .unwrap();
    client.batch_execute(TREES).await.unwrap();
    let keys_before = common::text(&client, KEYS).await.unwrap();
    let version = common::scalar(
        &client,
        "SELECT current_setting('server_version_num')::bigint",
    )
    .await;

    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let writer = Workload::start(&config, "orders", "orders_twin", 11, Duration::ZERO)
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tree_writer = start_tree_writer(cluster.connect("postgres").await.unwrap(), stop.clone());
    let dir = tempfile::tempdir().unwrap();
    let opts = common::options(
        dir.path(),
        "orders",
        &[
            "ALTER COLUMN customer_id TYPE bigint",
            "ADD COLUMN note2 text",
        ],
    )
    .chunk_time(Duration::from_millis(20))
    .initial_rows(300)
    .cutover_retries(30)
    .fence_timeout(Duration::from_millis(2000))
    .status_interval(Duration::from_secs(60));
    let outcome = run::run(&config, &opts, &Cancel::never()).await;
    stop.store(true, Ordering::Relaxed);
    let report = writer.stop().await.unwrap();
    let (inserted, refused) = tree_writer.await.unwrap();
    let Outcome::Migrated(run) = outcome.unwrap() else {
        panic!("expected a migration")
    };
    eprintln!(
        "server {version}: cutover lock held {:?} ({} attempts); writer {} transactions, tree writer {inserted} statements ({refused} refused by a key or a deadlock with the twin writer)",
        run.cutover.lock_held, run.cutover.attempts, report.transactions
    );
    assert_eq!(report.errors, 0, "writer errors: {:?}", report.first_errors);
    assert!(inserted > 0);
    assert!(
        run.cutover.unvalidated.is_empty(),
        "{:?}",
        run.cutover.unvalidated
    );
    assert_eq!(
        workload::mismatches(&client, "orders", "orders_twin")
            .await
            .unwrap(),
        0
    );
    // Every key is back where it was, under its name, validated, on the new table.
    assert_eq!(common::text(&client, KEYS).await.unwrap(), keys_before);
    let on_new: i64 = common::scalar(
        &client,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND confrelid = 'orders'::regclass",
    )
    .await;
    assert_eq!(
        on_new, 9,
        "pay and the 6 members of its tree, refund_0 and refund_1"
    );
    assert_eq!(orphans(&client).await, 0);
    // The cascades fire from the new table, through the parent's key.
    let some_order =
        common::scalar(&client, "SELECT min(order_id) FROM pay WHERE order_id > 0").await;
    client
        .batch_execute(&format!(
            "UPDATE orders SET id = -id WHERE id = {some_order}"
        ))
        .await
        .unwrap();
    let moved = format!("SELECT count(*) FROM pay WHERE order_id = -{some_order}");
    assert!(common::scalar(&client, &moved).await > 0);
    every_leaf_refuses_an_orphan(&client).await;
    let leftovers = common::scalar(
        &client,
        "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)",
    )
    .await;
    assert_eq!(leftovers, 0, "no slot or publication left");
}

/// Runs `script` with psql, stopping at the first error.
fn psql_file(conninfo: &str, script: &std::path::Path) {
    let output = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-f"])
        .arg(script)
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_script_moves_the_partitioned_keys_back() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_tables(&client, "orders", "orders_twin", 1_000)
        .await
        .unwrap();
    client.batch_execute(TREES).await.unwrap();
    let keys_before = common::text(&client, KEYS).await.unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = common::options(
        dir.path(),
        "orders",
        &["ALTER COLUMN customer_id TYPE bigint"],
    )
    .status_interval(Duration::from_secs(60));
    let Outcome::Migrated(run) = run::run(&config, &opts, &Cancel::never()).await.unwrap() else {
        panic!("expected a migration")
    };
    assert!(
        run.cutover.unvalidated.is_empty(),
        "{:?}",
        run.cutover.unvalidated
    );
    assert_eq!(common::text(&client, KEYS).await.unwrap(), keys_before);

    psql_file(&cluster.conninfo("postgres"), &run.cutover.rollback_path);
    assert_eq!(common::text(&client, KEYS).await.unwrap(), keys_before);
    let ty = common::text(
        &client,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'customer_id'",
    )
    .await;
    assert_eq!(ty.as_deref(), Some("integer"), "the original is back");
    let on_original: i64 = common::scalar(
        &client,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND confrelid = 'orders'::regclass",
    )
    .await;
    assert_eq!(on_original, 9);
    assert_eq!(orphans(&client).await, 0);
    every_leaf_refuses_an_orphan(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascades_into_a_partition_key_are_refused_before_18() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY);
             CREATE TABLE c (t_id int, v int) PARTITION BY RANGE (t_id);
             CREATE TABLE c_1 PARTITION OF c FOR VALUES FROM (MINVALUE) TO (MAXVALUE);
             ALTER TABLE c ADD CONSTRAINT c_t FOREIGN KEY (t_id) REFERENCES t ON UPDATE CASCADE;
             CREATE TABLE d (t_id int, v int) PARTITION BY RANGE (v);
             CREATE TABLE d_1 PARTITION OF d FOR VALUES FROM (MINVALUE) TO (MAXVALUE);
             ALTER TABLE d ADD CONSTRAINT d_t FOREIGN KEY (t_id) REFERENCES t ON UPDATE CASCADE;",
        )
        .await
        .unwrap();
    let version = common::scalar(
        &client,
        "SELECT current_setting('server_version_num')::bigint",
    )
    .await;
    let oid = common::oid_of(&client, "public.t").await;
    let deps = doppel::dependents::read(&client, oid, "doppel_pub")
        .await
        .unwrap();
    let blockers = deps.blockers(&[], &[]);
    if version < i64::from(doppel::dependents::NOT_VALID_ON_PARTITIONED) {
        assert_eq!(blockers.len(), 1, "{blockers:?}");
        assert!(blockers[0].contains("foreign key c_t on the partitioned table \"public\".\"c\""));
        assert!(blockers[0].contains("PostgreSQL 18"), "{}", blockers[0]);
    } else {
        assert!(blockers.is_empty(), "{blockers:?}");
    }
}

/// Killed (SIGKILL) right after the cutover committed, before the after-commit steps: on
/// servers before 18 the parent's key is then on the leaves only, `NOT VALID` and marked;
/// `--resume` validates the leaves' keys and adds the key back on the parent from the marks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_kill_9_after_commit_adds_the_key_back_on_the_parent() {
    let mut stand = crate::kill_phases::Stand::new().await;
    stand.client.batch_execute(TREES).await.unwrap();
    let keys_before = common::text(&stand.client, KEYS).await.unwrap();
    crate::resume::kill_resumable_at(&stand, "committed").await;
    let version = common::scalar(
        &stand.client,
        "SELECT current_setting('server_version_num')::bigint",
    )
    .await;
    let on_parent = common::scalar(
        &stand.client,
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'pay'::regclass AND contype = 'f'",
    )
    .await;
    let marked = common::scalar(
        &stand.client,
        &format!(
            "SELECT count(*) FROM pg_constraint c WHERE contype = 'f'
             AND starts_with(obj_description(c.oid, 'pg_constraint'), '{}')",
            doppel::dependents::PENDING_REATTACH_MARK
        ),
    )
    .await;
    if version < i64::from(doppel::dependents::NOT_VALID_ON_PARTITIONED) {
        assert_eq!((on_parent, marked), (0, 5), "the key waits on the 5 leaves");
    } else {
        assert_eq!(
            (on_parent, marked),
            (1, 0),
            "the key is on the parent, NOT VALID"
        );
    }
    let child = stand.start_run_with(None, &["--resume"], "resume");
    let code = crate::resume::exit_code(child).await;
    let output = stand.output_of("resume");
    crate::resume::assert_completed(&mut stand, code, &output).await;
    assert_eq!(
        common::text(&stand.client, KEYS).await.unwrap(),
        keys_before
    );
    let still_marked = common::scalar(
        &stand.client,
        "SELECT count(*) FROM pg_description WHERE starts_with(description, 'doppel: pending')",
    )
    .await;
    assert_eq!(still_marked, 0);
    assert_eq!(orphans(&stand.client).await, 0);
}

/// The cutover's lock hold when a partitioned table with `partitions` leaves has a key to
/// the migrated table, under a writer, over `runs` migrations: (p50, max) in ms, with the
/// steps inside the lock of the slowest run.
async fn lock_hold(partitions: usize, runs: usize) -> (f64, f64, String) {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let mut ddl = String::from(
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO t SELECT i, i FROM generate_series(1, 20000) i;
         CREATE TABLE c (id bigserial, t_id int NOT NULL, k int NOT NULL) PARTITION BY LIST (k);",
    );
    for p in 0..partitions {
        ddl.push_str(&format!(
            "CREATE TABLE c_{p} PARTITION OF c FOR VALUES IN ({p});"
        ));
    }
    ddl.push_str(&format!(
        "ALTER TABLE c ADD CONSTRAINT c_t FOREIGN KEY (t_id) REFERENCES t (id);
         INSERT INTO c (t_id, k) SELECT i, i % {partitions} FROM generate_series(1, 20000) i;"
    ));
    client.batch_execute(&ddl).await.unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (cluster.connect("postgres").await.unwrap(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sql = format!(
                    "UPDATE t SET v = v + 1 WHERE id = {};
                     INSERT INTO c (t_id, k) VALUES ({}, {})",
                    n % 20000 + 1,
                    n % 20000 + 1,
                    n % partitions as u64
                );
                client.batch_execute(&sql).await.unwrap();
            }
            n
        })
    };
    let mut holds = Vec::new();
    let mut slowest = String::new();
    let types = ["bigint", "int"];
    for i in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let alter = format!("ALTER COLUMN v TYPE {}", types[i % 2]);
        let opts = common::options(dir.path(), "t", &[alter.as_str()])
            .cutover_retries(30)
            .status_interval(Duration::from_secs(60));
        let Outcome::Migrated(run) = run::run(&config, &opts, &Cancel::never()).await.unwrap()
        else {
            panic!("expected a migration")
        };
        assert!(
            run.cutover.unvalidated.is_empty(),
            "{:?}",
            run.cutover.unvalidated
        );
        let ms = run.cutover.lock_held.as_secs_f64() * 1000.0;
        if holds.iter().all(|h| *h < ms) {
            slowest = format!("{:?}", run.cutover.inside_lock);
        }
        holds.push(ms);
        // The kept old table is dropped, as an operator would once satisfied.
        client
            .batch_execute(&format!("DROP TABLE {}", run.plan.names.old_qualified()))
            .await
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    holds.sort_by(f64::total_cmp);
    (holds[holds.len() / 2], holds[holds.len() - 1], slowest)
}

/// The lock hold with 10 and 100 partitions referencing the migrated table, 10 cutovers
/// each under a writer (BENCHMARKS.md). Ignored: about a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: cargo test --test suite partitioned_fk::lock_hold -- --ignored --nocapture"]
async fn lock_hold_with_10_and_100_partitions() {
    for partitions in [10, 100] {
        let (p50, max, steps) = lock_hold(partitions, 10).await;
        eprintln!(
            "{partitions} partitions: lock held p50 {p50:.1} ms, max {max:.1} ms; slowest: {steps}"
        );
    }
}

/// A partition attached to a partitioned table that references the migrated table, while
/// the run copies (what a partition maintenance job does). Before PostgreSQL 18 its key
/// moves through the leaves, which changed: the run stops with exit 8, says to pause the
/// maintenance job, leaves the original untouched and nothing of doppel's. From 18 the key
/// moves on the parent, so the new partition gets it and the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_attached_during_the_run() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_id_v_table(&client, "t", 20_000)
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE c (id int, t_id int NOT NULL, k int NOT NULL) PARTITION BY LIST (k);
             CREATE TABLE c_0 PARTITION OF c FOR VALUES IN (0);
             ALTER TABLE c ADD CONSTRAINT c_t FOREIGN KEY (t_id) REFERENCES t (id);
             INSERT INTO c SELECT i, i, 0 FROM generate_series(1, 1000) i;
             CREATE TABLE c_1 (LIKE c);
             INSERT INTO c_1 SELECT i, i, 1 FROM generate_series(1, 10) i;",
        )
        .await
        .unwrap();
    let version = common::scalar(
        &client,
        "SELECT current_setting('server_version_num')::bigint",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let options = common::options(dir.path(), "t", &["ALTER COLUMN v TYPE bigint"]).slow(30.0);
    let run = tokio::spawn(async move { run::run(&config, &options, &Cancel::never()).await });
    common::wait_copying(&client, "t").await;
    client
        .batch_execute("ALTER TABLE c ATTACH PARTITION c_1 FOR VALUES IN (1)")
        .await
        .unwrap();
    let outcome = run.await.unwrap();
    if version < i64::from(doppel::dependents::NOT_VALID_ON_PARTITIONED) {
        let err = outcome.expect_err("the run must stop");
        assert_eq!(doppel::failure::exit_code(&err), 8, "{err:#}");
        let text = format!("{err:#}");
        assert!(text.contains("partitions of \"public\".\"c\""), "{text}");
        assert!(text.contains("maintenance job"), "{text}");
        common::assert_no_doppel_objects(&client).await;
        let ty = common::text(
            &client,
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'v'",
        )
        .await;
        assert_eq!(ty.as_deref(), Some("integer"), "the original is untouched");
    } else {
        let Outcome::Migrated(run) = outcome.unwrap() else {
            panic!("expected a migration")
        };
        assert!(
            run.cutover.unvalidated.is_empty(),
            "{:?}",
            run.cutover.unvalidated
        );
    }
    let keys = common::text(
        &client,
        "SELECT string_agg(format('%s %s %s', conrelid::regclass, convalidated, confrelid::regclass), ', '
                           ORDER BY conrelid::regclass::text)
         FROM pg_constraint WHERE contype = 'f'",
    )
    .await;
    assert_eq!(keys.as_deref(), Some("c t t, c_0 t t, c_1 t t"));
}

/// Preflight warns when pg_partman's configuration or a pg_cron job maintains a partitioned
/// table whose key moves through its partitions (before 18). The extensions' tables are
/// stood in for by tables of the same names and shapes (`partman.part_config`,
/// `cron.job`): what preflight reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_warns_about_partition_maintenance_jobs() {
    let cluster = common::cluster().await;
    let mut client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v int);
             CREATE TABLE c (t_id int REFERENCES t, k int) PARTITION BY LIST (k);
             CREATE TABLE c_0 PARTITION OF c FOR VALUES IN (0);
             CREATE SCHEMA partman;
             CREATE TABLE partman.part_config (parent_table text PRIMARY KEY, partition_interval text);
             INSERT INTO partman.part_config VALUES ('public.c', '1 month');
             CREATE SCHEMA cron;
             CREATE TABLE cron.job (jobid bigint, schedule text, command text);
             INSERT INTO cron.job VALUES (7, '@daily', 'CALL partman.run_maintenance_proc()'),
                                         (8, '0 * * * *', 'ALTER TABLE public.C DETACH PARTITION c_0');",
        )
        .await
        .unwrap();
    let version = common::scalar(
        &client,
        "SELECT current_setting('server_version_num')::bigint",
    )
    .await;
    let plan = doppel::preflight::run(
        &mut client,
        "t",
        &["ALTER COLUMN v TYPE bigint".to_string()],
        false,
    )
    .await
    .unwrap();
    let warning = plan.warnings.iter().find(|w| w.contains("maintained by"));
    if version < i64::from(doppel::dependents::NOT_VALID_ON_PARTITIONED) {
        let warning = warning.unwrap_or_else(|| panic!("{:?}", plan.warnings));
        assert!(warning.contains("\"public\".\"c\""), "{warning}");
        assert!(
            warning.contains("pg_partman (partman.part_config)"),
            "{warning}"
        );
        assert!(warning.contains("pg_cron job 8 (0 * * * *)"), "{warning}");
        assert!(!warning.contains("pg_cron job 7"), "{warning}");
        assert!(warning.contains("pause the maintenance"), "{warning}");
    } else {
        assert!(warning.is_none(), "{:?}", plan.warnings);
    }
}

/// The referenced key itself widened (`int` to `bigint`) under a writer that inserts into
/// the referencing tree (a key on the parent, range-partitioned, with a default) and deletes
/// from the table (cascading into the tree): the key is back on the parent and its
/// partitions, valid, and no row is orphaned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referenced_key_widened_from_int_to_bigint_under_a_writer() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO t SELECT i, i FROM generate_series(1, 20000) i;
             CREATE TABLE c (id bigserial, t_id int NOT NULL, at int NOT NULL) PARTITION BY RANGE (at);
             CREATE TABLE c_0 PARTITION OF c FOR VALUES FROM (0) TO (100);
             CREATE TABLE c_1 PARTITION OF c FOR VALUES FROM (100) TO (200);
             CREATE TABLE c_d PARTITION OF c DEFAULT;
             ALTER TABLE c ADD CONSTRAINT c_t FOREIGN KEY (t_id) REFERENCES t (id) ON DELETE CASCADE;
             INSERT INTO c (t_id, at) SELECT i, i % 300 FROM generate_series(1, 20000) i;",
        )
        .await
        .unwrap();
    let keys_before = common::text(&client, KEYS.replace("'pay%'", "'c%'").as_str()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (cluster.connect("postgres").await.unwrap(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = 20_000 - (n % 20_000);
                let sql = if n.is_multiple_of(5) {
                    format!("DELETE FROM t WHERE id = {id}")
                } else {
                    format!(
                        "INSERT INTO c (t_id, at) SELECT id, {} FROM t WHERE id = {}",
                        n % 300,
                        n % 20_000 + 1
                    )
                };
                client.batch_execute(&sql).await.unwrap();
            }
            n
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let opts = common::options(dir.path(), "t", &["ALTER COLUMN id TYPE bigint"])
        .cutover_retries(30)
        .status_interval(Duration::from_secs(60));
    let outcome = run::run(&config, &opts, &Cancel::never()).await;
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    let Outcome::Migrated(run) = outcome.unwrap() else {
        panic!("expected a migration")
    };
    eprintln!(
        "cutover lock held {:?}; {writes} writes",
        run.cutover.lock_held
    );
    assert!(
        run.cutover.unvalidated.is_empty(),
        "{:?}",
        run.cutover.unvalidated
    );
    let ty = common::text(
        &client,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'id'",
    )
    .await;
    assert_eq!(ty.as_deref(), Some("bigint"));
    assert_eq!(
        common::text(&client, KEYS.replace("'pay%'", "'c%'").as_str()).await,
        keys_before
    );
    let orphans = common::scalar(
        &client,
        "SELECT count(*) FROM c WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.id = c.t_id)",
    )
    .await;
    assert_eq!(orphans, 0);
    assert_eq!(
        common::fails(&client, "INSERT INTO c (t_id, at) VALUES (999999, 150)").await,
        "23503"
    );
}

/// The revert window with keys from partitioned tables: after the cutover a new order and
/// a payment for it are written to the new table and its tree; `ctl revert` swaps back
/// (the order is written back to the original), and every key is on the restored table as
/// before, valid, with no orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_moves_the_partitioned_keys_back() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_tables(&client, "orders", "orders_twin", 1_000)
        .await
        .unwrap();
    client.batch_execute(TREES).await.unwrap();
    let keys_before = common::text(&client, KEYS).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    let opts = common::options(
        dir.path(),
        "orders",
        &["ALTER COLUMN customer_id TYPE bigint"],
    )
    .control_socket(socket.clone())
    .status_interval(Duration::from_secs(60))
    .revert_window(Duration::from_secs(600));
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let run = tokio::spawn(async move { run::run(&config, &opts, &Cancel::never()).await });
    let streaming = common::wait_until_async(Duration::from_secs(120), || async {
        let Ok(reply) = doppel::ops::control::send(&socket, "status --json").await else {
            return false;
        };
        serde_json::from_str::<serde_json::Value>(&reply)
            .is_ok_and(|s| s["window"]["streaming"] == true)
    })
    .await;
    assert!(streaming, "the revert window streams");
    client
        .batch_execute(
            "INSERT INTO orders (id, customer_id, status, amount) VALUES (50000, 1, 'new', 1);
             INSERT INTO pay (order_id, kind, amount) VALUES (50000, 2, 9);",
        )
        .await
        .unwrap();
    let reply = doppel::ops::control::send_waiting(&socket, "revert", Duration::from_secs(300))
        .await
        .unwrap();
    assert!(reply.starts_with("ok: reverted"), "{reply}");
    let outcome = run.await.unwrap().unwrap();
    assert!(matches!(outcome, Outcome::Migrated(_)), "{outcome:?}");
    let ty = common::text(
        &client,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'customer_id'",
    )
    .await;
    assert_eq!(ty.as_deref(), Some("integer"), "the original is back");
    assert_eq!(common::text(&client, KEYS).await.unwrap(), keys_before);
    assert_eq!(orphans(&client).await, 0);
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM pay WHERE order_id = 50000").await,
        1
    );
    every_leaf_refuses_an_orphan(&client).await;
}

/// Before PostgreSQL 18: a partition attached to the referencing tree between the cutover's
/// commit and the key's return to the parent (pause point `committed`) has no copy of the
/// key; the re-add refuses rather than scan it under SHARE ROW EXCLUSIVE, the run reports
/// the key as not added back with what to run, and every other leaf still enforces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_attached_before_the_re_add_is_reported() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let version = common::scalar(
        &client,
        "SELECT current_setting('server_version_num')::bigint",
    )
    .await;
    if version >= i64::from(doppel::dependents::NOT_VALID_ON_PARTITIONED) {
        return; // the key moves on the parent: nothing waits after the commit
    }
    workload::create_id_v_table(&client, "t", 1_000)
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE c (t_id int NOT NULL, k int NOT NULL) PARTITION BY LIST (k);
             CREATE TABLE c_0 PARTITION OF c FOR VALUES IN (0);
             ALTER TABLE c ADD CONSTRAINT c_t FOREIGN KEY (t_id) REFERENCES t (id);
             INSERT INTO c SELECT i, 0 FROM generate_series(1, 100) i;
             CREATE TABLE c_1 (LIKE c);",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pause = common::pause_dir(dir.path());
    doppel::testing::arm(&pause, "committed").unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let options = common::options(dir.path(), "t", &["ALTER COLUMN v TYPE bigint"]);
    let run =
        tokio::spawn(async move { common::run_paused(&config, &options, &Cancel::never()).await });
    doppel::testing::wait_reached(&pause, "committed", Duration::from_secs(120))
        .await
        .expect("the cutover commits");
    client
        .batch_execute("ALTER TABLE c ATTACH PARTITION c_1 FOR VALUES IN (1)")
        .await
        .unwrap();
    doppel::testing::release(&pause, "committed").unwrap();
    let Outcome::Migrated(report) = run.await.unwrap().unwrap() else {
        panic!("expected a migration")
    };
    let (name, why) = report
        .cutover
        .unvalidated
        .iter()
        .find(|(name, _)| name == "c_t")
        .unwrap_or_else(|| panic!("{:?}", report.cutover.unvalidated));
    assert!(
        why.contains("was not added back on the partitioned table \"public\".\"c\""),
        "{name}: {why}"
    );
    assert!(why.contains("no valid copy of the key: c_1"), "{why}");
    assert_eq!(
        common::fails(&client, "INSERT INTO c_0 VALUES (999999, 0)").await,
        "23503",
        "the leaf keeps enforcing the key"
    );
    let leaf_key_valid = common::scalar(
        &client,
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'c_0'::regclass AND contype = 'f' AND convalidated",
    )
    .await;
    assert_eq!(leaf_key_valid, 1);
}
