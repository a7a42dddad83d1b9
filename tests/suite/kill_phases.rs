//! `kill -9` of doppel in every phase, and the server terminating its replication connection
//! in the phases `faults.rs` does not reach.
//!
//! Each test stops a real `doppel run --execute` at a pause point (src/pause.rs) while a light
//! writer mirrors every change into a twin table (the oracle), then acts:
//!
//! - **kill -9** (after-preflight, shadow-built, copying, catch-up, verifying, and inside the
//!   cutover transaction after the renames, before COMMIT): the original keeps its OID, its
//!   type and exactly the twin's rows — in the cutover case because the server rolls back the
//!   transaction of a connection that died before COMMIT. The TEMPORARY slot disappears with
//!   its connection; `doppel cleanup --table` removes the publication and the shadow and says
//!   so on stdout; a second cleanup finds nothing; a dry run passes preflight again.
//! - **pg_terminate_backend on the walsender** (catch-up, verifying): doppel stops with exit 4
//!   ("the replication stream or slot was lost") and removes everything it created by itself.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use doppel_testkit::cluster::LocalCluster;
use doppel_testkit::workload::{self, Workload};
use tokio_postgres::Client;

use crate::common;

/// Rows of the test table: several copy chunks (the first chunk is 1,000 rows).
pub(crate) const ROWS: i64 = 20_000;

/// A doppel backend still connected (the writer's own session is named `doppel workload`).
pub(crate) const DOPPEL_SESSIONS: &str = "SELECT count(*) FROM pg_stat_activity
     WHERE application_name LIKE 'doppel%' AND application_name <> 'doppel workload'
       AND pid <> pg_backend_pid()";

/// Every relation whose name doppel gives its objects (shadow, its indexes and sequences,
/// the kept old table).
pub(crate) const DOPPEL_RELATIONS: &str =
    "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_%'";

/// A cluster with the demo table `orders` (15 columns, TOAST) and its twin, and a writer that
/// mirrors into the twin.
pub(crate) struct Stand {
    pub(crate) cluster: LocalCluster,
    pub(crate) client: Client,
    pub(crate) writer: Option<Workload>,
    pub(crate) oid: u32,
    pub(crate) dir: tempfile::TempDir,
}

impl Stand {
    /// A stand with [`ROWS`] rows and a plain writer (it stops working if its connection is
    /// lost).
    pub(crate) async fn new() -> Stand {
        Stand::with(ROWS, false).await
    }

    /// A stand with `rows` rows; with `reconnecting`, the writer survives a lost connection
    /// (a server restart) by reconnecting ([`Workload::start_reconnecting`]).
    pub(crate) async fn with(rows: i64, reconnecting: bool) -> Stand {
        let cluster = common::cluster().await;
        let client = cluster.connect("postgres").await.unwrap();
        workload::create_tables(&client, "orders", "orders_twin", rows)
            .await
            .unwrap();
        let oid = common::oid_of(&client, "orders").await;
        let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
        let pause = Duration::from_millis(5);
        let writer = if reconnecting {
            Workload::start_reconnecting(&config, "orders", "orders_twin", 7, pause).await
        } else {
            Workload::start(&config, "orders", "orders_twin", 7, pause).await
        }
        .unwrap();
        Stand {
            cluster,
            client,
            writer: Some(writer),
            oid,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Opens the test's own session again (after a server restart cut it).
    pub(crate) async fn reconnect_client(&mut self) {
        self.client = self.cluster.connect("postgres").await.unwrap();
    }

    pub(crate) fn dsn(&self) -> String {
        self.cluster.conninfo("postgres")
    }

    /// Starts `doppel run --execute`, with pause point `point` armed if given; output goes to
    /// files in the work dir.
    fn start_run(&self, point: Option<&str>) -> Child {
        self.start_run_with(point, &[], "run")
    }

    /// [`Stand::start_run`] with `extra` arguments; output goes to `<name>.out` and
    /// `<name>.err` in the work dir.
    pub(crate) fn start_run_with(&self, point: Option<&str>, extra: &[&str], name: &str) -> Child {
        self.start_run_in(self.dir.path(), point, extra, name)
    }

    /// [`Stand::start_run_with`] with `--work-dir work_dir` (the spool and the control
    /// socket); the pause points, the rollback script and the output stay in the stand's
    /// directory.
    pub(crate) fn start_run_in(
        &self,
        work_dir: &std::path::Path,
        point: Option<&str>,
        extra: &[&str],
        name: &str,
    ) -> Child {
        let dir = self.dir.path();
        if let Some(point) = point {
            doppel::testing::arm(&common::pause_dir(dir), point).unwrap();
        }
        Command::new(env!("CARGO_BIN_EXE_doppel"))
            .env(doppel::testing::PAUSE_DIR_VAR, common::pause_dir(dir))
            .args([
                "run",
                "--dsn",
                &self.dsn(),
                "--table",
                "orders",
                "--alter",
                "ALTER COLUMN customer_id TYPE bigint",
                "--execute",
                "--progress",
                "lines",
            ])
            .arg("--work-dir")
            .arg(work_dir)
            .arg("--rollback-dir")
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
            .spawn()
            .expect("doppel starts")
    }

    fn run_output(&self) -> String {
        self.output_of("run")
    }

    /// The stdout and stderr of the run started as `name`.
    pub(crate) fn output_of(&self, name: &str) -> String {
        let read = |file: String| {
            strip_ansi(&std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default())
        };
        format!(
            "stdout:\n{}\nstderr:\n{}",
            read(format!("{name}.out")),
            read(format!("{name}.err"))
        )
    }

    /// Waits until the run stops at `point`; its detail line.
    pub(crate) async fn wait_reached(&self, child: &mut Child, point: &str) -> String {
        let dir = self.dir.path();
        let reached = common::wait_until(Duration::from_secs(180), || {
            doppel::testing::reached(&common::pause_dir(dir), point).is_some()
                || child.try_wait().unwrap().is_some()
        });
        let detail = doppel::testing::reached(&common::pause_dir(dir), point);
        assert!(
            reached && detail.is_some(),
            "doppel did not reach pause point {point}: {}",
            self.run_output()
        );
        detail.unwrap()
    }

    /// Stops the writer (it must have seen no error) and waits until no doppel session and no
    /// slot are left on the server.
    async fn settle(&mut self) {
        let report = self.writer.take().unwrap().stop().await.unwrap();
        assert_eq!(
            report.errors, 0,
            "the writer kept working on the original: {:?}",
            report.first_errors
        );
        assert!(report.transactions > 0, "the writer wrote during the run");
        let gone = common::wait_until_async(Duration::from_secs(30), || async {
            common::scalar(&self.client, DOPPEL_SESSIONS).await == 0
                && common::scalar(&self.client, "SELECT count(*) FROM pg_replication_slots").await
                    == 0
        })
        .await;
        assert!(
            gone,
            "doppel's sessions and its TEMPORARY slot disappear once its connections are gone"
        );
    }

    /// The original is in place and untouched: same OID, old column type, the twin's rows.
    async fn assert_original_intact(&self) {
        let oid = common::oid_of(&self.client, "public.orders").await;
        assert_eq!(oid, self.oid, "public.orders is still the original table");
        let ty: String = self
            .client
            .query_one(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                 WHERE attrelid = 'orders'::regclass AND attname = 'customer_id'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(ty, "integer", "the ALTER did not reach the original");
        assert_eq!(
            workload::mismatches(&self.client, "orders", "orders_twin")
                .await
                .unwrap(),
            0,
            "the original holds exactly the oracle's rows"
        );
        assert!(
            common::scalar(&self.client, "SELECT count(*) FROM orders").await > 0,
            "the original still has its rows"
        );
    }

    async fn publications(&self) -> i64 {
        common::scalar(&self.client, "SELECT count(*) FROM pg_publication").await
    }

    pub(crate) async fn shadow_exists(&self) -> bool {
        let shadow = format!("public._doppel_{}_new_orders", self.oid);
        self.client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&shadow])
            .await
            .unwrap()
            .get(0)
    }

    pub(crate) fn doppel(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_doppel"))
            .args(args)
            .args(["--dsn", &self.dsn()])
            .output()
            .unwrap()
    }

    /// `doppel cleanup --table orders --work-dir <run's dir>`: succeeds, its stdout lines
    /// about server objects are exactly `expected` (`nothing to clean up ..` when only local
    /// files were removed), and no spool file or control socket of the run is left.
    fn cleanup(&self, expected: &[String]) {
        let dir = self.dir.path().to_str().unwrap();
        let out = self.doppel(&["cleanup", "--table", "orders", "--work-dir", dir]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cleanup failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lines: Vec<&str> = stdout
            .lines()
            .filter(|l| {
                !l.starts_with("removed change spool")
                    && !l.starts_with("removed control socket")
                    && !l.starts_with("removed run registry file")
            })
            .collect();
        if lines.is_empty() {
            lines.push("nothing to clean up for orders");
        }
        assert_eq!(lines, expected, "cleanup reports what it removed: {stdout}");
        let left: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| {
                (n.starts_with(&format!("doppel-{}", self.oid))
                    && (n.ends_with(".spool") || n.ends_with(".sock")))
                    || n.starts_with(&format!("doppel-run-{}-", self.oid))
            })
            .collect();
        assert!(
            left.is_empty(),
            "cleanup --work-dir removed the run's files: {left:?}"
        );
    }

    /// Nothing of doppel's is left on the server.
    pub(crate) async fn assert_nothing_left(&self) {
        assert_eq!(
            common::scalar(&self.client, "SELECT count(*) FROM pg_replication_slots").await,
            0,
            "no replication slot"
        );
        assert_eq!(self.publications().await, 0, "no publication");
        assert_eq!(
            common::scalar(&self.client, DOPPEL_RELATIONS).await,
            0,
            "no shadow table, index or sequence of doppel's"
        );
        assert_eq!(
            self.copy_origins().await,
            0,
            "no replication origin of doppel's"
        );
    }

    /// The replication origins of the run's copy sessions (PostgreSQL 16+, while it copies).
    async fn copy_origins(&self) -> i64 {
        common::scalar(
            &self.client,
            &format!(
                "SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'doppel\\_{}\\_copy%'",
                self.oid
            ),
        )
        .await
    }
}

/// `text` without ANSI escape sequences (the log's colours), so tests can match
/// `field=value`.
pub(crate) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Pauses a run at `point`, checks `at_point` there, kills doppel with SIGKILL, and checks
/// the original and the cleanup. `created` says whether the publication and the shadow
/// existed at that point.
async fn kill_9_at(point: &str, created: bool) -> Stand {
    let mut stand = Stand::new().await;
    let mut child = stand.start_run(Some(point));
    let detail = stand.wait_reached(&mut child, point).await;
    if point == "copying" {
        // The copy workers wait after committing a chunk: the shadow holds part of the rows.
        let copied = common::shadow_rows(&stand.client, "orders").await;
        assert!(
            copied > 0 && copied < ROWS,
            "killed mid-copy ({copied} of {ROWS} rows copied; {detail})"
        );
    }
    if point == "cutover-locked" {
        // Inside the cutover transaction: ACCESS EXCLUSIVE on the original is granted to
        // doppel, the renames are not committed (other sessions still see the old catalog).
        let locked = common::scalar(
            &stand.client,
            &format!(
                "SELECT count(*) FROM pg_locks WHERE relation = {} AND mode = 'AccessExclusiveLock' AND granted",
                stand.oid
            ),
        )
        .await;
        assert_eq!(locked, 1, "doppel holds the cutover lock");
        assert_eq!(
            common::scalar(
                &stand.client,
                &format!(
                    "SELECT count(*) FROM pg_class WHERE oid = {} AND relname = 'orders'",
                    stand.oid
                )
            )
            .await,
            1,
            "the renames are not committed"
        );
    }
    let slots_before =
        common::scalar(&stand.client, "SELECT count(*) FROM pg_replication_slots").await;
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "doppel was killed");
    stand.settle().await;
    stand.assert_original_intact().await;
    if matches!(point, "after-preflight" | "shadow-built") {
        assert_eq!(slots_before, 0, "{point} comes before the slot");
    } else {
        assert_eq!(slots_before, 1, "doppel had its slot at {point}");
    }
    assert_eq!(
        stand.publications().await,
        i64::from(created),
        "the publication is left behind only if it was created"
    );
    assert_eq!(
        stand.shadow_exists().await,
        created,
        "the shadow is left behind"
    );
    assert_eq!(
        common::scalar(
            &stand.client,
            &format!(
                "SELECT count(*) FROM pg_class WHERE relname = '_doppel_{}_old_orders'",
                stand.oid
            )
        )
        .await,
        0,
        "no kept old table: nothing was cut over"
    );

    // Killed while copying on PostgreSQL 16+, the run leaves its copy sessions' origins.
    let origins = stand.copy_origins().await > 0;
    assert_eq!(
        origins,
        point == "copying" && stand.cluster.server_version_num() >= 160_000,
        "the copy's origins are left exactly when killed while copying under them"
    );
    let expected: Vec<String> = if created {
        let mut lines = vec![
            format!("removed publication doppel_{}", stand.oid),
            format!(
                "removed shadow table \"public\".\"_doppel_{}_new_orders\"",
                stand.oid
            ),
        ];
        if origins {
            lines.push("removed replication origins of the copy sessions".to_string());
        }
        lines
    } else {
        vec!["nothing to clean up for orders".to_string()]
    };
    stand.cleanup(&expected);
    stand.assert_nothing_left().await;
    stand.assert_original_intact().await;
    stand.cleanup(&["nothing to clean up for orders".to_string()]);

    // Nothing left that preflight would refuse: a new (dry) run passes.
    let dry = stand.doppel(&[
        "run",
        "--table",
        "orders",
        "--alter",
        "ALTER COLUMN customer_id TYPE bigint",
    ]);
    assert!(
        dry.status.success(),
        "a new run passes preflight after the cleanup: {}",
        String::from_utf8_lossy(&dry.stderr)
    );
    stand
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_preflight_leaves_nothing() {
    kill_9_at("after-preflight", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_the_shadow_built_then_cleanup() {
    kill_9_at("shadow-built", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_copy_then_cleanup() {
    kill_9_at("copying", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_catch_up_then_cleanup() {
    kill_9_at("catch-up", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_verify_then_cleanup() {
    kill_9_at("verifying", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_the_cutover_transaction_rolls_back_then_cleanup() {
    let stand = kill_9_at("cutover-locked", true).await;
    // The rollback script is written before COMMIT; it refers to a cutover that never
    // happened. It is the only file the kill leaves in --rollback-dir besides doppel's output.
    let scripts: Vec<String> = std::fs::read_dir(stand.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("doppel-rollback-"))
        .collect();
    assert!(
        !scripts.is_empty(),
        "the rollback script was written before COMMIT"
    );
}

/// Terminates doppel's walsender while the run is stopped at `point`, lets it go on, and
/// checks that it stops and removes everything by itself; its exit code and output.
async fn walsender_terminated_at(point: &str) -> (Option<i32>, String) {
    let mut stand = Stand::new().await;
    let mut child = stand.start_run(Some(point));
    stand.wait_reached(&mut child, point).await;
    let terminated = common::scalar(
        &stand.client,
        "SELECT count(*) FROM pg_replication_slots s WHERE s.active AND pg_terminate_backend(s.active_pid)",
    )
    .await;
    assert_eq!(terminated, 1, "doppel's walsender was terminated");
    doppel::testing::release(&common::pause_dir(stand.dir.path()), point).unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let output = stand.run_output();
    assert!(!status.success(), "the run must stop: {output}");
    stand.settle().await;
    stand.assert_nothing_left().await;
    stand.assert_original_intact().await;
    stand.cleanup(&["nothing to clean up for orders".to_string()]);
    (status.code(), output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walsender_terminated_during_catch_up_exits_4_and_cleans_up() {
    let (code, output) = walsender_terminated_at("catch-up").await;
    assert_eq!(
        code,
        Some(4),
        "exit 4: the replication stream was lost; {output}"
    );
    assert!(
        output.contains("the replication stream stopped"),
        "says the stream stopped: {output}"
    );
}

/// During verification the lost stream is noticed by the applier, whose spool simply ends;
/// the run reports the stream's error (exit 4), not only its consequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walsender_terminated_during_verify_stops_and_cleans_up() {
    let (code, output) = walsender_terminated_at("verifying").await;
    assert_eq!(code, Some(4), "expected 4 (stream lost): {output}");
    assert!(
        output.contains("the replication stream stopped"),
        "{output}"
    );
}
