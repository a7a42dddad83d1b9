//! What a doppel run creates on the server, found by its names (docs/design.md): the shadow
//! table `_doppel_<oid>_new_<table>` (and every other relation named `_doppel_…`), the
//! replication slot and the publication. Tests use these to follow a run from outside and
//! to check that nothing is left behind.

use std::time::Duration;

use tokio_postgres::Client;

use crate::poll::wait_until_async;
use crate::sql::scalar;

/// The shadow of `table` (an unqualified name on the search path), as `regclass` text.
///
/// # Panics
/// If there is no such shadow (or no such table).
pub async fn shadow_name(client: &Client, table: &str) -> String {
    client
        .query_one(
            "SELECT c.oid::regclass::text FROM pg_class c
             WHERE c.relname = '_doppel_' || $1::text::regclass::oid || '_new_' || $1::text",
            &[&table],
        )
        .await
        .unwrap_or_else(|e| panic!("the shadow of {table}: {e}"))
        .get(0)
}

/// Rows in the shadow of `table`, or -1 while it does not exist.
pub async fn shadow_rows(client: &Client, table: &str) -> i64 {
    let shadow: Option<String> = client
        .query_opt(
            "SELECT format('%I', relname) FROM pg_class
             WHERE relname LIKE '\\_doppel\\_%\\_new\\_' || $1",
            &[&table],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    match shadow {
        Some(name) => client
            .query_one(&format!("SELECT count(*) FROM {name}"), &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(-1),
        None => -1,
    }
}

/// Waits (up to 60 s) until a run is copying `table`: its replication slot is active and
/// its shadow holds at least one copied chunk.
///
/// # Panics
/// If that does not happen within 60 s.
pub async fn wait_copying(client: &Client, table: &str) {
    let shadow_with_rows = format!(
        "SELECT count(*) FROM pg_class
         WHERE relname LIKE '\\_doppel\\_%\\_new\\_{table}' AND pg_relation_size(oid) > 0"
    );
    let copying = wait_until_async(Duration::from_secs(60), || async {
        scalar(
            client,
            "SELECT count(*) FROM pg_replication_slots WHERE active AND slot_type = 'logical'",
        )
        .await
            == 1
            && scalar(client, &shadow_with_rows).await == 1
    })
    .await;
    assert!(copying, "the run reached the backfill of {table}");
}

/// Asserts nothing doppel creates on the server is left: no logical replication slot (a
/// standby's physical slot is not doppel's; waited for up
/// to 15 s: a temporary slot goes with its session, which ends just after the run), no
/// publication, no relation named `_doppel_…` (shadow, its indexes, a kept old table).
///
/// # Panics
/// If something is left.
pub async fn assert_no_doppel_objects(client: &Client) {
    let gone = wait_until_async(Duration::from_secs(15), || async {
        scalar(
            client,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'",
        )
        .await
            == 0
    })
    .await;
    assert!(gone, "no slot left");
    assert_eq!(
        scalar(client, "SELECT count(*) FROM pg_publication").await,
        0,
        "no publication left"
    );
    assert_eq!(
        scalar(
            client,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_doppel\\_%'"
        )
        .await,
        0,
        "no shadow left"
    );
}
