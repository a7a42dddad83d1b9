//! [`DecodeError`]: why a pgoutput payload could not be decoded.

/// Why a pgoutput payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload ended before the field `what`, which starts at byte `offset`, was
    /// complete: it needs at least `needed` bytes but only `available` remain. For a
    /// string without its terminating NUL, `needed` is `available + 1`.
    #[error(
        "pgoutput message truncated: {what} at byte {offset} needs {needed} bytes, {available} left"
    )]
    Truncated {
        /// The field being read, e.g. `"Begin xid"` or `"TupleData column value"`.
        what: &'static str,
        /// Byte offset of the field within the payload.
        offset: usize,
        /// Bytes the field needs (at least).
        needed: usize,
        /// Bytes left in the payload from `offset`.
        available: usize,
    },
    /// The first byte is not a known pgoutput message tag (the byte is given).
    #[error("unknown pgoutput message type {0:#04x} ({ch})", ch = (*.0 as char).escape_default())]
    UnknownMessage(u8),
    /// A known message that this decoder does not handle: the streaming messages
    /// (`S`, `E`, `c`, `A`, protocol 2+) and the two-phase messages (`b`, `P`, `K`, `r`,
    /// `p`, protocol 3+). The text names the message and why it cannot appear.
    #[error("unsupported pgoutput message: {0}")]
    Unsupported(String),
    /// A string field (namespace, relation, column, type, origin or prefix name) is not
    /// valid UTF-8, e.g. because the server encoding is not UTF-8.
    #[error("pgoutput string field is not valid UTF-8")]
    InvalidUtf8,
    /// The bytes do not follow the message format (bad marker byte, negative count or
    /// length, trailing bytes...); the text says what was wrong and where.
    #[error("malformed pgoutput message: {0}")]
    Malformed(String),
}
