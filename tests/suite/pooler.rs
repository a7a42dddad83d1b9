//! Connection poolers, against a real PgBouncer (Debian package `pgbouncer`) in transaction
//! mode in front of a private cluster: doppel refuses a DSN that points at the pooler, and an
//! application writing through the pooler sees no error and no wait longer than the lock
//! timeout while doppel, connected directly, cuts over.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use doppel_testkit::cluster::LocalCluster;
use doppel_testkit::pgbouncer::PgBouncer;

fn doppel_run(port: u16, execute: bool, extra: &[&str], dir: &Path) -> Output {
    let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_doppel"));
    cmd.args(["run", "--dsn", &dsn, "--table", "public.t"])
        .args([
            "--alter",
            "ALTER COLUMN v TYPE bigint",
            "--progress",
            "lines",
        ])
        .arg("--rollback-dir")
        .arg(dir)
        .arg("--work-dir")
        .arg(dir)
        .args(extra);
    if execute {
        cmd.arg("--execute");
    }
    cmd.env_remove("PGSSLMODE");
    cmd.output().expect("run doppel")
}

async fn setup(rows: i32) -> (LocalCluster, tokio_postgres::Client) {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, v int);
             INSERT INTO t SELECT i, i FROM generate_series(1, {rows}) i;"
        ))
        .await
        .unwrap();
    (cluster, client)
}

/// A DSN pointing at PgBouncer is refused before anything is created, with a message that
/// says to connect doppel directly to the server.
#[tokio::test]
async fn a_dsn_pointing_at_pgbouncer_is_refused() {
    let (cluster, client) = setup(100).await;
    let bouncer = PgBouncer::start(&cluster, "transaction").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = doppel_run(bouncer.port(), true, &[], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("PgBouncer"), "{stderr}");
    assert!(stderr.contains("connect doppel directly"), "{stderr}");
    common::assert_no_doppel_objects(&client).await;
}

/// A writer inserting and updating through PgBouncer (transaction pooling, simple queries)
/// during a whole doppel run with its cutover: no statement fails, none waits longer than
/// the lock timeout, and every row it wrote is in the new table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_behind_pgbouncer_sees_no_error_across_the_cutover() {
    let (cluster, client) = setup(20_000).await;
    let bouncer = PgBouncer::start(&cluster, "transaction").await.unwrap();
    let (app, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            bouncer.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut written, mut errors, mut worst) = (0i64, Vec::new(), Duration::ZERO);
            let mut id = 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let sql = format!(
                    "INSERT INTO t VALUES ({id}, {id}); UPDATE t SET v = v + 1 WHERE id = {}",
                    id % 20_000 + 1
                );
                let started = Instant::now();
                match app.batch_execute(&sql).await {
                    Ok(()) => written += 1,
                    Err(e) => errors.push(e.to_string()),
                }
                worst = worst.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (written, errors, worst)
        })
    };
    let lock_timeout = Duration::from_millis(1000);
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking({
        let (port, dir) = (cluster.port(), dir.path().to_path_buf());
        move || doppel_run(port, true, &["--lock-timeout", "1000"], &dir)
    })
    .await
    .unwrap();
    // Keep writing a little after the cutover: the new table through the pool's sessions.
    let after = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert!(
        common::wait_until_async(Duration::from_secs(10), || async {
            client
                .query_one("SELECT count(*) FROM t", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                > after + 20
        })
        .await,
        "the writer keeps writing after the cutover"
    );
    stop.store(true, Ordering::Relaxed);
    let (written, errors, worst) = writer.await.unwrap();
    assert!(
        out.status.success(),
        "doppel: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(errors.is_empty(), "the application saw errors: {errors:?}");
    assert!(
        worst < lock_timeout,
        "a statement waited {worst:?}, more than the lock timeout"
    );
    let count: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 20_000 + written);
    let kind: String = client
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'v'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kind, "bigint");
    eprintln!("writer: {written} transactions, worst {worst:?}");
}

/// The first value `sql` returns through the simple query protocol (PgBouncer's pooled
/// sessions), as text.
async fn simple_value(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<String, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default())
}

/// `--pgbouncer-admin`: right after the cutover doppel sends PgBouncer `RECONNECT postgres`,
/// so the server connection that served a pooled client before the cutover is closed when
/// released and the client's next transaction runs on a new one, without the statement
/// prepared on the old one. Without the flag the same client keeps its server connection and
/// its stale `SELECT *` statement fails with 0A000 after a type change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_reconnect_after_the_cutover_replaces_pooled_server_connections() {
    let (cluster, _client) = setup(2000).await;
    let bouncer = PgBouncer::start(&cluster, "transaction").await.unwrap();
    let (app, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            bouncer.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let server_pid = || simple_value(&app, "SELECT pg_backend_pid()");

    // Without RECONNECT: the pooled server connection stays, with its stale statement.
    let first = server_pid().await.unwrap();
    app.batch_execute("PREPARE s AS SELECT * FROM t WHERE id = 1")
        .await
        .unwrap();
    simple_value(&app, "EXECUTE s").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking({
        let (port, dir) = (cluster.port(), dir.path().to_path_buf());
        move || doppel_run(port, true, &[], &dir)
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        server_pid().await.unwrap(),
        first,
        "the same server connection"
    );
    let stale = simple_value(&app, "EXECUTE s").await.unwrap_err();
    assert_eq!(
        stale.as_db_error().map(|d| d.code().code()),
        Some("0A000"),
        "{stale}"
    );

    // With RECONNECT (a second migration, back to integer).
    app.batch_execute("DEALLOCATE s; PREPARE s AS SELECT * FROM t WHERE id = 1")
        .await
        .unwrap();
    simple_value(&app, "EXECUTE s").await.unwrap();
    let before = server_pid().await.unwrap();
    let admin = format!(
        "host=127.0.0.1 port={} user=postgres dbname=pgbouncer",
        bouncer.port()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking({
        let (port, dir) = (cluster.port(), dir.path().to_path_buf());
        move || {
            let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
            Command::new(env!("CARGO_BIN_EXE_doppel"))
                .args(["run", "--dsn", &dsn, "--table", "public.t"])
                .args([
                    "--alter",
                    "ALTER COLUMN v TYPE integer",
                    "--progress",
                    "lines",
                ])
                .args(["--pgbouncer-admin", &admin, "--execute"])
                .arg("--rollback-dir")
                .arg(&dir)
                .arg("--work-dir")
                .arg(&dir)
                .env_remove("PGSSLMODE")
                .output()
                .expect("run doppel")
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("the cutover record");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(record).unwrap()).unwrap();
    let sent = record["pgbouncer_reconnect"][0]
        .as_str()
        .unwrap_or_default();
    assert!(sent.starts_with("RECONNECT postgres sent to "), "{record}");
    let after = server_pid().await.unwrap();
    assert_ne!(after, before, "a new server connection after RECONNECT");
    let gone = simple_value(&app, "EXECUTE s").await.unwrap_err();
    assert_eq!(
        gone.as_db_error().map(|d| d.code().code()),
        Some("26000"),
        "the statement went with its server connection: {gone}"
    );
    app.batch_execute("PREPARE s AS SELECT * FROM t WHERE id = 1")
        .await
        .unwrap();
    simple_value(&app, "EXECUTE s").await.unwrap();
    eprintln!("server connection {before} replaced by {after} after RECONNECT");
}
