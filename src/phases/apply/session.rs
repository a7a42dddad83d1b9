//! An apply session: a connection of its own with the applier's statements prepared on it
//! (prepared statements belong to one connection, so each session of a parallel apply has its
//! own set).

use std::collections::HashMap;

use anyhow::{Context, Result};
use tokio_postgres::{Client, Statement};

use crate::plan::Plan;

/// The applier's statements, prepared on one session.
pub(super) struct Statements {
    pub(super) upsert: Statement,
    pub(super) delete: Statement,
    pub(super) reread: Statement,
    pub(super) reread_missing: Statement,
    /// Partial updates, prepared on first use per set of sent columns.
    pub(super) partial: HashMap<Vec<bool>, Statement>,
}

/// One apply session and its statements.
pub(super) struct Session {
    pub(super) client: Client,
    pub(super) statements: Statements,
}

impl Session {
    /// Prepares the upsert, delete and the two re-reads on `client`.
    ///
    /// Errors: a statement does not prepare (the shadow lacks its primary key, the session is
    /// lost).
    pub(super) async fn prepare(client: Client, plan: &Plan) -> Result<Session> {
        let shadow = plan.names.shadow_qualified();
        let table = plan.original.qualified();
        let p = &plan.projection;
        let upsert = client
            .prepare(&p.upsert_sql(&shadow))
            .await
            .context("preparing the applier's upsert")?;
        let delete = client
            .prepare(&p.delete_sql(&shadow))
            .await
            .context("preparing the applier's delete")?;
        let reread = client
            .prepare(&p.reread_sql(&table, &shadow))
            .await
            .context("preparing the applier's re-read")?;
        let reread_missing = client
            .prepare(&p.reread_missing_sql(&table, &shadow))
            .await
            .context("preparing the applier's re-read of missing keys")?;
        Ok(Session {
            client,
            statements: Statements {
                upsert,
                delete,
                reread,
                reread_missing,
                partial: HashMap::new(),
            },
        })
    }
}
