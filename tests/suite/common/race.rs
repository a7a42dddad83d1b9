//! The forced-race harness of `races` and `decoded_before_visible` (docs/design.md §2): a
//! table `t` and its twin written in the same transactions ([`Writer`]), an in-process run
//! held at pause points ([`Run`]), and the difference between the shadow (or the migrated
//! table) and the twin ([`Diff`]).

use std::path::Path;
use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::run::{self, Outcome, RunOptions};
use doppel::testing::{self as pause, Broken};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::common::{self, Tune};

/// Longest wait for any forced step.
pub const WAIT: Duration = Duration::from_secs(60);

/// The ALTER of every scenario (rewrites the table; `v` is compared as bigint).
pub const ALTER: &str = "ALTER COLUMN v TYPE bigint";

/// Rows present on one side only (each the text of the compared columns), in key order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub only_new: Vec<String>,
    pub only_twin: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.only_new.is_empty() && self.only_twin.is_empty()
    }

    fn keys(rows: &[String]) -> Vec<i64> {
        rows.iter()
            .map(|r| {
                r.trim_start_matches('(')
                    .split(',')
                    .next()
                    .and_then(|k| k.parse().ok())
                    .unwrap_or_else(|| panic!("no key in {r}"))
            })
            .collect()
    }

    pub fn new_keys(&self) -> Vec<i64> {
        Self::keys(&self.only_new)
    }

    pub fn twin_keys(&self) -> Vec<i64> {
        Self::keys(&self.only_twin)
    }
}

/// `relation` against `twin` on `columns`.
pub async fn diff(client: &Client, relation: &str, columns: &str) -> Diff {
    let side = |a: &str, b: &str| {
        format!(
            "SELECT r::text FROM (SELECT ROW({columns}) AS r FROM {a}
                                  EXCEPT ALL SELECT ROW({columns}) FROM {b}) d ORDER BY d.r"
        )
    };
    let rows = |sql: String| async move {
        client
            .query(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    Diff {
        only_new: rows(side(relation, "twin")).await,
        only_twin: rows(side("twin", relation)).await,
    }
}

/// A private cluster, a session on it, and the run configuration.
pub async fn stand() -> (
    doppel_testkit::cluster::LocalCluster,
    Client,
    tokio_postgres::Config,
) {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    (cluster, client, config)
}

/// (Re)creates `t` (`id`, `v`, `doc` stored out of line) with `rows` rows keyed `10, 20, ..`
/// (so keys in between are free), rows whose key is a multiple of `toast_every` carrying an
/// incompressible 8 kB `doc` (TOASTed), and its twin.
pub async fn create_tables(client: &Client, rows: i64, toast_every: i64) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS t, twin;
             CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, doc text);
             ALTER TABLE t ALTER COLUMN doc SET STORAGE EXTERNAL;
             INSERT INTO t SELECT 10 * i, 10 * i,
                    CASE WHEN (10 * i) % {toast_every} = 0
                         THEN (SELECT string_agg(md5(i::text || g), '') FROM generate_series(1, 250) g)
                    END
             FROM generate_series(1, {rows}) i;
             CREATE TABLE twin AS SELECT * FROM t;"
        ))
        .await
        .unwrap();
}

/// A session writing to `t` and `twin`: statements containing `{t}` run on both tables in
/// the same transaction, others (`SAVEPOINT ..`) once.
pub struct Writer {
    pub client: Client,
}

impl Writer {
    /// A new session on `config`.
    pub async fn new(config: &tokio_postgres::Config) -> Writer {
        Writer {
            client: doppel::conninfo::connect(config).await.unwrap(),
        }
    }

    /// `BEGIN`; returns the transaction's (32-bit) xid.
    pub async fn begin(&self) -> u32 {
        self.client.batch_execute("BEGIN").await.unwrap();
        let xid: i64 = self
            .client
            .query_one(
                "SELECT pg_current_xact_id()::text::bigint % 4294967296",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        xid as u32
    }

    /// Runs `statements` in the open transaction (`{t}`: on `t`, then on `twin`).
    pub async fn run(&self, statements: &[&str]) {
        for s in statements {
            let targets: &[&str] = if s.contains("{t}") {
                &["t", "twin"]
            } else {
                &[""]
            };
            for target in targets {
                let sql = s.replace("{t}", target);
                self.client
                    .batch_execute(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
    }

    /// `COMMIT`.
    pub async fn commit(&self) {
        self.client.batch_execute("COMMIT").await.unwrap();
    }

    /// One transaction of `statements`; returns its xid.
    pub async fn transaction(&self, statements: &[&str]) -> u32 {
        let xid = self.begin().await;
        self.run(statements).await;
        self.commit().await;
        xid
    }
}

/// One in-process `doppel run --execute` of [`ALTER`] on `t`, armed to stop at `verifying`.
pub struct Run {
    dir: tempfile::TempDir,
    broken: Option<Broken>,
    cancel: tokio::sync::watch::Sender<bool>,
    handle: Option<JoinHandle<anyhow::Result<Outcome>>>,
}

impl Run {
    /// Starts the run under `broken` (or doppel's ordering), with `arms` (point, condition)
    /// armed before it starts; `tune` adjusts the options (one copy worker, 100-row chunks).
    pub fn start(
        config: &tokio_postgres::Config,
        broken: Option<Broken>,
        arms: &[(&str, &str)],
        tune: impl FnOnce(&mut RunOptions),
    ) -> Run {
        let dir = tempfile::tempdir().unwrap();
        pause::arm(&common::pause_dir(dir.path()), "verifying").unwrap();
        for (name, condition) in arms {
            pause::arm_when(&common::pause_dir(dir.path()), name, condition).unwrap();
        }
        let mut options = common::options(dir.path(), "t", &[ALTER])
            .copy_workers(1)
            .status_interval(Duration::from_secs(600))
            .fence_timeout(Duration::from_secs(5))
            // A zero target keeps every chunk at the 100-row minimum.
            .chunk_time(Duration::ZERO)
            .initial_rows(100);
        tune(&mut options);
        let (cancel, signal) = Cancel::new();
        let run_config = config.clone();
        let pause_dir = common::pause_dir(dir.path());
        let broken_config = broken.map(|b| (b, config.clone()));
        let handle = tokio::spawn(async move {
            let run = run::run(&run_config, &options, &signal);
            pause::scoped(Some(&pause_dir), broken_config, run).await
        });
        Run {
            dir,
            broken,
            cancel,
            handle: Some(handle),
        }
    }

    /// The run's work directory (its pause points are under it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Arms pause point `name` to stop when `condition` holds.
    pub fn arm(&self, name: &str, condition: &str) {
        pause::arm_when(&common::pause_dir(self.dir()), name, condition).unwrap();
    }

    /// Lets the run go on from pause point `name`.
    pub fn release(&self, name: &str) {
        pause::release(&common::pause_dir(self.dir()), name).unwrap();
    }

    /// Panics with the run's error if it has ended.
    pub async fn check_running(&mut self, waiting_for: &str) {
        if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
            let result = self.handle.take().unwrap().await.unwrap();
            panic!("the run ended while the test waited for {waiting_for}: {result:?}");
        }
    }

    /// Waits until the run stops at `name`; returns the point's detail.
    pub async fn reached(&mut self, name: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(detail) = pause::reached(&common::pause_dir(self.dir()), name) {
                return detail;
            }
            self.check_running(name).await;
            assert!(
                tokio::time::Instant::now() < deadline,
                "the run did not reach {name} within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Under [`Broken::ApplyDuringCopy`]: arms `applied` for transaction `xid` (before it
    /// commits), for [`Run::applied_during_copy`].
    pub fn expect_applied_during_copy(&self, xid: u32) {
        if self.broken == Some(Broken::ApplyDuringCopy) {
            self.arm("applied", &format!("xid={xid}"));
        }
    }

    /// Under [`Broken::ApplyDuringCopy`]: waits until the applier running during the copy has
    /// applied transaction `xid` or is blocked on a row the held chunk inserted (F2); does
    /// nothing under other orderings.
    pub async fn applied_during_copy(&mut self, client: &Client, xid: u32) {
        if self.broken != Some(Broken::ApplyDuringCopy) {
            return;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if pause::reached(&common::pause_dir(self.dir()), "applied").is_some() {
                break;
            }
            let blocked = common::scalar(
                client,
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = 'doppel applier (during copy)' AND wait_event_type = 'Lock'",
            )
            .await;
            if blocked > 0 {
                break;
            }
            self.check_running("the applier during the copy").await;
            assert!(
                tokio::time::Instant::now() < deadline,
                "transaction {xid} was not applied during the copy within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.release("applied");
    }

    /// Waits for `verifying` and compares the shadow with the twin on `columns`.
    pub async fn shadow_diff(&mut self, client: &Client, columns: &str) -> Diff {
        self.reached("verifying").await;
        diff(client, &common::shadow_name(client, "t").await, columns).await
    }

    /// Lets the run go on from `verifying` and returns how it ended.
    pub async fn outcome(mut self) -> anyhow::Result<Outcome> {
        self.release("verifying");
        self.handle.take().unwrap().await.unwrap()
    }

    /// A broken run is cancelled (its shadow is dropped, `t` untouched); a correct run cuts
    /// over and the new `t` must equal the twin.
    pub async fn finish(mut self, client: &Client, columns: &str) {
        let handle = self.handle.take().unwrap();
        if self.broken.is_some() {
            self.cancel.send_replace(true);
            self.release("verifying");
            let result = handle.await.unwrap();
            assert!(result.is_err(), "the cancelled run did not stop");
        } else {
            self.release("verifying");
            match handle.await.unwrap() {
                Ok(Outcome::Migrated(_)) => {}
                other => panic!("expected a migration, got {other:?}"),
            }
            let after = diff(client, "t", columns).await;
            assert!(
                after.is_empty(),
                "the migrated table differs from the twin: {after:?}"
            );
        }
    }
}

/// The chunk range `(lo, hi]` in a copier pause point's detail.
pub fn chunk_range(detail: &str) -> (i64, i64) {
    let range = detail
        .split("range=(")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .unwrap_or_else(|| panic!("no range in {detail:?}"));
    let (lo, hi) = range.split_once(", ").unwrap();
    let bound = |b: &str, open: i64| b.parse().unwrap_or(open);
    (bound(lo, i64::MIN), bound(hi, i64::MAX))
}

/// Whether a walsender waits for transaction `xid` to end (slot creation waits for the
/// transactions running when it starts building its snapshot).
pub async fn slot_waits_for(client: &Client, xid: u32) -> bool {
    common::scalar(
        client,
        &format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
             WHERE l.locktype = 'transactionid' AND NOT l.granted
               AND l.transactionid::text = '{xid}' AND a.backend_type = 'walsender'"
        ),
    )
    .await
        > 0
}
