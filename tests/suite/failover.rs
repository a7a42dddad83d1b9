//! Failover (issue 14): on PostgreSQL 17+ a `--resumable` run's slot is a failover slot. With
//! a standby that copies it (`sync_replication_slots = on`) and a primary that never lets the
//! slot run ahead of that standby (`synchronized_standby_slots`), the run survives the loss of
//! the primary: its DSN lists both servers with `target_session_attrs=read-write`, it
//! reconnects by itself to the promoted standby and completes there, and the new table equals
//! the twin. Before 17 the test is skipped (a failover loses the slot; the README says a new
//! run is needed).

use std::process::{Command, Stdio};
use std::time::Duration;

use doppel_testkit::standby::{STANDBY_SLOT, Standby, StandbyOptions};
use doppel_testkit::workload::{self, Workload};
use tokio_postgres::Client;

use crate::common;

const ROWS: i64 = 20_000;

/// Connects to 127.0.0.1:`port` as `postgres`.
async fn connect(port: u16) -> Client {
    let config: tokio_postgres::Config =
        format!("host=127.0.0.1 port={port} user=postgres dbname=postgres")
            .parse()
            .unwrap();
    doppel_testkit::connect(&config).await.unwrap()
}

/// Starts the mirrored writer on the server at `port`.
async fn writer(port: u16, seed: u64) -> Workload {
    let config: tokio_postgres::Config =
        format!("host=127.0.0.1 port={port} user=postgres dbname=postgres")
            .parse()
            .unwrap();
    Workload::start(
        &config,
        "orders",
        "orders_twin",
        seed,
        Duration::from_millis(5),
    )
    .await
    .unwrap()
}

/// Waits until the standby has replayed everything the primary has written so far.
async fn caught_up(primary: &Client, standby: &Client) {
    let lsn: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let replayed = common::wait_until_async(Duration::from_secs(60), || async {
        standby
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    assert!(replayed, "the standby replays the primary's WAL");
}

/// Both servers' slots and the standby's last log lines, for a failed slot sync.
async fn slot_diagnostics(primary: &Client, standby: &Client, log: &std::path::Path) -> String {
    let slots = "SELECT slot_name || ' ' || slot_type || ' synced=' || coalesce(to_jsonb(s)->>'synced', '-')
                   || ' catalog_xmin=' || coalesce(catalog_xmin::text, '-')
                   || ' restart=' || coalesce(restart_lsn::text, '-') FROM pg_replication_slots s";
    let mut out = String::new();
    for (server, client) in [("primary", primary), ("standby", standby)] {
        for row in client.query(slots, &[]).await.unwrap_or_default() {
            out.push_str(&format!("\n{server} slot: {}", row.get::<_, String>(0)));
        }
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(10).collect();
    out.push_str(&format!(
        "\nstandby log (last lines first):\n{}",
        tail.join("\n")
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumable_run_continues_on_the_promoted_standby() {
    let primary = common::cluster().await;
    if primary.server_version_num() < 170_000 {
        eprintln!(
            "skipped: failover slots need PostgreSQL 17+ (server {}); before 17 a failover needs a new run",
            primary.server_version_num()
        );
        return;
    }
    let Some(standby) = Standby::start_with(
        &primary,
        StandbyOptions {
            failover_slots: true,
        },
    ) else {
        return;
    };
    primary
        .alter_system("synchronized_standby_slots", STANDBY_SLOT)
        .await
        .unwrap();
    let client = primary.connect("postgres").await.unwrap();
    workload::create_tables(&client, "orders", "orders_twin", ROWS)
        .await
        .unwrap();
    let oid = common::oid_of(&client, "orders").await;
    let first_writer = writer(primary.port(), 11).await;

    // doppel, its DSN naming both servers, stopped once the backfill is done.
    let dir = tempfile::tempdir().unwrap();
    let pause = common::pause_dir(dir.path());
    doppel::testing::arm(&pause, "catch-up").unwrap();
    let dsn = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_doppel"))
        .env(doppel::testing::PAUSE_DIR_VAR, &pause)
        .args(["run", "--dsn", &dsn, "--table", "orders"])
        .args([
            "--alter",
            "ALTER COLUMN customer_id TYPE bigint",
            "--execute",
        ])
        .args([
            "--resumable",
            "--reconnect-timeout",
            "2m",
            "--progress",
            "lines",
        ])
        .arg("--work-dir")
        .arg(dir.path())
        .arg("--rollback-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("run.out")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("run.err")).unwrap())
        .spawn()
        .unwrap();
    let output = || {
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap_or_default();
        format!("{}{}", read("run.out"), read("run.err"))
    };
    let reached = common::wait_until(Duration::from_secs(180), || {
        doppel::testing::reached(&pause, "catch-up").is_some()
    });
    assert!(reached, "doppel reached catch-up: {}", output());

    // The standby copies doppel's failover slot.
    let on_standby = connect(standby.port()).await;
    let slot = format!("doppel_{oid}");
    let synced = common::wait_until_async(Duration::from_secs(120), || async {
        common::scalar(
            &on_standby,
            &format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND synced AND NOT temporary"
            ),
        )
        .await
            == 1
    })
    .await;
    assert!(
        synced,
        "the standby holds a copy of doppel's failover slot: {}",
        slot_diagnostics(
            &client,
            &on_standby,
            &primary.scratch_dir().join("standby.log")
        )
        .await
    );

    // Failover: the writer stops, the standby catches up, the primary dies, the standby is
    // promoted.
    let report = first_writer.stop().await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    caught_up(&client, &on_standby).await;
    let stopped = primary
        .command("pg_ctl")
        .arg("-D")
        .arg(primary.data_dir())
        .args(["-m", "immediate", "stop"])
        .output()
        .unwrap();
    assert!(stopped.status.success(), "the primary stops");
    standby.promote();
    let second_writer = writer(standby.port(), 12).await;
    doppel::testing::release(&pause, "catch-up").unwrap();

    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let out = output();
    assert!(
        status.success(),
        "doppel finished on the promoted standby: {out}"
    );
    assert!(
        out.contains("reconnected"),
        "doppel reconnected by itself: {out}"
    );
    let report = second_writer.stop().await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    assert!(
        report.transactions > 0,
        "the writer wrote on the new primary"
    );
    let new_primary = connect(standby.port()).await;
    assert_eq!(
        workload::mismatches(&new_primary, "orders", "orders_twin")
            .await
            .unwrap(),
        0,
        "the migrated table equals the twin: {out}"
    );
    let ty = common::text(
        &new_primary,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
         WHERE attrelid = 'orders'::regclass AND attname = 'customer_id'",
    )
    .await;
    assert_eq!(ty.as_deref(), Some("bigint"));
    assert_eq!(
        common::scalar(
            &new_primary,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'"
        )
        .await,
        0,
        "doppel's slot was dropped on the new primary"
    );
}
