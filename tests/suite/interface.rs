//! The command line an operator meets: `doppel ctl` finds a run through the run registry in
//! the work directory, without a database connection, also during the revert window (the
//! cutover changed the table's OID), and names every run it sees when the table is
//! ambiguous; `ctl .. status --json` as the README writes it; the help texts (every ctl
//! command and key, `run --help` ending with the exit codes, `demo --help` with only the
//! demo's flags); no ANSI colours when stderr is not a terminal; the hooks' `DOPPEL_EXIT_CODE`,
//! `DOPPEL_ERROR`, `DOPPEL_DATABASE` and `DOPPEL_ROLLBACK_SCRIPT`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::run::{Outcome, RunOptions};
use doppel_testkit::workload;

use crate::common::{self, Tune};

/// `doppel ctl --work-dir DIR ARGS..` with the libpq variables pointing at no server: it
/// cannot connect to a database even if it tried.
fn ctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_doppel"))
        .arg("ctl")
        .arg("--work-dir")
        .arg(dir)
        .args(args)
        .env("PGHOST", "/nonexistent")
        .env("PGPORT", "1")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn doppel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_doppel"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_finds_runs_by_table_without_a_database_and_names_them_when_ambiguous() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client.batch_execute("CREATE DATABASE db2").await.unwrap();
    let other = cluster.connect("db2").await.unwrap();
    for c in [&client, &other] {
        workload::create_id_v_table(c, "t", 2000).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("hold");
    std::fs::write(&flag, b"").unwrap();
    // Both runs keep the default socket path in the shared work directory.
    let windowed = common::options(dir.path(), "t", &["ALTER COLUMN v TYPE bigint"])
        .revert_window(Duration::from_secs(600));
    let mut postponed = common::options(dir.path(), "t", &["ALTER COLUMN v TYPE bigint"]);
    postponed.postpone_cutover_flag_file = Some(flag.clone());
    let start = |db: &str, options: RunOptions| {
        let config: tokio_postgres::Config = cluster.conninfo(db).parse().unwrap();
        tokio::spawn(async move { doppel::run::run(&config, &options, &Cancel::never()).await })
    };
    let first = start("postgres", windowed);
    let second = start("db2", postponed);

    // The first run cuts over and opens its revert window (its table's OID changed); the
    // second waits postponed.
    let both = common::wait_until_async(Duration::from_secs(120), || async {
        let a = ctl(
            dir.path(),
            &["--table", "t", "--dsn", "dbname=postgres", "status"],
        );
        let b = ctl(
            dir.path(),
            &["--table", "public.t", "--dsn", "dbname=db2", "status"],
        );
        stdout(&a).contains("State: revert window open") && stdout(&b).contains("postponed")
    })
    .await;
    assert!(both, "ctl finds each run by database and table");

    // Without the database, `t` is ambiguous: ctl names both runs.
    let out = ctl(dir.path(), &["--table", "t", "status"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("ambiguous: 2 runs"), "{err}");
    assert!(err.contains("postgres \"public\".\"t\""), "{err}");
    assert!(err.contains("db2 \"public\".\"t\""), "{err}");

    // `status --json` as the README writes it, unquoted.
    let out = ctl(
        dir.path(),
        &["--table", "t", "--dsn", "dbname=db2", "status", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json["postponed"], true, "{json}");

    // A table no run migrates: ctl says which runs it sees.
    let out = ctl(dir.path(), &["--table", "other", "status"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("runs seen: "), "{}", stderr(&out));

    let out = ctl(
        dir.path(),
        &["--table", "t", "--dsn", "dbname=postgres", "finalize"],
    );
    assert!(
        stdout(&out).starts_with("ok: finalizing"),
        "{}",
        stdout(&out)
    );
    std::fs::remove_file(&flag).unwrap();
    for run in [first, second] {
        let outcome = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the run ends")
            .unwrap()
            .unwrap();
        assert!(matches!(outcome, Outcome::Migrated(_)));
    }
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("doppel-run-") || n.ends_with(".sock"))
        .collect();
    assert!(
        left.is_empty(),
        "the runs remove their registry files and sockets: {left:?}"
    );
}

#[test]
fn help_texts_list_every_command_the_exit_codes_and_only_the_demos_flags() {
    let ctl_help = stdout(&doppel(&["ctl", "--help"]));
    for command in [
        "status --json",
        "throttle",
        "no-throttle",
        "chunk-time=MS",
        "max-replica-lag=MS",
        "max-retained-wal=BYTES",
        "lock-timeout=MS",
        "postpone",
        "cut-over",
        "abort",
        "revert --force",
        "finalize",
        "KEY=?",
    ] {
        assert!(
            ctl_help.contains(command),
            "ctl --help lacks {command}: {ctl_help}"
        );
    }
    let run_help = stdout(&doppel(&["run", "--help"]));
    let codes = run_help
        .split("Exit codes:")
        .nth(1)
        .expect("run --help ends with the exit codes");
    for code in 0..=8 {
        assert!(
            codes.contains(&format!("\n  {code}  ")),
            "exit code {code}: {codes}"
        );
    }
    assert!(run_help.contains("--max-lock-hold") && run_help.contains("--metrics-listen"));
    assert_eq!(
        run_help.matches("[default: .]").count(),
        1,
        "--rollback-dir's default once: {run_help}"
    );
    assert!(!run_help.contains("(default: the current directory)"));
    let demo_help = stdout(&doppel(&["demo", "--help"]));
    assert!(demo_help.contains("--rows"), "{demo_help}");
    for run_only in [
        "--hooks-dir",
        "--throttle-replica",
        "--max-replica-lag",
        "--lock-timeout",
        "--revert-window",
    ] {
        assert!(
            !demo_help.contains(run_only),
            "demo --help shows {run_only}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_id_v_table(&client, "t", 100)
        .await
        .unwrap();
    let dsn = cluster.conninfo("postgres");
    for no_color in [None, Some("1")] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_doppel"));
        command.args([
            "run",
            "--dsn",
            &dsn,
            "--table",
            "t",
            "--alter",
            "ALTER COLUMN v TYPE bigint",
        ]);
        if let Some(v) = no_color {
            command.env("NO_COLOR", v);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("connecting to"), "the dry run logs: {err}");
        assert!(!err.contains('\u{1b}'), "no ANSI escape codes: {err:?}");
    }
}

fn hook(dir: &Path, name: &str, out: &Path) {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nenv | grep '^DOPPEL_' | sort > {}/{name}\n",
            out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_get_the_database_the_rollback_script_and_on_failure_the_exit_and_error() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    workload::create_id_v_table(&client, "t", 2000)
        .await
        .unwrap();
    workload::create_id_v_table(&client, "u", 2000)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("hooks");
    let out = dir.path().join("out");
    std::fs::create_dir(&hooks).unwrap();
    std::fs::create_dir(&out).unwrap();
    for name in ["copy-complete", "after-cutover", "on-success", "on-failure"] {
        hook(&hooks, name, &out);
    }
    let config: tokio_postgres::Config = cluster.conninfo("postgres").parse().unwrap();
    let options = RunOptions {
        hooks_dir: Some(hooks.clone()),
        ..common::options(dir.path(), "t", &["ALTER COLUMN v TYPE bigint"])
    };
    let Outcome::Migrated(report) = doppel::run::run(&config, &options, &Cancel::never())
        .await
        .unwrap()
    else {
        panic!("expected a migration")
    };
    let script = std::path::absolute(&report.cutover.rollback_path).unwrap();
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap();
    for name in ["copy-complete", "after-cutover", "on-success"] {
        assert!(
            read(name).contains("DOPPEL_DATABASE=postgres\n"),
            "{name}: {}",
            read(name)
        );
    }
    assert!(
        !read("copy-complete").contains("DOPPEL_ROLLBACK_SCRIPT="),
        "not yet written: {}",
        read("copy-complete")
    );
    for name in ["after-cutover", "on-success"] {
        assert!(
            read(name).contains(&format!("DOPPEL_ROLLBACK_SCRIPT={}\n", script.display())),
            "{name}: {}",
            read(name)
        );
    }
    assert!(script.is_absolute() && script.exists());
    assert!(!out.join("on-failure").exists());

    // A run that fails at its cutover (a session holds the table; one attempt).
    let blocker = cluster.connect("postgres").await.unwrap();
    blocker
        .batch_execute("BEGIN; LOCK TABLE u IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let options = RunOptions {
        hooks_dir: Some(hooks.clone()),
        ..common::options(dir.path(), "u", &["ALTER COLUMN v TYPE bigint"]).cutover_retries(1)
    };
    let err = doppel::run::run(&config, &options, &Cancel::never())
        .await
        .expect_err("the cutover budget runs out");
    blocker.batch_execute("ROLLBACK").await.unwrap();
    let failed = read("on-failure");
    assert!(failed.contains("DOPPEL_EXIT_CODE=5\n"), "{failed}");
    let error_line = failed
        .lines()
        .find(|l| l.starts_with("DOPPEL_ERROR="))
        .unwrap_or_else(|| panic!("no DOPPEL_ERROR: {failed}"));
    assert!(
        error_line.contains("cutover failed"),
        "{error_line} ({err:#})"
    );
    assert!(failed.contains("DOPPEL_DATABASE=postgres\n"), "{failed}");
    assert!(
        !failed.contains("DOPPEL_ROLLBACK_SCRIPT="),
        "nothing was cut over, the script is gone: {failed}"
    );
}
