//! Long-running transactions: warned about, not refused (docs/design.md §1.1). They hold back
//! vacuum and can block the cutover lock.

use anyhow::Result;
use tokio_postgres::Client;

/// One warning per client transaction open longer than 60 s (`pg_stat_activity.xact_start`,
/// this session excluded), oldest first, with its pid, user and the start of its query.
///
/// Errors: the query fails.
pub async fn check(client: &Client) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT pid, extract(epoch FROM now() - xact_start)::bigint, coalesce(usename::text, ''),
                    left(regexp_replace(coalesce(query, ''), '\\s+', ' ', 'g'), 80)
             FROM pg_stat_activity
             WHERE xact_start < now() - interval '60 seconds' AND pid <> pg_backend_pid()
               AND backend_type = 'client backend'
             ORDER BY xact_start",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let (pid, secs, who, query): (i32, i64, String, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            format!(
                "transaction of pid {pid} ({who}) has been open for {secs} s ({query}): it holds back vacuum and can block the cutover lock"
            )
        })
        .collect())
}
