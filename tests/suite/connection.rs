//! libpq's conventions on doppel's connections, against real servers: the password file,
//! the connection service file, libpq's permission check on the password file, several hosts
//! with `target_session_attrs=read-write`, and invalid connection strings.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use doppel_testkit::cluster::{ClusterOptions, LocalCluster};
use doppel_testkit::standby::Standby;

/// `doppel run` on `public.t` (dry run unless `execute`) with `dsn` (or none) and `env`,
/// and none of the caller's `PG*` variables.
fn doppel_run(dsn: Option<&str>, env: &[(&str, &str)], execute: bool, dir: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_doppel"));
    cmd.arg("run");
    if let Some(dsn) = dsn {
        cmd.args(["--dsn", dsn]);
    }
    cmd.args([
        "--table",
        "public.t",
        "--alter",
        "ALTER COLUMN v TYPE bigint",
    ])
    .args(["--progress", "lines", "--rollback-dir"])
    .arg(dir)
    .arg("--work-dir")
    .arg(dir);
    if execute {
        cmd.arg("--execute");
    }
    for (var, _) in std::env::vars() {
        if var.starts_with("PG") {
            cmd.env_remove(var);
        }
    }
    cmd.env("HOME", dir).envs(env.iter().copied());
    cmd.output().expect("run doppel")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A cluster where `dave` must give a password (SCRAM), with a table `t` of 100 rows.
async fn password_cluster() -> LocalCluster {
    let cluster = common::cluster_with(ClusterOptions {
        hba_extra: vec!["host all dave 127.0.0.1/32 scram-sha-256".into()],
        ..ClusterOptions::default()
    })
    .await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE ROLE dave LOGIN SUPERUSER PASSWORD 'dave-pw';
             CREATE TABLE t (id int PRIMARY KEY, v int);
             INSERT INTO t SELECT i, i FROM generate_series(1, 100) i;",
        )
        .await
        .unwrap();
    cluster
}

fn write_file(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The password comes from `PGPASSFILE` (a line with wildcards after one for another user)
/// and from `~/.pgpass`; without the file the same DSN fails for want of a password.
#[tokio::test]
async fn the_password_file_is_used() {
    let cluster = password_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let dsn = format!(
        "host=127.0.0.1 port={} user=dave dbname=postgres",
        cluster.port()
    );
    let without = doppel_run(Some(&dsn), &[], false, dir.path());
    assert!(!without.status.success(), "connected without a password");
    let passfile = dir.path().join("passwords");
    write_file(
        &passfile,
        &format!(
            "*:*:*:someone:nope\n127.0.0.1:{}:*:dave:dave-pw\n",
            cluster.port()
        ),
        0o600,
    );
    let out = doppel_run(
        Some(&dsn),
        &[("PGPASSFILE", passfile.to_str().unwrap())],
        false,
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // ~/.pgpass (HOME is the temp dir), and the whole migration (replication included).
    write_file(&dir.path().join(".pgpass"), "*:*:*:dave:dave-pw\n", 0o600);
    let out = doppel_run(Some(&dsn), &[], true, dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A password file readable by the group or others is ignored with libpq's warning.
#[tokio::test]
async fn a_world_readable_password_file_is_ignored_with_the_warning() {
    let cluster = password_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let passfile = dir.path().join("passwords");
    write_file(&passfile, "*:*:*:dave:dave-pw\n", 0o644);
    let dsn = format!(
        "host=127.0.0.1 port={} user=dave dbname=postgres passfile={}",
        cluster.port(),
        passfile.display()
    );
    let out = doppel_run(Some(&dsn), &[], false, dir.path());
    let log = stderr(&out);
    assert!(!out.status.success(), "the world-readable file was used");
    assert!(
        log.contains(&format!(
            "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
            passfile.display()
        )),
        "{log}"
    );
}

/// `service=` in the DSN and `PGSERVICE` both read the service file (`PGSERVICEFILE`); the
/// DSN's own settings win over the service's.
#[tokio::test]
async fn the_service_file_is_used() {
    let cluster = password_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let services = dir.path().join("services.conf");
    write_file(
        &services,
        &format!(
            "[other]\nhost=192.0.2.1\n\n[shop]\nhost=127.0.0.1\nport={}\nuser=dave\ndbname=postgres\npassword=wrong\n",
            cluster.port()
        ),
        0o600,
    );
    let file = services.to_str().unwrap();
    let out = doppel_run(
        Some("service=shop password=dave-pw"),
        &[("PGSERVICEFILE", file)],
        false,
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = doppel_run(
        None,
        &[
            ("PGSERVICEFILE", file),
            ("PGSERVICE", "shop"),
            ("PGPASSWORD", "x"),
        ],
        false,
        dir.path(),
    );
    assert!(
        !out.status.success(),
        "the service's wrong password was used"
    );
    let out = doppel_run(
        Some("service=nope"),
        &[("PGSERVICEFILE", file)],
        false,
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("definition of service \"nope\" not found"));
}

/// A DSN listing a standby first and the primary second with
/// `target_session_attrs=read-write` migrates on the primary (every session and the
/// replication connection skip the standby); without the setting the run lands on the
/// standby and fails.
#[tokio::test]
async fn two_hosts_with_read_write_run_on_the_primary() {
    let cluster = password_cluster().await;
    let Some(standby) = Standby::start(&cluster) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dsn = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres",
        standby.port(),
        cluster.port()
    );
    let out = doppel_run(Some(&dsn), &[], true, dir.path());
    assert!(!out.status.success(), "migrated on a standby?");
    let out = doppel_run(
        Some(&dsn),
        &[("PGTARGETSESSIONATTRS", "read-write")],
        true,
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let client = cluster.connect("postgres").await.unwrap();
    let kind: String = client
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'v'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kind, "bigint");
}

/// An unknown parameter or an unparsable DSN is an invalid command line (exit 2) naming
/// the parameter, whatever the form; no password appears in the message.
#[test]
fn invalid_connection_strings_exit_2_naming_the_parameter() {
    let dir = tempfile::tempdir().unwrap();
    for (dsn, needle) in [
        ("host=localhost colour=red", "\"colour\""),
        (
            "postgresql://u:hunter2@localhost/db?sslmod=require",
            "\"sslmod\"",
        ),
        ("host=localhost sslmode=verify-everything", "sslmode"),
        ("postgresql://u:hunter2@localhost:port/db", "invalid port"),
        ("host=localhost password='hunter2", "unterminated"),
    ] {
        let out = doppel_run(Some(dsn), &[], false, dir.path());
        let log = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{dsn}: {log}");
        assert!(log.contains(needle), "{dsn}: {log}");
        assert!(!log.contains("hunter2"), "{dsn}: {log}");
    }
}
