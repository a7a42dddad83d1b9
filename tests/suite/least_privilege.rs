//! Least privilege, against real servers: a role that is not a superuser but has REPLICATION,
//! membership in the table owner's role, CREATE on the database and on the schema (and the
//! default TEMPORARY) runs a whole migration with dependents, its cutover and its rollback
//! script; each missing privilege is refused with the statement that grants it, and nothing
//! is created; a managed service's replication role (`rds_replication`) is recognised.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use doppel_testkit::cluster::LocalCluster;

/// The application's schema, owned by `app` (not a superuser): a parent table, `shop.t`
/// with a foreign key to it, a child table referencing `shop.t`, a view and a trigger on it.
/// `shop` itself belongs to the superuser; `app` may create in it.
const SCHEMA: &str = "
    CREATE ROLE app NOLOGIN;
    CREATE SCHEMA shop;
    GRANT USAGE, CREATE ON SCHEMA shop TO app;
    SET ROLE app;
    CREATE TABLE shop.parent (id int PRIMARY KEY);
    INSERT INTO shop.parent VALUES (1), (2);
    CREATE TABLE shop.t (id int PRIMARY KEY, parent_id int REFERENCES shop.parent, v int);
    INSERT INTO shop.t SELECT i, 1 + i % 2, i FROM generate_series(1, 500) i;
    CREATE TABLE shop.child (id int PRIMARY KEY, t_id int REFERENCES shop.t);
    INSERT INTO shop.child VALUES (1, 1);
    CREATE VIEW shop.v_t AS SELECT id, v FROM shop.t;
    CREATE FUNCTION shop.touch() RETURNS trigger LANGUAGE plpgsql AS
      $$BEGIN NEW.v := NEW.v + 0; RETURN NEW; END$$;
    CREATE TRIGGER t_touch BEFORE UPDATE ON shop.t FOR EACH ROW EXECUTE FUNCTION shop.touch();
    RESET ROLE;
";

/// Creates login role `name` with every privilege doppel needs except those in `without`
/// (`replication`, `member`, `database`, `temp`, `schema`).
async fn create_role(client: &tokio_postgres::Client, name: &str, without: &[&str]) {
    let has = |p: &str| !without.contains(&p);
    let mut sql = format!(
        "CREATE ROLE {name} LOGIN {};",
        if has("replication") {
            "REPLICATION"
        } else {
            ""
        }
    );
    if has("member") {
        sql.push_str(&format!("GRANT app TO {name};"));
    }
    if has("database") {
        sql.push_str(&format!("GRANT CREATE ON DATABASE postgres TO {name};"));
    }
    if has("temp") {
        sql.push_str(&format!("GRANT TEMPORARY ON DATABASE postgres TO {name};"));
    }
    sql.push_str(&format!("GRANT USAGE ON SCHEMA shop TO {name};"));
    if has("schema") {
        sql.push_str(&format!("GRANT CREATE ON SCHEMA shop TO {name};"));
    }
    client.batch_execute(&sql).await.unwrap();
}

/// `doppel run` on `shop.t` as `user` (`ALTER COLUMN v TYPE bigint`).
fn doppel_run(cluster: &LocalCluster, user: &str, execute: bool, dir: &Path) -> Output {
    let dsn = format!(
        "host=127.0.0.1 port={} user={user} dbname=postgres",
        cluster.port()
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_doppel"));
    cmd.args(["run", "--dsn", &dsn, "--table", "shop.t"])
        .args([
            "--alter",
            "ALTER COLUMN v TYPE bigint",
            "--progress",
            "lines",
        ])
        .arg("--rollback-dir")
        .arg(dir)
        .arg("--work-dir")
        .arg(dir);
    if execute {
        cmd.arg("--execute");
    }
    cmd.env_remove("PGSSLMODE").env_remove("PGPASSFILE");
    cmd.output().expect("run doppel")
}

async fn cluster() -> (LocalCluster, tokio_postgres::Client) {
    let cluster = common::cluster().await;
    let client = cluster.connect("postgres").await.unwrap();
    client
        .batch_execute("REVOKE TEMPORARY ON DATABASE postgres FROM PUBLIC")
        .await
        .unwrap();
    client.batch_execute(SCHEMA).await.unwrap();
    (cluster, client)
}

async fn v_type(client: &tokio_postgres::Client) -> String {
    client
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = 'shop.t'::regclass AND attname = 'v'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The least-privilege role migrates `shop.t` (the view, the trigger, the foreign keys both
/// ways moved) and, as the same role, runs the rollback script doppel wrote with psql.
#[tokio::test]
async fn a_least_privilege_role_migrates_with_dependents_and_rolls_back() {
    let (cluster, client) = cluster().await;
    create_role(&client, "migrator", &[]).await;
    let super_: bool = client
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = 'migrator'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!super_);
    let dir = tempfile::tempdir().unwrap();
    let out = doppel_run(&cluster, "migrator", true, dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v_type(&client).await, "bigint");
    // The dependents work on the new table.
    client
        .batch_execute(
            "UPDATE shop.t SET v = v + 1 WHERE id = 1;
             INSERT INTO shop.child VALUES (2, 2);",
        )
        .await
        .unwrap();
    let view: i64 = client
        .query_one("SELECT count(*) FROM shop.v_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(view, 500);
    let bad_child = client
        .batch_execute("INSERT INTO shop.child VALUES (3, 999999)")
        .await;
    assert!(bad_child.is_err(), "the inbound foreign key still holds");

    let stdout = String::from_utf8_lossy(&out.stdout);
    let script = stdout
        .lines()
        .find_map(|l| l.strip_prefix("rollback script: "))
        .expect("the report names the rollback script");
    let psql = cluster
        .command("psql")
        .env("PGUSER", "migrator")
        // force=1: the rows written above on the new table are given up by the rollback.
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "force=1",
            "-f",
            "-",
        ])
        .stdin(std::fs::File::open(script).unwrap())
        .output()
        .unwrap();
    assert!(
        psql.status.success(),
        "the rollback script as migrator: {}",
        String::from_utf8_lossy(&psql.stderr)
    );
    assert_eq!(v_type(&client).await, "integer");
    let view: i64 = client
        .query_one("SELECT count(*) FROM shop.v_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(view, 500);
}

/// Each missing privilege: exit 2, the refusal names the statement that grants it, and
/// nothing was created (the run was asked to execute).
#[tokio::test]
async fn each_missing_privilege_is_refused_with_its_grant() {
    let (cluster, client) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    for (role, missing, grant) in [
        (
            "m_repl",
            "replication",
            r#"ALTER ROLE "m_repl" REPLICATION;"#,
        ),
        ("m_member", "member", r#"GRANT "app" TO "m_member";"#),
        (
            "m_db",
            "database",
            r#"GRANT CREATE ON DATABASE "postgres" TO "m_db";"#,
        ),
        (
            "m_temp",
            "temp",
            r#"GRANT TEMPORARY ON DATABASE "postgres" TO "m_temp";"#,
        ),
        (
            "m_schema",
            "schema",
            r#"GRANT CREATE ON SCHEMA "shop" TO "m_schema";"#,
        ),
    ] {
        create_role(&client, role, &[missing]).await;
        if missing == "schema" {
            // Else m_schema inherits CREATE on shop through app.
            client
                .batch_execute("REVOKE CREATE ON SCHEMA shop FROM app")
                .await
                .unwrap();
        }
        let out = doppel_run(&cluster, role, true, dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{role}: {stderr}");
        assert!(stderr.contains(grant), "{role}: {stderr}");
        common::assert_no_doppel_objects(&client).await;
        assert_eq!(v_type(&client).await, "integer");
    }
}

/// A role without REPLICATION but a member of `rds_replication` (Amazon RDS's provider
/// role) passes preflight's replication check; without the membership, the refusal says to
/// grant that role. (This server is not RDS, so the role grants nothing here: the run then
/// stops at the replication connection it opens before creating anything, with the server's
/// own answer.)
#[tokio::test]
async fn a_provider_replication_role_is_recognised() {
    let (cluster, client) = cluster().await;
    client
        .batch_execute("CREATE ROLE rds_replication NOLOGIN")
        .await
        .unwrap();
    create_role(&client, "m_rds", &["replication"]).await;
    let dir = tempfile::tempdir().unwrap();
    let out = doppel_run(&cluster, "m_rds", false, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(r#"GRANT "rds_replication" TO "m_rds";"#),
        "{stderr}"
    );
    client
        .batch_execute("GRANT rds_replication TO m_rds")
        .await
        .unwrap();
    let out = doppel_run(&cluster, "m_rds", true, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("preflight refused"), "{stderr}");
    // "must be superuser or replication role to start walsender" (14-15), "permission
    // denied to start WAL sender" (16+): SQLSTATE 42501 either way.
    assert!(
        (stderr.contains("FATAL 42501") && stderr.to_lowercase().contains("wal sender"))
            || stderr.contains("walsender"),
        "vanilla PostgreSQL does not honour the role: {stderr}"
    );
    common::assert_no_doppel_objects(&client).await;
}
