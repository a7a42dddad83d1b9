//! Commands in command mode, over the simple-query protocol: any query
//! ([`simple_query`]), `IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`, and the text of the
//! replication commands with their quoting.

use postgres_protocol::message::{backend, frontend};
use tokio_postgres::fallible_iterator::FallibleIterator;

use super::conn::{Conn, Frame, unexpected};
use super::error::{ReplicationError, protocol_err, server_error};
use crate::lsn::Lsn;

/// Quotes an identifier for a replication command: `"name"` with embedded `"` doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string constant for the replication command grammar, which only knows `'...'`
/// with embedded `'` doubled (backslashes are not escapes there).
fn quote_repl_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

pub(super) fn start_replication_sql(
    slot: &str,
    start: Lsn,
    publication: &str,
    messages: bool,
    origin_none: bool,
) -> String {
    let mut options = format!(
        "proto_version '1', publication_names {}",
        quote_repl_literal(&quote_ident(publication))
    );
    if messages {
        options.push_str(", messages 'true'");
    }
    if origin_none {
        options.push_str(", origin 'none'");
    }
    format!(
        "START_REPLICATION SLOT {} LOGICAL {start} ({options})",
        quote_ident(slot)
    )
}

fn create_slot_sql(name: &str, temporary: bool) -> String {
    format!(
        "CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput EXPORT_SNAPSHOT",
        quote_ident(name),
        if temporary { "TEMPORARY " } else { "" }
    )
}

/// The option-list syntax (PostgreSQL 15+), needed for `FAILOVER` (17+).
fn create_failover_slot_sql(name: &str) -> String {
    format!(
        "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER true)",
        quote_ident(name)
    )
}

fn data_row(body: &backend::DataRowBody) -> Result<Vec<Option<String>>, ReplicationError> {
    let buf = body.buffer();
    let mut ranges = body.ranges();
    let mut row = Vec::new();
    while let Some(range) = ranges.next().map_err(protocol_err)? {
        row.push(match range {
            None => None,
            Some(range) => Some(
                std::str::from_utf8(&buf[range])
                    .map_err(|_| {
                        ReplicationError::Protocol("column value is not valid UTF-8".into())
                    })?
                    .to_string(),
            ),
        });
    }
    Ok(row)
}

/// Result of `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's unique system identifier, a decimal `u64` as text (kept as text).
    pub system_id: String,
    /// Current timeline ID.
    pub timeline: u32,
    /// Current WAL flush location.
    pub xlogpos: Lsn,
    /// Database connected to; `None` for a physical replication connection.
    pub dbname: Option<String>,
}

/// Result of `CREATE_REPLICATION_SLOT ... LOGICAL pgoutput EXPORT_SNAPSHOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// Name of the slot, as the server reports it.
    pub slot_name: String,
    /// WAL position at which the slot became consistent: the earliest LSN streaming from
    /// this slot can start at, and the point the exported snapshot corresponds to.
    pub consistent_point: Lsn,
    /// Exported snapshot identifier for `SET TRANSACTION SNAPSHOT '<name>'` in another
    /// session. It is valid only until the next command on this replication connection (or
    /// until the connection closes), so import it before calling anything else on the client.
    pub snapshot_name: Option<String>,
    /// Output plugin of the slot (always `pgoutput` here).
    pub output_plugin: String,
}

/// Runs `sql` with the simple-query protocol on `conn` (see
/// `ReplicationClient::simple_query`, which documents the result and the errors).
pub(super) async fn simple_query(
    conn: &mut Conn,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
    use backend::Message as M;
    let what = "a simple query";
    frontend::query(sql, &mut conn.write_buf)
        .map_err(|e| ReplicationError::Protocol(format!("cannot send query: {e}")))?;
    conn.flush().await?;

    let mut rows = Vec::new();
    let mut error: Option<ReplicationError> = None;
    loop {
        match conn.expect_frame(what).await? {
            Frame::Message(M::RowDescription(_))
            | Frame::Message(M::CommandComplete(_))
            | Frame::Message(M::EmptyQueryResponse)
            | Frame::Message(M::CopyData(_))
            | Frame::Message(M::CopyDone) => {}
            Frame::Message(M::DataRow(body)) => {
                if error.is_none() {
                    match data_row(&body) {
                        Ok(row) => rows.push(row),
                        Err(e) => error = Some(e),
                    }
                }
            }
            Frame::Message(M::ErrorResponse(body)) => {
                error.get_or_insert(server_error(&body));
            }
            Frame::Message(M::ReadyForQuery(_)) => {
                return match error {
                    Some(e) => Err(e),
                    None => Ok(rows),
                };
            }
            Frame::Message(M::CopyInResponse(_)) => {
                frontend::copy_fail(
                    "COPY FROM STDIN is not supported by doppel's replication client",
                    &mut conn.write_buf,
                )
                .map_err(protocol_err)?;
                conn.flush().await?;
                error.get_or_insert(ReplicationError::Protocol(
                    "simple_query does not support COPY FROM STDIN".into(),
                ));
            }
            Frame::Message(M::CopyOutResponse(_)) => {
                error.get_or_insert(ReplicationError::Protocol(
                    "simple_query does not support COPY TO STDOUT".into(),
                ));
            }
            Frame::CopyBothResponse => {
                // Leave streaming mode at once so the connection stays usable.
                frontend::copy_done(&mut conn.write_buf);
                conn.flush().await?;
                error.get_or_insert(ReplicationError::Protocol(
                    "simple_query cannot run a streaming command; use start_logical_replication"
                        .into(),
                ));
            }
            other => return Err(unexpected(what, &other)),
        }
    }
}

/// Runs `IDENTIFY_SYSTEM` (see `ReplicationClient::identify_system`).
pub(super) async fn identify_system(conn: &mut Conn) -> Result<SystemInfo, ReplicationError> {
    let rows = simple_query(conn, "IDENTIFY_SYSTEM").await?;
    let row = single_row(rows, 4, "IDENTIFY_SYSTEM")?;
    let mut cols = row.into_iter();
    let system_id = required(cols.next(), "IDENTIFY_SYSTEM", "systemid")?;
    let timeline = required(cols.next(), "IDENTIFY_SYSTEM", "timeline")?;
    let timeline = timeline.parse::<u32>().map_err(|_| {
        ReplicationError::Protocol(format!("IDENTIFY_SYSTEM: bad timeline {timeline:?}"))
    })?;
    let xlogpos = parse_lsn(required(cols.next(), "IDENTIFY_SYSTEM", "xlogpos")?)?;
    let dbname = cols.next().flatten();
    Ok(SystemInfo {
        system_id,
        timeline,
        xlogpos,
        dbname,
    })
}

/// Runs `CREATE_REPLICATION_SLOT ... LOGICAL pgoutput EXPORT_SNAPSHOT` (see
/// `ReplicationClient::create_logical_slot`).
pub(super) async fn create_logical_slot(
    conn: &mut Conn,
    name: &str,
    temporary: bool,
    failover: bool,
) -> Result<CreatedSlot, ReplicationError> {
    let what = "CREATE_REPLICATION_SLOT";
    let sql = if failover {
        create_failover_slot_sql(name)
    } else {
        create_slot_sql(name, temporary)
    };
    let rows = simple_query(conn, &sql).await?;
    let row = single_row(rows, 4, what)?;
    let mut cols = row.into_iter();
    let slot_name = required(cols.next(), what, "slot_name")?;
    let consistent_point = parse_lsn(required(cols.next(), what, "consistent_point")?)?;
    let snapshot_name = cols.next().flatten();
    let output_plugin = required(cols.next(), what, "output_plugin")?;
    Ok(CreatedSlot {
        slot_name,
        consistent_point,
        snapshot_name,
        output_plugin,
    })
}

fn single_row(
    rows: Vec<Vec<Option<String>>>,
    min_cols: usize,
    what: &str,
) -> Result<Vec<Option<String>>, ReplicationError> {
    let count = rows.len();
    match <[Vec<Option<String>>; 1]>::try_from(rows) {
        Ok([row]) if row.len() >= min_cols => Ok(row),
        Ok([row]) => Err(ReplicationError::Protocol(format!(
            "{what} returned {} columns, expected {min_cols}",
            row.len()
        ))),
        Err(_) => Err(ReplicationError::Protocol(format!(
            "{what} returned {count} rows, expected 1"
        ))),
    }
}

fn required(
    col: Option<Option<String>>,
    what: &str,
    name: &str,
) -> Result<String, ReplicationError> {
    col.flatten()
        .ok_or_else(|| ReplicationError::Protocol(format!("{what}: column {name} is NULL")))
}

fn parse_lsn(text: String) -> Result<Lsn, ReplicationError> {
    text.parse::<Lsn>()
        .map_err(|e| ReplicationError::Protocol(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_text_quotes_names() {
        assert_eq!(
            create_slot_sql("doppel_slot", true),
            "CREATE_REPLICATION_SLOT \"doppel_slot\" TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
        assert_eq!(
            create_slot_sql("s", false),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
        assert_eq!(
            create_failover_slot_sql("s"),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER true)"
        );
        assert_eq!(
            start_replication_sql("s", Lsn(0x16_B374_D848), "my\"pub's", true, false),
            "START_REPLICATION SLOT \"s\" LOGICAL 16/B374D848 \
             (proto_version '1', publication_names '\"my\"\"pub''s\"', messages 'true')"
        );
        assert_eq!(
            start_replication_sql("s", Lsn(0), "p", false, false),
            "START_REPLICATION SLOT \"s\" LOGICAL 0/0 (proto_version '1', publication_names '\"p\"')"
        );
    }
}
