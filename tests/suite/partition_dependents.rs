//! What is bound to a single partition of a partitioned table, moved with the tree (issue 15,
//! docs/design.md §1.14): `doppel run --table <partitioned table>` migrates the whole tree,
//! and the dependents of one member move to the new member that takes its name, as those of
//! the partitioned table do; the rollback script moves them back.
//!
//! One range-partitioned tree (three quarters and a default) whose second quarter carries:
//! a trigger `ENABLE ALWAYS` that keeps an audit table equal to the partition's rows (and
//! counts its firings), row security enabled and forced with a policy for a non-owner role,
//! a view reading the partition, a view on that view and one reading both the partition and
//! the partitioned table (moved with either), a publication listing the
//! partition, a statistics object, a rule (`DO INSTEAD NOTHING` on deleting a pinned row)
//! and a foreign key of another table referencing it. Under the tree writer
//! (`common::tree_writer`, mirrored into a twin, rows moving between partitions) the run
//! retypes `amount`; afterwards the tree equals the twin, the audit table equals the
//! partition (so the trigger fired exactly once per row written, through the copy and the
//! cutover), and every object is on the new partition and none left on the kept old one;
//! the trigger fires once per write, the policy filters for the role, the views return the
//! new partition's rows with the new type, the publication lists the new partition, the
//! rule and the foreign key act on it. Then the rollback script (`force=1`: the writer
//! wrote after the cutover) puts every object back on the original partition.
//!
//! Run on another major with `DOPPEL_PG_BINDIR`.

use std::time::Duration;

use doppel_testkit::workload;
use rand::RngExt;
use rand::rngs::StdRng;
use tokio_postgres::Client;

use crate::common::tree_writer::{PINNED_EVERY, TreeWriter};
use crate::common::{self, Tune, scalar, text};
use crate::partitioned_run::{WAIT, finish, migrated, rollback, spawn_run, version};

/// Rows in the tree.
const ROWS: i64 = 4_000;

/// The tree, its twin and the dependents of `ledger_q2` (module docs).
const SETUP: &str = "
CREATE TABLE ledger (id bigint NOT NULL, k date NOT NULL, amount numeric(10,2) NOT NULL,
  customer_id int NOT NULL, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
CREATE TABLE ledger_q1 PARTITION OF ledger FOR VALUES FROM ('2024-01-01') TO ('2024-04-01');
CREATE TABLE ledger_q2 PARTITION OF ledger FOR VALUES FROM ('2024-04-01') TO ('2024-07-01');
CREATE TABLE ledger_q3 PARTITION OF ledger FOR VALUES FROM ('2024-07-01') TO ('2024-10-01');
CREATE TABLE ledger_rest PARTITION OF ledger DEFAULT;
INSERT INTO ledger SELECT i, date '2023-12-01' + (i * 7 % 400), (i % 1000) * 1.25, 1 + i % 100
  FROM generate_series(1, {rows}) i;
CREATE TABLE ledger_twin AS SELECT * FROM ledger;
ALTER TABLE ledger_twin ADD PRIMARY KEY (id);

CREATE TABLE q2_audit (id bigint PRIMARY KEY, amount numeric NOT NULL);
INSERT INTO q2_audit SELECT id, amount FROM ledger_q2;
CREATE TABLE q2_fired (n bigint NOT NULL);
INSERT INTO q2_fired VALUES (0);
CREATE FUNCTION q2_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE q2_fired SET n = n + 1;
  IF TG_OP = 'INSERT' THEN
    INSERT INTO q2_audit VALUES (NEW.id, NEW.amount);
  ELSIF TG_OP = 'UPDATE' THEN
    UPDATE q2_audit SET amount = NEW.amount WHERE id = OLD.id;
  ELSE
    DELETE FROM q2_audit WHERE id = OLD.id;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER q2_audit AFTER INSERT OR UPDATE OR DELETE ON ledger_q2
  FOR EACH ROW EXECUTE FUNCTION q2_audit();
ALTER TABLE ledger_q2 ENABLE ALWAYS TRIGGER q2_audit;

CREATE ROLE q2_reader;
GRANT SELECT ON ledger_q2 TO q2_reader;
ALTER TABLE ledger_q2 ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger_q2 FORCE ROW LEVEL SECURITY;
CREATE POLICY q2_low_customers ON ledger_q2 FOR SELECT TO q2_reader USING (customer_id <= 50);

CREATE VIEW q2_view AS SELECT id, k, amount FROM ledger_q2;
CREATE VIEW q2_view_big AS SELECT id, amount FROM q2_view WHERE amount > 100;
CREATE VIEW q2_share AS SELECT q.id, q.amount, (SELECT sum(amount) FROM ledger) AS total
  FROM ledger_q2 q;
CREATE PUBLICATION q2_pub FOR TABLE ledger_q2;
CREATE STATISTICS q2_stats (ndistinct) ON customer_id, amount FROM ledger_q2;
CREATE RULE q2_keep_pinned AS ON DELETE TO ledger_q2 WHERE OLD.id % 50 = 0 DO INSTEAD NOTHING;
CREATE TABLE q2_refund (id bigint PRIMARY KEY, ledger_id bigint NOT NULL, ledger_k date NOT NULL,
  CONSTRAINT q2_refund_fk FOREIGN KEY (ledger_id, ledger_k) REFERENCES ledger_q2 (id, k));
INSERT INTO q2_refund SELECT id, id, k FROM ledger_q2 WHERE id % 50 = 0;";

/// What is bound to the relation `$1`, one line per object: its own triggers (with their
/// firing state), policies, rules, publications, statistics objects, the views reading it
/// and the foreign keys referencing it (with their validity).
const BOUND_TO: &str = "
SELECT x FROM (
  SELECT format('trigger %s %s', tgname, tgenabled) AS x FROM pg_trigger
    WHERE tgrelid = $1 AND NOT tgisinternal AND tgparentid = 0
  UNION ALL SELECT format('policy %s', polname) FROM pg_policy WHERE polrelid = $1
  UNION ALL SELECT format('rule %s', rulename) FROM pg_rewrite
    WHERE ev_class = $1 AND rulename <> '_RETURN'
  UNION ALL SELECT format('publication %s', p.pubname) FROM pg_publication_rel pr
    JOIN pg_publication p ON p.oid = pr.prpubid WHERE pr.prrelid = $1
  UNION ALL SELECT format('statistics %s', stxname) FROM pg_statistic_ext WHERE stxrelid = $1
  UNION ALL SELECT DISTINCT format('view %s', r.ev_class::regclass) FROM pg_depend d
    JOIN pg_rewrite r ON r.oid = d.objid
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.refobjid = $1 AND r.ev_class <> $1
  UNION ALL SELECT format('foreign key %s on %s, validated %s', conname, conrelid::regclass, convalidated)
    FROM pg_constraint WHERE contype = 'f' AND confrelid = $1 AND conparentid = 0
) s ORDER BY 1";

/// What [`BOUND_TO`] lists for the partition carrying the dependents.
const EXPECTED: [&str; 8] = [
    "foreign key q2_refund_fk on q2_refund, validated t",
    "policy q2_low_customers",
    "publication q2_pub",
    "rule q2_keep_pinned",
    "statistics q2_stats",
    "trigger q2_audit A",
    "view q2_share",
    "view q2_view",
];

/// [`BOUND_TO`] of the relation `oid`.
async fn bound_to(client: &Client, oid: u32) -> Vec<String> {
    client
        .query(BOUND_TO, &[&oid])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Whether the view `view` reads the relation named `relation` now.
async fn reads(client: &Client, view: &str, relation: &str) -> bool {
    scalar(
        client,
        &format!(
            "SELECT count(*) FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
             WHERE d.classid = 'pg_rewrite'::regclass AND r.ev_class = '{view}'::regclass
               AND d.refobjid = '{relation}'::regclass"
        ),
    )
    .await
        > 0
}

/// The RLS flags (enabled, forced) of the relation `oid`.
async fn row_security(client: &Client, oid: u32) -> (bool, bool) {
    let r = client
        .query_one(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = $1",
            &[&oid],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// Inserts one row into `ledger_q2`'s range through the parent and returns how many times
/// the audit trigger fired for it.
async fn firings_of_one_insert(client: &Client, id: i64) -> i64 {
    let before = scalar(client, "SELECT n FROM q2_fired").await;
    client
        .batch_execute(&format!(
            "INSERT INTO ledger (id, k, amount, customer_id) VALUES ({id}, '2024-05-05', 7.5, 3)"
        ))
        .await
        .unwrap();
    scalar(client, "SELECT n FROM q2_fired").await - before
}

/// Asserts two queries return the same rows.
async fn assert_same_rows(client: &Client, left: &str, right: &str) {
    let difference = workload::compare(client, left, right).await.unwrap();
    assert_eq!(difference.rows(), 0, "{left} vs {right}: {difference}");
}

/// A cluster with [`SETUP`], a client, and the OID of `ledger_q2` (checked to carry
/// [`EXPECTED`]).
async fn set_up() -> (doppel_testkit::cluster::LocalCluster, Client, u32) {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(&SETUP.replace("{rows}", &ROWS.to_string()))
        .await
        .unwrap();
    let q2_old = common::oid_of(&client, "ledger_q2").await;
    assert_eq!(bound_to(&client, q2_old).await, EXPECTED);
    (cluster, client, q2_old)
}

/// The tree writer on `ledger` and its twin, on a session of its own.
async fn start_writer(cluster: &doppel_testkit::cluster::LocalCluster, seed: u64) -> TreeWriter {
    TreeWriter::start(
        cluster.connect("postgres").await.unwrap(),
        "ledger",
        "ledger_twin",
        ROWS + 1,
        |rng: &mut StdRng| format!("date '2023-12-01' + {}", rng.random_range(0..400)),
        seed,
        Duration::from_millis(2),
    )
}

/// The new tree, under the writer, carries `ledger_q2`'s dependents; the rollback script
/// brings them back (module docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitions_own_dependents_move_with_the_tree_and_back() {
    let (cluster, client, q2_old) = set_up().await;
    let server = version(&client).await;

    let dir = tempfile::tempdir().unwrap();
    let pause = common::pause_dir(dir.path());
    doppel::testing::arm(&pause, "copying").unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let options = common::options(
        dir.path(),
        "ledger",
        &["ALTER COLUMN amount TYPE numeric(12,2)"],
    )
    .copy_workers(1)
    .chunk_time(Duration::ZERO)
    .initial_rows(100)
    .cutover_retries(30)
    .fence_timeout(Duration::from_secs(5))
    .status_interval(Duration::from_secs(600));
    let writer = start_writer(&cluster, 7).await;
    let run = spawn_run(&config, options);
    doppel::testing::wait_reached(&pause, "copying", WAIT)
        .await
        .expect("the copy reaches its first chunk");
    let moved = common::wait_until_async(WAIT, || async {
        writer.failed() || (writer.moves() >= 20 && writer.transactions() >= 150)
    })
    .await;
    assert!(
        moved && !writer.failed(),
        "the writer wrote during the copy"
    );
    doppel::testing::release(&pause, "copying").unwrap();
    let report = migrated(finish(run).await);
    let at_cutover = writer.transactions();
    let wrote = common::wait_until_async(WAIT, || async {
        writer.failed() || writer.transactions() >= at_cutover + 100
    })
    .await;
    let written = writer.stop().await;
    println!(
        "ledger on {server}: writer {} transactions ({} rows moved between partitions); cutover lock held {:?} ({} attempts); inside: {:?}",
        written.transactions,
        written.moves,
        report.cutover.lock_held,
        report.cutover.attempts,
        report.cutover.inside_lock
    );

    // The tree equals the twin; the audit table equals the partition: the trigger fired once
    // for every row written to it, before, during and after the cutover.
    assert_same_rows(
        &client,
        "SELECT id::text, k::text, amount::text FROM ledger",
        "SELECT id::text, k::text, amount::text FROM ledger_twin",
    )
    .await;
    assert!(written.errors.is_empty(), "writer: {:?}", written.errors);
    assert!(wrote, "the writer wrote on the new tree");
    assert_same_rows(
        &client,
        "SELECT id, amount::text FROM ledger_q2",
        "SELECT id, amount::text FROM q2_audit",
    )
    .await;
    assert!(
        report.cutover.unvalidated.is_empty(),
        "{:?}",
        report.cutover.unvalidated
    );

    // Every object is on the new partition, none left on the kept old one.
    let q2_new = common::oid_of(&client, "ledger_q2").await;
    assert_ne!(q2_new, q2_old, "a new partition has the name");
    assert_eq!(bound_to(&client, q2_new).await, EXPECTED);
    assert_eq!(bound_to(&client, q2_old).await, Vec::<String>::new());
    assert_eq!(row_security(&client, q2_new).await, (true, true));
    assert_eq!(
        text(
            &client,
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = 'q2_view'::regclass AND attname = 'amount'"
        )
        .await
        .as_deref(),
        Some("numeric(12,2)"),
        "the view reads the new partition"
    );
    assert_same_rows(
        &client,
        "SELECT id, k, amount FROM q2_view",
        "SELECT id, k, amount FROM ledger_q2",
    )
    .await;
    assert_same_rows(
        &client,
        "SELECT id, amount FROM q2_view_big",
        "SELECT id, amount FROM ledger_q2 WHERE amount > 100",
    )
    .await;
    assert!(
        reads(&client, "q2_share", "ledger").await,
        "q2_share reads the new root"
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM pg_publication_tables
             WHERE pubname = 'q2_pub' AND schemaname = 'public' AND tablename = 'ledger_q2'"
        )
        .await,
        1
    );
    assert_acts(&client, q2_new, ROWS + 1_000_000).await;

    // The rollback script (forced: the writer wrote after the cutover) moves them back.
    let (ok, said) = rollback(&cluster, &report, &["force=1"]);
    assert!(ok, "{said}");
    assert_eq!(common::oid_of(&client, "ledger_q2").await, q2_old);
    assert_eq!(bound_to(&client, q2_old).await, EXPECTED);
    assert_eq!(bound_to(&client, q2_new).await, Vec::<String>::new());
    assert_eq!(row_security(&client, q2_old).await, (true, true));
    assert_eq!(
        text(
            &client,
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = 'q2_view'::regclass AND attname = 'amount'"
        )
        .await
        .as_deref(),
        Some("numeric(10,2)"),
        "the view reads the restored partition"
    );
    assert!(
        reads(&client, "q2_share", "ledger").await,
        "q2_share reads the restored root"
    );
    assert_acts(&client, q2_old, ROWS + 2_000_000).await;
}

/// The dependents of the partition `oid` (which has the name `ledger_q2`) act: the trigger
/// fires once for a row inserted with id `id`, the policy filters for `q2_reader`, the rule
/// keeps a pinned row, the foreign key refuses a missing row.
async fn assert_acts(client: &Client, oid: u32, id: i64) {
    assert_eq!(common::oid_of(client, "ledger_q2").await, oid);
    assert_eq!(firings_of_one_insert(client, id).await, 1, "fired once");
    let all_low = scalar(
        client,
        "SELECT count(*) FROM ledger_q2 WHERE customer_id <= 50",
    )
    .await;
    client.batch_execute("SET ROLE q2_reader").await.unwrap();
    let seen = scalar(client, "SELECT count(*) FROM ledger_q2").await;
    client.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(seen, all_low, "the policy filters for q2_reader");
    assert!(all_low < scalar(client, "SELECT count(*) FROM ledger_q2").await);
    let pinned = scalar(
        client,
        &format!("SELECT min(id) FROM ledger_q2 WHERE id % {PINNED_EVERY} = 0"),
    )
    .await;
    let deleted = client
        .execute(&format!("DELETE FROM ledger_q2 WHERE id = {pinned}"), &[])
        .await
        .unwrap();
    assert_eq!(deleted, 0, "the rule keeps the pinned row {pinned}");
    assert_eq!(
        common::fails(
            client,
            "INSERT INTO q2_refund VALUES (-1, -1, '2024-05-05')"
        )
        .await,
        "23503"
    );
}

/// With a revert window: under the writer, the dependents are on the new partition during
/// the window; `ctl revert` moves them back to the original partition, and the audit table
/// still equals the partition, so the trigger fired neither on the new partition's writes
/// twice nor on the reverse stream's writes into the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_moves_a_partitions_own_dependents_back() {
    let (cluster, client, q2_old) = set_up().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    let options = common::options(
        dir.path(),
        "ledger",
        &["ALTER COLUMN amount TYPE numeric(12,2)"],
    )
    .control_socket(socket.clone())
    .cutover_retries(30)
    .fence_timeout(Duration::from_secs(5))
    .status_interval(Duration::from_secs(600))
    .revert_window(Duration::from_secs(600));
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let writer = start_writer(&cluster, 11).await;
    let run = spawn_run(&config, options);
    let streaming = common::wait_until_async(WAIT, || async {
        let Ok(reply) = doppel::ops::control::send(&socket, "status --json").await else {
            return false;
        };
        serde_json::from_str::<serde_json::Value>(&reply)
            .is_ok_and(|s| s["window"]["streaming"] == true)
    })
    .await;
    assert!(streaming, "the revert window streams");
    let q2_new = common::oid_of(&client, "ledger_q2").await;
    assert_ne!(q2_new, q2_old);
    assert_eq!(bound_to(&client, q2_new).await, EXPECTED);
    assert_eq!(bound_to(&client, q2_old).await, Vec::<String>::new());
    let at_cutover = writer.transactions();
    let wrote = common::wait_until_async(WAIT, || async {
        writer.failed() || writer.transactions() >= at_cutover + 100
    })
    .await;
    assert!(wrote && !writer.failed(), "the writer wrote in the window");
    let reply = doppel::ops::control::send_waiting(&socket, "revert", WAIT)
        .await
        .unwrap();
    assert!(reply.starts_with("ok: reverted"), "{reply}");
    let at_revert = writer.transactions();
    let wrote = common::wait_until_async(WAIT, || async {
        writer.failed() || writer.transactions() >= at_revert + 30
    })
    .await;
    let written = writer.stop().await;
    let outcome = finish(run).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_same_rows(
        &client,
        "SELECT id::text, k::text, amount::text FROM ledger",
        "SELECT id::text, k::text, amount::text FROM ledger_twin",
    )
    .await;
    assert!(written.errors.is_empty(), "writer: {:?}", written.errors);
    assert!(wrote, "the writer wrote on the original after the revert");
    assert_eq!(common::oid_of(&client, "ledger_q2").await, q2_old);
    assert_eq!(bound_to(&client, q2_old).await, EXPECTED);
    assert_eq!(bound_to(&client, q2_new).await, Vec::<String>::new());
    assert_same_rows(
        &client,
        "SELECT id, amount::text FROM ledger_q2",
        "SELECT id, amount::text FROM q2_audit",
    )
    .await;
    assert_acts(&client, q2_old, ROWS + 3_000_000).await;
}

/// Runs `ddl` while the copy holds after its first chunk: the cutover's re-check under the
/// lock stops the run with exit 8 naming `member`, the original tree untouched (its
/// partition `ledger_q2` keeps its OID and what [`BOUND_TO`] lists, `then` included), and
/// nothing of doppel's left.
async fn ddl_on_a_partition_during_the_copy(ddl: &str, member: &str, then: &[&str]) {
    let (cluster, client, q2_old) = set_up().await;
    let dir = tempfile::tempdir().unwrap();
    let pause = common::pause_dir(dir.path());
    doppel::testing::arm(&pause, "copying").unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let options = common::options(
        dir.path(),
        "ledger",
        &["ALTER COLUMN amount TYPE numeric(12,2)"],
    )
    .copy_workers(1)
    .chunk_time(Duration::ZERO)
    .initial_rows(100)
    .status_interval(Duration::from_secs(600));
    let run = spawn_run(&config, options);
    doppel::testing::wait_reached(&pause, "copying", WAIT)
        .await
        .expect("the copy reaches its first chunk");
    client.batch_execute(ddl).await.unwrap();
    doppel::testing::release(&pause, "copying").unwrap();
    let err = finish(run).await.expect_err("the re-check stops the run");
    let message = format!("{err:#}");
    assert_eq!(doppel::failure::exit_code(&err), 8, "{message}");
    assert!(
        message.contains(&format!("bound to the partition {member}")),
        "{message}"
    );
    // Nothing of doppel's left (`common::assert_no_doppel_objects` but for `q2_pub`).
    let gone = common::wait_until_async(Duration::from_secs(15), || async {
        scalar(&client, "SELECT count(*) FROM pg_replication_slots").await == 0
    })
    .await;
    assert!(gone, "no slot left");
    assert_eq!(
        text(
            &client,
            "SELECT string_agg(pubname, ',') FROM pg_publication"
        )
        .await
        .as_deref(),
        Some("q2_pub")
    );
    assert_eq!(
        scalar(
            &client,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_%'"
        )
        .await,
        0,
        "no shadow left"
    );
    assert_eq!(common::oid_of(&client, "ledger_q2").await, q2_old);
    let mut expected: Vec<String> = EXPECTED.iter().map(|s| s.to_string()).collect();
    expected.extend(then.iter().map(|s| s.to_string()));
    expected.sort();
    assert_eq!(bound_to(&client, q2_old).await, expected);
}

/// A trigger created during the run on a partition that had no dependent of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_created_on_another_partition_during_the_run_stops_it_with_exit_8() {
    ddl_on_a_partition_during_the_copy(
        "CREATE TRIGGER q1_audit AFTER INSERT ON ledger_q1 FOR EACH ROW EXECUTE FUNCTION q2_audit()",
        "\"public\".\"ledger_q1\"",
        &[],
    )
    .await;
}

/// A view on the partition created during the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_created_on_a_partition_with_dependents_during_the_run_stops_it_with_exit_8() {
    ddl_on_a_partition_during_the_copy(
        "CREATE VIEW q2_ids AS SELECT id FROM ledger_q2",
        "\"public\".\"ledger_q2\"",
        &["view q2_ids"],
    )
    .await;
}
