//! The framed connection: a byte stream ([`Transport`]) with its read and write buffers,
//! split into backend [`Frame`]s. Reads are cancel-safe; writes are queued in a buffer that a
//! cancelled flush leaves consistent.

use std::io;

use bytes::{Buf, BytesMut};
use postgres_protocol::message::backend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::{ReplicationError, log_notice, protocol_err};

/// Any byte stream the connection can run on (TCP or Unix socket, or a TLS stream).
pub(super) use super::tls::Stream as Transport;

/// One backend frame: either a message `postgres-protocol` decodes, or one it does not know.
pub(super) enum Frame {
    Message(backend::Message),
    /// `W`: the server entered CopyBoth mode (reply to START_REPLICATION).
    CopyBothResponse,
}

/// Socket plus read/write buffers, shared by the client and the stream.
pub(super) struct Conn {
    pub(super) io: Box<dyn Transport>,
    /// Bytes read from the socket but not yet parsed into a frame.
    pub(super) read_buf: BytesMut,
    /// Encoded frontend messages not yet fully written; only ever appended to and drained
    /// from the front, so a cancelled write leaves the stream consistent.
    pub(super) write_buf: BytesMut,
}

impl Conn {
    pub(super) fn new(io: Box<dyn Transport>) -> Conn {
        Conn {
            io,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(1024),
        }
    }

    /// Parses one complete frame from the read buffer, if there is one.
    pub(super) fn try_parse(&mut self) -> Result<Option<Frame>, ReplicationError> {
        if self.read_buf.len() >= 5 && self.read_buf[0] == b'W' {
            let len = u32::from_be_bytes([
                self.read_buf[1],
                self.read_buf[2],
                self.read_buf[3],
                self.read_buf[4],
            ]) as usize;
            if len < 4 {
                return Err(ReplicationError::Protocol(
                    "CopyBothResponse with invalid length".into(),
                ));
            }
            if self.read_buf.len() < len + 1 {
                self.read_buf.reserve(len + 1 - self.read_buf.len());
                return Ok(None);
            }
            self.read_buf.advance(len + 1);
            return Ok(Some(Frame::CopyBothResponse));
        }
        Ok(backend::Message::parse(&mut self.read_buf)
            .map_err(protocol_err)?
            .map(Frame::Message))
    }

    /// Reads the next frame. `Ok(None)` on a clean end of stream (EOF between frames).
    ///
    /// Cancel-safe: bytes are only ever appended to `read_buf` by `read_buf` (which is itself
    /// cancel-safe) and frames are removed from it synchronously.
    pub(super) async fn read_frame(&mut self) -> Result<Option<Frame>, ReplicationError> {
        loop {
            if let Some(frame) = self.try_parse()? {
                return Ok(Some(frame));
            }
            if self.read_buf.capacity() - self.read_buf.len() < 4096 {
                self.read_buf.reserve(64 * 1024);
            }
            let n = self.io.read_buf(&mut self.read_buf).await?;
            if n == 0 {
                if self.read_buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection in the middle of a message",
                )
                .into());
            }
        }
    }

    /// Like [`Conn::read_frame`] but consumes NoticeResponse (logged), ParameterStatus,
    /// BackendKeyData and NotificationResponse. Cancel-safe.
    pub(super) async fn next_frame(&mut self) -> Result<Option<Frame>, ReplicationError> {
        loop {
            match self.read_frame().await? {
                Some(Frame::Message(backend::Message::NoticeResponse(body))) => log_notice(&body),
                Some(Frame::Message(backend::Message::ParameterStatus(body))) => {
                    if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                        tracing::debug!(name, value, "replication server parameter");
                    }
                }
                Some(Frame::Message(backend::Message::BackendKeyData(body))) => {
                    tracing::debug!(
                        pid = body.process_id(),
                        "replication server backend key data"
                    );
                }
                Some(Frame::Message(backend::Message::NotificationResponse(_))) => {}
                other => return Ok(other),
            }
        }
    }

    /// Like [`Conn::next_frame`], but a clean EOF is an error (`what` names the step).
    pub(super) async fn expect_frame(&mut self, what: &str) -> Result<Frame, ReplicationError> {
        match self.next_frame().await? {
            Some(frame) => Ok(frame),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("server closed the connection during {what}"),
            )
            .into()),
        }
    }

    /// Writes everything queued in `write_buf` and flushes the socket.
    pub(super) async fn flush(&mut self) -> Result<(), ReplicationError> {
        self.io.write_all_buf(&mut self.write_buf).await?;
        self.io.flush().await?;
        Ok(())
    }
}

/// A Protocol error naming the unexpected `frame` received during `what`.
pub(super) fn unexpected(what: &str, frame: &Frame) -> ReplicationError {
    ReplicationError::Protocol(format!(
        "unexpected {} during {what}",
        describe_frame(frame)
    ))
}

/// The name of a frame's message type, for error and log texts.
pub(super) fn describe_frame(frame: &Frame) -> &'static str {
    use backend::Message as M;
    match frame {
        Frame::CopyBothResponse => "CopyBothResponse",
        Frame::Message(m) => match m {
            M::AuthenticationOk
            | M::AuthenticationCleartextPassword
            | M::AuthenticationMd5Password(_)
            | M::AuthenticationSasl(_)
            | M::AuthenticationSaslContinue(_)
            | M::AuthenticationSaslFinal(_)
            | M::AuthenticationKerberosV5
            | M::AuthenticationGss
            | M::AuthenticationGssContinue(_)
            | M::AuthenticationScmCredential
            | M::AuthenticationSspi => "authentication request",
            M::CommandComplete(_) => "CommandComplete",
            M::CopyData(_) => "CopyData",
            M::CopyDone => "CopyDone",
            M::CopyInResponse(_) => "CopyInResponse",
            M::CopyOutResponse(_) => "CopyOutResponse",
            M::DataRow(_) => "DataRow",
            M::EmptyQueryResponse => "EmptyQueryResponse",
            M::ErrorResponse(_) => "ErrorResponse",
            M::ReadyForQuery(_) => "ReadyForQuery",
            M::RowDescription(_) => "RowDescription",
            _ => "message",
        },
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, Bytes};
    use postgres_protocol::message::frontend;

    use super::*;

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
    fn frames_are_parsed_only_when_complete() {
        let (client, _server) = tokio::io::duplex(64);
        let mut conn = Conn::new(Box::new(client));
        // CopyData frame with an XLogData payload, fed one byte at a time.
        let payload = xlogdata_bytes(7, 8, 9, b"BC");
        let mut frame = BytesMut::new();
        frontend::CopyData::new(payload.clone())
            .unwrap()
            .write(&mut frame);
        // A CopyBothResponse (W, format 0, 0 columns) first.
        let mut wire = BytesMut::new();
        wire.put_slice(&[b'W', 0, 0, 0, 7, 0, 0, 0]);
        wire.put_slice(&frame);
        for (i, byte) in wire.iter().enumerate() {
            conn.read_buf.put_u8(*byte);
            let parsed = conn.try_parse().unwrap();
            if i == 7 {
                assert!(matches!(parsed, Some(Frame::CopyBothResponse)));
            } else if i == wire.len() - 1 {
                match parsed {
                    Some(Frame::Message(backend::Message::CopyData(body))) => {
                        assert_eq!(body.data(), &payload[..]);
                    }
                    _ => panic!("expected CopyData"),
                }
            } else {
                assert!(parsed.is_none(), "frame parsed early at byte {i}");
            }
        }
        assert!(conn.read_buf.is_empty());
    }
}
