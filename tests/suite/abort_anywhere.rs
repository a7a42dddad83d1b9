//! An abort takes effect wherever the run is waiting, not only between chunks: Ctrl-C (the
//! run's cancel signal) while the backfill is throttled, `abort` on the control socket while
//! the cutover is postponed, and the panic flag file while an index build of the shadow is
//! blocked. Each run exits 3, the original keeps its OID and rows, and nothing doppel created
//! is left: no slot, publication, shadow, or rollback script for a cutover that never ran.

use std::path::Path;
use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::run::{Outcome, RunOptions};
use doppel_testkit::workload;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::common::{self, Tune};

/// How long an abort may take to end the run (the throttle checker samples every 100 ms;
/// cleanup drops the shadow and the slot).
const PROMPT: Duration = Duration::from_secs(15);

/// The ALTER of every run.
const ALTER: &str = "ALTER COLUMN v TYPE bigint";

type Run = JoinHandle<anyhow::Result<Outcome>>;

/// Creates `t` with 20,000 rows; its fingerprint.
async fn setup(client: &Client) -> (u32, String) {
    workload::create_id_v_table(client, "t", 20_000)
        .await
        .unwrap();
    fingerprint(client).await
}

/// The original's OID and a digest of its rows.
async fn fingerprint(client: &Client) -> (u32, String) {
    let row = client
        .query_one(
            "SELECT 't'::regclass::oid, md5(string_agg(t::text, ',' ORDER BY id)) FROM t",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn start(
    cluster: &doppel_testkit::cluster::LocalCluster,
    options: RunOptions,
    cancel: Cancel,
) -> Run {
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    tokio::spawn(async move { common::run_paused(&config, &options, &cancel).await })
}

/// Starts the run held at the `shadow-built` pause point and waits until it is there.
async fn start_at_shadow_built(
    cluster: &doppel_testkit::cluster::LocalCluster,
    options: RunOptions,
    cancel: Cancel,
) -> Run {
    doppel::testing::arm(&common::pause_dir(&options.work_dir), "shadow-built").unwrap();
    let dir = options.work_dir.clone();
    let run = start(cluster, options, cancel);
    assert!(
        doppel::testing::wait_reached(
            &common::pause_dir(&dir),
            "shadow-built",
            Duration::from_secs(60)
        )
        .await
        .is_some(),
        "the run builds the shadow"
    );
    run
}

/// The run ends within [`PROMPT`] with exit code 3 (aborted).
async fn ends_aborted(run: Run) {
    let err = match tokio::time::timeout(PROMPT, run).await {
        Err(_) => panic!("the run did not stop within {PROMPT:?} of the abort"),
        Ok(joined) => match joined.unwrap() {
            Ok(outcome) => panic!("the run must abort, got {outcome:?}"),
            Err(e) => e,
        },
    };
    assert_eq!(doppel::failure::exit_code(&err), 3, "{err:#}");
}

/// The original is as before; no slot, publication, doppel relation or rollback script is left.
async fn nothing_left(client: &Client, before: &(u32, String), dir: &Path) {
    assert_eq!(
        &fingerprint(client).await,
        before,
        "the original is untouched"
    );
    common::assert_no_doppel_objects(client).await;
    let scripts: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("doppel-rollback-"))
        .collect();
    assert!(scripts.is_empty(), "no rollback script left: {scripts:?}");
}

async fn status(socket: &Path) -> String {
    doppel::ops::control::send(socket, "status")
        .await
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_the_backfill_is_throttled_aborts_and_cleans_up() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let before = setup(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("throttle");
    let mut opts =
        common::options(dir.path(), "t", &[ALTER]).control_socket(dir.path().join("ctl.sock"));
    opts.throttle.throttle_flag_file = Some(flag.clone());
    let (cancel, signal) = Cancel::new();
    let run = start_at_shadow_built(&cluster, opts, signal).await;
    std::fs::write(&flag, b"").unwrap();
    doppel::testing::release(&common::pause_dir(dir.path()), "shadow-built").unwrap();
    let socket = dir.path().join("ctl.sock");
    let throttled = common::wait_until_async(Duration::from_secs(30), || async {
        status(&socket)
            .await
            .contains("State: copying, throttled (")
    })
    .await;
    assert!(
        throttled,
        "the backfill waits on the flag file: {}",
        status(&socket).await
    );
    assert!(!run.is_finished());
    cancel.send_replace(true);
    ends_aborted(run).await;
    nothing_left(&client, &before, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_on_the_control_socket_while_the_cutover_is_postponed() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let before = setup(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let postpone = dir.path().join("postpone");
    std::fs::write(&postpone, b"").unwrap();
    let mut opts =
        common::options(dir.path(), "t", &[ALTER]).control_socket(dir.path().join("ctl.sock"));
    opts.postpone_cutover_flag_file = Some(postpone.clone());
    let run = start(&cluster, opts, Cancel::never());
    // The rollback script is written as the cutover phase starts, before the postponement.
    let waiting = common::wait_until_async(Duration::from_secs(60), || async {
        std::fs::read_dir(dir.path()).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("doppel-rollback-")
        })
    })
    .await;
    assert!(waiting, "the run reaches the postponed cutover");
    let socket = dir.path().join("ctl.sock");
    let postponed = format!(
        "State: cutover, postponed (flag file {})",
        postpone.display()
    );
    assert!(
        common::wait_until_async(Duration::from_secs(10), || async {
            status(&socket).await.contains(&postponed)
        })
        .await,
        "the status says why the cutover waits: {}",
        status(&socket).await
    );
    assert!(!run.is_finished(), "postponed while the flag file exists");
    let reply = doppel::ops::control::send(&socket, "abort").await.unwrap();
    assert!(!reply.starts_with("error"), "{reply}");
    ends_aborted(run).await;
    nothing_left(&client, &before, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_flag_file_stops_a_blocked_index_build() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let before = setup(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let panic_flag = dir.path().join("panic");
    let mut opts =
        common::options(dir.path(), "t", &[ALTER]).control_socket(dir.path().join("ctl.sock"));
    opts.throttle.panic_flag_file = Some(panic_flag.clone());
    let run = start_at_shadow_built(&cluster, opts, Cancel::never()).await;
    // A session holding ROW EXCLUSIVE on the shadow lets the copy's INSERTs through but
    // blocks the primary key's build (SHARE or ACCESS EXCLUSIVE).
    let holder = cluster.connect("postgres").await.unwrap();
    let shadow: String = client
        .query_one(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relname LIKE '\\_doppel\\_%' AND c.relkind = 'r'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    holder
        .batch_execute(&format!("BEGIN; LOCK TABLE {shadow} IN ROW EXCLUSIVE MODE"))
        .await
        .unwrap();
    doppel::testing::release(&common::pause_dir(dir.path()), "shadow-built").unwrap();
    let building = "SELECT count(*) FROM pg_stat_activity
                    WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()
                      AND (query ILIKE '%INDEX%' OR query ILIKE '%PRIMARY KEY%')";
    let blocked = common::wait_until_async(Duration::from_secs(60), || async {
        common::scalar(&client, building).await == 1
    })
    .await;
    assert!(blocked, "the primary key build waits for the holder's lock");
    std::fs::write(&panic_flag, b"").unwrap();
    let cancelled = common::wait_until_async(Duration::from_secs(10), || async {
        common::scalar(&client, building).await == 0
    })
    .await;
    assert!(
        cancelled,
        "the panic flag file cancels the index build although it never reaches a chunk boundary"
    );
    // Cleanup drops the shadow, which needs the holder's lock.
    holder.batch_execute("ROLLBACK").await.unwrap();
    ends_aborted(run).await;
    nothing_left(&client, &before, dir.path()).await;
}
