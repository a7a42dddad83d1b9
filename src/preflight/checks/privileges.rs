//! The role: REPLICATION (or SUPERUSER) for the replication connection, and ownership of the
//! table (or membership in its owner's role) for the DDL (docs/design.md §1.1).

use anyhow::Result;
use tokio_postgres::Client;

use super::server::Server;
use crate::failure::{Check, Refusal};
use crate::model::catalog::Table;
use crate::sql::ident;

/// [`Check::ReplicationPrivilege`]: the current role needs REPLICATION or SUPERUSER
/// (`pg_roles`, read by [`super::server::read`]) to open a logical replication connection.
pub fn replication(server: &Server) -> Option<Refusal> {
    (!server.superuser && !server.replication).then(|| {
        Refusal::new(
            Check::ReplicationPrivilege,
            format!(
                "role {} has neither REPLICATION nor SUPERUSER (doppel opens a logical replication connection)",
                server.user
            ),
            format!("grant it with ALTER ROLE {} REPLICATION", ident(&server.user)),
        )
    })
}

/// [`Check::Ownership`]: the current user must own `t` or be a member of its owner's role
/// (`pg_has_role(current_user, pg_class.relowner, 'USAGE')`).
///
/// Errors: the query fails.
pub async fn ownership(client: &Client, t: &Table) -> Result<Option<Refusal>> {
    let owner_ok: bool = client
        .query_one(
            "SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class WHERE oid = $1",
            &[&t.oid],
        )
        .await?
        .get(0);
    Ok((!owner_ok).then(|| {
        Refusal::new(
            Check::Ownership,
            format!(
                "the current user is not the owner of {} (owner: {}) nor a member of its role",
                t.qualified(),
                t.owner
            ),
            format!(
                "run doppel as the owner or grant its role (GRANT {} TO <doppel user>)",
                ident(&t.owner)
            ),
        )
    }))
}
