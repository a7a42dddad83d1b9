//! The operator's controls on a real run: the control socket (gh-ost's commands, and
//! `doppel ctl`), and hooks with their `DOPPEL_*` environment, including a failing
//! `before-cutover` hook that postpones the cutover until `cut-over` is sent.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::failure::{FailureKind, kind_of};
use doppel::ops::control;
use doppel::run::{self, Outcome, RunOptions};
use doppel_testkit::workload;

use crate::common::{self, Tune};

/// The ALTER of every run.
const ALTER: &str = "ALTER COLUMN v TYPE bigint";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_commands_steer_a_running_migration() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_id_v_table(&client, "t", 100_000)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let options = common::options(dir.path(), "t", &[ALTER])
        .slow(10.0)
        .control_socket(socket.clone());
    let run = tokio::spawn(async move { run::run(&config, &options, &Cancel::never()).await });
    let copying = common::wait_until_async(Duration::from_secs(60), || async {
        common::shadow_rows(&client, "t").await > 0
    })
    .await;
    assert!(copying, "the backfill started");

    let status = control::send(&socket, "status").await.unwrap();
    assert!(status.starts_with("Copy: "), "{status}");
    let json = control::send(&socket, "status --json").await.unwrap();
    assert!(json.contains("\"rows_copied\""), "{json}");
    assert!(
        control::send(&socket, "chunk-time=50")
            .await
            .unwrap()
            .starts_with("ok")
    );
    assert_eq!(
        control::send(&socket, "chunk-time=?").await.unwrap().trim(),
        "chunk-time=50"
    );
    assert!(
        control::send(&socket, "chunk-size=5")
            .await
            .unwrap()
            .starts_with("error:")
    );
    assert!(
        control::send(&socket, "max-retained-wal=1000000000")
            .await
            .unwrap()
            .starts_with("ok")
    );
    assert_eq!(
        control::send(&socket, "max-retained-wal=?")
            .await
            .unwrap()
            .trim(),
        "max-retained-wal=1000000000"
    );
    assert!(
        control::send(&socket, "max-replica-lag=5000")
            .await
            .unwrap()
            .starts_with("ok")
    );
    assert!(
        control::send(&socket, "lock-timeout=300")
            .await
            .unwrap()
            .starts_with("ok")
    );
    assert!(
        control::send(&socket, "help")
            .await
            .unwrap()
            .contains("cut-over")
    );

    // `throttle` stops the backfill; `no-throttle` lets it go on.
    control::send(&socket, "throttle").await.unwrap();
    let throttled = common::wait_until_async(Duration::from_secs(5), || async {
        control::send(&socket, "status")
            .await
            .unwrap()
            .contains("throttled by the operator")
    })
    .await;
    assert!(throttled, "the status line shows the operator's throttle");
    // Chunks already running finish; then nothing more is copied.
    let last = std::cell::Cell::new(common::shadow_rows(&client, "t").await);
    let settled = common::wait_until_async(Duration::from_secs(5), || {
        let (client, last) = (&client, &last);
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = common::shadow_rows(client, "t").await;
            now == last.replace(now)
        }
    })
    .await;
    assert!(settled, "the backfill stops");
    let held = common::shadow_rows(&client, "t").await;
    let moved = common::wait_until_async(Duration::from_secs(1), || async {
        common::shadow_rows(&client, "t").await != held
    })
    .await;
    assert!(!moved, "no chunk is copied while throttled");
    control::send(&socket, "no-throttle").await.unwrap();
    let grew = common::wait_until_async(Duration::from_secs(30), || async {
        common::shadow_rows(&client, "t").await > held
    })
    .await;
    assert!(grew, "the backfill resumes");

    // `doppel ctl` talks to the socket (this run names it explicitly).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args(["ctl", "--control-socket"])
        .arg(&socket)
        .arg("lock-timeout=?")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "lock-timeout=300"
    );

    // `abort` stops the run and cleans up; the exit class is the operator's abort.
    control::send(&socket, "abort").await.unwrap();
    let err = run.await.unwrap().expect_err("aborted");
    assert_eq!(kind_of(&err), Some(FailureKind::Aborted), "{err:#}");
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_%'"
        )
        .await,
        0
    );
    assert!(!socket.exists(), "the socket file is removed");
}

fn hook(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_with_their_environment_and_a_failing_before_cutover_postpones() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_id_v_table(&client, "t", 2000)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for name in [
        "on-startup",
        "on-preflight-ok",
        "before-copy",
        "copy-complete",
        "after-cutover",
        "on-success",
    ] {
        hook(
            &hooks,
            name,
            &format!("env | grep '^DOPPEL_' | sort > {}/{name}", out.display()),
        );
    }
    hook(
        &hooks,
        "before-cutover",
        &format!(
            "touch {}/before-cutover; echo not yet >&2; exit 1",
            out.display()
        ),
    );
    let socket = dir.path().join("ctl.sock");
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let options = RunOptions {
        hooks_dir: Some(hooks.clone()),
        ..common::options(dir.path(), "t", &[ALTER]).control_socket(socket.clone())
    };
    let run = tokio::spawn(async move { run::run(&config, &options, &Cancel::never()).await });
    let hook_ran = common::wait_until_async(Duration::from_secs(60), || async {
        out.join("before-cutover").exists()
    })
    .await;
    assert!(hook_ran, "before-cutover ran");
    let postponed = common::wait_until_async(Duration::from_secs(10), || async {
        control::send(&socket, "postpone=?")
            .await
            .map(|r| r.trim() == "postpone=true")
            .unwrap_or(false)
    })
    .await;
    assert!(
        postponed,
        "a failing before-cutover hook postpones the cutover"
    );
    let said = common::wait_until_async(Duration::from_secs(10), || async {
        control::send(&socket, "status")
            .await
            .is_ok_and(|s| s.contains("State: cutover, postponed (before-cutover hook failed);"))
    })
    .await;
    assert!(
        said,
        "the status says why: {}",
        control::send(&socket, "status").await.unwrap()
    );
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_%\\_old\\_t'"
        )
        .await,
        0
    );
    control::send(&socket, "cut-over").await.unwrap();
    let Outcome::Migrated(_) = run.await.unwrap().unwrap() else {
        panic!("expected a migration")
    };
    for name in [
        "on-startup",
        "on-preflight-ok",
        "before-copy",
        "copy-complete",
        "after-cutover",
        "on-success",
    ] {
        let env = std::fs::read_to_string(out.join(name))
            .unwrap_or_else(|_| panic!("hook {name} did not run"));
        for var in [
            "DOPPEL_TABLE=\"public\".\"t\"",
            "DOPPEL_ALTER=ALTER COLUMN v TYPE bigint",
            "DOPPEL_PHASE=",
            "DOPPEL_ROWS_COPIED=",
            "DOPPEL_ROWS_ESTIMATE=",
            "DOPPEL_ELAPSED_S=",
            "DOPPEL_SHADOW_TABLE=\"public\".\"_doppel_",
            "DOPPEL_OLD_TABLE=\"public\".\"_doppel_",
            "DOPPEL_LAG_MS=",
            "DOPPEL_ETA_S=",
        ] {
            assert!(env.contains(var), "hook {name} lacks {var}: {env}");
        }
    }
    let copied = std::fs::read_to_string(out.join("copy-complete")).unwrap();
    assert!(copied.contains("DOPPEL_ROWS_COPIED=2000"), "{copied}");
}
