//! TLS on doppel's connections, against real servers: what a user asks for in `sslmode`
//! (in the DSN or in `PGSSLMODE`) is what they get, or a refusal; never a silent downgrade.

mod common;

use std::process::{Command, Output};

/// `doppel run` (dry run) against `dsn` with `env` set, nothing else from the caller's
/// environment that could pick another server.
fn doppel_run(dsn: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_doppel"));
    cmd.args(["run", "--dsn", dsn, "--table", "public.t", "--alter"])
        .arg("ADD COLUMN note text");
    for var in [
        "PGSSLMODE",
        "PGSSLROOTCERT",
        "PGSERVICE",
        "PGPASSFILE",
        "PGPASSWORD",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run doppel")
}

/// `PGSSLMODE=require` against a server with `ssl = off`: doppel fails (exit 2 or 1, never
/// 0), says why, and has created nothing; the dry run without it succeeds on the same table.
#[tokio::test]
async fn pgsslmode_require_against_a_server_without_tls_fails() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    let dsn = cluster.conninfo("postgres");

    let plain = doppel_run(&dsn, &[]);
    assert!(
        plain.status.success(),
        "the dry run without PGSSLMODE works: {}",
        String::from_utf8_lossy(&plain.stderr)
    );

    let out = doppel_run(&dsn, &[("PGSSLMODE", "require")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "PGSSLMODE=require was ignored: {stderr}"
    );
    assert!(
        stderr.contains("PGSSLMODE") || stderr.contains("TLS") || stderr.contains("SSL"),
        "the error says why: {stderr}"
    );
    common::assert_no_doppel_objects(&client).await;
}
