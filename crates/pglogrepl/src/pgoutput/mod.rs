//! Decoder for the `pgoutput` logical replication protocol, version 1.
//!
//! [`crate::client`] starts logical replication with `proto_version '1'`, text format,
//! streaming off and (optionally) `messages 'true'`. Each `XLogData` message of the
//! replication stream then carries exactly one pgoutput message as its payload; [`decode`]
//! turns such a payload into a typed [`PgOutputMessage`]. The same bytes are returned by
//! `pg_logical_slot_peek_binary_changes(..)` on a `pgoutput` slot, which is how the
//! test fixtures (`fixtures.rs`) were captured.
//!
//! Wire format (PostgreSQL docs, "Logical Replication Message Formats"): every message
//! starts with a one-byte tag; integers are big-endian (network order); strings are
//! NUL-terminated; LSNs are 64-bit WAL byte positions; timestamps are signed 64-bit
//! microseconds since the PostgreSQL epoch 2000-01-01 00:00:00 UTC.
//!
//! The decoder is pure (no I/O), never panics on any input, and rejects trailing bytes
//! after a complete message. Messages of the streaming (protocol 2+) and two-phase
//! (protocol 3+) extensions are recognised and reported as [`DecodeError::Unsupported`].
//!
//! Modules: `message` (the message types), `error` ([`DecodeError`]), `reader` (the
//! bounds-checked cursor over one payload) and `decoder` ([`decode`], [`decode_bytes`]);
//! this module only re-exports them.

mod decoder;
mod error;
#[cfg(test)]
mod fixtures;
mod message;
mod reader;

pub use decoder::{decode, decode_bytes};
pub use error::DecodeError;
pub use message::{
    ColumnValue, OldTuple, POSTGRES_EPOCH_UNIX_SECS, PgOutputMessage, Relation, RelationColumn,
    TRUNCATE_CASCADE, TRUNCATE_RESTART_IDENTITY, TupleData,
};
