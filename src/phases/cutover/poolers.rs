//! PgBouncer `RECONNECT` right after the cutover commits (`--pgbouncer-admin`, docs/design.md
//! §4.6): PgBouncer closes each server connection of the database as soon as it is released
//! and opens new ones on demand, so the statements prepared on the old server connections
//! (which would fail with 0A000 on a changed result type or row type) go with them.

use crate::conninfo::{self, ConnInfo};

/// Sends `RECONNECT <database>` on the admin console of each PgBouncer in `admins`. Returns
/// what was done for each (`RECONNECT shop sent to pgbouncer@10.0.0.5:6432/pgbouncer`, or
/// why it failed); failures are also logged as warnings (the cutover has committed, the run
/// goes on).
pub(super) async fn reconnect(admins: &[ConnInfo], database: &str) -> Vec<String> {
    let mut done = Vec::new();
    for admin in admins {
        let line = match reconnect_one(admin, database).await {
            Ok(()) => format!("RECONNECT {database} sent to {}", admin.describe()),
            Err(e) => {
                let line = format!(
                    "RECONNECT {database} on {} failed ({e:#}): pooled server connections keep their prepared statements; run `RECONNECT {database}` on that PgBouncer's admin console, or recycle the application's connections",
                    admin.describe()
                );
                tracing::warn!("{line}");
                line
            }
        };
        done.push(line);
    }
    done
}

/// One admin console: connects and sends `RECONNECT <database>` (simple query protocol, the
/// only one the console speaks).
///
/// Errors: a database name the console cannot take as a word, the connection or the command
/// failed (an older PgBouncer without `RECONNECT`, a user not in `admin_users`).
async fn reconnect_one(admin: &ConnInfo, database: &str) -> anyhow::Result<()> {
    if database.is_empty()
        || !database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        anyhow::bail!(
            "the database name {database:?} is not a plain word PgBouncer's admin console accepts"
        );
    }
    let client = conninfo::connect(admin).await?;
    client
        .simple_query(&format!("RECONNECT {database}"))
        .await?;
    Ok(())
}
