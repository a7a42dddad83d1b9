//! Fences: a way to know that the applier has applied every change committed before a point.
//!
//! A fence is a transactional logical message (`pg_logical_emit_message(true, prefix,
//! 'fence:N')`) committed on doppel's own session. Logical decoding emits transactions in
//! commit order, so once the applier has committed the batch that contains fence N, every
//! change committed on the original before the fence's commit is in the shadow. The fence's
//! commit is flushed locally (`synchronous_commit = local`), and walsenders send only flushed
//! WAL, so the fence reaches the stream without waiting for other activity (docs/design.md §4.3:
//! before PostgreSQL 17 a non-transactional message is not flushed by itself).
//!
//! Fence numbers never repeat across sessions, processes or resumes: a fencer numbers from
//! the server's WAL insert position when it starts. Every earlier fence wrote at least one
//! WAL record of its own (dozens of bytes) after its number was taken, so the position has
//! moved past every number an earlier fencer used, and a fence left in the spool by an
//! interrupted run can never be mistaken for a newer one.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use tokio_postgres::Client;

/// Emits numbered fences on one session.
pub struct Fencer {
    client: Client,
    prefix: String,
    next: AtomicU64,
}

impl Fencer {
    /// Uses `client` (a session of its own) for fences with `prefix` (doppel's message prefix),
    /// numbered from the server's current WAL insert position (bytes).
    ///
    /// Errors: the session setting cannot be changed, or the position cannot be read.
    pub async fn new(client: Client, prefix: &str) -> Result<Fencer> {
        client
            .batch_execute("SET synchronous_commit = local")
            .await
            .context("configuring the fence session")?;
        let start: i64 = client
            .query_one(
                "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint",
                &[],
            )
            .await
            .context("reading the WAL position that numbers the fences")?
            .get(0);
        Ok(Fencer {
            client,
            prefix: prefix.to_string(),
            next: AtomicU64::new(start.max(1) as u64),
        })
    }

    /// Commits the next fence and returns its number.
    pub async fn emit(&self) -> Result<u64> {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        self.client
            .execute(
                "SELECT pg_logical_emit_message(true, $1, $2)",
                &[&self.prefix, &format!("fence:{n}")],
            )
            .await
            .context("emitting a fence message")?;
        Ok(n)
    }

    /// Reserves the next fence number for a message another session commits (the cutover
    /// transaction carries one, so the stream marks exactly where the cutover committed);
    /// returns the number and the statement that emits it.
    pub fn reserve(&self) -> (u64, String) {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let sql = format!(
            "SELECT pg_logical_emit_message(true, {}, {})",
            crate::sql::literal(&self.prefix),
            crate::sql::literal(&format!("fence:{n}"))
        );
        (n, sql)
    }

    /// The fence session, for other short statements.
    pub fn client(&self) -> &Client {
        &self.client
    }
}
