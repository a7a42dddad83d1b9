//! After the commit, outside the transaction (docs/design.md §4.4, last paragraph): the
//! table's own foreign keys validated, materialized views rebuilt on the new table, the
//! children's foreign keys validated. A failure here does not undo the cutover: it is
//! collected, and the run reports it as a warning with what to run (exit status 0).

use tokio_postgres::Client;

use super::Cutover;

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
                let why = e
                    .as_db_error()
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| e.to_string());
                unvalidated.push((name.clone(), why));
            }
        }
        unvalidated
    }
}
