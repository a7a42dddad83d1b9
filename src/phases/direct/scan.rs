//! A scan: `VALIDATE CONSTRAINT` or `CREATE UNIQUE INDEX CONCURRENTLY` under SHARE UPDATE
//! EXCLUSIVE (docs/design.md §1.10). The application's reads and writes go on; PostgreSQL
//! cannot pause it, so doppel's throttles act only before it starts, and an abort cancels it.
//! No `lock_timeout`: waiting for SHARE UPDATE EXCLUSIVE (or, for a concurrent build, for
//! older transactions) blocks no reader or writer.

use std::time::Instant;

use anyhow::Result;
use tokio_postgres::Client;

use super::{Direct, StepReport};
use crate::failure::{FailureKind, fail, rejected_by_schema};
use crate::phases::violations::{self, Subject};
use crate::plan::{Step, Violation};
use crate::sql::ident;

/// Rows listed when a constraint fails.
const EXAMPLES: i64 = 10;

impl Direct<'_> {
    /// `ALTER TABLE <t> VALIDATE CONSTRAINT <constraint>`.
    ///
    /// Errors: exit 8 naming the offending rows when rows violate it; exit 3 / 7 when
    /// cancelled; otherwise the server's error.
    pub(super) async fn validate(
        &self,
        client: &mut Client,
        step: &Step,
        constraint: &str,
        violation: &Violation,
    ) -> Result<StepReport> {
        let sql = format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {}",
            self.table.qualified(),
            ident(constraint)
        );
        self.scan(client, step, &sql, violation).await
    }

    /// `CREATE UNIQUE INDEX CONCURRENTLY ..`; a failed build leaves an invalid index, which
    /// the caller drops (it is in the step's `creates`).
    ///
    /// Errors: as [`Direct::validate`], the duplicate keys named.
    pub(super) async fn build_index(
        &self,
        client: &mut Client,
        step: &Step,
        sql: &str,
        violation: &Violation,
    ) -> Result<StepReport> {
        self.scan(client, step, sql, violation).await
    }

    async fn scan(
        &self,
        client: &mut Client,
        step: &Step,
        sql: &str,
        violation: &Violation,
    ) -> Result<StepReport> {
        client.batch_execute("SET lock_timeout = 0").await?;
        let started = Instant::now();
        let token = client.cancel_token();
        let never = std::future::pending::<anyhow::Error>();
        let critical = async {
            match self.options.throttle {
                Some(t) => t.critical().await,
                None => never.await,
            }
        };
        let result = tokio::select! {
            r = client.batch_execute(sql) => r,
            _ = self.options.cancel.cancelled() => {
                token.cancel_query(tokio_postgres::NoTls).await.ok();
                return Err(fail(FailureKind::Aborted, format!("interrupted during `{sql}`: cancelled it")));
            }
            e = critical => {
                token.cancel_query(tokio_postgres::NoTls).await.ok();
                return Err(e);
            }
        };
        client.batch_execute("RESET lock_timeout").await.ok();
        match result {
            Ok(()) => Ok(StepReport {
                what: step.what.clone(),
                lock: step.lock,
                attempts: 1,
                lock_wait: Default::default(),
                held: started.elapsed(),
                elapsed: started.elapsed(),
            }),
            Err(e) => Err(self.scan_error(client, sql, e, violation).await),
        }
    }

    /// A failed scan: when rows violate the constraint, exit 8 with the offending rows named.
    async fn scan_error(
        &self,
        client: &Client,
        sql: &str,
        e: tokio_postgres::Error,
        violation: &Violation,
    ) -> anyhow::Error {
        let Some(db) = e.as_db_error().filter(|d| rejected_by_schema(d)) else {
            return anyhow::Error::new(e).context(format!("running `{sql}`"));
        };
        let table = self.table.qualified();
        let subject = Subject {
            table: &table,
            key: &self.table.pk_columns,
        };
        let offenders = match violations::find(client, &subject, violation, EXAMPLES).await {
            Ok(o) => o.describe("offending row(s) or key(s)"),
            Err(e) => format!("(listing them failed: {e:#})"),
        };
        fail(
            FailureKind::Conflict,
            format!(
                "`{sql}` failed: {}{}; offending rows: {offenders}",
                db.message(),
                db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
            ),
        )
    }
}
