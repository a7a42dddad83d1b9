//! The role (docs/design.md §1.1): REPLICATION (or SUPERUSER, or a managed service's role
//! that grants it) for the replication connection; ownership of the table (or membership in
//! its owner's role) for the DDL; CREATE on the database for the publication; TEMPORARY on
//! the database for the preflight clone; CREATE on the table's schema for the shadow. Each
//! refusal names the exact statement that grants what is missing.

use anyhow::Result;
use tokio_postgres::Client;

use super::server::Server;
use crate::failure::{Check, Refusal};
use crate::model::catalog::Table;
use crate::sql::ident;

/// Provider roles that give their members the replication privilege on managed services,
/// as their documentation says: Amazon RDS and Aurora (`rds_replication`).
pub const REPLICATION_ROLES: &[&str] = &["rds_replication"];

/// Provider administration roles and how their members turn on replication for a role:
/// Cloud SQL (`cloudsqlsuperuser` members may `ALTER ROLE .. REPLICATION`), Azure Database
/// for PostgreSQL flexible server (`azure_pg_admin`: the same).
const ADMIN_ROLES: &[(&str, &str)] = &[
    (
        "cloudsqlsuperuser",
        "Cloud SQL: as a member of cloudsqlsuperuser (e.g. the postgres user)",
    ),
    (
        "azure_pg_admin",
        "Azure Database for PostgreSQL: as a member of azure_pg_admin (the administrator)",
    ),
];

/// What the current role is and may do, read in one query by [`read`].
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Member of a role in [`REPLICATION_ROLES`] (its name), when it is.
    pub provider_replication: Option<String>,
    /// [`REPLICATION_ROLES`] that exist on this server (a managed service's).
    pub provider_roles: Vec<String>,
    /// Administration roles of [`ADMIN_ROLES`] that exist on this server.
    pub admin_roles: Vec<String>,
    /// `current_database()`.
    pub database: String,
    /// CREATE on the current database.
    pub database_create: bool,
    /// TEMPORARY on the current database.
    pub temp: bool,
}

/// Reads [`Grants`] (`pg_roles`, `pg_has_role`, `has_database_privilege`).
///
/// Errors: the query fails.
pub async fn read(client: &Client) -> Result<Grants> {
    let provider: Vec<&str> = REPLICATION_ROLES.to_vec();
    let admin: Vec<&str> = ADMIN_ROLES.iter().map(|(r, _)| *r).collect();
    let row = client
        .query_one(
            "SELECT (SELECT min(rolname::text) FROM pg_roles
                     WHERE rolname = ANY($1) AND pg_has_role(current_user, oid, 'MEMBER')),
                    ARRAY(SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1) ORDER BY 1),
                    ARRAY(SELECT rolname::text FROM pg_roles WHERE rolname = ANY($2) ORDER BY 1),
                    current_database()::text,
                    has_database_privilege(current_database(), 'CREATE'),
                    has_database_privilege(current_database(), 'TEMPORARY')",
            &[&provider, &admin],
        )
        .await?;
    Ok(Grants {
        provider_replication: row.get(0),
        provider_roles: row.get(1),
        admin_roles: row.get(2),
        database: row.get(3),
        database_create: row.get(4),
        temp: row.get(5),
    })
}

/// [`Check::ReplicationPrivilege`]: the current role needs REPLICATION or SUPERUSER
/// (`pg_roles`, read by [`super::server::read`]), or membership in a provider role of
/// [`REPLICATION_ROLES`], to open a logical replication connection. The fix names the
/// statement, and the provider's way where a provider's roles are visible.
pub fn replication(server: &Server, grants: &Grants) -> Option<Refusal> {
    if server.superuser || server.replication || grants.provider_replication.is_some() {
        return None;
    }
    let user = ident(&server.user);
    let mut fix = format!("ALTER ROLE {user} REPLICATION;");
    for role in &grants.provider_roles {
        fix = format!("GRANT {} TO {user};", ident(role));
    }
    for (role, how) in ADMIN_ROLES {
        if grants.admin_roles.iter().any(|r| r == role) {
            fix.push_str(&format!(" ({how})"));
        }
    }
    Some(Refusal::new(
        Check::ReplicationPrivilege,
        format!(
            "role {} has neither REPLICATION nor SUPERUSER{} (doppel opens a logical replication connection)",
            server.user,
            if grants.provider_roles.is_empty() {
                String::new()
            } else {
                format!(" nor membership in {}", grants.provider_roles.join(", "))
            }
        ),
        fix,
    ))
}

/// [`Check::DatabaseCreate`] and [`Check::TempPrivilege`]: CREATE on the database (the
/// publication) and TEMPORARY (the preflight clone).
pub fn database(server: &Server, grants: &Grants) -> Vec<Refusal> {
    let (db, user) = (ident(&grants.database), ident(&server.user));
    let mut refusals = Vec::new();
    if !grants.database_create {
        refusals.push(Refusal::new(
            Check::DatabaseCreate,
            format!(
                "role {} lacks CREATE on database {} (doppel creates its publication there)",
                server.user, grants.database
            ),
            format!("GRANT CREATE ON DATABASE {db} TO {user};"),
        ));
    }
    if !grants.temp {
        refusals.push(Refusal::new(
            Check::TempPrivilege,
            format!(
                "role {} lacks TEMPORARY on database {} (preflight tries the ALTER on an empty clone in pg_temp)",
                server.user, grants.database
            ),
            format!("GRANT TEMPORARY ON DATABASE {db} TO {user};"),
        ));
    }
    refusals
}

/// [`Check::Ownership`] alone (of [`table`]'s checks): what a run without a shadow table
/// needs, since ALTER TABLE on `t` requires its owner.
///
/// Errors: the query fails.
pub async fn ownership(client: &Client, t: &Table) -> Result<Vec<Refusal>> {
    let mut refusals = table(client, t).await?;
    refusals.retain(|r| r.check == Check::Ownership);
    Ok(refusals)
}

/// [`Check::Ownership`]: the current user must own `t` or be a member of its owner's role
/// (`pg_has_role(current_user, pg_class.relowner, 'USAGE')`); [`Check::SchemaCreate`]: it
/// needs CREATE on `t`'s schema for the shadow table, and so does `t`'s owner, to whom the
/// shadow is given (`ALTER TABLE .. OWNER TO` requires it of the new owner).
///
/// Errors: the query fails.
pub async fn table(client: &Client, t: &Table) -> Result<Vec<Refusal>> {
    let row = client
        .query_one(
            "SELECT pg_has_role(current_user, relowner, 'USAGE'),
                    has_schema_privilege(relnamespace, 'CREATE'), current_user::text,
                    has_schema_privilege(relowner, relnamespace, 'CREATE')
             FROM pg_class WHERE oid = $1",
            &[&t.oid],
        )
        .await?;
    let (owner_ok, schema_ok, user): (bool, bool, String) = (row.get(0), row.get(1), row.get(2));
    let owner_schema_ok: bool = row.get(3);
    let mut refusals = Vec::new();
    if !owner_ok {
        refusals.push(Refusal::new(
            Check::Ownership,
            format!(
                "role {user} is not the owner of {} (owner: {}) nor a member of its role",
                t.qualified(),
                t.owner
            ),
            format!("GRANT {} TO {};", ident(&t.owner), ident(&user)),
        ));
    }
    if !schema_ok {
        refusals.push(Refusal::new(
            Check::SchemaCreate,
            format!(
                "role {user} lacks CREATE on schema {} (doppel creates the shadow table there)",
                t.schema
            ),
            format!(
                "GRANT CREATE ON SCHEMA {} TO {};",
                ident(&t.schema),
                ident(&user)
            ),
        ));
    }
    if !owner_schema_ok && t.owner != user {
        refusals.push(Refusal::new(
            Check::SchemaCreate,
            format!(
                "the owner of {}, {}, lacks CREATE on schema {} (the shadow table is given to the owner, which ALTER TABLE .. OWNER TO allows only then)",
                t.qualified(),
                t.owner,
                t.schema
            ),
            format!("GRANT CREATE ON SCHEMA {} TO {};", ident(&t.schema), ident(&t.owner)),
        ));
    }
    Ok(refusals)
}
