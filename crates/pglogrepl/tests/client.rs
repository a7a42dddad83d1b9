//! Integration tests of `pglogrepl::client` against throwaway PostgreSQL clusters.
//!
//! Each test starts its own cluster (`doppel_testkit::cluster::LocalCluster`: a temporary
//! directory, a free port of 127.0.0.1, `wal_level=logical`; as root the server runs as the
//! `postgres` OS user), which is stopped and removed when the test ends, pass or fail.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use doppel_testkit::cluster::{ClusterOptions, LocalCluster};
use pglogrepl::client::{
    CreatedSlot, ReplicationClient, ReplicationError, ReplicationMessage, ReplicationStream,
};
use pglogrepl::lsn::Lsn;

/// Upper bound for every wait on the server.
const WAIT: Duration = Duration::from_secs(30);

const SLOT: &str = "pglogrepl_test_slot";
const APPLICATION: &str = "pglogrepl-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_pgoutput_changes_and_acknowledges_them() {
    // A short wal_sender_timeout makes the server ask for replies about once a second.
    let cluster = start_cluster(ClusterOptions {
        extra_conf: vec![("wal_sender_timeout".into(), "2s".into())],
        ..ClusterOptions::default()
    })
    .await;
    let admin = connect_sql(&cluster).await;
    admin
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, note text NOT NULL);
             INSERT INTO items VALUES (0, 'before-slot');
             CREATE PUBLICATION test_pub FOR TABLE items;",
        )
        .await
        .unwrap();

    let mut config = tcp_config(&cluster, "postgres");
    config.application_name(APPLICATION);
    let mut repl = ReplicationClient::connect(&config).await.unwrap();
    let slot = create_slot_and_import_snapshot(&cluster, &admin, &mut repl).await;

    let mut stream = repl
        .start_logical_replication(SLOT, slot.consistent_point, "test_pub", true)
        .await
        .unwrap();
    let walsenders: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1",
            &[&APPLICATION],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(walsenders, 1, "application_name reaches the server");

    admin
        .batch_execute(
            "BEGIN;
             INSERT INTO items VALUES (2, 'row-two'), (3, 'row-three');
             INSERT INTO items VALUES (4, 'row-four');
             SELECT pg_logical_emit_message(true, 'pglogrepl', 'hello');
             COMMIT;",
        )
        .await
        .unwrap();

    let (transactions, flushed) = receive_two_transactions(&mut stream, &slot).await;
    let tags = |txn: &Vec<Vec<u8>>| txn.iter().map(|m| m[0] as char).collect::<String>();
    assert_eq!(
        tags(&transactions[0]),
        "BRIC",
        "first transaction: one insert"
    );
    assert_eq!(
        tags(&transactions[1]),
        "BIIIMC",
        "second: three inserts and a message"
    );
    assert!(contains(&transactions[0][2], b"after-slot"));
    assert!(contains(&transactions[1][1], b"row-two"));
    assert!(contains(&transactions[1][4], b"hello"));
    assert!(flushed > slot.consistent_point);

    answer_reply_requests(&mut stream, &admin, flushed).await;

    stream.close().await.unwrap();
    wait_for("the temporary slot to be dropped", || async {
        confirmed_flush(&admin, SLOT).await.is_none()
    })
    .await;
    wait_for("the walsender to exit", || async {
        let n: i64 = admin
            .query_one("SELECT count(*) FROM pg_stat_replication", &[])
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;
}

/// IDENTIFY_SYSTEM, then a temporary slot [`SLOT`] whose exported snapshot is imported by
/// `admin` (it must not see a row inserted after the slot was created); checks what the
/// server reports about both.
async fn create_slot_and_import_snapshot(
    cluster: &LocalCluster,
    admin: &tokio_postgres::Client,
    repl: &mut ReplicationClient,
) -> CreatedSlot {
    let system = repl.identify_system().await.unwrap();
    assert_eq!(system.timeline, 1);
    assert_eq!(system.dbname.as_deref(), Some("postgres"));
    assert!(system.xlogpos > Lsn::INVALID);
    assert!(system.system_id.parse::<u64>().is_ok(), "{system:?}");

    let slot = repl.create_logical_slot(SLOT, true).await.unwrap();
    assert_eq!(slot.slot_name, SLOT);
    assert_eq!(slot.output_plugin, "pgoutput");
    assert!(slot.consistent_point >= system.xlogpos);
    let snapshot = slot.snapshot_name.clone().expect("exported snapshot");

    // A change made after the slot exists: streamed, but invisible to the exported snapshot.
    let other = connect_sql(cluster).await;
    other
        .execute("INSERT INTO items VALUES (1, 'after-slot')", &[])
        .await
        .unwrap();
    // Import the snapshot before the next command on the replication connection.
    admin
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snapshot}'"
        ))
        .await
        .unwrap();
    let in_snapshot: i64 = admin
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        in_snapshot, 1,
        "the snapshot sees only the row from before the slot"
    );
    admin.batch_execute("COMMIT").await.unwrap();

    let row = admin
        .query_one(
            "SELECT temporary, plugin, slot_type FROM pg_replication_slots WHERE slot_name = $1",
            &[&SLOT],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, String>(1), "pgoutput");
    assert_eq!(row.get::<_, String>(2), "logical");
    slot
}

/// Phase 1 of the streaming test: receives two transactions (each as its pgoutput messages,
/// Begin to Commit), with a timer racing `recv` in `select!` (exercising its cancel safety)
/// that acknowledges what has been fully received so far. Returns them and the end LSN of
/// the last.
async fn receive_two_transactions(
    stream: &mut ReplicationStream,
    slot: &CreatedSlot,
) -> (Vec<Vec<Vec<u8>>>, Lsn) {
    let mut transactions: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut current: Option<Vec<Vec<u8>>> = None;
    let mut flushed = slot.consistent_point;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let deadline = Instant::now() + WAIT;
    while transactions.len() < 2 {
        assert!(Instant::now() < deadline, "timed out; got {transactions:?}");
        tokio::select! {
            msg = stream.recv() => match msg.unwrap().expect("stream ended early") {
                ReplicationMessage::XLogData { wal_start, data, .. } => {
                    // Relation messages are not tied to a WAL record: 0/0.
                    assert!(wal_start == Lsn::INVALID || wal_start >= slot.consistent_point);
                    match data[0] {
                        b'B' => {
                            assert!(current.is_none(), "nested Begin");
                            current = Some(vec![data.to_vec()]);
                        }
                        b'C' => {
                            let mut txn = current.take().expect("Commit without Begin");
                            flushed = commit_end_lsn(&data);
                            txn.push(data.to_vec());
                            transactions.push(txn);
                        }
                        _ => {
                            let txn = current.as_mut().expect("change outside a transaction");
                            txn.push(data.to_vec());
                        }
                    }
                }
                ReplicationMessage::PrimaryKeepalive { reply_requested, .. } => {
                    if reply_requested {
                        stream.send_standby_status(flushed, flushed, flushed, false).await.unwrap();
                    }
                }
            },
            _ = ticker.tick() => {
                stream.send_standby_status(flushed, flushed, flushed, false).await.unwrap();
            }
        }
    }
    (transactions, flushed)
}

/// Phase 2 of the streaming test: no more timer; only answer the server's reply requests.
/// Three answered requests span more than wal_sender_timeout, so the replies keep the
/// connection alive; ends once the slot's confirmed_flush_lsn is `flushed`.
async fn answer_reply_requests(
    stream: &mut ReplicationStream,
    admin: &tokio_postgres::Client,
    flushed: Lsn,
) {
    stream
        .send_standby_status(flushed, flushed, flushed, false)
        .await
        .unwrap();
    let mut replies = 0;
    let mut confirmed = Lsn::INVALID;
    let deadline = Instant::now() + WAIT;
    while replies < 3 || confirmed < flushed {
        assert!(
            Instant::now() < deadline,
            "timed out: {replies} replies, confirmed_flush_lsn {confirmed} < {flushed}"
        );
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, stream.recv()).await {
            Err(_) => continue,
            Ok(msg) => match msg.unwrap().expect("stream ended early") {
                ReplicationMessage::PrimaryKeepalive {
                    reply_requested,
                    wal_end,
                    ..
                } => {
                    assert!(wal_end >= flushed);
                    if reply_requested {
                        stream
                            .send_standby_status(flushed, flushed, flushed, false)
                            .await
                            .unwrap();
                        replies += 1;
                    }
                }
                ReplicationMessage::XLogData { data, .. } => {
                    panic!("unexpected XLogData {:?}", data[0] as char)
                }
            },
        }
        confirmed = confirmed_flush(admin, SLOT).await.expect("slot exists");
    }
    assert_eq!(confirmed, flushed, "confirmed_flush_lsn is what we sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_authentication_methods() {
    // These lines come before the cluster's own trust lines, so they win for these users.
    let hba_extra = [
        "host all md5user 127.0.0.1/32 md5",
        "host all scramuser 127.0.0.1/32 scram-sha-256",
        "host all clearuser 127.0.0.1/32 password",
        "host all rejecteduser 127.0.0.1/32 reject",
    ];
    let cluster = start_cluster(ClusterOptions {
        hba_extra: hba_extra.iter().map(|l| l.to_string()).collect(),
        ..ClusterOptions::default()
    })
    .await;
    let admin = connect_sql(&cluster).await;
    admin
        .batch_execute(
            "SET password_encryption = 'md5';
             CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'md5-secret-pw';
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE scramuser LOGIN REPLICATION PASSWORD 'scram-secret-pw';
             CREATE ROLE clearuser LOGIN REPLICATION PASSWORD 'clear-secret-pw';
             CREATE ROLE rejecteduser LOGIN REPLICATION;",
        )
        .await
        .unwrap();
    let stored: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'md5user'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("md5"), "md5user has an MD5 verifier");

    for (user, password) in [
        ("md5user", "md5-secret-pw"),
        ("scramuser", "scram-secret-pw"),
        ("clearuser", "clear-secret-pw"),
    ] {
        let mut config = tcp_config(&cluster, user);
        config.password(password);
        let mut repl = ReplicationClient::connect(&config)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        let rows = repl
            .simple_query("SELECT current_user, 'x'::text")
            .await
            .unwrap();
        assert_eq!(rows, vec![vec![Some(user.to_string()), Some("x".into())]]);
        assert!(repl.identify_system().await.is_ok());
    }

    // Wrong password: the server's 28P01, and the password appears nowhere.
    for user in ["md5user", "scramuser", "clearuser"] {
        let mut config = tcp_config(&cluster, user);
        config.password("wrong-pw-0123");
        let err = ReplicationClient::connect(&config).await.unwrap_err();
        assert_eq!(err.sqlstate(), Some("28P01"), "{user}: {err}");
        assert!(!err.to_string().contains("wrong-pw-0123"));
        assert!(!format!("{err:?}").contains("wrong-pw-0123"));
    }

    // A password is required but none is configured.
    let err = ReplicationClient::connect(&tcp_config(&cluster, "scramuser"))
        .await
        .unwrap_err();
    assert!(matches!(err, ReplicationError::Auth(_)), "{err}");

    // pg_hba.conf rejects the user.
    let err = ReplicationClient::connect(&tcp_config(&cluster, "rejecteduser"))
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("28000"), "{err}");

    hosts_are_tried_in_order(&cluster).await;
}

/// A dead port first, then the cluster: the second host wins. Only the dead host: an I/O
/// error naming it.
async fn hosts_are_tried_in_order(cluster: &LocalCluster) {
    let dead_port = free_port();
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(dead_port)
        .host(cluster.host())
        .port(cluster.port())
        .user("scramuser")
        .password("scram-secret-pw")
        .dbname("postgres");
    let mut repl = ReplicationClient::connect(&config).await.unwrap();
    assert_eq!(
        repl.identify_system().await.unwrap().dbname.as_deref(),
        Some("postgres")
    );

    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(dead_port).user("postgres");
    match ReplicationClient::connect(&config).await.unwrap_err() {
        ReplicationError::Io(e) => assert!(e.to_string().contains(&dead_port.to_string()), "{e}"),
        other => panic!("expected an I/O error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_queries_errors_and_persistent_slots() {
    let cluster = start_cluster(ClusterOptions::default()).await;
    let admin = connect_sql(&cluster).await;
    admin
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY);
             INSERT INTO t VALUES (1);
             CREATE PUBLICATION p FOR TABLE t;",
        )
        .await
        .unwrap();

    let mut config = tokio_postgres::Config::new();
    config
        .host_path(socket_dir(&cluster))
        .port(cluster.port())
        .user("postgres")
        .dbname("postgres");
    let mut repl = ReplicationClient::connect(&config).await.unwrap();

    assert_eq!(
        repl.simple_query("SHOW wal_level").await.unwrap(),
        vec![vec![Some("logical".to_string())]]
    );
    assert_eq!(
        repl.simple_query("SELECT 1, NULL::text, 'é'; SELECT 2, 'b', ''")
            .await
            .unwrap(),
        vec![
            vec![Some("1".into()), None, Some("é".into())],
            vec![Some("2".into()), Some("b".into()), Some(String::new())],
        ]
    );
    assert!(repl.simple_query("").await.unwrap().is_empty());

    server_errors_leave_the_connection_usable(&mut repl).await;

    // A persistent slot outlives the connection that made it.
    let slot = repl.create_logical_slot("keep_me", false).await.unwrap();
    assert_eq!(slot.slot_name, "keep_me");
    let err = repl
        .create_logical_slot("keep_me", false)
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("42710"), "{err}");

    // simple_query refuses a streaming command but unwinds it.
    let err = repl
        .simple_query(&format!(
            "START_REPLICATION SLOT keep_me LOGICAL {} (proto_version '1', publication_names 'p')",
            slot.consistent_point
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, ReplicationError::Protocol(_)), "{err}");
    assert!(repl.identify_system().await.is_ok());

    // Errors from START_REPLICATION itself.
    let err = repl
        .start_logical_replication("no_such_slot", Lsn::INVALID, "p", false)
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("42704"), "{err}");

    stream_from_persistent_slot(&config, &admin, &slot).await;

    let mut repl = ReplicationClient::connect(&config).await.unwrap();
    repl.simple_query("DROP_REPLICATION_SLOT keep_me")
        .await
        .unwrap();
    assert!(confirmed_flush(&admin, "keep_me").await.is_none());
}

/// Server errors carry SQLSTATE, detail and hint, and leave the connection usable.
async fn server_errors_leave_the_connection_usable(repl: &mut ReplicationClient) {
    let err = repl
        .simple_query("SELECT no_such_function(1)")
        .await
        .unwrap_err();
    match &err {
        ReplicationError::Server {
            severity,
            code,
            message,
            hint,
            ..
        } => {
            assert_eq!(severity, "ERROR");
            assert_eq!(code, "42883");
            assert!(message.contains("no_such_function"), "{message}");
            assert!(hint.is_some());
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    assert!(err.to_string().contains("\nHINT: "), "{err}");
    let err = repl
        .simple_query("INSERT INTO t VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("23505"));
    assert!(
        err.to_string()
            .contains("DETAIL: Key (id)=(1) already exists."),
        "{err}"
    );
    assert_eq!(
        repl.simple_query("SELECT 3").await.unwrap(),
        vec![vec![Some("3".to_string())]]
    );
}

/// Streams one transaction from the persistent slot `keep_me` on a new connection, closes
/// the stream, and the slot is still there (inactive).
async fn stream_from_persistent_slot(
    config: &tokio_postgres::Config,
    admin: &tokio_postgres::Client,
    slot: &CreatedSlot,
) {
    let repl = ReplicationClient::connect(config).await.unwrap();
    let mut stream = repl
        .start_logical_replication("keep_me", slot.consistent_point, "p", false)
        .await
        .unwrap();
    admin
        .execute("INSERT INTO t VALUES (2)", &[])
        .await
        .unwrap();
    let mut tags = String::new();
    let deadline = Instant::now() + WAIT;
    while !tags.ends_with('C') {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, stream.recv())
            .await
            .expect("timed out waiting for the transaction")
            .unwrap()
            .expect("stream ended early");
        if let ReplicationMessage::XLogData { data, .. } = msg {
            tags.push(data[0] as char);
        }
    }
    assert_eq!(tags, "BRIC");
    stream.close().await.unwrap();
    wait_for("the slot to become inactive", || async {
        admin
            .query_one(
                "SELECT NOT active FROM pg_replication_slots WHERE slot_name = 'keep_me'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
}

/// End LSN of the transaction from a pgoutput Commit message
/// (`C`, flags i8, commit LSN i64, end LSN i64, timestamp i64).
fn commit_end_lsn(data: &[u8]) -> Lsn {
    assert_eq!(data.len(), 26, "pgoutput Commit is 26 bytes");
    Lsn(u64::from_be_bytes(data[10..18].try_into().unwrap()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The slot's `confirmed_flush_lsn`, or `None` when the slot does not exist.
async fn confirmed_flush(client: &tokio_postgres::Client, slot: &str) -> Option<Lsn> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()?;
    Some(row.get::<_, String>(0).parse().unwrap())
}

/// Polls `check` until it returns true; panics after [`WAIT`].
async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a throwaway cluster; panics with the error (and the server log) if it cannot.
async fn start_cluster(options: ClusterOptions) -> LocalCluster {
    LocalCluster::start(options)
        .await
        .unwrap_or_else(|e| panic!("could not start a test cluster: {e:#}"))
}

/// An ordinary SQL session as the superuser `postgres`.
async fn connect_sql(cluster: &LocalCluster) -> tokio_postgres::Client {
    cluster
        .connect("postgres")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Settings for a TCP connection to the cluster as `user` to database `postgres`.
fn tcp_config(cluster: &LocalCluster, user: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(cluster.host())
        .port(cluster.port())
        .user(user)
        .dbname("postgres");
    config
}

/// The directory of the cluster's Unix socket: its temporary directory, the parent of the
/// data directory (`unix_socket_directories`).
fn socket_dir(cluster: &LocalCluster) -> &Path {
    cluster
        .data_dir()
        .parent()
        .expect("the data directory is inside the cluster's directory")
}

/// A TCP port of 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
