//! Test support for doppel: throwaway PostgreSQL clusters, the oracle writer (a workload
//! mirrored into a twin table), the type matrix, and the helpers doppel's tests share that
//! need nothing of doppel (polling, processes, one-line queries, doppel's objects found by
//! name). Used by doppel's tests, its benchmarks and `doppel demo`; it depends on nothing of
//! doppel.
//!
//! - [`cluster`]: private clusters ([`cluster::LocalCluster`], [`cluster::private`]);
//! - [`workload`]: the oracle writer, table comparison, the type matrix, the ledger of the
//!   expand/contract walk-through ([`workload::ledger`]);
//! - [`poll`]: waiting for a condition ([`poll::wait_until`]);
//! - [`process`]: whether a process lives, which processes mention a path;
//! - [`sql`]: one-line queries that panic with the statement ([`sql::scalar`]);
//! - [`objects`]: a run's shadow, slot and publication, seen from outside.

pub mod cluster;
pub mod objects;
pub mod pgbouncer;
pub mod poll;
pub mod process;
pub mod sql;
pub mod standby;
pub mod tls;
pub mod workload;

/// Settings that make values round-trip exactly as text whatever the database sets (all float
/// digits, ISO dates, PostgreSQL-style intervals): the oracle compares tables by text.
pub const EXACT_OUTPUT_OPTIONS: &str =
    "-c extra_float_digits=3 -c datestyle=ISO -c intervalstyle=postgres";

/// Opens a plain session (no TLS) with [`EXACT_OUTPUT_OPTIONS`] and spawns its connection
/// task.
///
/// Errors: the server's error (authentication, unknown database, ...).
pub async fn connect(config: &tokio_postgres::Config) -> anyhow::Result<tokio_postgres::Client> {
    let mut config = config.clone();
    let options = match config.get_options() {
        Some(existing) if !existing.is_empty() => format!("{existing} {EXACT_OUTPUT_OPTIONS}"),
        _ => EXACT_OUTPUT_OPTIONS.to_string(),
    };
    config.options(&options);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("connection closed: {e}");
        }
    });
    Ok(client)
}
