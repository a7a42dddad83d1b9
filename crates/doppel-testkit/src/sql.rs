//! One-line queries for tests: each panics with the statement and the server's error when
//! the statement fails, so a test reads as its assertions.

use tokio_postgres::Client;

/// The first column of the first row of `sql` as an `i64` (a `count(*)`, a `bigint`).
///
/// # Panics
/// If the query fails or returns no row; the message names the query.
pub async fn scalar(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// The first column of the first row of `sql` as text (`None` for NULL).
///
/// # Panics
/// If the query fails or returns no row; the message names the query.
pub async fn text(client: &Client, sql: &str) -> Option<String> {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// The OID of relation `name` (as SQL writes it, e.g. `public.t`).
///
/// # Panics
/// If the relation does not exist.
pub async fn oid_of(client: &Client, name: &str) -> u32 {
    client
        .query_one("SELECT to_regclass($1)::oid", &[&name])
        .await
        .unwrap_or_else(|e| panic!("the OID of {name}: {e}"))
        .get::<_, Option<u32>>(0)
        .unwrap_or_else(|| panic!("{name} does not exist"))
}

/// The SQLSTATE of the error `sql` fails with.
///
/// # Panics
/// If `sql` succeeds, or fails without a server error (a lost connection).
pub async fn fails(client: &Client, sql: &str) -> String {
    match client.batch_execute(sql).await {
        Ok(()) => panic!("expected {sql} to fail"),
        Err(e) => e
            .as_db_error()
            .map(|d| d.code().code().to_string())
            .unwrap_or_else(|| panic!("{sql}: {e}")),
    }
}
