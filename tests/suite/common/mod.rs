//! Shared helpers for the integration tests: private PostgreSQL clusters and polling.
//!
//! Each test binary includes this module with `mod common;`; not every binary uses every
//! helper.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use doppel::cancel::Cancel;
use doppel::run::{Outcome, RunOptions};

use doppel_testkit::cluster::{ClusterOptions, LocalCluster};

/// Starts a private cluster with default options (logical WAL, no fsync).
///
/// # Panics
/// If the cluster cannot be started; the message carries the error (with the server log).
pub async fn cluster() -> LocalCluster {
    cluster_with(ClusterOptions::default()).await
}

/// Starts a private cluster with `options`.
///
/// # Panics
/// If the cluster cannot be started; the message carries the error (with the server log).
pub async fn cluster_with(options: ClusterOptions) -> LocalCluster {
    match LocalCluster::start(options).await {
        Ok(cluster) => cluster,
        Err(e) => panic!("could not start a test cluster: {e:#}"),
    }
}

/// Polls `condition` every 20 ms until it holds; false if it still does not after `timeout`.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` exists and is not a zombie (an exited process whose parent has
/// not reaped it yet; orphaned postmasters may stay zombies under a non-reaping init).
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// Pids of live (non-zombie) processes whose command line mentions `dir`.
pub fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmd| cmd.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .filter(|&pid| pid_alive(pid))
        .collect()
}

/// Polls the async `condition` every 20 ms until it holds; false if it still does not after
/// `timeout`.
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first column of the first row of `sql`, as a count.
///
/// # Panics
/// If the query fails; the message names the query.
pub async fn scalar(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Rows in the shadow doppel builds for table `table` (`_doppel_<oid>_new_<table>`), or -1
/// while it does not exist.
pub async fn shadow_rows(client: &tokio_postgres::Client, table: &str) -> i64 {
    let shadow: Option<String> = client
        .query_opt(
            "SELECT format('%I', relname) FROM pg_class
             WHERE relname LIKE '\\_doppel\\_%\\_new\\_' || $1",
            &[&table],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    match shadow {
        Some(name) => client
            .query_one(&format!("SELECT count(*) FROM {name}"), &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(-1),
        None => -1,
    }
}

/// Asserts nothing doppel creates on the server is left: no replication slot (waited for up
/// to 15 s: a temporary slot goes with its session, which ends just after the run), no
/// publication, no relation named `_doppel_…` (shadow, its indexes, a kept old table).
pub async fn assert_no_doppel_objects(client: &tokio_postgres::Client) {
    let gone = wait_until_async(Duration::from_secs(15), || async {
        scalar(client, "SELECT count(*) FROM pg_replication_slots").await == 0
    })
    .await;
    assert!(gone, "no slot left");
    assert_eq!(
        scalar(client, "SELECT count(*) FROM pg_publication").await,
        0,
        "no publication left"
    );
    assert_eq!(
        scalar(
            client,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_%'"
        )
        .await,
        0,
        "no shadow left"
    );
}

/// The pause directory of a test run whose work directory is `work_dir`: pause points of the
/// run are armed and reached there (`doppel::testing`).
pub fn pause_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("pause")
}

/// `doppel::run::run` in-process, with its pause points armed through
/// `pause_dir(options.work_dir)`.
pub async fn run_paused(
    config: &tokio_postgres::Config,
    options: &RunOptions,
    cancel: &Cancel,
) -> anyhow::Result<Outcome> {
    let dir = pause_dir(&options.work_dir);
    doppel::testing::scoped(Some(&dir), None, doppel::run::run(config, options, cancel)).await
}
