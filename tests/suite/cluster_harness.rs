//! Checks that the throwaway-cluster harness (`doppel_testkit::cluster`) starts, configures,
//! restarts and — above all — always stops and removes its clusters.

use std::path::{Path, PathBuf};
use std::time::Duration;

use doppel_testkit::cluster::{ClusterOptions, LocalCluster};

use crate::common;

/// How long a stopped postmaster may take to disappear from the process table.
const GONE_TIMEOUT: Duration = Duration::from_secs(15);

async fn show(cluster: &LocalCluster, setting: &str) -> String {
    let client = cluster.connect("postgres").await.expect("connect");
    let row = client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .expect("SHOW");
    row.get(0)
}

/// Asserts the cluster's directory is gone and neither its postmaster nor any process
/// mentioning its data directory is alive.
fn assert_gone(data_dir: &Path, postmaster: u32) {
    let base = data_dir.parent().expect("data dir has a parent");
    assert!(!data_dir.exists(), "{} still exists", data_dir.display());
    assert!(!base.exists(), "{} still exists", base.display());
    assert!(
        common::wait_until(GONE_TIMEOUT, || !common::pid_alive(postmaster)),
        "postmaster {postmaster} still alive"
    );
    assert!(
        common::wait_until(GONE_TIMEOUT, || common::processes_mentioning(data_dir)
            .is_empty()),
        "processes still running on {}: {:?}",
        data_dir.display(),
        common::processes_mentioning(data_dir)
    );
}

#[tokio::test]
async fn starts_with_logical_wal_and_test_settings() {
    let cluster = common::cluster().await;
    assert_eq!(cluster.host(), "127.0.0.1");
    assert_eq!(show(&cluster, "wal_level").await, "logical");
    assert_eq!(show(&cluster, "port").await, cluster.port().to_string());
    assert_eq!(show(&cluster, "fsync").await, "off");
    assert_eq!(show(&cluster, "listen_addresses").await, "127.0.0.1");
    assert_eq!(show(&cluster, "max_replication_slots").await, "20");
    assert_eq!(show(&cluster, "server_encoding").await, "UTF8");
    assert!(cluster.server_version_num() >= 100_000);
    assert_eq!(
        cluster.conninfo("postgres"),
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            cluster.port()
        )
    );
    assert!(cluster.data_dir().join("PG_VERSION").is_file());
    assert!(cluster.bin("postgres").is_file());
    assert!(cluster.postmaster_pid().is_some());
}

#[tokio::test]
async fn two_clusters_in_parallel_get_different_ports() {
    let (a, b) = tokio::join!(common::cluster(), common::cluster());
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    let (ca, cb) = (
        a.connect("postgres").await.unwrap(),
        b.connect("postgres").await.unwrap(),
    );
    ca.batch_execute("CREATE TABLE only_in_a (id int)")
        .await
        .unwrap();
    let in_b: i64 = cb
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'only_in_a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_b, 0);
}

#[tokio::test]
async fn stop_removes_directory_and_server_and_is_idempotent() {
    let mut cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    let data_dir = cluster.data_dir().to_path_buf();
    let pid = cluster.postmaster_pid().expect("postmaster running");
    assert!(common::pid_alive(pid));

    cluster.stop().expect("stop");
    assert_gone(&data_dir, pid);
    assert!(client.simple_query("SELECT 1").await.is_err());
    cluster.stop().expect("second stop is a no-op");
    assert!(cluster.connect("postgres").await.is_err());
    assert!(cluster.postmaster_pid().is_none());
}

#[tokio::test]
async fn drop_removes_directory_and_server() {
    let cluster = common::cluster().await;
    let data_dir = cluster.data_dir().to_path_buf();
    let pid = cluster.postmaster_pid().expect("postmaster running");
    drop(cluster);
    assert_gone(&data_dir, pid);
}

#[tokio::test]
async fn restart_applies_alter_system() {
    let mut cluster = common::cluster().await;
    let old_pid = cluster.postmaster_pid().unwrap();
    cluster.alter_system("wal_level", "replica").await.unwrap();
    // Needs a restart: still logical after the reload.
    assert_eq!(show(&cluster, "wal_level").await, "logical");
    cluster.restart().await.expect("restart");
    assert_eq!(show(&cluster, "wal_level").await, "replica");
    let new_pid = cluster.postmaster_pid().unwrap();
    assert_ne!(old_pid, new_pid);
    assert!(common::wait_until(GONE_TIMEOUT, || !common::pid_alive(
        old_pid
    )));

    // A reloadable setting applies without a restart. The reload is asynchronous: poll
    // with fresh sessions until one sees it.
    cluster.alter_system("work_mem", "7MB").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut applied = false;
    while !applied && std::time::Instant::now() < deadline {
        applied = show(&cluster, "work_mem").await == "7MB";
        if !applied {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(applied, "work_mem was not reloaded");
}

#[tokio::test]
async fn options_extra_conf_and_hba_and_fsync() {
    let cluster = common::cluster_with(ClusterOptions {
        extra_conf: vec![
            ("work_mem".into(), "12MB".into()),
            ("application_name".into(), "it's quoted".into()),
        ],
        fsync: true,
        hba_extra: vec!["host all nobody 127.0.0.1/32 reject".into()],
        ..ClusterOptions::default()
    })
    .await;
    assert_eq!(show(&cluster, "work_mem").await, "12MB");
    assert_eq!(show(&cluster, "fsync").await, "on");
    let hba = std::fs::read_to_string(cluster.data_dir().join("pg_hba.conf")).unwrap();
    let first_rule = hba
        .lines()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .unwrap();
    assert_eq!(first_rule, "host all nobody 127.0.0.1/32 reject");
}

#[tokio::test]
async fn create_database_and_connect_to_it() {
    let cluster = common::cluster().await;
    cluster.create_database("doppel test").await.unwrap();
    let client = cluster.connect("doppel test").await.unwrap();
    let db: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(db, "doppel test");
    assert!(cluster.create_database("doppel test").await.is_err());
}

#[tokio::test]
async fn command_runs_client_tools_against_the_cluster() {
    let cluster = common::cluster().await;
    let out = cluster
        .command("psql")
        .args(["-X", "-A", "-t", "-c", "SELECT current_setting('port')"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        cluster.port().to_string()
    );

    let out = cluster
        .command("pgbench")
        .args(["-i", "-s", "1", "-q"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // pg_basebackup refuses servers newer than itself; the npm server builds ship none, so
    // the fallback may be an older Debian one.
    let version = cluster
        .command("pg_basebackup")
        .arg("--version")
        .output()
        .unwrap();
    let tool_major: u32 = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .last()
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if tool_major < cluster.server_version_num() / 10000 {
        eprintln!("skipping pg_basebackup: version {tool_major} is older than the server");
        return;
    }
    let target = cluster.scratch_dir().join("backup");
    let out = cluster
        .command("pg_basebackup")
        .arg("-D")
        .arg(&target)
        .args(["-X", "none", "-c", "fast", "--no-sync"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(target.join("PG_VERSION").is_file());
}

#[tokio::test]
async fn failed_start_reports_log_and_cleans_up() {
    let err = LocalCluster::start(ClusterOptions {
        extra_conf: vec![("shared_buffers".into(), "not a size".into())],
        ..ClusterOptions::default()
    })
    .await
    .expect_err("bogus shared_buffers must fail");
    let message = format!("{err:#}");
    assert!(message.contains("server log"), "{message}");
    assert!(message.contains("shared_buffers"), "{message}");

    // The error names the data directory; it must be gone.
    let data_dir: PathBuf = message
        .split("data directory ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .map(PathBuf::from)
        .expect("error names the data directory");
    assert!(!data_dir.exists(), "{} left behind", data_dir.display());
    assert!(common::processes_mentioning(&data_dir).is_empty());
}

#[tokio::test]
async fn bad_setting_name_is_rejected_before_anything_starts() {
    let err = LocalCluster::start(ClusterOptions {
        extra_conf: vec![("x = 1\nport".into(), "1".into())],
        ..ClusterOptions::default()
    })
    .await
    .expect_err("invalid name");
    assert!(format!("{err:#}").contains("invalid configuration parameter name"));
    let err = LocalCluster::start(ClusterOptions {
        extra_conf: vec![("port".into(), "5432".into())],
        ..ClusterOptions::default()
    })
    .await
    .expect_err("port is ours");
    assert!(format!("{err:#}").contains("port"));
}

#[test]
fn find_bin_dir_checks_explicit_dirs_and_finds_the_server() {
    let err = LocalCluster::find_bin_dir(Some(Path::new("/nonexistent/bin"))).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/bin"), "{err:#}");
    let found = LocalCluster::find_bin_dir(None).expect("a PostgreSQL server is installed");
    assert!(found.join("postgres").is_file());
    assert!(found.join("initdb").is_file());
}
