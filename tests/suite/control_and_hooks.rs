//! The control socket and the hooks, on their own (no PostgreSQL): every socket command
//! round-trips and changes the controls, bad input gets `error:`, one live server per path,
//! stale sockets are replaced, the file goes with the server; hooks get the documented
//! environment, report failures, and are killed at their timeout.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use doppel::ops::control::{self, ControlServer, Controls, StatusSource};
use doppel::ops::hooks::{HOOK_NAMES, HookEnv, HookOutcome, Hooks};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::common;

struct FakeStatus;

impl StatusSource for FakeStatus {
    fn status_line(&self) -> String {
        "Copy: 10/20 50.0%; Applied: 3; State: copying".into()
    }
    fn status_json(&self) -> serde_json::Value {
        json!({ "phase": "copying", "rows_copied": 10 })
    }
}

async fn server(dir: &Path) -> (ControlServer, Arc<Controls>, PathBuf) {
    let path = control::default_path(dir, 16384);
    let controls = Controls::new(500, 1000, 200, true);
    let server = ControlServer::start(&path, controls.clone(), Arc::new(FakeStatus))
        .await
        .expect("control server starts");
    (server, controls, path)
}

async fn send(path: &Path, command: &str) -> String {
    control::send(path, command)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e:#}"))
}

#[tokio::test]
async fn every_command_round_trips_and_changes_the_controls() {
    let dir = tempfile::tempdir().unwrap();
    let (server, controls, path) = server(dir.path()).await;
    assert_eq!(server.path(), path);
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    assert_eq!(
        send(&path, "status").await,
        "Copy: 10/20 50.0%; Applied: 3; State: copying"
    );
    let v: serde_json::Value = serde_json::from_str(&send(&path, "status --json").await).unwrap();
    assert_eq!(v["phase"], "copying");
    assert_eq!(v["rows_copied"], 10);
    assert_eq!(v["controls"]["lock_timeout_ms"], 200);
    assert_eq!(v["controls"]["postponed"], true);

    assert!(!controls.throttle_forced());
    assert!(send(&path, "throttle").await.starts_with("ok: "));
    assert!(controls.throttle_forced());
    assert_eq!(send(&path, "throttle=?").await, "throttle=true");
    assert!(send(&path, "no-throttle").await.starts_with("ok: "));
    assert!(!controls.throttle_forced());

    assert_eq!(
        send(&path, "chunk-time=250").await,
        "ok: chunk-time=250 (was 500)"
    );
    assert_eq!(controls.chunk_time_ms(), 250);
    assert_eq!(send(&path, "chunk-time=?").await, "chunk-time=250");
    assert_eq!(
        send(&path, "max-replica-lag=1500").await,
        "ok: max-replica-lag=1500 (was 1000)"
    );
    assert_eq!(controls.max_replica_lag_ms(), 1500);
    assert_eq!(
        send(&path, "max-replica-lag=?").await,
        "max-replica-lag=1500"
    );
    assert_eq!(
        send(&path, "lock-timeout=300").await,
        "ok: lock-timeout=300 (was 200)"
    );
    assert_eq!(controls.lock_timeout_ms(), 300);
    assert_eq!(send(&path, "lock-timeout=?").await, "lock-timeout=300");

    assert_eq!(send(&path, "postpone=?").await, "postpone=true");
    assert!(send(&path, "cut-over").await.starts_with("ok: "));
    assert!(!controls.postponed());
    assert!(controls.cut_over_requested());
    assert_eq!(send(&path, "postpone=?").await, "postpone=false");
    assert!(send(&path, "postpone").await.starts_with("ok: "));
    assert!(controls.postponed());
    assert!(!controls.cut_over_requested());

    let help = send(&path, "help").await;
    for command in [
        "status --json",
        "no-throttle",
        "chunk-time=MS",
        "max-replica-lag=MS",
        "lock-timeout=MS",
        "cut-over",
        "postpone",
        "abort",
        "KEY=?",
    ] {
        assert!(help.contains(command), "help lacks {command}: {help}");
    }

    assert!(!controls.abort_requested());
    assert!(send(&path, "abort").await.starts_with("ok: "));
    assert!(controls.abort_requested());
    drop(server);
}

#[tokio::test]
async fn bad_input_gets_an_error_line_saying_what_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, controls, path) = server(dir.path()).await;
    for bad in [
        "frobnicate",
        "chunk-time=abc",
        "chunk-time=0",
        "lock-timeout=-5",
        "max-replica-lag=",
        "lock-timeout=999999999",
        "nosuch=?",
        "throttle=yes",
    ] {
        let reply = send(&path, bad).await;
        assert!(reply.starts_with("error: "), "{bad}: {reply}");
        assert!(!reply.contains('\n'), "{bad}: one line: {reply}");
    }
    assert!(send(&path, "frobnicate").await.contains("chunk-time=MS"));
    assert!(
        send(&path, "chunk-time=abc")
            .await
            .contains("whole milliseconds from 1 to 600000")
    );
    // Nothing changed.
    assert_eq!(
        (
            controls.chunk_time_ms(),
            controls.lock_timeout_ms(),
            controls.max_replica_lag_ms()
        ),
        (500, 200, 1000)
    );
    assert!(control::send(&path, "").await.is_err());
    assert!(control::send(&path, "status\nabort").await.is_err());
    assert!(!controls.abort_requested());
}

#[tokio::test]
async fn several_commands_on_one_connection_get_one_reply_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, controls, path) = server(dir.path()).await;
    let stream = UnixStream::connect(&path).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write
        .write_all(b"chunk-time=100\r\n\nthrottle\nbogus\nchunk-time=?\n")
        .await
        .unwrap();
    let mut replies = Vec::new();
    for _ in 0..4 {
        replies.push(lines.next_line().await.unwrap().expect("a reply line"));
    }
    assert_eq!(replies[0], "ok: chunk-time=100 (was 500)");
    assert!(replies[1].starts_with("ok: throttled"), "{}", replies[1]);
    assert!(
        replies[2].starts_with("error: unknown command"),
        "{}",
        replies[2]
    );
    assert_eq!(replies[3], "chunk-time=100");
    assert!(controls.throttle_forced());
    // The connection stays open for more.
    write.write_all(b"no-throttle\n").await.unwrap();
    assert!(
        lines
            .next_line()
            .await
            .unwrap()
            .unwrap()
            .starts_with("ok: ")
    );
    assert!(!controls.throttle_forced());
}

#[tokio::test]
async fn one_live_server_per_path_stale_sockets_replaced_file_removed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _controls, path) = server(dir.path()).await;

    // A second run on the same path is refused while the first answers.
    let err = ControlServer::start(&path, Controls::new(1, 1, 1, false), Arc::new(FakeStatus))
        .await
        .expect_err("a live server's path is refused");
    assert!(
        format!("{err:#}").contains("another doppel run answers"),
        "{err:#}"
    );
    assert_eq!(send(&path, "chunk-time=?").await, "chunk-time=500");

    // Dropping the server removes the file; nothing answers any more.
    drop(first);
    assert!(!path.exists());
    assert!(control::send(&path, "status").await.is_err());

    // A stale socket (a crashed run's file, nothing listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket()
    );
    let controls = Controls::new(700, 1, 1, false);
    let second = ControlServer::start(&path, controls, Arc::new(FakeStatus))
        .await
        .expect("a stale socket is replaced");
    assert_eq!(send(&path, "chunk-time=?").await, "chunk-time=700");
    drop(second);
    assert!(!path.exists());

    // Anything that is not a socket is left alone.
    std::fs::write(&path, "precious").unwrap();
    let err = ControlServer::start(&path, Controls::new(1, 1, 1, false), Arc::new(FakeStatus))
        .await
        .expect_err("a regular file is not replaced");
    assert!(format!("{err:#}").contains("not a socket"), "{err:#}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[tokio::test]
async fn dropping_a_server_leaves_a_replacement_socket_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _c, path) = server(dir.path()).await;
    // Someone removes the file and a new server takes the path; the old one's drop must not
    // remove the new one's socket.
    std::fs::remove_file(&path).unwrap();
    let second = ControlServer::start(&path, Controls::new(42, 1, 1, false), Arc::new(FakeStatus))
        .await
        .unwrap();
    drop(first);
    assert_eq!(send(&path, "chunk-time=?").await, "chunk-time=42");
    drop(second);
    assert!(!path.exists());
}

fn write_hook(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn sample_env() -> HookEnv {
    HookEnv {
        table: "public.orders".into(),
        shadow_table: "public._doppel_16384_new_orders".into(),
        old_table: "public._doppel_16384_old_orders".into(),
        alter: "ALTER COLUMN customer_id TYPE bigint; ADD COLUMN note2 text".into(),
        phase: "copying".into(),
        rows_copied: 466_600,
        rows_estimate: 752_865,
        lag_ms: Some(12),
        elapsed_s: 160,
        eta_s: Some(79),
        database: "shop".into(),
        rollback_script: Some("/var/doppel/doppel-rollback-16384-orders-1.sql".into()),
        exit_code: Some(5),
        error: Some("cutover failed: the locks were not granted".into()),
    }
}

#[tokio::test]
async fn a_hook_gets_every_documented_variable() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.out");
    write_hook(
        dir.path(),
        "before-copy",
        &format!("env > '{}'", out.display()),
    );
    let hooks = Hooks::new(Some(dir.path().to_path_buf())).unwrap();
    assert!(hooks.has("before-copy"));
    let outcome = hooks.run("before-copy", &sample_env()).await.unwrap();
    assert_eq!(outcome, HookOutcome::Succeeded);
    let text = std::fs::read_to_string(&out).unwrap();
    let vars: std::collections::HashMap<&str, &str> =
        text.lines().filter_map(|l| l.split_once('=')).collect();
    let expected = [
        ("DOPPEL_TABLE", "public.orders"),
        ("DOPPEL_SHADOW_TABLE", "public._doppel_16384_new_orders"),
        ("DOPPEL_OLD_TABLE", "public._doppel_16384_old_orders"),
        (
            "DOPPEL_ALTER",
            "ALTER COLUMN customer_id TYPE bigint; ADD COLUMN note2 text",
        ),
        ("DOPPEL_PHASE", "copying"),
        ("DOPPEL_ROWS_COPIED", "466600"),
        ("DOPPEL_ROWS_ESTIMATE", "752865"),
        ("DOPPEL_LAG_MS", "12"),
        ("DOPPEL_ELAPSED_S", "160"),
        ("DOPPEL_ETA_S", "79"),
        ("DOPPEL_DATABASE", "shop"),
        (
            "DOPPEL_ROLLBACK_SCRIPT",
            "/var/doppel/doppel-rollback-16384-orders-1.sql",
        ),
        ("DOPPEL_EXIT_CODE", "5"),
        ("DOPPEL_ERROR", "cutover failed: the locks were not granted"),
        ("DOPPEL_HOOK", "before-copy"),
    ];
    for (name, value) in expected {
        assert_eq!(vars.get(name).copied(), Some(value), "{name} in:\n{text}");
    }
    // The documented list and the variables set are the same.
    for (name, _) in sample_env().vars() {
        assert!(expected.iter().any(|(n, _)| *n == name), "{name}");
    }
    // The environment is inherited.
    assert!(vars.contains_key("PATH"), "PATH inherited:\n{text}");
}

#[tokio::test]
async fn failing_missing_and_non_executable_hooks() {
    let dir = tempfile::tempdir().unwrap();
    write_hook(
        dir.path(),
        "before-cutover",
        "echo 'checking replicas' ; echo 'replica db2 is behind' >&2 ; exit 3",
    );
    let hooks = Hooks::new(Some(dir.path().to_path_buf())).unwrap();
    match hooks.run("before-cutover", &sample_env()).await.unwrap() {
        HookOutcome::Failed {
            status,
            stderr_tail,
        } => {
            assert_eq!(status, Some(3));
            assert_eq!(stderr_tail, "replica db2 is behind");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(
        hooks.run("after-cutover", &sample_env()).await.unwrap(),
        HookOutcome::Missing
    );

    // A hook file that is not executable: an error at run time, and at start.
    let plain = dir.path().join("on-success");
    std::fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = hooks.run("on-success", &sample_env()).await.unwrap_err();
    assert!(format!("{err:#}").contains("not executable"), "{err:#}");
    let err = Hooks::new(Some(dir.path().to_path_buf())).unwrap_err();
    assert!(format!("{err:#}").contains("not executable"), "{err:#}");

    // Every name is accepted; an unknown one is an error.
    for name in HOOK_NAMES {
        assert!(hooks.run(name, &sample_env()).await.is_ok() || *name == "on-success");
    }
    assert!(hooks.run("before-cut-over", &sample_env()).await.is_err());
}

#[tokio::test]
async fn a_hung_hook_and_what_it_started_are_killed_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    // The background sleep inherits the hook's stdout and stderr: unless the whole process
    // group is killed, the pipes stay open.
    write_hook(
        dir.path(),
        "on-status",
        &format!(
            "sleep 600 &\necho $! > '{}'\necho 'waiting forever' >&2\nwait",
            pid_file.display()
        ),
    );
    let timeout = Duration::from_millis(1500);
    let hooks = Hooks::new(Some(dir.path().to_path_buf()))
        .unwrap()
        .with_timeout(timeout);
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        hooks.run("on-status", &sample_env()),
    )
    .await
    .expect("the hook is killed, not waited for")
    .unwrap();
    let took = started.elapsed();
    assert!(took >= timeout, "killed after {took:?}, before the timeout");
    match outcome {
        HookOutcome::Failed {
            status,
            stderr_tail,
        } => {
            assert_eq!(status, None);
            assert!(
                stderr_tail.contains("killed after the hook timeout"),
                "{stderr_tail}"
            );
            assert!(
                !stderr_tail.contains("still hold its output"),
                "the background child was killed too: {stderr_tail}"
            );
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    // The hook writes the pid in its first milliseconds, long before the timeout.
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("the hook wrote its child's pid")
        .trim()
        .parse()
        .unwrap();
    assert!(
        common::wait_until(Duration::from_secs(10), || !common::pid_alive(pid)),
        "the hook's background child {pid} is still running"
    );
}
