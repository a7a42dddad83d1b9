//! After the commit, outside the transaction (docs/design.md §4.4, last paragraph): the
//! table's own foreign keys validated, materialized views rebuilt on the new table, the
//! children's foreign keys validated. A failure here does not undo the cutover: it is
//! collected, and the run reports it as a warning with what to run (exit status 0); a foreign
//! key that does not validate names its orphan keys.

use tokio_postgres::Client;

use super::Cutover;
use crate::phases::violations;

impl Cutover<'_> {
    /// Runs the script's after-commit steps ([`super::Script::validate`]) in order, each on
    /// its own. Returns those that failed: `(label, server error)`, the label naming the
    /// foreign key or `materialized view "s"."mv"`.
    ///
    /// Never fails: the cutover has committed.
    pub(super) async fn after_commit(&self, client: &Client) -> Vec<(String, String)> {
        let mut unvalidated = Vec::new();
        for (name, sql) in &self.script.validate {
            if let Err(e) = client.batch_execute(sql).await {
                let mut why = e
                    .as_db_error()
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| e.to_string());
                if let Some(orphans) = orphans_of(client, sql, name).await {
                    why.push_str(&format!("; orphan keys: {orphans}"));
                }
                unvalidated.push((name.clone(), why));
            }
        }
        unvalidated
    }
}

/// The orphans of a foreign key whose `ALTER TABLE <t> VALIDATE CONSTRAINT <name>` failed,
/// described; `None` for any other step, or when they cannot be listed.
async fn orphans_of(client: &Client, sql: &str, name: &str) -> Option<String> {
    let table = sql
        .strip_prefix("ALTER TABLE ")?
        .split(" VALIDATE CONSTRAINT ")
        .next()?;
    match violations::orphans(client, table, name, 10).await {
        Ok(Some(o)) => Some(o.describe("row(s)")),
        Ok(None) => None,
        Err(e) => Some(format!("(listing them failed: {e:#})")),
    }
}
