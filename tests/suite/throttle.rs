//! Throttling on a real server: flag files, the panic flag, and a physical standby (started
//! from `pg_basebackup`) whose replay is paused with `pg_wal_replay_pause()` to create lag.
//! While throttled the backfill makes no progress; it resumes when the reason clears.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use doppel::cancel::Cancel;
use doppel::run::{Outcome, RunOptions};
use doppel_testkit::cluster::LocalCluster;
use doppel_testkit::workload;

use crate::common::{self, Tune};

/// The ALTER of every run.
const ALTER: &str = "ALTER COLUMN v TYPE bigint";

/// Waits until the shadow stops growing (no new rows over 500 ms); returns how long it took.
async fn wait_stalled(client: &tokio_postgres::Client, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut last = common::shadow_rows(client, "t").await;
    while started.elapsed() < within {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = common::shadow_rows(client, "t").await;
        if now == last && now >= 0 {
            return Some(started.elapsed());
        }
        last = now;
    }
    None
}

async fn wait_growing(client: &tokio_postgres::Client) {
    // -1 while the shadow does not exist yet: growth means rows copied into it.
    let base = common::shadow_rows(client, "t").await.max(0);
    let grew = common::wait_until_async(Duration::from_secs(60), || async {
        common::shadow_rows(client, "t").await > base
    })
    .await;
    assert!(grew, "the backfill makes progress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_flag_file_pauses_the_backfill_until_removed() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_id_v_table(&client, "t", 100_000)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("throttle");
    let mut options = common::options(dir.path(), "t", &[ALTER]).slow(10.0);
    options.throttle.throttle_flag_file = Some(flag.clone());
    let hooks = hooks_dir(dir.path(), "on-throttled");
    options.hooks_dir = Some(hooks.clone());
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let run =
        tokio::spawn(async move { common::run_paused(&config, &options, &Cancel::never()).await });
    wait_growing(&client).await;
    std::fs::write(&flag, b"").unwrap();
    // The flag acts within 1 s; seeing a stall takes one more 500 ms sample.
    let stalled = wait_stalled(&client, Duration::from_secs(5)).await;
    assert!(
        stalled.is_some_and(|d| d <= Duration::from_millis(2000)),
        "the backfill stops while the flag file exists"
    );
    let held = common::shadow_rows(&client, "t").await;
    let moved = common::wait_until_async(Duration::from_secs(1), || async {
        common::shadow_rows(&client, "t").await != held
    })
    .await;
    assert!(!moved, "no chunk is copied while throttled");
    let ran = common::wait_until_async(Duration::from_secs(5), || async {
        hooks.join("on-throttled.env").exists()
    })
    .await;
    assert!(ran, "the on-throttled hook ran");
    let env = std::fs::read_to_string(hooks.join("on-throttled.env")).unwrap();
    assert!(env.contains("DOPPEL_HOOK=on-throttled"), "{env}");
    assert!(env.contains("DOPPEL_TABLE=\"public\".\"t\""), "{env}");
    std::fs::remove_file(&flag).unwrap();
    wait_growing(&client).await;
    assert!(matches!(run.await.unwrap().unwrap(), Outcome::Migrated(_)));
}

/// The verify phase is a full read of both tables: a throttled run must not start a
/// verification chunk either. The run is held at the start of verification, throttled, then
/// let go: with 1,000-row chunks its 100 chunks would take well under the 3 s watched, yet no
/// row is verified until the flag file goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_flag_file_pauses_verification_until_removed() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_id_v_table(&client, "t", 100_000)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("throttle");
    let socket = dir.path().join("ctl.sock");
    let mut options = RunOptions {
        verify_chunk_rows: 1_000,
        ..common::options(dir.path(), "t", &[ALTER]).control_socket(socket.clone())
    };
    options.throttle.throttle_flag_file = Some(flag.clone());
    doppel::testing::arm(&common::pause_dir(dir.path()), "verifying").unwrap();
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let run =
        tokio::spawn(async move { common::run_paused(&config, &options, &Cancel::never()).await });
    assert!(
        doppel::testing::wait_reached(
            &common::pause_dir(dir.path()),
            "verifying",
            Duration::from_secs(60)
        )
        .await
        .is_some(),
        "the run reaches verification"
    );
    std::fs::write(&flag, b"").unwrap();
    let status = || async { doppel::ops::control::send(&socket, "status").await.unwrap() };
    let throttled = common::wait_until_async(Duration::from_secs(10), || async {
        status().await.contains("throttled")
    })
    .await;
    assert!(
        throttled,
        "the flag file throttles the run: {}",
        status().await
    );
    doppel::testing::release(&common::pause_dir(dir.path()), "verifying").unwrap();
    let verified = || async {
        let json = doppel::ops::control::send(&socket, "status --json")
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["rows_verified"].as_u64().unwrap()
    };
    let moved =
        common::wait_until_async(Duration::from_secs(3), || async { verified().await > 0 }).await;
    assert!(
        !moved,
        "no verification chunk runs while throttled: {}",
        status().await
    );
    assert!(
        !run.is_finished(),
        "the run waits for the throttle to clear"
    );
    std::fs::remove_file(&flag).unwrap();
    match run.await.unwrap().unwrap() {
        Outcome::Migrated(report) => {
            assert_eq!(report.verify.rows, 100_000);
            // 100 full chunks, then the (empty) range after the last boundary.
            assert_eq!(report.verify.chunks, 101);
        }
        other => panic!("expected a migration, got {other:?}"),
    }
}

/// A hooks directory with one hook, `name`, that writes its DOPPEL_* environment to
/// `<dir>/<name>.env`.
fn hooks_dir(parent: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = parent.join("hooks");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join(name);
    std::fs::write(
        &script,
        format!("#!/bin/sh\nenv | grep '^DOPPEL_' > {}/{name}.env.tmp && mv {}/{name}.env.tmp {}/{name}.env\n", dir.display(), dir.display(), dir.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_flag_file_aborts_and_cleans_up_promptly() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_id_v_table(&client, "t", 100_000)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("panic");
    let mut options = common::options(dir.path(), "t", &[ALTER]).slow(10.0);
    options.throttle.panic_flag_file = Some(flag.clone());
    let hooks = hooks_dir(dir.path(), "on-failure");
    options.hooks_dir = Some(hooks.clone());
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let run =
        tokio::spawn(async move { common::run_paused(&config, &options, &Cancel::never()).await });
    wait_growing(&client).await;
    std::fs::write(&flag, b"").unwrap();
    let created = Instant::now();
    let err = run.await.unwrap().expect_err("the run aborts");
    let reaction = created.elapsed();
    assert!(format!("{err:#}").contains("panic flag file"), "{err:#}");
    assert!(
        reaction < Duration::from_secs(2),
        "aborted and cleaned up in {reaction:?}"
    );
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_%'"
        )
        .await,
        0
    );
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM pg_publication").await,
        0
    );
    let env = std::fs::read_to_string(hooks.join("on-failure.env")).expect("on-failure ran");
    assert!(env.contains("DOPPEL_TABLE=\"public\".\"t\""), "{env}");
}

/// A hot standby of `primary`, started from `pg_basebackup`; stopped on drop.
struct Standby {
    dir: PathBuf,
    port: u16,
    pg_ctl: PathBuf,
}

impl Standby {
    fn start(primary: &LocalCluster) -> Option<Standby> {
        let version = primary
            .command("pg_basebackup")
            .arg("--version")
            .output()
            .ok()?;
        let tool_major: u32 = String::from_utf8_lossy(&version.stdout)
            .split_whitespace()
            .last()
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if tool_major != primary.server_version_num() / 10000 {
            eprintln!("skipped: no pg_basebackup of the server's major here");
            return None;
        }
        let dir = primary.scratch_dir().join("standby");
        let out = primary
            .command("pg_basebackup")
            .arg("-D")
            .arg(&dir)
            .args([
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-h",
                primary.host(),
                "-p",
                &primary.port().to_string(),
                "-U",
                "postgres",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let conf = format!(
            "\nport = {port}\nunix_socket_directories = '{}'\nhot_standby = on\nwal_receiver_status_interval = 1s\n",
            primary.scratch_dir().display()
        );
        let auto = dir.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
        text.push_str(&conf);
        std::fs::write(&auto, text).unwrap();
        let pg_ctl = primary.bin("pg_ctl");
        let out = primary
            .command("pg_ctl")
            .arg("-D")
            .arg(&dir)
            .arg("-l")
            .arg(primary.scratch_dir().join("standby.log"))
            .args(["-w", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "standby start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Standby { dir, port, pg_ctl })
    }

    fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&self.pg_ctl)
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_replay_lag_throttles_and_clearing_it_resumes() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_id_v_table(&client, "t", 100_000)
        .await
        .unwrap();
    let Some(standby) = Standby::start(&cluster) else {
        return;
    };
    let (replica, conn) = tokio_postgres::connect(&standby.conninfo(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let dir = tempfile::tempdir().unwrap();
    let mut options = common::options(dir.path(), "t", &[ALTER]).slow(10.0);
    options.throttle.max_replica_lag = Some(Duration::from_millis(500));
    options.throttle.replicas = vec![standby.conninfo().parse().unwrap()];
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let run =
        tokio::spawn(async move { common::run_paused(&config, &options, &Cancel::never()).await });
    wait_growing(&client).await;
    replica
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    // Lag crosses 500 ms half a second after the pause; the backfill must stop within 1 s of
    // that (plus the 500 ms it takes to see a stall).
    let stalled = wait_stalled(&client, Duration::from_secs(10)).await;
    assert!(
        stalled.is_some_and(|d| d < Duration::from_millis(2500)),
        "the backfill stalled after {stalled:?}"
    );
    let held = common::shadow_rows(&client, "t").await;
    let moved = common::wait_until_async(Duration::from_secs(1), || async {
        common::shadow_rows(&client, "t").await != held
    })
    .await;
    assert!(!moved, "no chunk is copied while the standby lags");
    replica
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    wait_growing(&client).await;
    assert!(matches!(run.await.unwrap().unwrap(), Outcome::Migrated(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_server_throttles_until_the_load_goes() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_id_v_table(&client, "t", 100_000)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut options = common::options(dir.path(), "t", &[ALTER]).slow(10.0);
    // The test's own short queries count as one active session at times: allow one.
    options.throttle.max_active_backends = Some(1);
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let run =
        tokio::spawn(async move { common::run_paused(&config, &options, &Cancel::never()).await });
    wait_growing(&client).await;
    // Two long statements on other sessions are load above one active session.
    let mut sleepers = Vec::new();
    for _ in 0..2 {
        let busy = cluster.connect("postgres").await.unwrap();
        busy.batch_execute("SET application_name = 'busy'")
            .await
            .unwrap();
        sleepers.push(tokio::spawn(async move {
            busy.batch_execute("SELECT pg_sleep(60)").await
        }));
    }
    let stalled = wait_stalled(&client, Duration::from_secs(10)).await;
    assert!(
        stalled.is_some(),
        "the backfill stops while the server is busy"
    );
    let held = common::shadow_rows(&client, "t").await;
    let moved = common::wait_until_async(Duration::from_secs(1), || async {
        common::shadow_rows(&client, "t").await != held
    })
    .await;
    assert!(!moved, "no chunk is copied while the server is busy");
    client
        .batch_execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'busy'",
        )
        .await
        .unwrap();
    for s in sleepers {
        let _ = s.await;
    }
    wait_growing(&client).await;
    assert!(matches!(run.await.unwrap().unwrap(), Outcome::Migrated(_)));
}
