//! A partitioned table copied and verified partition by partition (issue 15), checked from
//! outside: the checkpoint of a killed run, its resume, the per-partition verification report,
//! a difference confined to one partition, and a leaf dropped before its copy.
//!
//! The tree is range-partitioned by month (`k date`): the 12 months of 2024 and a default
//! partition, a primary key `(id, k)`, with the dependents of `partitioned_run`'s trees (an
//! index, a CHECK and a foreign key out on the parent, a foreign key in, a view) and a twin.
//!
//! - **kill -9 mid-copy, then `--resume`.** A `--resumable` `doppel run` child process copies
//!   the tree under the tree writer (`common::tree_writer`, which moves rows between
//!   partitions), with 2 copy workers and 100-row chunks. The test holds both workers before
//!   the 7th leaf (a lock on its shadow leaf, which their copy statement waits for), arms
//!   `chunk-open` and lets them go: each opens a chunk of that leaf and stops before COMMIT;
//!   doppel is killed with SIGKILL there. The checkpoint then names a leaf for every chunk
//!   (`part`), each leaf's chunks are contiguous in `seq` and the leaves come in tree order
//!   (the order of `pg_partition_tree` by level, parent and OID, here the months then the
//!   default), every chunk before the 7th leaf committed and the two open ones are of the 7th
//!   leaf. `--resume` completes (exit 0), copying again exactly those two chunks (at most one
//!   per copy worker); the new tree equals the twin, no slot, publication or checkpoint is
//!   left, and its report prints each leaf's verification once, their rows adding up to the
//!   total. Killed between two partitions instead (every chunk up to the 6th leaf's last
//!   committed, the planner waiting for the 7th leaf, held by a lock on it), the resume plans
//!   on from the 7th leaf's start and copies no chunk again.
//! - **The per-partition report.** A run without a writer: `RunReport::verify.partitions`
//!   lists every leaf once, in tree order, with the rows it held and at least one chunk;
//!   the empty leaves report 0 rows; the rows add up to the total verified.
//! - **A difference in one partition.** The run held at `verifying`: a row deleted from one
//!   shadow leaf (it never settles: nothing streams it back), or every row of one shadow leaf
//!   changed. The run fails with exit 6 (`FailureKind::Verification`) naming that partition;
//!   the original tree is untouched and nothing of doppel's is left.
//! - **A leaf dropped during the copy.** The writer stopped, the copy held before the 7th
//!   leaf's first chunk (the planner, by a lock on the leaf; or the copy workers, by a lock on
//!   its shadow leaf), `DROP TABLE` of that leaf, or of the 2nd (copied already, met first by
//!   the verification): exit 8 with the message to pause the partition maintenance job naming
//!   the leaf, the tree as the DROP left it, nothing of doppel's left.
//!
//! Run on another major with `DOPPEL_PG_BINDIR`. Shown to fail with the verification
//! comparing only the first leaf (the difference tests migrate, the report lists one leaf)
//! and with a resume that skips the rest of the leaf it stopped in, or the leaf after the
//! one it finished (exit 6 on that leaf).
//!
//! Bugs in src/ these tests found, fixed with them: a leaf dropped before the planner's
//! boundary query reached it failed the run with exit 1 ("preparing the chunk boundary
//! query: relation .. does not exist") instead of exit 8; a difference of fewer rows than
//! verification tracks one by one, deferred to the cutover's re-check, failed it without
//! naming the partition; a leaf dropped after its copy failed the verification with exit 1
//! ("finding a verification chunk: .. does not exist") instead of exit 8.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use doppel::failure::FailureKind;
use doppel::model::names::Names;
use doppel::run::Outcome;
use doppel_testkit::cluster::LocalCluster;
use doppel_testkit::workload;
use rand::RngExt;
use rand::rngs::StdRng;
use tokio_postgres::Client;

use crate::common::tree_writer::TreeWriter;
use crate::common::{self, Tune, scalar, text};
use crate::kill_phases::{DOPPEL_SESSIONS, strip_ansi};
use crate::partitioned_run::{
    self as tree, Tree, WAIT, assert_same_shape, rows_digest, shape, tree_sql,
};
use crate::resume::exit_code;

/// The ALTER of every test here.
const ALTER: &str = "ALTER COLUMN amount TYPE numeric(12,2)";

/// Rows of the kill test's tree (about 2,300 a month: some 23 chunks of 100 rows each).
const ROWS: i64 = 30_000;

/// The leaf the tests hold, break or drop: the 7th of 13, in the middle of the tree.
const MIDDLE: &str = "pay_2024_07";

/// The months of 2024 and a default partition; rows from December 2023 to early January
/// 2025 (both in the default), every month about as full.
const MONTHS: Tree = Tree {
    name: "pay",
    key_type: "date",
    strategy: "RANGE (k)",
    members: "
DO $$ DECLARE d date; BEGIN
  FOR d IN SELECT generate_series(date '2024-01-01', date '2024-12-01', interval '1 month') LOOP
    EXECUTE format('CREATE TABLE %I PARTITION OF pay FOR VALUES FROM (%L) TO (%L)',
                   'pay_' || to_char(d, 'YYYY_MM'), d, (d + interval '1 month')::date);
  END LOOP; END $$;
CREATE TABLE pay_other PARTITION OF pay DEFAULT;
INSERT INTO pay SELECT i, date '2023-12-01' + (i * 7 % 400), (i % 1000) * 1.25, 1 + i % 100
  FROM generate_series(1, {rows}) i;",
    key: |rng: &mut StdRng| format!("date '2023-12-01' + {}", rng.random_range(0..400)),
};

/// [`MONTHS`] with rows from January to September 2024 only: October to December and the
/// default partition are empty.
const NINE_MONTHS: Tree = Tree {
    members: "
DO $$ DECLARE d date; BEGIN
  FOR d IN SELECT generate_series(date '2024-01-01', date '2024-12-01', interval '1 month') LOOP
    EXECUTE format('CREATE TABLE %I PARTITION OF pay FOR VALUES FROM (%L) TO (%L)',
                   'pay_' || to_char(d, 'YYYY_MM'), d, (d + interval '1 month')::date);
  END LOOP; END $$;
CREATE TABLE pay_other PARTITION OF pay DEFAULT;
INSERT INTO pay SELECT i, date '2024-01-01' + (i * 7 % 270), (i % 1000) * 1.25, 1 + i % 100
  FROM generate_series(1, {rows}) i;",
    ..MONTHS
};

/// The leaf partitions of the tree `root` in tree order, as doppel copies them (level,
/// parent, OID: `pg_partition_tree`'s members as `model::partitions` reads them), each as
/// `schema.name`.
async fn leaves(client: &Client, root: &str) -> Vec<String> {
    client
        .query(
            "SELECT format('%s.%s', n.nspname, c.relname)
             FROM pg_partition_tree($1::text::regclass) t JOIN pg_class c ON c.oid = t.relid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE t.isleaf AND t.level > 0 ORDER BY t.level, t.parentrelid, t.relid",
            &[&root],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The shadow leaf of `shadow_root` with the bound of the original leaf `leaf`.
async fn shadow_leaf(client: &Client, shadow_root: &str, leaf: &str) -> String {
    text(
        client,
        &format!(
            "SELECT t.relid::regclass::text FROM pg_partition_tree('{shadow_root}'::regclass) t
             JOIN pg_class c ON c.oid = t.relid
             WHERE t.isleaf AND pg_get_expr(c.relpartbound, c.oid) =
               (SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = '{leaf}'::regclass)"
        ),
    )
    .await
    .unwrap_or_else(|| panic!("no shadow leaf of {leaf} in {shadow_root}"))
}

/// Sessions waiting for a lock on `relation`.
async fn waiting_on(client: &Client, relation: &str) -> i64 {
    scalar(
        client,
        &format!(
            "SELECT count(*) FROM pg_locks WHERE relation = '{relation}'::regclass AND NOT granted"
        ),
    )
    .await
}

/// Sessions in an open transaction (idle, waiting for the test) that wrote `relation`: the
/// copy workers stopped at `chunk-open` on a chunk of it.
async fn open_chunks_on(client: &Client, relation: &str) -> i64 {
    scalar(
        client,
        &format!(
            "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.relation = '{relation}'::regclass AND l.granted AND l.mode = 'RowExclusiveLock'
               AND a.state = 'idle in transaction'"
        ),
    )
    .await
}

/// Opens a transaction on `session` holding `relation` in ACCESS EXCLUSIVE mode (rolled back
/// or committed by the caller).
async fn hold(session: &Client, relation: &str) {
    session
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {relation} IN ACCESS EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
}

/// Rows of doppel's checkpoint tables (0 when there are none).
async fn checkpoints(client: &Client) -> i64 {
    let exists: bool = client
        .query_one("SELECT to_regclass('doppel.checkpoints') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    if !exists {
        return 0;
    }
    scalar(client, "SELECT count(*) FROM doppel.checkpoints").await
        + scalar(client, "SELECT count(*) FROM doppel.checkpoint_chunks").await
}

/// A cluster with the tree of [`MONTHS`] (or another) and its twin `pay_twin`.
struct Stand {
    cluster: LocalCluster,
    client: Client,
    oid: u32,
    dir: tempfile::TempDir,
}

impl Stand {
    async fn new(tree: &Tree, rows: i64) -> Stand {
        let cluster = common::cluster().await;
        let client = cluster.connect("postgres").await.unwrap();
        client.batch_execute(&tree_sql(tree, rows)).await.unwrap();
        let oid = common::oid_of(&client, "public.pay").await;
        Stand {
            cluster,
            client,
            oid,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn pause(&self) -> std::path::PathBuf {
        common::pause_dir(self.dir.path())
    }

    /// The shadow tree's root, as SQL names it.
    fn shadow(&self) -> String {
        Names::new("public", "pay", self.oid).shadow_qualified()
    }

    /// The tree writer on `pay` and `pay_twin`, on a session of its own.
    async fn writer(&self, seed: u64) -> TreeWriter {
        TreeWriter::start(
            self.cluster.connect("postgres").await.unwrap(),
            "pay",
            "pay_twin",
            ROWS + 1,
            MONTHS.key,
            seed,
            Duration::from_millis(2),
        )
    }

    /// Starts `doppel run --execute` of [`ALTER`] on `pay` (2 copy workers, 100-row chunks)
    /// with `extra` arguments and the stand's pause directory; output to `<name>.out` and
    /// `<name>.err` in the stand's directory.
    fn start_run(&self, extra: &[&str], name: &str) -> Child {
        let dir = self.dir.path();
        Command::new(env!("CARGO_BIN_EXE_doppel"))
            .env(doppel::testing::PAUSE_DIR_VAR, self.pause())
            .args(["run", "--dsn", &self.cluster.conninfo("postgres")])
            .args(["--table", "pay", "--alter", ALTER, "--execute"])
            .args([
                "--progress",
                "lines",
                "--copy-workers",
                "2",
                "--chunk-time",
                "1",
            ])
            .args(["--fence-timeout", "5000", "--cutover-retries", "30"])
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

    /// The stdout and stderr of the run started as `name`.
    fn output_of(&self, name: &str) -> String {
        let read = |file: String| {
            strip_ansi(&std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default())
        };
        format!(
            "stdout:\n{}\nstderr:\n{}",
            read(format!("{name}.out")),
            read(format!("{name}.err"))
        )
    }

    /// In-process run options of [`ALTER`] on `pay` (pause points through the stand's
    /// directory): 2 copy workers, 100-row chunks.
    fn options(&self) -> doppel::run::RunOptions {
        common::options(self.dir.path(), "pay", &[ALTER])
            .copy_workers(2)
            .chunk_time(Duration::ZERO)
            .initial_rows(100)
            .fence_timeout(Duration::from_secs(5))
            .status_interval(Duration::from_secs(600))
    }

    fn config(&self) -> tokio_postgres::Config {
        self.cluster.conninfo("postgres").parse().unwrap()
    }
}

/// One chunk of the checkpoint: its sequence number, its leaf, whether a worker started it
/// and whether it committed.
#[derive(Debug)]
struct Chunk {
    seq: i64,
    part: Option<String>,
    started: bool,
    done: bool,
}

async fn checkpoint_chunks(client: &Client) -> Vec<Chunk> {
    client
        .query(
            // The checkpoint records each partition as SQL names it (quoted); shown here as
            // `schema.name`, resolved through the catalog.
            "SELECT k.seq, CASE WHEN k.part IS NOT NULL THEN format('%s.%s', n.nspname, c.relname) END,
                    k.started, k.done
             FROM doppel.checkpoint_chunks k
             LEFT JOIN pg_class c ON c.oid = to_regclass(k.part)
             LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
             ORDER BY k.seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| Chunk {
            seq: r.get(0),
            part: r.get(1),
            started: r.get(2),
            done: r.get(3),
        })
        .collect()
}

/// Asserts the checkpoint's chunks went partition by partition: each names a leaf, each
/// leaf's chunks are contiguous in `seq` and the leaves come in `tree` order. Returns the
/// leaves the chunks name, in that order.
fn assert_partition_by_partition(chunks: &[Chunk], tree: &[String]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for chunk in chunks {
        let part = chunk
            .part
            .clone()
            .unwrap_or_else(|| panic!("chunk {} names no partition: {chunks:?}", chunk.seq));
        if order.last() != Some(&part) {
            assert!(
                !order.contains(&part),
                "the chunks of {part} are not contiguous in seq order: {chunks:?}"
            );
            order.push(part);
        }
    }
    assert_eq!(
        order,
        tree[..order.len()],
        "the partitions are copied in tree order"
    );
    order
}

/// Checks the per-partition lines `doppel run` printed in `output`: one per leaf of
/// `tree`, each leaf once, their rows adding up to the total verified. The rows per leaf.
fn printed_partitions(output: &str, tree: &[String]) -> Vec<u64> {
    let total: u64 = output
        .split(", verified ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the run prints the rows verified: {output}"));
    let mut rows = Vec::new();
    for leaf in tree {
        let prefix = format!("  partition {leaf}: verified ");
        let lines: Vec<&str> = output.lines().filter(|l| l.starts_with(&prefix)).collect();
        assert_eq!(lines.len(), 1, "{leaf} is reported once: {output}");
        let n: u64 = lines[0][prefix.len()..]
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}", lines[0]));
        rows.push(n);
    }
    assert_eq!(
        output
            .lines()
            .filter(|l| l.starts_with("  partition "))
            .count(),
        tree.len(),
        "only the leaves are reported: {output}"
    );
    assert_eq!(
        rows.iter().sum::<u64>(),
        total,
        "the partitions' rows add up to the total verified: {output}"
    );
    rows
}

/// The number in `field=N` of `output`.
fn field(output: &str, field: &str) -> u64 {
    output
        .split(&format!("{field}="))
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field}= in: {output}"))
}

/// Starts a `--resumable` run of the stand (output `first`) under `writer` and holds it
/// after its first chunk until the writer has moved 30 rows between partitions; `copying`
/// stays armed (the caller releases it).
async fn start_resumable(stand: &Stand, writer: &TreeWriter) -> Child {
    let pause = stand.pause();
    doppel::testing::arm(&pause, "copying").unwrap();
    let child = stand.start_run(&["--resumable"], "first");
    let first = doppel::testing::wait_reached(&pause, "copying", WAIT).await;
    assert!(first.is_some(), "{}", stand.output_of("first"));
    let moved =
        common::wait_until_async(WAIT, || async { writer.failed() || writer.moves() >= 30 }).await;
    assert!(moved && !writer.failed(), "the writer moves rows");
    child
}

/// Kills `child` with SIGKILL, disarms `point` and waits until its sessions are gone.
async fn kill_9(stand: &Stand, mut child: Child, point: &str) {
    child.kill().unwrap();
    child.wait().unwrap();
    doppel::testing::release(&stand.pause(), point).unwrap();
    let gone = common::wait_until_async(Duration::from_secs(30), || async {
        scalar(&stand.client, DOPPEL_SESSIONS).await == 0
    })
    .await;
    assert!(gone, "the killed run's sessions end");
}

/// Runs `--resume` (output `resume`) to completion and checks it: exit 0, `again` chunks
/// copied again, starting from the `copied` rows committed; the new tree equals the twin once
/// the writer (stopped here) has written on it; no slot, publication, checkpoint or shadow
/// member left; every leaf of `tree` in the printed report once.
async fn resume_and_check(
    stand: &Stand,
    writer: TreeWriter,
    tree: &[String],
    again: u64,
    copied: i64,
) {
    let client = &stand.client;
    let child = stand.start_run(&["--resume"], "resume");
    let code = exit_code(child).await;
    let output = stand.output_of("resume");
    assert_eq!(code, Some(0), "the resume completes: {output}");
    assert_eq!(
        field(&output, "chunks_copied_again"),
        again,
        "the open chunks, at most one per copy worker, are copied again: {output}"
    );
    assert_eq!(
        field(&output, "rows_done"),
        copied as u64,
        "the resume starts from the rows the killed run committed: {output}"
    );
    let at_cutover = writer.transactions();
    let wrote = common::wait_until_async(WAIT, || async {
        writer.failed() || writer.transactions() >= at_cutover + 50
    })
    .await;
    let written = writer.stop().await;
    println!(
        "resumed on {}: writer {} transactions, {} rows moved between partitions; {}",
        tree::version(client).await,
        written.transactions,
        written.moves,
        output
            .lines()
            .find(|l| l.contains("resuming the backfill"))
            .unwrap_or_default()
    );
    let difference = workload::compare(
        client,
        "SELECT id::text, k::text, amount::text FROM pay",
        "SELECT id::text, k::text, amount::text FROM pay_twin",
    )
    .await
    .unwrap();
    assert_eq!(difference.rows(), 0, "pay vs pay_twin: {difference}");
    assert!(written.errors.is_empty(), "writer: {:?}", written.errors);
    assert!(wrote, "the writer wrote on the new tree");
    assert_eq!(
        tree::member_columns(client, "pay").await,
        vec!["id bigint, k date, amount numeric(12,2), customer_id integer".to_string()]
    );
    tree::assert_no_slot_or_publication(client).await;
    assert_eq!(checkpoints(client).await, 0, "the checkpoint was removed");
    assert_eq!(
        scalar(
            client,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_%\\_new\\_%'"
        )
        .await,
        0,
        "no shadow member or index is left"
    );
    printed_partitions(&output, tree);
}

/// Asserts every chunk of the leaves of `tree` before `leaf` committed.
fn assert_done_before(chunks: &[Chunk], tree: &[String], leaf: &str) {
    let before: Vec<&String> = tree.iter().take_while(|l| *l != leaf).collect();
    assert!(
        chunks
            .iter()
            .filter(|c| c.part.as_ref().is_some_and(|p| before.contains(&p)))
            .all(|c| c.done),
        "every chunk of the leaves before {leaf} committed: {chunks:?}"
    );
}

/// kill -9 while both copy workers hold a chunk of the 7th leaf open, then `--resume`
/// (module docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_kill_9_mid_partition_continues_partition_by_partition() {
    let stand = Stand::new(&MONTHS, ROWS).await;
    let client = &stand.client;
    let tree = leaves(client, "pay").await;
    assert_eq!(tree.len(), 13);
    let middle = format!("public.{MIDDLE}");
    let writer = stand.writer(11).await;
    let pause = stand.pause();
    let child = start_resumable(&stand, &writer).await;
    // The 7th leaf's shadow leaf is held and the copy goes on up to it.
    let target = shadow_leaf(client, &stand.shadow(), &middle).await;
    let locker = stand.cluster.connect("postgres").await.unwrap();
    hold(&locker, &target).await;
    doppel::testing::release(&pause, "copying").unwrap();
    let held =
        common::wait_until_async(WAIT, || async { waiting_on(client, &target).await == 2 }).await;
    assert!(held, "both copy workers wait for {target}");
    doppel::testing::arm(&pause, "chunk-open").unwrap();
    locker.batch_execute("ROLLBACK").await.unwrap();
    let open = common::wait_until_async(WAIT, || async {
        open_chunks_on(client, &target).await == 2
    })
    .await;
    assert!(open, "both copy workers hold a chunk of {middle} open");
    kill_9(&stand, child, "chunk-open").await;

    // The checkpoint went partition by partition and stopped in the 7th leaf.
    let chunks = checkpoint_chunks(client).await;
    let order = assert_partition_by_partition(&chunks, &tree);
    assert!(order.contains(&middle), "{order:?}");
    assert_done_before(&chunks, &tree, &middle);
    let open: Vec<&Chunk> = chunks.iter().filter(|c| c.started && !c.done).collect();
    assert_eq!(open.len(), 2, "two chunks open: {chunks:?}");
    assert!(
        open.iter()
            .all(|c| c.part.as_deref() == Some(middle.as_str())),
        "the open chunks are of {middle}: {open:?}"
    );
    let copied = common::shadow_rows(client, "pay").await;
    assert!(
        copied > 0 && copied < ROWS,
        "killed mid-copy ({copied} rows)"
    );
    resume_and_check(&stand, writer, &tree, 2, copied).await;
}

/// kill -9 between two partitions: every chunk up to the 6th leaf's last (open above)
/// planned and committed, the planner waiting for the 7th leaf (a lock on it, which the
/// writer waits for too). The resume plans on from the 7th leaf's start, copying no chunk
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_kill_9_between_partitions_starts_the_next_partition() {
    let stand = Stand::new(&MONTHS, ROWS).await;
    let client = &stand.client;
    let tree = leaves(client, "pay").await;
    let middle = format!("public.{MIDDLE}");
    let previous = tree[tree.iter().position(|l| *l == middle).unwrap() - 1].clone();
    let writer = stand.writer(13).await;
    let child = start_resumable(&stand, &writer).await;
    let locker = stand.cluster.connect("postgres").await.unwrap();
    hold(&locker, &middle).await;
    doppel::testing::release(&stand.pause(), "copying").unwrap();
    let between = common::wait_until_async(WAIT, || async {
        let planner = scalar(
            client,
            &format!(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.relation = '{middle}'::regclass AND NOT l.granted
                   AND a.application_name LIKE 'doppel%'"
            ),
        )
        .await;
        let pending = scalar(
            client,
            "SELECT count(*) FROM doppel.checkpoint_chunks WHERE NOT done",
        )
        .await;
        planner == 1 && pending == 0
    })
    .await;
    assert!(
        between,
        "the planner waits for {middle}, every chunk before it committed"
    );
    kill_9(&stand, child, "copying").await;
    locker.batch_execute("ROLLBACK").await.unwrap();

    let chunks = checkpoint_chunks(client).await;
    let order = assert_partition_by_partition(&chunks, &tree);
    assert_eq!(
        order.last(),
        Some(&previous),
        "the copy stopped after {previous}"
    );
    assert!(chunks.iter().all(|c| c.done), "{chunks:?}");
    let open_above = scalar(
        client,
        "SELECT count(*) FROM doppel.checkpoint_chunks
         WHERE seq = (SELECT max(seq) FROM doppel.checkpoint_chunks) AND upper_key IS NULL",
    )
    .await;
    assert_eq!(
        open_above, 1,
        "the last chunk planned is {previous}'s last: {chunks:?}"
    );
    let copied = common::shadow_rows(client, "pay").await;
    resume_and_check(&stand, writer, &tree, 0, copied).await;
}

/// The per-partition report of a run (module docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_verifies_every_leaf_once_with_its_rows() {
    let stand = Stand::new(&NINE_MONTHS, 6_000).await;
    let client = &stand.client;
    let tree = leaves(client, "pay").await;
    let mut rows = Vec::new();
    for leaf in &tree {
        rows.push(scalar(client, &format!("SELECT count(*) FROM {leaf}")).await as u64);
    }
    let empty = [
        "public.pay_2024_10",
        "public.pay_2024_11",
        "public.pay_2024_12",
        "public.pay_other",
    ];
    let report =
        tree::migrated(tree::finish(tree::spawn_run(&stand.config(), stand.options())).await);
    let verified: Vec<(String, u64)> = report
        .verify
        .partitions
        .iter()
        .map(|p| (p.name.clone(), p.rows))
        .collect();
    let expected: Vec<(String, u64)> = tree.iter().cloned().zip(rows.iter().copied()).collect();
    assert_eq!(
        verified, expected,
        "every leaf once, in tree order, with its rows"
    );
    for p in &report.verify.partitions {
        if empty.contains(&p.name.as_str()) {
            assert_eq!(p.rows, 0, "{} is empty", p.name);
        } else {
            assert!(p.rows > 0 && p.chunks >= 1, "{p:?}");
        }
        assert_eq!(p.unsettled, 0, "{p:?}");
    }
    assert_eq!(
        report.verify.partitions.iter().map(|p| p.rows).sum::<u64>(),
        report.verify.rows,
        "the partitions' rows add up to the total verified"
    );
    assert_eq!(report.verify.rows, 6_000);
    assert_eq!(
        report
            .verify
            .partitions
            .iter()
            .map(|p| p.chunks)
            .sum::<u64>(),
        report.verify.chunks,
        "the partitions' chunks add up to the total"
    );
    tree::assert_no_slot_or_publication(client).await;
}

/// Holds the run at `verifying`, runs `break_shadow` (with `{leaf}` the shadow leaf of
/// [`MIDDLE`]) and lets it go: the run must fail with exit 6 naming [`MIDDLE`], the original
/// tree untouched, nothing of doppel's left. The failure's message.
async fn difference_in_one_partition(break_shadow: &str) -> String {
    let stand = Stand::new(&MONTHS, ROWS).await;
    let client = &stand.client;
    let shape_before = shape(client, "pay").await;
    let rows_before = rows_digest(client, "pay").await;
    let pause = stand.pause();
    doppel::testing::arm(&pause, "verifying").unwrap();
    let run = tree::spawn_run(&stand.config(), stand.options());
    doppel::testing::wait_reached(&pause, "verifying", WAIT)
        .await
        .expect("the run reaches the verification");
    let leaf = shadow_leaf(client, &stand.shadow(), &format!("public.{MIDDLE}")).await;
    let changed = client
        .execute(&break_shadow.replace("{leaf}", &leaf), &[])
        .await
        .unwrap();
    assert!(changed > 0, "{break_shadow} changed no row of {leaf}");
    doppel::testing::release(&pause, "verifying").unwrap();
    let err = match tree::finish(run).await {
        Ok(outcome) => panic!(
            "the run must fail the verification, got {}",
            match outcome {
                Outcome::Migrated(_) => "a migration".to_string(),
                other => format!("{other:?}"),
            }
        ),
        Err(e) => e,
    };
    let message = format!("{err:#}");
    println!(
        "{break_shadow}: exit {}: {message}",
        doppel::failure::exit_code(&err)
    );
    assert_eq!(doppel::failure::exit_code(&err), 6, "{message}");
    assert_eq!(
        doppel::failure::kind_of(&err),
        Some(FailureKind::Verification),
        "{message}"
    );
    assert!(
        message.contains(&format!("partition public.{MIDDLE}")),
        "the message names the partition: {message}"
    );
    assert_eq!(common::oid_of(client, "pay").await, stand.oid);
    assert_same_shape(&shape(client, "pay").await, &shape_before, "pay");
    assert_eq!(
        rows_digest(client, "pay").await,
        rows_before,
        "the original rows"
    );
    common::assert_no_doppel_objects(client).await;
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_missing_from_one_shadow_leaf_fails_the_verification_naming_it() {
    difference_in_one_partition(
        "DELETE FROM {leaf} WHERE id = (SELECT min(id) FROM {leaf} WHERE id % 3 = 1)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_one_shadow_leaf_changed_fails_the_verification_naming_it() {
    difference_in_one_partition("UPDATE {leaf} SET amount = amount + 1").await;
}

/// What holds the copy before the 7th leaf's first chunk.
#[derive(Debug, Clone, Copy)]
enum Held {
    /// The planner, waiting for the leaf (its chunk boundary query): the DROP runs in the
    /// holding transaction.
    Planner,
    /// The copy workers, waiting for the shadow leaf (their copy statement); the planner has
    /// planned the leaf's first chunks.
    Workers,
}

/// The writer stopped, the copy held before [`MIDDLE`]'s first chunk (`held`), the leaf
/// `dropped` (`MIDDLE` itself, or with [`Held::Workers`] one copied already) dropped: exit 8
/// with the maintenance message naming it, the tree as the DROP left it, nothing of doppel's
/// left.
async fn leaf_dropped_during_the_copy(held: Held, dropped: &str) {
    let stand = Stand::new(&MONTHS, ROWS).await;
    let client = &stand.client;
    // A foreign key into the tree keeps any partition from being dropped: a tree a retention
    // job drops partitions of has none.
    client.batch_execute("DROP TABLE pay_refund").await.unwrap();
    let middle = format!("public.{MIDDLE}");
    let dropped = format!("public.{dropped}");
    let writer = stand.writer(12).await;
    let pause = stand.pause();
    doppel::testing::arm(&pause, "copying").unwrap();
    let run = tree::spawn_run(&stand.config(), stand.options());
    doppel::testing::wait_reached(&pause, "copying", WAIT)
        .await
        .expect("the copy reaches its first chunk");
    let moved =
        common::wait_until_async(WAIT, || async { writer.failed() || writer.moves() >= 30 }).await;
    let written = writer.stop().await;
    assert!(moved && written.errors.is_empty(), "{:?}", written.errors);
    let locker = stand.cluster.connect("postgres").await.unwrap();
    let target = match held {
        Held::Planner => middle.clone(),
        Held::Workers => shadow_leaf(client, &stand.shadow(), &middle).await,
    };
    hold(&locker, &target).await;
    doppel::testing::release(&pause, "copying").unwrap();
    let waiting = match held {
        Held::Planner => 1,
        Held::Workers => 2,
    };
    let reached = common::wait_until_async(WAIT, || async {
        waiting_on(client, &target).await == waiting
    })
    .await;
    assert!(reached, "{held:?} wait for {target}");
    match held {
        Held::Planner => {
            assert_eq!(dropped, middle, "the planner is held by the leaf it drops");
            locker
                .batch_execute(&format!("DROP TABLE {middle}; COMMIT"))
                .await
                .unwrap();
        }
        Held::Workers => {
            client
                .batch_execute(&format!("DROP TABLE {dropped}"))
                .await
                .unwrap();
            locker.batch_execute("ROLLBACK").await.unwrap();
        }
    }
    let rows_after_drop = rows_digest(client, "pay").await;
    let shape_after_drop = shape(client, "pay").await;
    let err = tree::finish(run)
        .await
        .expect_err("a leaf dropped during the copy stops the run");
    let message = format!("{err:#}");
    println!(
        "{dropped} dropped, {held:?} held before {middle}: exit {}: {message}",
        doppel::failure::exit_code(&err)
    );
    assert_eq!(doppel::failure::exit_code(&err), 8, "{message}");
    assert!(
        message.contains(&dropped) && message.contains("Pause the partition maintenance job"),
        "{message}"
    );
    common::assert_no_doppel_objects(client).await;
    assert_eq!(common::oid_of(client, "pay").await, stand.oid);
    assert_eq!(rows_digest(client, "pay").await, rows_after_drop);
    assert_same_shape(&shape(client, "pay").await, &shape_after_drop, "pay");
    assert_eq!(leaves(client, "pay").await.len(), 12);
    assert_eq!(
        tree::member_columns(client, "pay").await,
        vec!["id bigint, k date, amount numeric(10,2), customer_id integer".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_dropped_before_the_planner_reaches_it_stops_the_run_with_exit_8() {
    leaf_dropped_during_the_copy(Held::Planner, MIDDLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_dropped_before_its_planned_chunks_are_copied_stops_the_run_with_exit_8() {
    leaf_dropped_during_the_copy(Held::Workers, MIDDLE).await;
}

/// A leaf copied already (the 2nd) dropped while the copy is held before the 7th.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_dropped_after_its_copy_stops_the_run_with_exit_8() {
    leaf_dropped_during_the_copy(Held::Workers, "pay_2024_02").await;
}
