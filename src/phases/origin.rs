//! Replication origins for the copy sessions (PostgreSQL 16+, on unless `--no-copy-origin`,
//! issue 17): each copy worker marks its session with a replication origin of its own
//! (`doppel_<table oid>_copy<n>`, `pg_replication_origin_session_setup`), and doppel's stream
//! asks pgoutput for `origin 'none'`. The WAL sender then drops the backfill's inserts into
//! the shadow while decoding, before they reach its reorder buffer, instead of decoding,
//! queueing (and, above `logical_decoding_work_mem`, spilling) every copied row only for
//! pgoutput to discard it at commit because the shadow is not published. The copy sessions write nothing else the
//! stream needs (the shadow and, in a resumable run, the checkpoint tables), so nothing is
//! lost.
//!
//! `origin 'none'` drops *every* change that carries an origin, not only doppel's: changes a
//! subscription (or any other replication tool) applies to the original would be lost too.
//! So the path is taken only when the server has no replication origin but doppel's own and
//! those of other databases' subscriptions, which apply their changes in another database
//! ([`usable`], [`crate::ops::throttle::foreign_origin`]); otherwise, and before PostgreSQL
//! 16 (no `origin` option), and when the role may not use the origin functions (superuser,
//! or EXECUTE granted on them), the copy takes the earlier path and its rows are decoded and
//! discarded as before.
//!
//! An origin created after the check (a subscription set up during the run) would have its
//! changes dropped from the stream too, so while the stream runs with `origin 'none'` the
//! throttle checker looks for one every 100 ms and aborts the run when it finds one (exit 7,
//! [`crate::ops::throttle::ThrottleOptions::origin_guard`]); the verification would also
//! find the rows it left out, but only those written before it.
//!
//! The origins are dropped when the backfill ends ([`drop_all`]), by the run's cleanup on
//! failure, and by `doppel cleanup`.

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::plan::Plan;

/// The first server version with pgoutput's `origin` option.
pub const MIN_SERVER_VERSION: i32 = 160_000;

/// The origin of copy worker `worker` (from 0) of the run on the table of OID `table_oid`.
pub fn name(table_oid: u32, worker: usize) -> String {
    format!("doppel_{table_oid}_copy{worker}")
}

/// The `LIKE` pattern of every copy origin of the run on `table_oid`.
fn pattern(table_oid: u32) -> String {
    format!("doppel\\_{table_oid}\\_copy%")
}

/// Whether the run of `plan` can mark its copy sessions with origins: PostgreSQL 16+, the
/// role may execute the origin functions, and no replication origin other than doppel's
/// exists (a subscription's changes carry an origin and `origin 'none'` would drop them).
/// Errors: a failed catalog query.
pub async fn usable(client: &Client, plan: &Plan) -> Result<bool> {
    if plan.server_version < MIN_SERVER_VERSION {
        return Ok(false);
    }
    let allowed: bool = client
        .query_one(
            "SELECT has_function_privilege('pg_replication_origin_create(text)', 'EXECUTE')
                AND has_function_privilege('pg_replication_origin_session_setup(text)', 'EXECUTE')
                AND has_function_privilege('pg_replication_origin_drop(text)', 'EXECUTE')",
            &[],
        )
        .await
        .context("checking whether the copy can use replication origins")?
        .get(0);
    let foreign = crate::ops::throttle::foreign_origin(client).await?;
    if !allowed {
        tracing::info!(
            "the copy's rows are decoded by the WAL sender: the role may not use replication origins (superuser, or GRANT EXECUTE on pg_replication_origin_create, _session_setup and _drop)"
        );
    } else if let Some(name) = &foreign {
        tracing::info!(
            origin = %name,
            "the copy's rows are decoded by the WAL sender: other replication origins exist (a subscription?), whose changes origin 'none' would drop"
        );
    }
    Ok(allowed && foreign.is_none())
}

/// Marks `session` (copy worker `worker`) with its origin, creating the origin if needed.
/// Errors: the origin cannot be created or set up.
pub async fn set_up_session(session: &Client, table_oid: u32, worker: usize) -> Result<()> {
    let origin = name(table_oid, worker);
    session
        .execute(
            "SELECT pg_replication_origin_create($1::text)
             WHERE pg_replication_origin_oid($1::text) IS NULL",
            &[&origin],
        )
        .await
        .with_context(|| format!("creating the replication origin {origin}"))?;
    session
        .execute(
            "SELECT pg_replication_origin_session_setup($1::text)",
            &[&origin],
        )
        .await
        .with_context(|| format!("setting up the replication origin {origin}"))?;
    Ok(())
}

/// Drops every copy origin of the run on `table_oid`; returns how many were dropped. An origin
/// a session still holds (a copy session whose backend is exiting) is waited for by the
/// server (PostgreSQL 14+). Errors: a failed query.
pub async fn drop_all(client: &Client, table_oid: u32) -> Result<u64> {
    let dropped = client
        .query(
            "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname LIKE $1",
            &[&pattern(table_oid)],
        )
        .await
        .context("dropping the copy's replication origins")?;
    Ok(dropped.len() as u64)
}
