//! Integration tests of preflight (`doppel::preflight`) through `doppel::run::run` and
//! the `doppel` binary: every refusal names its reason and leaves nothing behind (no
//! `_doppel_*` relation, no `doppel_*` publication, no replication slot, no spool file, the
//! original table's definition and rows unchanged); accepted dry runs print the plan and
//! change nothing; awkward names (quoted, mixed case, 63 bytes, unqualified through
//! `search_path`) and `USING` expressions migrate correctly.
//!
//! Each test starts its own private PostgreSQL cluster (`common::cluster`).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use doppel::cancel::Cancel;
use doppel::failure::{Check, Refusal, Refused};
use doppel::model::names::Names;
use doppel::plan::{Migration, Rewrite, Strategy};
use doppel::run::{self, ADVISORY_LOCK_CLASS, Outcome, RunOptions, RunReport};
use doppel_testkit::cluster::LocalCluster;
use tempfile::TempDir;
use tokio_postgres::Client;

/// Upper bound for one run of the binary.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a TEMPORARY slot may stay listed after its connection closed (the server drops it
/// asynchronously, see `ReplicationStream::close`).
const SLOT_GONE_TIMEOUT: Duration = Duration::from_secs(15);

/// A spool directory and a rollback directory for one run, removed on drop.
struct Dirs {
    _base: TempDir,
    work: PathBuf,
    rollback: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let base = tempfile::Builder::new()
            .prefix("doppel-test-run-")
            .tempdir()
            .expect("temp dir");
        let work = base.path().join("work");
        let rollback = base.path().join("rollback");
        std::fs::create_dir(&work).expect("work dir");
        std::fs::create_dir(&rollback).expect("rollback dir");
        Dirs {
            _base: base,
            work,
            rollback,
        }
    }
}

/// `RunOptions` as `doppel run` builds them from its defaults (src/main.rs `run_options`),
/// with status lines and this test's directories.
fn run_options(table: &str, alters: &[&str], execute: bool, dirs: &Dirs) -> RunOptions {
    RunOptions {
        execute,
        fence_timeout: Duration::from_millis(5000),
        work_dir: dirs.work.clone(),
        rollback_dir: dirs.rollback.clone(),
        ..RunOptions::new(table, alters)
    }
}

/// `doppel::run::run` against `dsn`.
async fn run_doppel(
    dsn: &str,
    table: &str,
    alters: &[&str],
    execute: bool,
    dirs: &Dirs,
) -> anyhow::Result<Outcome> {
    let config: tokio_postgres::Config = dsn.parse()?;
    run::run(
        &config,
        &run_options(table, alters, execute, dirs),
        &Cancel::never(),
    )
    .await
}

/// The refusals of a refused run; panics on success or on any other error.
fn refusals(result: anyhow::Result<Outcome>) -> Vec<Refusal> {
    match result {
        Ok(outcome) => panic!("expected a preflight refusal, the run was accepted: {outcome:?}"),
        Err(e) => match e.downcast_ref::<Refused>() {
            Some(refused) => {
                assert!(!refused.0.is_empty(), "a refusal without reasons");
                refused.0.clone()
            }
            None => panic!("expected a preflight refusal, got another error: {e:#}"),
        },
    }
}

/// The refusal of `check` whose text (reason and fix, as printed) contains every one of
/// `needles`; panics (listing all refusals) if none does.
fn refusal_of<'a>(refusals: &'a [Refusal], check: Check, needles: &[&str]) -> &'a Refusal {
    refusals
        .iter()
        .find(|r| {
            let text = r.to_string();
            r.check == check && needles.iter().all(|n| text.contains(n))
        })
        .unwrap_or_else(|| {
            panic!("no {check:?} refusal contains all of {needles:?}: {refusals:#?}")
        })
}

/// The fix of `refusal`; panics if it has none.
fn fix_of(refusal: &Refusal) -> &str {
    refusal
        .fix
        .as_deref()
        .unwrap_or_else(|| panic!("the refusal does not say how to fix it: {refusal:?}"))
}

fn planned(result: anyhow::Result<Outcome>) -> Box<Migration> {
    match result {
        Ok(Outcome::Planned(plan)) => plan,
        Ok(other) => panic!("expected a dry-run plan, got {other:?}"),
        Err(e) => panic!("expected the dry run to be accepted, got: {e:#}"),
    }
}

fn migrated(result: anyhow::Result<Outcome>) -> Box<RunReport> {
    match result {
        Ok(Outcome::Migrated(report)) => report,
        Ok(other) => panic!("expected a completed migration, got {other:?}"),
        Err(e) => panic!("expected the migration to succeed, got: {e:#}"),
    }
}

/// Runs the `doppel` binary with `args` (no `PG*` environment leaking in).
async fn doppel_cli(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_doppel"));
    cmd.args(args).env("RUST_LOG", "info").kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    match tokio::time::timeout(CLI_TIMEOUT, cmd.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("cannot run doppel: {e}"),
        Err(_) => panic!("doppel {args:?} did not finish within {CLI_TIMEOUT:?}"),
    }
}

/// `doppel run --dsn <dsn> --table <table> --alter .. [extra]` (a dry run unless `extra`
/// says `--execute`).
async fn doppel_cli_run(dsn: &str, table: &str, alters: &[&str], dirs: &Dirs) -> Output {
    let mut args = vec!["run", "--dsn", dsn, "--table", table];
    for alter in alters {
        args.extend(["--alter", alter]);
    }
    let work = dirs.work.to_str().expect("utf-8 path");
    let rollback = dirs.rollback.to_str().expect("utf-8 path");
    args.extend([
        "--progress",
        "lines",
        "--work-dir",
        work,
        "--rollback-dir",
        rollback,
    ]);
    doppel_cli(&args).await
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Asserts the binary exited with `code` and returns its stdout and stderr.
fn expect_exit(output: &Output, code: i32) -> (String, String) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "expected exit status {code}: {}",
        describe(output)
    );
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A table's definition and contents, for "unchanged" checks.
#[derive(Debug, PartialEq, Eq)]
struct TableState {
    oid: u32,
    relfilenode: u32,
    definition: Vec<String>,
    rows: i64,
    digest: String,
}

/// Reads the state of `table` (SQL text, e.g. `public.orders`).
async fn table_state(client: &Client, table: &str) -> TableState {
    let oid: u32 = client
        .query_one("SELECT $1::text::regclass::oid", &[&table])
        .await
        .unwrap_or_else(|e| panic!("table {table} not found: {e}"))
        .get(0);
    let head = client
        .query_one(
            "SELECT c.relfilenode::oid,
                    concat_ws(' ', n.nspname, c.relname, c.relkind, c.relpersistence, c.relreplident,
                              c.relrowsecurity, c.relforcerowsecurity, c.reloptions::text,
                              obj_description(c.oid, 'pg_class'))
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&oid],
        )
        .await
        .expect("pg_class");
    let mut definition = vec![head.get::<_, String>(1)];
    let details = client
        .query(
            "SELECT * FROM (
               SELECT 1 AS k, a.attnum::int AS o, 'column ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                      || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
                      || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '') AS t
               FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
               WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
               UNION ALL SELECT 2, 0, 'index ' || pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = $1
               UNION ALL SELECT 3, 0, 'constraint ' || conname || ' ' || pg_get_constraintdef(oid)
                 FROM pg_constraint WHERE conrelid = $1 OR confrelid = $1
               UNION ALL SELECT 4, 0, 'trigger ' || tgname FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal
               UNION ALL SELECT 5, 0, 'policy ' || polname FROM pg_policy WHERE polrelid = $1
               UNION ALL SELECT 6, 0, 'publication ' || p.pubname FROM pg_publication_rel pr
                 JOIN pg_publication p ON p.oid = pr.prpubid WHERE pr.prrelid = $1
               UNION ALL SELECT 7, 0, 'rule ' || rulename FROM pg_rewrite WHERE ev_class = $1
             ) x ORDER BY k, o, t",
            &[&oid],
        )
        .await
        .expect("catalog details");
    definition.extend(details.iter().map(|r| r.get::<_, String>(2)));
    let contents = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '')
                 FROM {table} AS t"
            ),
            &[],
        )
        .await
        .expect("table contents");
    TableState {
        oid,
        relfilenode: head.get(0),
        definition,
        rows: contents.get(0),
        digest: contents.get(1),
    }
}

/// Everything that looks like doppel's: relations named `_doppel_*`, publications named
/// `doppel_*`, and every replication slot (the tests create none of their own).
async fn doppel_objects(client: &Client) -> Vec<String> {
    client
        .query(
            r#"SELECT 'relation "' || replace(n.nspname, '"', '""') || '"."' || replace(c.relname, '"', '""') || '"'
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relname LIKE '\_doppel\_%'
               UNION ALL SELECT 'publication ' || pubname FROM pg_publication WHERE pubname LIKE 'doppel\_%'
               UNION ALL SELECT 'replication slot ' || slot_name FROM pg_replication_slots
               ORDER BY 1"#,
            &[],
        )
        .await
        .expect("listing doppel objects")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Files left in a directory.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Asserts doppel left nothing behind: no object in the database, no spool file, no rollback
/// script.
async fn assert_nothing_created(client: &Client, dirs: &Dirs) {
    let objects = doppel_objects(client).await;
    assert!(
        objects.is_empty(),
        "doppel left objects behind: {objects:?}"
    );
    assert!(
        files_in(&dirs.work).is_empty(),
        "files left in the work dir: {:?}",
        files_in(&dirs.work)
    );
    assert!(
        files_in(&dirs.rollback).is_empty(),
        "files left in the rollback dir: {:?}",
        files_in(&dirs.rollback)
    );
}

/// Waits (polling) until no replication slot is listed; panics after [`SLOT_GONE_TIMEOUT`].
async fn wait_slots_gone(client: &Client) {
    let deadline = tokio::time::Instant::now() + SLOT_GONE_TIMEOUT;
    loop {
        let slots: Vec<String> = client
            .query("SELECT slot_name::text FROM pg_replication_slots", &[])
            .await
            .expect("pg_replication_slots")
            .iter()
            .map(|r| r.get(0))
            .collect();
        if slots.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replication slots still listed after {SLOT_GONE_TIMEOUT:?}: {slots:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts what a completed migration leaves: the kept original (and its renamed indexes and
/// sequences), a rollback script, and nothing else.
async fn assert_only_old_table_left(client: &Client, dirs: &Dirs, names: &Names, old_oid: u32) {
    wait_slots_gone(client).await;
    let objects = doppel_objects(client).await;
    let old = format!("relation {}", names.old_qualified());
    let old_prefix = format!("_doppel_{old_oid}_old_");
    assert!(
        objects.contains(&old),
        "the original is not kept as {}: {objects:?}",
        names.old_qualified()
    );
    for o in &objects {
        assert!(
            o.starts_with("relation ") && o.contains(&old_prefix),
            "unexpected leftover after the migration: {o} (all: {objects:?})"
        );
    }
    assert!(
        files_in(&dirs.work).is_empty(),
        "spool left: {:?}",
        files_in(&dirs.work)
    );
    let rollback = files_in(&dirs.rollback);
    let with_ext = |ext: &str| {
        rollback
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .count()
    };
    assert_eq!(with_ext("sql"), 1, "one rollback script: {rollback:?}");
    assert_eq!(with_ext("json"), 1, "one cutover record: {rollback:?}");
    assert_eq!(rollback.len(), 2, "nothing else: {rollback:?}");
}

/// `ALTER TABLE` directly on the server, expecting it to fail; returns the server's message.
async fn server_error(client: &Client, sql: &str) -> String {
    match client.batch_execute(sql).await {
        Ok(()) => panic!("expected the server to reject {sql}"),
        Err(e) => e
            .as_db_error()
            .unwrap_or_else(|| panic!("not a server error: {e}"))
            .message()
            .to_string(),
    }
}

/// `<table> (id int PRIMARY KEY, a int NOT NULL, amount numeric(10,2), note text)` with 300
/// rows (every tenth amount NULL).
async fn create_orders(client: &Client, table: &str) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, a int NOT NULL, amount numeric(10,2), note text);
             INSERT INTO {table}
               SELECT i, i * 3, CASE WHEN i % 10 = 0 THEN NULL ELSE i * 1.37 END, 'row ' || i
               FROM generate_series(1, 300) AS i;
             ANALYZE {table};"
        ))
        .await
        .expect("creating the test table");
}

/// Runs `alters` on `table` with `--execute` through the library, expects a refusal, and checks
/// that neither the table nor anything else changed. Returns the refusals.
async fn expect_refusal(cluster: &LocalCluster, table: &str, alters: &[&str]) -> Vec<Refusal> {
    let client = cluster.connect("postgres").await.expect("connect");
    let before = table_state(&client, table).await;
    let dirs = Dirs::new();
    let result = run_doppel(&cluster.conninfo("postgres"), table, alters, true, &dirs).await;
    let refused = refusals(result);
    assert_eq!(
        table_state(&client, table).await,
        before,
        "a refused run changed {table}"
    );
    assert_nothing_created(&client, &dirs).await;
    refused
}

/// Runs the binary (dry run) on `table`, expects exit status 2 and an unchanged database;
/// returns stderr.
async fn expect_cli_refusal(cluster: &LocalCluster, table: &str, alters: &[&str]) -> String {
    let client = cluster.connect("postgres").await.expect("connect");
    let before = table_state(&client, table).await;
    let dirs = Dirs::new();
    let output = doppel_cli_run(&cluster.conninfo("postgres"), table, alters, &dirs).await;
    let (stdout, stderr) = expect_exit(&output, 2);
    assert!(
        stderr.contains("preflight refused the migration"),
        "{}",
        describe(&output)
    );
    assert!(
        !stdout.contains("shadow DDL"),
        "a refused run printed a plan: {stdout}"
    );
    assert_eq!(table_state(&client, table).await, before);
    assert_nothing_created(&client, &dirs).await;
    stderr
}

// ---------------------------------------------------------------------------------------------
// 1. Invalid ALTER
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_alter_is_refused_quoting_the_server_error() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    create_orders(&client, "public.orders").await;

    // A column that does not exist.
    let missing = "ALTER COLUMN nosuch TYPE int";
    let server_says = server_error(&client, &format!("ALTER TABLE public.orders {missing}")).await;
    assert!(server_says.contains("nosuch"), "{server_says}");
    let refused = expect_refusal(&cluster, "public.orders", &[missing]).await;
    let refusal = refusal_of(&refused, Check::Alter, &[missing, &server_says]);
    assert!(
        refusal.reason.contains("the server rejected")
            && refusal.reason.contains("nothing was created"),
        "{refusal}"
    );

    // A syntax error.
    let typo = "ALTER COLUMN a TYPO bigint";
    let server_says = server_error(&client, &format!("ALTER TABLE public.orders {typo}")).await;
    assert!(server_says.contains("syntax error"), "{server_says}");
    let refused = expect_refusal(&cluster, "public.orders", &[typo]).await;
    refusal_of(&refused, Check::Alter, &[typo, &server_says]);

    // The second of two clauses is bad: the first is not applied either.
    let refused = expect_refusal(
        &cluster,
        "public.orders",
        &["ADD COLUMN fine text", "ADD COLUMN broken notatype"],
    )
    .await;
    refusal_of(&refused, Check::Alter, &["notatype"]);

    // The binary: exit status 2, the server's message on stderr.
    let stderr = expect_cli_refusal(&cluster, "public.orders", &[missing]).await;
    let server_says = server_error(&client, &format!("ALTER TABLE public.orders {missing}")).await;
    assert!(stderr.contains(&server_says), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_smuggling_a_second_statement_is_refused_before_the_server_sees_it() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    create_orders(&client, "public.orders").await;
    client
        .batch_execute("CREATE TABLE victim (id int PRIMARY KEY)")
        .await
        .unwrap();
    let victim = table_state(&client, "public.victim").await;

    let refused = expect_refusal(
        &cluster,
        "public.orders",
        &["ADD COLUMN x int; DROP TABLE victim"],
    )
    .await;
    refusal_of(&refused, Check::AlterText, &["contains ';'"]);
    let refused = expect_refusal(
        &cluster,
        "public.orders",
        &["ALTER TABLE victim ADD COLUMN y int"],
    )
    .await;
    refusal_of(&refused, Check::AlterText, &["starts with ALTER TABLE"]);
    assert_eq!(
        table_state(&client, "public.victim").await,
        victim,
        "the smuggled statement touched another table"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. No primary key
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_without_primary_key_is_refused_with_how_to_add_one() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE nokey (id int NOT NULL, v int);
             CREATE UNIQUE INDEX nokey_id ON nokey (id);
             INSERT INTO nokey SELECT i, i FROM generate_series(1, 200) i;",
        )
        .await
        .unwrap();

    let refused = expect_refusal(&cluster, "public.nokey", &["ALTER COLUMN v TYPE bigint"]).await;
    let refusal = refusal_of(&refused, Check::PrimaryKey, &["\"public\".\"nokey\""]);
    let fix = fix_of(refusal);
    assert!(
        fix.contains("ADD PRIMARY KEY USING INDEX")
            && fix.contains("CREATE UNIQUE INDEX CONCURRENTLY"),
        "the refusal does not say how to add a primary key: {refusal}"
    );

    let stderr =
        expect_cli_refusal(&cluster, "public.nokey", &["ALTER COLUMN v TYPE bigint"]).await;
    assert!(stderr.contains("no primary key"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// 3. wal_level
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_refused_with_how_to_fix_it() {
    let mut cluster = common::cluster().await;
    {
        let client = cluster.connect("postgres").await.unwrap();
        create_orders(&client, "public.orders").await;
    }
    cluster.alter_system("wal_level", "replica").await.unwrap();
    cluster.restart().await.unwrap();
    let client = cluster.connect("postgres").await.unwrap();
    let level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(level, "replica");

    let refused = expect_refusal(&cluster, "public.orders", &["ALTER COLUMN a TYPE bigint"]).await;
    let refusal = refusal_of(&refused, Check::WalLevel, &["'replica'"]);
    let fix = fix_of(refusal);
    assert!(
        fix.contains("set wal_level = logical") && fix.contains("restart"),
        "{refusal}"
    );

    let stderr =
        expect_cli_refusal(&cluster, "public.orders", &["ALTER COLUMN a TYPE bigint"]).await;
    assert!(stderr.contains("set wal_level = logical"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// 4. Dependents the cutover cannot move safely
// ---------------------------------------------------------------------------------------------

/// Creates `public.orders`, runs `setup`, runs `alters` and expects a refusal naming `name`.
async fn refused_for_dependent(setup: &str, alters: &[&str], name: &str) {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    create_orders(&client, "public.orders").await;
    client.batch_execute(setup).await.unwrap();
    let refused = expect_refusal(&cluster, "public.orders", alters).await;
    refusal_of(&refused, Check::Dependents, &[name]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_using_a_dropped_column_is_refused_naming_it() {
    refused_for_dependent(
        "CREATE VIEW big_orders AS SELECT id, amount FROM orders WHERE amount > 100",
        &["DROP COLUMN amount"],
        "big_orders",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_view_with_its_own_dependents_is_refused_naming_it() {
    // A plain matview is rebuilt after the cutover (tests/dependents.rs); one that other
    // objects depend on cannot be swapped without them.
    refused_for_dependent(
        "CREATE MATERIALIZED VIEW order_totals AS SELECT count(*) AS n FROM orders;
         CREATE VIEW order_totals_v AS SELECT n FROM order_totals",
        &["ALTER COLUMN a TYPE bigint"],
        "order_totals",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_standard_function_body_is_refused_naming_it() {
    refused_for_dependent(
        "CREATE FUNCTION order_count() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT count(*) FROM orders; END",
        &["ALTER COLUMN a TYPE bigint"],
        "order_count",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Tables logical decoding cannot carry
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_nothing_is_refused() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    create_orders(&client, "public.orders").await;
    client
        .batch_execute("ALTER TABLE orders REPLICA IDENTITY NOTHING")
        .await
        .unwrap();
    let refused = expect_refusal(&cluster, "public.orders", &["ALTER COLUMN a TYPE bigint"]).await;
    let refusal = refusal_of(&refused, Check::ReplicaIdentity, &["NOTHING"]);
    assert!(
        fix_of(refusal).contains("REPLICA IDENTITY DEFAULT"),
        "{refusal}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlogged_table_is_refused() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY, v int);
             INSERT INTO scratch SELECT i, i FROM generate_series(1, 200) i;",
        )
        .await
        .unwrap();
    let refused = expect_refusal(&cluster, "public.scratch", &["ALTER COLUMN v TYPE bigint"]).await;
    let refusal = refusal_of(
        &refused,
        Check::Persistence,
        &["\"public\".\"scratch\"", "UNLOGGED"],
    );
    assert!(fix_of(refusal).contains("SET LOGGED"), "{refusal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_bound_to_one_partition_and_a_single_partition_are_refused() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE events (id int, at date, v int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
             CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
             CREATE UNLOGGED TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
             ALTER TABLE events_2024 REPLICA IDENTITY USING INDEX events_2024_pkey;
             CREATE TABLE notes (id int, at date, v int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
             CREATE TABLE notes_2024 PARTITION OF notes FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
             CREATE FUNCTION notes_2024_count() RETURNS bigint LANGUAGE sql
               BEGIN ATOMIC SELECT count(*) FROM notes_2024; END;
             INSERT INTO events SELECT i, date '2024-06-01' + i, i FROM generate_series(1, 300) i;",
        )
        .await
        .unwrap();
    // The partitioned table itself is migrated with its tree (docs/design.md §1.14), but not
    // with a partition's REPLICA IDENTITY USING INDEX or an UNLOGGED partition (a trigger, a
    // view, a policy, ... of one partition move: `partition_dependents`).
    let refused = expect_refusal(&cluster, "public.events", &["ALTER COLUMN v TYPE bigint"]).await;
    let identity = refusal_of(
        &refused,
        Check::Partition,
        &["partition events_2024 has REPLICA IDENTITY USING INDEX"],
    );
    assert!(
        fix_of(identity).contains("define it on the partitioned table"),
        "{identity}"
    );
    refusal_of(
        &refused,
        Check::Partition,
        &["partition events_2025 is UNLOGGED", "WAL"],
    );
    // What a table's own read refuses is refused on a partition too (what else is bound to
    // one partition moves: `partition_dependents`).
    let refused = expect_refusal(&cluster, "public.notes", &["ALTER COLUMN v TYPE bigint"]).await;
    refusal_of(
        &refused,
        Check::Dependents,
        &["notes_2024_count()", "SQL-standard body"],
    );
    assert!(
        !refused
            .iter()
            .any(|r| r.check == Check::Inheritance || r.check == Check::TableKind),
        "a partitioned table is neither an inheritance tree nor refused for its kind: {refused:?}"
    );

    // A partition on its own is refused, naming the partitioned table to migrate instead.
    let refused = expect_refusal(
        &cluster,
        "public.events_2024",
        &["ALTER COLUMN v TYPE bigint"],
    )
    .await;
    let refusal = refusal_of(
        &refused,
        Check::Partition,
        &[
            "\"public\".\"events_2024\"",
            "partition of \"public\".\"events\"",
        ],
    );
    assert!(
        fix_of(refusal).contains("migrate the partitioned table \"public\".\"events\" instead"),
        "{refusal}"
    );
    assert!(
        !refused.iter().any(|r| r.check == Check::Inheritance),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inheritance_parent_and_child_are_refused() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE animals (id int PRIMARY KEY, v int);
             CREATE TABLE dogs (bark text) INHERITS (animals);
             ALTER TABLE dogs ADD PRIMARY KEY (id);
             INSERT INTO animals SELECT i, i FROM generate_series(1, 100) i;
             INSERT INTO dogs SELECT i, i, 'woof' FROM generate_series(101, 200) i;",
        )
        .await
        .unwrap();
    for table in ["public.animals", "public.dogs"] {
        let refused = expect_refusal(&cluster, table, &["ALTER COLUMN v TYPE bigint"]).await;
        let refusal = refusal_of(&refused, Check::Inheritance, &["inheritance", "INHERITS"]);
        assert!(fix_of(refusal).contains("NO INHERIT"), "{refusal}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_in_a_for_all_tables_publication_is_refused_naming_it() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    create_orders(&client, "public.orders").await;
    client
        .batch_execute("CREATE PUBLICATION everything FOR ALL TABLES")
        .await
        .unwrap();
    let refused = expect_refusal(&cluster, "public.orders", &["ALTER COLUMN a TYPE bigint"]).await;
    refusal_of(
        &refused,
        Check::Publication,
        &["everything", "FOR ALL TABLES"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_table_is_not_found_from_another_session() {
    // A temporary table is private to its session: doppel's sessions cannot see it.
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute("CREATE TEMPORARY TABLE scratch (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    let dirs = Dirs::new();
    let result = run_doppel(
        &cluster.conninfo("postgres"),
        "scratch",
        &["ALTER COLUMN v TYPE bigint"],
        true,
        &dirs,
    )
    .await;
    refusal_of(&refusals(result), Check::TableName, &["scratch"]);
    assert_nothing_created(&client, &dirs).await;
}

// ---------------------------------------------------------------------------------------------
// 6. Hostile identifiers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identifiers_dry_run_and_migrate() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            r#"CREATE SCHEMA "Sales Data";
               CREATE TABLE "Sales Data"."Order-Lines" (
                 id int PRIMARY KEY,
                 "Weird ""col""" int NOT NULL,
                 "Note; DROP TABLE x" text
               );
               CREATE INDEX "Idx ""weird""" ON "Sales Data"."Order-Lines" ("Weird ""col""");
               INSERT INTO "Sales Data"."Order-Lines"
                 SELECT i, i * 7,
                        CASE WHEN i % 9 = 0 THEN NULL
                             ELSE E'it''s "quoted", a\\b\tc\nd; é ' || i END
                 FROM generate_series(1, 300) i;
               ANALYZE "Sales Data"."Order-Lines";"#,
        )
        .await
        .unwrap();
    let table = r#""Sales Data"."Order-Lines""#;
    let alter = r#"ALTER COLUMN "Weird ""col""" TYPE bigint"#;
    let before = table_state(&client, table).await;

    // Dry run through the binary.
    let dirs = Dirs::new();
    let output = doppel_cli_run(&cluster.conninfo("postgres"), table, &[alter], &dirs).await;
    let (stdout, _) = expect_exit(&output, 0);
    assert!(
        stdout.contains(&format!("doppel plan for {table}")),
        "{stdout}"
    );
    assert!(stdout.contains(r#""Weird ""col""" bigint"#), "{stdout}");
    assert!(stdout.contains("dry run: nothing was changed"), "{stdout}");
    assert_eq!(table_state(&client, table).await, before);
    assert_nothing_created(&client, &dirs).await;

    // The migration, through the library.
    let dirs = Dirs::new();
    let report =
        migrated(run_doppel(&cluster.conninfo("postgres"), table, &[alter], true, &dirs).await);
    assert_eq!(report.copy.rows, 300);
    let names = &report.plan.names;
    assert_eq!(names.schema, "Sales Data");
    assert_eq!(names.table, "Order-Lines");
    assert_eq!(names.old, format!("_doppel_{}_old_Order-Lines", before.oid));

    let after = table_state(&client, table).await;
    assert_ne!(after.oid, before.oid, "the table was not swapped");
    assert_eq!(after.rows, 300);
    // int and bigint print alike, so the rows' text is unchanged.
    assert_eq!(after.digest, before.digest, "the rows changed");
    let weird_type: String = client
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = $1::text::regclass AND attname = 'Weird \"col\"'",
            &[&table],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(weird_type, "bigint");
    let index_table: String = client
        .query_one(
            "SELECT indrelid::regclass::text FROM pg_index
             WHERE indexrelid = to_regclass('\"Sales Data\".\"Idx \"\"weird\"\"\"')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        index_table, table,
        "the index did not move to the new table"
    );

    // The original is kept, rows and definition intact, under the old name.
    let kept = table_state(&client, &names.old_qualified()).await;
    assert_eq!(kept.oid, before.oid);
    assert_eq!(kept.rows, before.rows);
    assert_eq!(kept.digest, before.digest);
    assert_only_old_table_left(&client, &dirs, names, before.oid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_three_byte_table_name_keeps_names_within_the_identifier_limit() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    // 63 bytes: one ASCII letter, then 31 two-byte characters, so a byte-wise truncation can
    // fall inside a character.
    let name = format!("x{}", "é".repeat(31));
    assert_eq!(name.len(), 63);
    let table = format!("public.{}", doppel::sql::ident(&name));
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, v int, note text);
             INSERT INTO {table} SELECT i, i, 'n' || i FROM generate_series(1, 300) i;"
        ))
        .await
        .unwrap();
    let stored: String = client
        .query_one(
            "SELECT relname::text FROM pg_class WHERE oid = $1::text::regclass",
            &[&table],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, name, "the server truncated the test table's name");
    let before = table_state(&client, &table).await;
    let alter = "ALTER COLUMN v TYPE bigint";

    // Dry run through the binary.
    let dirs = Dirs::new();
    let output = doppel_cli_run(&cluster.conninfo("postgres"), &table, &[alter], &dirs).await;
    expect_exit(&output, 0);
    assert_nothing_created(&client, &dirs).await;

    let dirs = Dirs::new();
    let report =
        migrated(run_doppel(&cluster.conninfo("postgres"), &table, &[alter], true, &dirs).await);
    let names = &report.plan.names;
    for generated in [&names.shadow, &names.old, &names.publication, &names.slot] {
        assert!(
            generated.len() <= doppel::model::names::MAX_IDENT,
            "{generated:?} is {} bytes",
            generated.len()
        );
    }
    assert!(
        names
            .old
            .starts_with(&format!("_doppel_{}_old_x", before.oid))
    );
    let after = table_state(&client, &table).await;
    assert_ne!(after.oid, before.oid);
    assert_eq!(after.rows, 300);
    assert_eq!(after.digest, before.digest);
    // The kept original is found under exactly the name doppel computed (no server-side
    // truncation happened behind its back).
    let kept = table_state(&client, &names.old_qualified()).await;
    assert_eq!(kept.oid, before.oid);
    assert_eq!(kept.digest, before.digest);
    assert_only_old_table_left(&client, &dirs, names, before.oid).await;
}

// ---------------------------------------------------------------------------------------------
// 7. Unqualified names resolve through search_path
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unqualified_table_resolves_through_search_path() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute("CREATE SCHEMA myschema")
        .await
        .unwrap();
    create_orders(&client, "myschema.orders").await;
    // A decoy of the same name in public, with a different shape.
    client
        .batch_execute("CREATE TABLE public.orders (id int PRIMARY KEY, other text)")
        .await
        .unwrap();
    let dsn = format!(
        "{} options='-c search_path=myschema'",
        cluster.conninfo("postgres")
    );
    let public_before = table_state(&client, "public.orders").await;
    let mine_before = table_state(&client, "myschema.orders").await;

    let dirs = Dirs::new();
    let plan = planned(
        run_doppel(
            &dsn,
            "orders",
            &["ALTER COLUMN a TYPE bigint"],
            false,
            &dirs,
        )
        .await,
    );
    assert_eq!(plan.original.schema, "myschema");
    assert_eq!(plan.original.oid, mine_before.oid);
    assert_eq!(
        plan.shadow_plan().unwrap().names.shadow_qualified(),
        format!("\"myschema\".\"_doppel_{}_new_orders\"", mine_before.oid)
    );
    assert_nothing_created(&client, &dirs).await;

    // The binary agrees.
    let output = doppel_cli_run(&dsn, "orders", &["ALTER COLUMN a TYPE bigint"], &dirs).await;
    let (stdout, _) = expect_exit(&output, 0);
    assert!(
        stdout.contains("doppel plan for \"myschema\".\"orders\""),
        "{stdout}"
    );

    // And the migration touches myschema.orders only.
    let dirs = Dirs::new();
    let report =
        migrated(run_doppel(&dsn, "orders", &["ALTER COLUMN a TYPE bigint"], true, &dirs).await);
    assert_eq!(report.plan.names.schema, "myschema");
    let a_type: String = client
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = 'myschema.orders'::regclass AND attname = 'a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(a_type, "bigint");
    let mine_after = table_state(&client, "myschema.orders").await;
    assert_eq!(mine_after.rows, mine_before.rows);
    assert_eq!(mine_after.digest, mine_before.digest);
    assert_eq!(table_state(&client, "public.orders").await, public_before);
    assert_only_old_table_left(&client, &dirs, &report.plan.names, mine_before.oid).await;
}

// ---------------------------------------------------------------------------------------------
// 8. Cost classification in the plan
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_plan_says_direct_or_shadow() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    create_orders(&client, "public.orders").await;
    client
        .batch_execute(
            "CREATE TABLE public.labels (id int PRIMARY KEY, b varchar(100));
             INSERT INTO public.labels SELECT i, 'l' || i FROM generate_series(1, 50) i;
             CREATE VIEW labels_v AS SELECT id, b FROM public.labels",
        )
        .await
        .unwrap();
    let before = table_state(&client, "public.orders").await;
    let dsn = cluster.conninfo("postgres");

    // Metadata-only: run directly, no shadow in the plan.
    let dirs = Dirs::new();
    let plan =
        planned(run_doppel(&dsn, "public.orders", &["ADD COLUMN x text"], false, &dirs).await);
    assert_eq!(plan.clauses[0].strategy, Strategy::Direct);
    assert_eq!(plan.clauses[0].cost, Rewrite::MetadataOnly);
    assert!(plan.shadow.is_none() && plan.direct.is_some());
    let output = doppel_cli_run(&dsn, "public.orders", &["ADD COLUMN x text"], &dirs).await;
    let (stdout, _) = expect_exit(&output, 0);
    for expected in [
        "strategy per clause:",
        "direct  ADD COLUMN x text   -- metadata-only",
        "ACCESS EXCLUSIVE (reads and writes wait); held for milliseconds",
        "ALTER TABLE \"public\".\"orders\" ADD COLUMN x text;",
        "history: this run will be recorded in \"doppel\".\"migrations\"",
    ] {
        assert!(
            stdout.contains(expected),
            "the plan lacks {expected:?}:\n{stdout}"
        );
    }
    assert!(!stdout.contains("shadow DDL"), "{stdout}");

    // No rewrite, but PostgreSQL refuses it directly because a view uses the column: shadow,
    // and no advice to run it directly.
    let widen = "ALTER COLUMN b TYPE varchar(200)";
    let plan = planned(run_doppel(&dsn, "public.labels", &[widen], false, &dirs).await);
    assert_eq!(plan.clauses[0].cost, Rewrite::MetadataOnly);
    assert_eq!(
        plan.clauses[0].strategy,
        Strategy::Shadow,
        "{:?}",
        plan.clauses
    );
    assert!(
        plan.clauses[0].reason.contains("labels_v"),
        "{:?}",
        plan.clauses
    );
    let output = doppel_cli_run(&dsn, "public.labels", &[widen], &dirs).await;
    let (stdout, _) = expect_exit(&output, 0);
    assert!(stdout.contains("shadow DDL:"), "{stdout}");
    assert!(!stdout.contains("cheaper"), "{stdout}");
    assert!(
        plan.warnings.iter().all(|w| !w.contains("directly")),
        "{:?}",
        plan.warnings
    );

    // A rewrite, with the whole plan printed.
    let alter = "ALTER COLUMN a TYPE bigint";
    let plan = planned(run_doppel(&dsn, "public.orders", &[alter], false, &dirs).await);
    assert_eq!(
        plan.shadow_plan().map(|p| p.rewrite),
        Some(Rewrite::Rewrite)
    );
    let output = doppel_cli_run(&dsn, "public.orders", &[alter], &dirs).await;
    let (stdout, _) = expect_exit(&output, 0);
    let shadow = format!("\"public\".\"_doppel_{}_new_orders\"", before.oid);
    let old = format!("_doppel_{}_old_orders", before.oid);
    for expected in [
        "doppel plan for \"public\".\"orders\"".to_string(),
        format!("shadow  {alter}   -- rewrites the table"),
        format!("ALTER: {alter}"),
        "cost if run directly: full table rewrite".to_string(),
        "preflight: all checks passed".to_string(),
        "shadow DDL:".to_string(),
        format!("CREATE TABLE {shadow}"),
        "\"a\" bigint".to_string(),
        "cutover (one transaction".to_string(),
        format!("ALTER TABLE \"public\".\"orders\" RENAME TO \"{old}\""),
        format!("ALTER TABLE {shadow} RENAME TO \"orders\""),
        "rollback script".to_string(),
        format!("ALTER TABLE \"public\".\"{old}\" RENAME TO \"orders\""),
        "dry run: nothing was changed".to_string(),
    ] {
        assert!(
            stdout.contains(&expected),
            "the plan lacks {expected:?}:\n{stdout}"
        );
    }
    assert!(!stdout.contains("metadata-only"), "{stdout}");

    assert_eq!(table_state(&client, "public.orders").await, before);
    assert_nothing_created(&client, &dirs).await;
}

// ---------------------------------------------------------------------------------------------
// 9. One run per table
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_concurrent_run_on_the_same_table_is_refused() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    create_orders(&client, "public.orders").await;
    let before = table_state(&client, "public.orders").await;
    assert_eq!(ADVISORY_LOCK_CLASS, 6_582_128);

    // Another "run" holds the table's lock in its own session.
    let holder = cluster.connect("postgres").await.unwrap();
    holder
        .query_one(
            "SELECT pg_advisory_lock($1, $2::oid::int)",
            &[&ADVISORY_LOCK_CLASS, &before.oid],
        )
        .await
        .unwrap();

    let dsn = cluster.conninfo("postgres");
    let dirs = Dirs::new();
    let result = run_doppel(
        &dsn,
        "public.orders",
        &["ALTER COLUMN a TYPE bigint"],
        true,
        &dirs,
    )
    .await;
    refusal_of(
        &refusals(result),
        Check::ConcurrentRun,
        &["another doppel run", &before.oid.to_string()],
    );
    assert_eq!(table_state(&client, "public.orders").await, before);
    assert_nothing_created(&client, &dirs).await;

    // Once the lock is released, the same run is accepted.
    holder
        .query_one(
            "SELECT pg_advisory_unlock($1, $2::oid::int)",
            &[&ADVISORY_LOCK_CLASS, &before.oid],
        )
        .await
        .unwrap();
    planned(
        run_doppel(
            &dsn,
            "public.orders",
            &["ALTER COLUMN a TYPE bigint"],
            false,
            &dirs,
        )
        .await,
    );
    assert_nothing_created(&client, &dirs).await;
}

// ---------------------------------------------------------------------------------------------
// 10. USING expressions
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn using_clause_transforms_values_as_written() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    create_orders(&client, "public.orders").await;
    let before = table_state(&client, "public.orders").await;

    let dirs = Dirs::new();
    let report = migrated(
        run_doppel(
            &cluster.conninfo("postgres"),
            "public.orders",
            &["ALTER COLUMN amount TYPE int USING round(amount * 100)::int"],
            true,
            &dirs,
        )
        .await,
    );
    assert_eq!(report.copy.rows, 300);
    let names = &report.plan.names;

    let amount_type: String = client
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = 'public.orders'::regclass AND attname = 'amount'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(amount_type, "integer");
    let row = client
        .query_one(
            &format!(
                "SELECT count(*),
                        count(*) FILTER (WHERE n.amount IS NOT DISTINCT FROM round(o.amount * 100)::int),
                        count(*) FILTER (WHERE n.amount IS NULL),
                        count(*) FILTER (WHERE (n.id, n.a, n.note) IS DISTINCT FROM (o.id, o.a, o.note)),
                        (SELECT amount FROM public.orders WHERE id = 7)
                 FROM public.orders n FULL JOIN {} o ON o.id = n.id",
                names.old_qualified()
            ),
            &[],
        )
        .await
        .unwrap();
    let (rows, transformed, nulls, other_changes, seven): (i64, i64, i64, i64, Option<i32>) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(rows, 300);
    assert_eq!(
        transformed, 300,
        "rows not transformed by the USING expression"
    );
    assert_eq!(nulls, 30, "NULL amounts should stay NULL");
    assert_eq!(other_changes, 0, "other columns changed");
    assert_eq!(seven, Some(959), "7 * 1.37 = 9.59 should become 959");

    let kept = table_state(&client, &names.old_qualified()).await;
    assert_eq!(kept.oid, before.oid);
    assert_eq!(kept.digest, before.digest);
    assert_only_old_table_left(&client, &dirs, names, before.oid).await;
}

// ---------------------------------------------------------------------------------------------
// The dry run of a table with an identity column (the shadow's sequence does not exist yet)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_of_a_table_with_an_identity_column_prints_the_plan() {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE tickets (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v int);
             INSERT INTO tickets (v) SELECT i FROM generate_series(1, 200) i;",
        )
        .await
        .unwrap();
    let before = table_state(&client, "public.tickets").await;
    let dirs = Dirs::new();
    let output = doppel_cli_run(
        &cluster.conninfo("postgres"),
        "public.tickets",
        &["ALTER COLUMN v TYPE bigint"],
        &dirs,
    )
    .await;
    let (stdout, _) = expect_exit(&output, 0);
    assert!(stdout.contains("shadow DDL:"), "{stdout}");
    assert!(stdout.contains("ALTER SEQUENCE"), "{stdout}");
    assert_eq!(table_state(&client, "public.tickets").await, before);
    assert_nothing_created(&client, &dirs).await;
}
