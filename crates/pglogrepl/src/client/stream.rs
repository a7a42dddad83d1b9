//! Streaming: `START_REPLICATION` and the [`ReplicationStream`] in CopyBoth mode, the parsing of
//! its XLogData and keepalive messages and the encoding of standby status updates.

use std::fmt;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::message::{backend, frontend};
use tokio::io::AsyncWriteExt;

use super::commands::start_replication_sql;
use super::conn::{Conn, Frame, describe_frame, unexpected};
use super::error::{ReplicationError, server_error};
use crate::lsn::Lsn;

/// Seconds between the Unix epoch (1970-01-01) and the PostgreSQL epoch (2000-01-01), both UTC.
const PG_EPOCH_OFFSET_SECS: u64 = 946_684_800;

/// One message from the server while streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// A chunk of decoded WAL (`w`): for pgoutput, exactly one pgoutput message.
    XLogData {
        /// WAL position the data belongs to (for pgoutput Begin/Commit, the transaction's
        /// first / end LSN); `0/0` for messages tied to no WAL record, such as pgoutput
        /// Relation and Type messages.
        wal_start: Lsn,
        /// End of WAL on the server. PostgreSQL's logical walsender sends the same value
        /// as `wal_start` here; keepalives carry the real server WAL end.
        wal_end: Lsn,
        /// Server clock at transmission, microseconds since 2000-01-01 00:00 UTC.
        server_time_us: i64,
        /// The raw output plugin payload (first byte is the pgoutput message type, e.g.
        /// `b'B'` Begin, `b'C'` Commit), shared with the read buffer without copying.
        data: Bytes,
    },
    /// A keepalive (`k`).
    PrimaryKeepalive {
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// Server clock at transmission, microseconds since 2000-01-01 00:00 UTC.
        server_time_us: i64,
        /// The server asks for a standby status update as soon as possible (otherwise it
        /// disconnects after `wal_sender_timeout`).
        reply_requested: bool,
    },
}

/// Decodes the payload of one CopyData frame received in logical streaming mode.
fn parse_copy_data(mut data: Bytes) -> Result<ReplicationMessage, ReplicationError> {
    match data.first().copied() {
        Some(b'w') => {
            if data.len() < 25 {
                return Err(ReplicationError::Protocol(format!(
                    "XLogData message of {} bytes is shorter than its 25-byte header",
                    data.len()
                )));
            }
            data.advance(1);
            let wal_start = Lsn(data.get_u64());
            let wal_end = Lsn(data.get_u64());
            let server_time_us = data.get_i64();
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                server_time_us,
                data,
            })
        }
        Some(b'k') => {
            if data.len() != 18 {
                return Err(ReplicationError::Protocol(format!(
                    "primary keepalive message of {} bytes, expected 18",
                    data.len()
                )));
            }
            data.advance(1);
            let wal_end = Lsn(data.get_u64());
            let server_time_us = data.get_i64();
            let reply_requested = data.get_u8() != 0;
            Ok(ReplicationMessage::PrimaryKeepalive {
                wal_end,
                server_time_us,
                reply_requested,
            })
        }
        Some(other) => Err(ReplicationError::Protocol(format!(
            "unknown replication message type {:?} (0x{other:02x})",
            char::from(other)
        ))),
        None => Err(ReplicationError::Protocol("empty CopyData message".into())),
    }
}

/// Appends a CopyData frame holding a standby status update (`r`) to `out`.
fn encode_standby_status(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    client_time_us: i64,
    reply_requested: bool,
    out: &mut BytesMut,
) {
    let mut body = BytesMut::with_capacity(34);
    body.put_u8(b'r');
    body.put_u64(write.0);
    body.put_u64(flush.0);
    body.put_u64(apply.0);
    body.put_i64(client_time_us);
    body.put_u8(u8::from(reply_requested));
    frontend::CopyData::new(body.freeze())
        .expect("a 34-byte body fits a CopyData frame")
        .write(out);
}

/// Microseconds since 2000-01-01 00:00 UTC by the local clock (negative before that).
fn pg_now_us() -> i64 {
    let unix_us = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    };
    unix_us - (PG_EPOCH_OFFSET_SECS as i64) * 1_000_000
}

/// A replication connection in CopyBoth (streaming) mode.
///
/// Obtained from [`ReplicationClient::start_logical_replication`][start].
///
/// [start]: super::ReplicationClient::start_logical_replication
pub struct ReplicationStream {
    conn: Conn,
    backend_pid: i32,
    /// The server sent CopyDone: it will send no more replication messages.
    copy_done_received: bool,
    /// The server closed the socket.
    eof: bool,
}

impl fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("backend_pid", &self.backend_pid)
            .field("copy_done_received", &self.copy_done_received)
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl ReplicationStream {
    /// The stream over `conn`, which the server has just put in CopyBoth mode.
    pub(super) fn new(conn: Conn, backend_pid: i32) -> ReplicationStream {
        ReplicationStream {
            conn,
            backend_pid,
            copy_done_received: false,
            eof: false,
        }
    }

    /// Waits for the next replication message. NoticeResponse/ParameterStatus frames are
    /// consumed (notices are logged). Returns `Ok(None)` once the server has ended the copy
    /// (CopyDone) or closed the connection between messages, and on every call after that.
    ///
    /// Cancel-safe: dropping the future (e.g. when another `tokio::select!` branch wins) never
    /// loses data; partially received frames stay buffered for the next call.
    ///
    /// # Errors
    /// [`ReplicationError::Server`] for an ErrorResponse (e.g. `57P01` when the walsender is
    /// terminated, or a decoding error); [`ReplicationError::Protocol`] for a malformed or
    /// unexpected frame; [`ReplicationError::Io`] on socket failure, including
    /// `UnexpectedEof` when the connection closes in the middle of a frame.
    pub async fn recv(&mut self) -> Result<Option<ReplicationMessage>, ReplicationError> {
        use backend::Message as M;
        if self.copy_done_received || self.eof {
            return Ok(None);
        }
        match self.conn.next_frame().await? {
            None => {
                self.eof = true;
                Ok(None)
            }
            Some(Frame::Message(M::CopyData(body))) => parse_copy_data(body.into_bytes()).map(Some),
            Some(Frame::Message(M::CopyDone)) => {
                self.copy_done_received = true;
                Ok(None)
            }
            Some(Frame::Message(M::ErrorResponse(body))) => Err(server_error(&body)),
            Some(other) => Err(unexpected("logical replication streaming", &other)),
        }
    }

    /// Sends a standby status update (`r`) carrying exactly the given positions: `write`
    /// (received and written), `flush` (durably stored; this is what advances the slot's
    /// `confirmed_flush_lsn` and lets the server recycle WAL) and `apply`, plus the client
    /// clock in microseconds since 2000-01-01 UTC. `reply_requested` asks the server to
    /// answer with a keepalive at once.
    ///
    /// If this future is cancelled mid-write, the unsent remainder is kept and goes out
    /// before the next message, so the stream stays well-formed.
    ///
    /// # Errors
    /// [`ReplicationError::Io`] if the socket cannot be written.
    pub async fn send_standby_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), ReplicationError> {
        encode_standby_status(
            write,
            flush,
            apply,
            pg_now_us(),
            reply_requested,
            &mut self.conn.write_buf,
        );
        self.conn.flush().await
    }

    /// Ends streaming cleanly: sends CopyDone, discards the replication messages still in
    /// flight until the server finishes the command (ReadyForQuery), then sends Terminate and
    /// shuts the socket down. The server then ends the session, dropping a TEMPORARY slot
    /// (asynchronously: the slot may still be listed for a moment after this returns).
    /// Positions are not acknowledged here; send a final
    /// [`ReplicationStream::send_standby_status`] first if needed.
    ///
    /// May wait while the server finishes sending a large transaction; wrap it in a timeout
    /// if that matters.
    ///
    /// # Errors
    /// [`ReplicationError::Server`] if the server reports an error while finishing;
    /// [`ReplicationError::Io`] on socket failure (a server that already closed the
    /// connection is not an error).
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        use backend::Message as M;
        if self.eof {
            return Ok(());
        }
        frontend::copy_done(&mut self.conn.write_buf);
        if let Err(e) = self.conn.flush().await {
            return ignore_disconnect(e);
        }
        let mut error = None;
        loop {
            match self.conn.next_frame().await {
                Ok(None) => return error.map_or(Ok(()), Err),
                Ok(Some(Frame::Message(M::ReadyForQuery(_)))) => break,
                Ok(Some(Frame::Message(M::ErrorResponse(body)))) => {
                    error.get_or_insert(server_error(&body));
                }
                Ok(Some(frame)) => {
                    tracing::trace!("discarding {} while closing", describe_frame(&frame));
                }
                Err(e) => return ignore_disconnect(e),
            }
        }
        frontend::terminate(&mut self.conn.write_buf);
        if let Err(e) = self.conn.flush().await {
            ignore_disconnect(e)?;
        }
        if let Err(e) = self.conn.io.shutdown().await {
            ignore_disconnect(e.into())?;
        }
        tracing::debug!(backend_pid = self.backend_pid, "replication stream closed");
        error.map_or(Ok(()), Err)
    }
}

/// Runs `START_REPLICATION` on `conn` (in command mode) and returns the stream once the server
/// enters CopyBoth mode (see `ReplicationClient::start_logical_replication`, which documents
/// the command and the errors).
pub(super) async fn start_logical_replication(
    mut conn: Conn,
    backend_pid: i32,
    slot: &str,
    start: Lsn,
    publication: &str,
    options: super::StartOptions,
) -> Result<ReplicationStream, ReplicationError> {
    use backend::Message as M;
    let what = "START_REPLICATION";
    let sql = start_replication_sql(
        slot,
        start,
        publication,
        options.messages,
        options.origin_none,
    );
    frontend::query(&sql, &mut conn.write_buf)
        .map_err(|e| ReplicationError::Protocol(format!("cannot send {what}: {e}")))?;
    conn.flush().await?;

    let mut error: Option<ReplicationError> = None;
    loop {
        match conn.expect_frame(what).await? {
            Frame::CopyBothResponse => {
                tracing::debug!(slot, %start, publication, "logical replication started");
                return Ok(ReplicationStream::new(conn, backend_pid));
            }
            Frame::Message(M::ErrorResponse(body)) => {
                error.get_or_insert(server_error(&body));
            }
            Frame::Message(M::ReadyForQuery(_)) => {
                return Err(error.unwrap_or_else(|| {
                    ReplicationError::Protocol(
                        "START_REPLICATION finished without entering CopyBoth mode".into(),
                    )
                }));
            }
            Frame::Message(M::CommandComplete(_))
            | Frame::Message(M::RowDescription(_))
            | Frame::Message(M::DataRow(_))
                if error.is_some() => {}
            other => return Err(unexpected(what, &other)),
        }
    }
}

/// Treats "the server already hung up" as success while closing.
fn ignore_disconnect(e: ReplicationError) -> Result<(), ReplicationError> {
    match &e {
        ReplicationError::Io(io_err)
            if matches!(
                io_err.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::UnexpectedEof
            ) =>
        {
            Ok(())
        }
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    fn xlogdata_bytes(start: u64, end: u64, time: i64, payload: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(start);
        b.put_u64(end);
        b.put_i64(time);
        b.put_slice(payload);
        b.freeze()
    }

    #[test]
    fn standby_status_update_encoding() {
        let mut out = BytesMut::new();
        encode_standby_status(
            Lsn(0x16_B374_D848),
            Lsn(0x16_B374_D800),
            Lsn(0x10),
            0x0102_0304_0506_0708,
            true,
            &mut out,
        );
        let mut expected = vec![b'd', 0, 0, 0, 38, b'r'];
        expected.extend_from_slice(&0x16_B374_D848u64.to_be_bytes());
        expected.extend_from_slice(&0x16_B374_D800u64.to_be_bytes());
        expected.extend_from_slice(&0x10u64.to_be_bytes());
        expected.extend_from_slice(&0x0102_0304_0506_0708i64.to_be_bytes());
        expected.push(1);
        assert_eq!(&out[..], &expected[..]);

        out.clear();
        encode_standby_status(Lsn(1), Lsn(2), Lsn(3), -5, false, &mut out);
        assert_eq!(out.len(), 39);
        assert_eq!(out[38], 0);
        assert_eq!(&out[30..38], &(-5i64).to_be_bytes());
    }

    #[test]
    fn parses_xlogdata() {
        let msg = parse_copy_data(xlogdata_bytes(0x100, 0x200, 42, b"Bpayload")).unwrap();
        assert_eq!(
            msg,
            ReplicationMessage::XLogData {
                wal_start: Lsn(0x100),
                wal_end: Lsn(0x200),
                server_time_us: 42,
                data: Bytes::from_static(b"Bpayload"),
            }
        );
        // An empty payload is legal.
        let msg = parse_copy_data(xlogdata_bytes(1, 2, -3, b"")).unwrap();
        assert!(matches!(msg, ReplicationMessage::XLogData { data, .. } if data.is_empty()));
    }

    #[test]
    fn parses_keepalive() {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(0x16_B374_D848);
        b.put_i64(123_456);
        b.put_u8(1);
        assert_eq!(
            parse_copy_data(b.freeze()).unwrap(),
            ReplicationMessage::PrimaryKeepalive {
                wal_end: Lsn(0x16_B374_D848),
                server_time_us: 123_456,
                reply_requested: true,
            }
        );
    }

    #[test]
    fn rejects_malformed_copy_data() {
        assert!(matches!(
            parse_copy_data(Bytes::from_static(b"w1234")),
            Err(ReplicationError::Protocol(_))
        ));
        assert!(matches!(
            parse_copy_data(Bytes::from_static(b"k123")),
            Err(ReplicationError::Protocol(_))
        ));
        assert!(matches!(
            parse_copy_data(Bytes::from_static(b"z")),
            Err(ReplicationError::Protocol(_))
        ));
        assert!(matches!(
            parse_copy_data(Bytes::new()),
            Err(ReplicationError::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn recv_is_cancel_safe() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut stream = ReplicationStream {
            conn: Conn::new(Box::new(client)),
            backend_pid: 0,
            copy_done_received: false,
            eof: false,
        };
        let mut frame = BytesMut::new();
        frontend::CopyData::new(xlogdata_bytes(1, 2, 3, b"Bxyz"))
            .unwrap()
            .write(&mut frame);
        // Half a frame, then a recv that gets cancelled.
        server.write_all(&frame[..10]).await.unwrap();
        let cancelled = tokio::time::timeout(Duration::from_millis(20), stream.recv()).await;
        assert!(cancelled.is_err(), "recv must still be waiting");
        server.write_all(&frame[10..]).await.unwrap();
        let msg = stream.recv().await.unwrap().unwrap();
        assert!(
            matches!(msg, ReplicationMessage::XLogData { ref data, .. } if &data[..] == b"Bxyz")
        );
        // CopyDone ends the stream, for good.
        let mut done = BytesMut::new();
        frontend::copy_done(&mut done);
        server.write_all(&done).await.unwrap();
        assert!(stream.recv().await.unwrap().is_none());
        assert!(stream.recv().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn recv_reports_server_errors_and_skips_notices() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut stream = ReplicationStream {
            conn: Conn::new(Box::new(client)),
            backend_pid: 0,
            copy_done_received: false,
            eof: false,
        };
        let fields = |tag: u8| {
            let mut body = BytesMut::new();
            for (t, v) in [
                (b'S', "FATAL"),
                (b'V', "FATAL"),
                (b'C', "57P01"),
                (b'M', "terminating connection due to administrator command"),
                (b'D', "some detail"),
                (b'H', "some hint"),
            ] {
                body.put_u8(t);
                body.put_slice(v.as_bytes());
                body.put_u8(0);
            }
            body.put_u8(0);
            let mut frame = BytesMut::new();
            frame.put_u8(tag);
            frame.put_u32(body.len() as u32 + 4);
            frame.put_slice(&body);
            frame
        };
        server.write_all(&fields(b'N')).await.unwrap();
        server.write_all(&fields(b'E')).await.unwrap();
        let err = stream.recv().await.unwrap_err();
        assert_eq!(err.sqlstate(), Some("57P01"));
        let text = err.to_string();
        assert_eq!(
            text,
            "FATAL 57P01: terminating connection due to administrator command\n\
             DETAIL: some detail\nHINT: some hint"
        );
        drop(server);
        assert!(stream.recv().await.unwrap().is_none());
    }

    #[test]
    fn pg_clock_is_after_2020() {
        // 2020-01-01 is 20 years (plus leap days) after the PostgreSQL epoch.
        assert!(pg_now_us() > 631_152_000_000_000);
    }
}
