//! Decoder for the `pgoutput` logical replication protocol, version 1.
//!
//! doppel starts logical replication with `proto_version '1'`, text format, streaming off
//! and (optionally) `messages 'true'`. Each `XLogData` message of the replication stream
//! then carries exactly one pgoutput message as its payload; [`decode`] turns such a
//! payload into a typed [`PgOutputMessage`]. The same bytes are returned by
//! `pg_logical_slot_peek_binary_changes(..)` on a `pgoutput` slot, which is how the
//! test fixtures in this module were captured.
//!
//! Wire format (PostgreSQL docs, "Logical Replication Message Formats"): every message
//! starts with a one-byte tag; integers are big-endian (network order); strings are
//! NUL-terminated; LSNs are 64-bit WAL byte positions; timestamps are signed 64-bit
//! microseconds since the PostgreSQL epoch 2000-01-01 00:00:00 UTC.
//!
//! The decoder is pure (no I/O), never panics on any input, and rejects trailing bytes
//! after a complete message. Messages of the streaming (protocol 2+) and two-phase
//! (protocol 3+) extensions are recognised and reported as [`DecodeError::Unsupported`].

use bytes::Bytes;

use crate::lsn::Lsn;

/// Seconds between the Unix epoch (1970-01-01) and the PostgreSQL epoch (2000-01-01),
/// to convert the `commit_time_us` fields to Unix time:
/// `unix_us = commit_time_us + POSTGRES_EPOCH_UNIX_SECS * 1_000_000`.
pub const POSTGRES_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// [`PgOutputMessage::Truncate`] option bit: `TRUNCATE .. CASCADE` was given.
pub const TRUNCATE_CASCADE: u8 = 1;

/// [`PgOutputMessage::Truncate`] option bit: `TRUNCATE .. RESTART IDENTITY` was given.
pub const TRUNCATE_RESTART_IDENTITY: u8 = 2;

/// One decoded pgoutput (protocol version 1) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage {
    /// `B`: start of a transaction; all following row messages up to the matching
    /// [`PgOutputMessage::Commit`] belong to it.
    Begin {
        /// WAL position of the transaction's commit record.
        final_lsn: Lsn,
        /// Commit timestamp, microseconds since 2000-01-01 00:00:00 UTC
        /// (see [`POSTGRES_EPOCH_UNIX_SECS`]).
        commit_time_us: i64,
        /// Transaction id.
        xid: u32,
    },
    /// `C`: end of the transaction started by the last [`PgOutputMessage::Begin`].
    Commit {
        /// Flags; currently unused by PostgreSQL (0).
        flags: u8,
        /// WAL position of the commit record (equals the `Begin`'s `final_lsn`).
        commit_lsn: Lsn,
        /// WAL position just past the commit record: the position to confirm as flushed
        /// once the transaction has been applied.
        end_lsn: Lsn,
        /// Commit timestamp, microseconds since 2000-01-01 00:00:00 UTC.
        commit_time_us: i64,
    },
    /// `O`: the transaction was replayed from another node through a replication origin
    /// (sent after `Begin`; there may be several in one transaction).
    Origin {
        /// LSN of the commit on the origin server.
        commit_lsn: Lsn,
        /// Name of the replication origin.
        name: String,
    },
    /// `R`: describes a relation (table); sent before the first row message that refers
    /// to the relation in a session and again whenever its definition changed.
    Relation(Relation),
    /// `Y`: describes a non-built-in data type used by a column of a following
    /// [`PgOutputMessage::Relation`] (e.g. an enum or domain).
    Type {
        /// OID of the type.
        type_oid: u32,
        /// Schema of the type (empty string for `pg_catalog`).
        namespace: String,
        /// Name of the type.
        name: String,
    },
    /// `I`: a row was inserted.
    Insert {
        /// OID of the relation, as announced by a previous [`PgOutputMessage::Relation`].
        relation_id: u32,
        /// The new row.
        new: TupleData,
    },
    /// `U`: a row was updated.
    Update {
        /// OID of the relation, as announced by a previous [`PgOutputMessage::Relation`].
        relation_id: u32,
        /// The old row: [`OldTuple::Key`] when the replica identity key changed (replica
        /// identity DEFAULT or INDEX), [`OldTuple::Full`] under REPLICA IDENTITY FULL,
        /// `None` otherwise (the key is then found in `new`).
        old: Option<OldTuple>,
        /// The new row. Unchanged out-of-line TOASTed values are
        /// [`ColumnValue::UnchangedToast`].
        new: TupleData,
    },
    /// `D`: a row was deleted.
    Delete {
        /// OID of the relation, as announced by a previous [`PgOutputMessage::Relation`].
        relation_id: u32,
        /// The identity of the deleted row: its key columns ([`OldTuple::Key`], other
        /// columns [`ColumnValue::Null`]) or, under REPLICA IDENTITY FULL, the whole row.
        old: OldTuple,
    },
    /// `T`: one `TRUNCATE` statement, covering one or more relations.
    Truncate {
        /// Bit set of [`TRUNCATE_CASCADE`] (1) and [`TRUNCATE_RESTART_IDENTITY`] (2).
        options: u8,
        /// OIDs of the truncated relations.
        relation_ids: Vec<u32>,
    },
    /// `M`: a logical decoding message written by `pg_logical_emit_message` (only sent
    /// when the `messages` option is on).
    Message {
        /// Whether the message was emitted transactionally (then it lies between a
        /// `Begin` and a `Commit`); non-transactional messages arrive on their own.
        transactional: bool,
        /// WAL position of the message.
        lsn: Lsn,
        /// The prefix given to `pg_logical_emit_message`.
        prefix: String,
        /// The content, uninterpreted bytes.
        content: Bytes,
    },
}

/// Description of a published table, from a `Relation` (`R`) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// OID of the relation; row messages refer to it as `relation_id`.
    pub id: u32,
    /// Schema name (empty string for `pg_catalog`).
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Replica identity setting, as `pg_class.relreplident`: one of
    /// [`Relation::REPLICA_IDENTITY_DEFAULT`] (`b'd'`), [`Relation::REPLICA_IDENTITY_NOTHING`]
    /// (`b'n'`), [`Relation::REPLICA_IDENTITY_FULL`] (`b'f'`) or
    /// [`Relation::REPLICA_IDENTITY_INDEX`] (`b'i'`). Not validated by the decoder.
    pub replica_identity: u8,
    /// Published columns in table order (generated columns are not sent); tuple data of
    /// row messages for this relation has one value per entry.
    pub columns: Vec<RelationColumn>,
}

impl Relation {
    /// `replica_identity` of REPLICA IDENTITY DEFAULT (the primary key).
    pub const REPLICA_IDENTITY_DEFAULT: u8 = b'd';
    /// `replica_identity` of REPLICA IDENTITY NOTHING.
    pub const REPLICA_IDENTITY_NOTHING: u8 = b'n';
    /// `replica_identity` of REPLICA IDENTITY FULL (all columns).
    pub const REPLICA_IDENTITY_FULL: u8 = b'f';
    /// `replica_identity` of REPLICA IDENTITY USING INDEX.
    pub const REPLICA_IDENTITY_INDEX: u8 = b'i';
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Whether the column is part of the replica identity (flag bit 1). Under REPLICA
    /// IDENTITY FULL every column is marked.
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// OID of the column's data type (`pg_type.oid`).
    pub type_oid: u32,
    /// Type modifier (`pg_attribute.atttypmod`), -1 when none; e.g. `varchar(20)` is 24.
    pub type_modifier: i32,
}

/// The old row carried by an `Update` or `Delete` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: only the replica identity key columns are set; the other columns are
    /// [`ColumnValue::Null`].
    Key(TupleData),
    /// `O`: the complete old row (REPLICA IDENTITY FULL).
    Full(TupleData),
}

impl OldTuple {
    /// The tuple data, whichever kind it is.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// The column values of one row, in the column order of the relation's
/// [`Relation::columns`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleData(pub Vec<ColumnValue>);

/// One column value of a [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an out-of-line TOASTed value that the update did not change; its value is
    /// not sent (take it from the existing row).
    UnchangedToast,
    /// `t`: the value in PostgreSQL text output format, in the server encoding (UTF-8 for
    /// a UTF-8 database). Shares the buffer given to [`decode_bytes`].
    Text(Bytes),
    /// `b`: the value in binary send format (only with the `binary` option, which doppel
    /// does not request).
    Binary(Bytes),
}

impl ColumnValue {
    /// The value as text: `Some` for [`ColumnValue::Text`] holding valid UTF-8; `None`
    /// for NULL, unchanged TOAST, binary values and text that is not valid UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            ColumnValue::Text(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// Whether this is [`ColumnValue::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, ColumnValue::Null)
    }

    /// Whether this is [`ColumnValue::UnchangedToast`].
    pub fn is_unchanged_toast(&self) -> bool {
        matches!(self, ColumnValue::UnchangedToast)
    }
}

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

/// Decodes one pgoutput message (the payload of one `XLogData` message).
///
/// Copies `buf` once; use [`decode_bytes`] to make the returned column values and
/// message contents share an existing [`Bytes`] buffer instead.
///
/// # Errors
/// [`DecodeError::Truncated`] if `buf` ends early (also for an empty `buf`),
/// [`DecodeError::UnknownMessage`] for an unknown tag, [`DecodeError::Unsupported`] for
/// streaming and two-phase messages, [`DecodeError::InvalidUtf8`] for non-UTF-8 names and
/// [`DecodeError::Malformed`] for anything else that does not follow the format,
/// including bytes left over after a complete message. Never panics.
pub fn decode(buf: &[u8]) -> Result<PgOutputMessage, DecodeError> {
    decode_bytes(Bytes::copy_from_slice(buf))
}

/// Decodes one pgoutput message like [`decode`], without copying: the
/// [`ColumnValue::Text`]/[`ColumnValue::Binary`] values and [`PgOutputMessage::Message`]
/// contents are slices of `buf`.
///
/// # Errors
/// As for [`decode`].
pub fn decode_bytes(buf: Bytes) -> Result<PgOutputMessage, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let tag = r.u8("message type")?;
    let msg = match tag {
        b'B' => PgOutputMessage::Begin {
            final_lsn: r.lsn("Begin final LSN")?,
            commit_time_us: r.i64("Begin commit timestamp")?,
            xid: r.u32("Begin xid")?,
        },
        b'C' => PgOutputMessage::Commit {
            flags: r.u8("Commit flags")?,
            commit_lsn: r.lsn("Commit LSN")?,
            end_lsn: r.lsn("Commit end LSN")?,
            commit_time_us: r.i64("Commit timestamp")?,
        },
        b'O' => PgOutputMessage::Origin {
            commit_lsn: r.lsn("Origin commit LSN")?,
            name: r.string("Origin name")?,
        },
        b'R' => PgOutputMessage::Relation(read_relation(&mut r)?),
        b'Y' => PgOutputMessage::Type {
            type_oid: r.u32("Type OID")?,
            namespace: r.string("Type namespace")?,
            name: r.string("Type name")?,
        },
        b'I' => {
            let relation_id = r.u32("Insert relation id")?;
            r.expect_new_marker("Insert")?;
            PgOutputMessage::Insert {
                relation_id,
                new: read_tuple(&mut r)?,
            }
        }
        b'U' => read_update(&mut r)?,
        b'D' => {
            let relation_id = r.u32("Delete relation id")?;
            let marker_at = r.pos;
            let old = match r.u8("Delete tuple marker")? {
                b'K' => OldTuple::Key(read_tuple(&mut r)?),
                b'O' => OldTuple::Full(read_tuple(&mut r)?),
                other => {
                    return Err(bad_marker("Delete", "'K' or 'O'", other, marker_at));
                }
            };
            PgOutputMessage::Delete { relation_id, old }
        }
        b'T' => {
            let count_at = r.pos;
            let count = r.i32("Truncate relation count")?;
            let count = usize::try_from(count).map_err(|_| {
                DecodeError::Malformed(format!(
                    "Truncate relation count {count} is negative (at byte {count_at})"
                ))
            })?;
            let options = r.u8("Truncate options")?;
            let mut relation_ids = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relation_ids.push(r.u32("Truncate relation id")?);
            }
            PgOutputMessage::Truncate {
                options,
                relation_ids,
            }
        }
        b'M' => {
            let flags = r.u8("Message flags")?;
            let lsn = r.lsn("Message LSN")?;
            let prefix = r.string("Message prefix")?;
            let content = r.length_prefixed("Message content length", "Message content")?;
            PgOutputMessage::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content,
            }
        }
        b'S' | b'E' | b'c' | b'A' => {
            return Err(DecodeError::Unsupported(format!(
                "{} ('{}'): streamed in-progress transactions need protocol version 2 and \
                 the streaming option, which doppel leaves off",
                message_name(tag),
                tag as char
            )));
        }
        b'b' | b'P' | b'K' | b'r' | b'p' => {
            return Err(DecodeError::Unsupported(format!(
                "{} ('{}'): two-phase commit decoding needs protocol version 3 and a \
                 two_phase slot, which doppel does not use",
                message_name(tag),
                tag as char
            )));
        }
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    r.finish(message_name(tag))?;
    Ok(msg)
}

/// Human-readable name of a message tag, for error texts.
fn message_name(tag: u8) -> &'static str {
    match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        b'b' => "Begin Prepare",
        b'P' => "Prepare",
        b'K' => "Commit Prepared",
        b'r' => "Rollback Prepared",
        b'p' => "Stream Prepare",
        _ => "unknown message",
    }
}

fn bad_marker(message: &str, expected: &str, got: u8, at: usize) -> DecodeError {
    DecodeError::Malformed(format!(
        "{message}: expected tuple marker {expected} at byte {at}, found {got:#04x} ('{}')",
        (got as char).escape_default()
    ))
}

fn read_relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    let id = r.u32("Relation id")?;
    let namespace = r.string("Relation namespace")?;
    let name = r.string("Relation name")?;
    let replica_identity = r.u8("Relation replica identity")?;
    let count = r.count16("Relation column count")?;
    // Each column takes at least 10 bytes; do not trust the count for the allocation.
    let mut columns = Vec::with_capacity(count.min(r.remaining() / 10));
    for _ in 0..count {
        let flags = r.u8("Relation column flags")?;
        columns.push(RelationColumn {
            is_key: flags & 1 != 0,
            name: r.string("Relation column name")?,
            type_oid: r.u32("Relation column type OID")?,
            type_modifier: r.i32("Relation column type modifier")?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn read_update(r: &mut Reader) -> Result<PgOutputMessage, DecodeError> {
    let relation_id = r.u32("Update relation id")?;
    let marker_at = r.pos;
    let old = match r.u8("Update tuple marker")? {
        b'N' => None,
        b'K' => Some(OldTuple::Key(read_tuple(r)?)),
        b'O' => Some(OldTuple::Full(read_tuple(r)?)),
        other => return Err(bad_marker("Update", "'K', 'O' or 'N'", other, marker_at)),
    };
    if old.is_some() {
        r.expect_new_marker("Update")?;
    }
    Ok(PgOutputMessage::Update {
        relation_id,
        old,
        new: read_tuple(r)?,
    })
}

fn read_tuple(r: &mut Reader) -> Result<TupleData, DecodeError> {
    let count = r.count16("TupleData column count")?;
    // Each column takes at least one byte.
    let mut values = Vec::with_capacity(count.min(r.remaining()));
    for _ in 0..count {
        let kind_at = r.pos;
        let value = match r.u8("TupleData column kind")? {
            b'n' => ColumnValue::Null,
            b'u' => ColumnValue::UnchangedToast,
            b't' => ColumnValue::Text(
                r.length_prefixed("TupleData column length", "TupleData column value")?,
            ),
            b'b' => ColumnValue::Binary(
                r.length_prefixed("TupleData column length", "TupleData column value")?,
            ),
            other => {
                return Err(DecodeError::Malformed(format!(
                    "TupleData: unknown column kind {other:#04x} ('{}') at byte {kind_at}, \
                     expected 'n', 'u', 't' or 'b'",
                    (other as char).escape_default()
                )));
            }
        };
        values.push(value);
    }
    Ok(TupleData(values))
}

/// Big-endian cursor over one message; every read checks the remaining length.
struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next `n` bytes as a slice of the buffer.
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], DecodeError> {
        let available = self.remaining();
        if n > available {
            return Err(DecodeError::Truncated {
                what,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(what)?)))
    }

    /// An Int16 count that must not be negative.
    fn count16(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.i16(what)?;
        usize::try_from(n)
            .map_err(|_| DecodeError::Malformed(format!("{what} {n} is negative (at byte {at})")))
    }

    /// An Int32 length (must not be negative) followed by that many bytes.
    fn length_prefixed(
        &mut self,
        len_what: &'static str,
        what: &'static str,
    ) -> Result<Bytes, DecodeError> {
        let at = self.pos;
        let n = self.i32(len_what)?;
        let n = usize::try_from(n).map_err(|_| {
            DecodeError::Malformed(format!("{len_what} {n} is negative (at byte {at})"))
        })?;
        let start = self.pos;
        self.take(n, what)?;
        Ok(self.buf.slice(start..self.pos))
    }

    /// A NUL-terminated UTF-8 string (the NUL is consumed, not returned).
    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::Truncated {
                what,
                offset: self.pos,
                needed: rest.len() + 1,
                available: rest.len(),
            });
        };
        let s = std::str::from_utf8(&rest[..len])
            .map_err(|_| DecodeError::InvalidUtf8)?
            .to_owned();
        self.pos += len + 1;
        Ok(s)
    }

    fn expect_new_marker(&mut self, message: &str) -> Result<(), DecodeError> {
        let at = self.pos;
        match self.u8("new tuple marker")? {
            b'N' => Ok(()),
            other => Err(bad_marker(message, "'N'", other, at)),
        }
    }

    /// Fails if bytes are left after a complete message.
    fn finish(&self, message: &str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Malformed(format!(
                "{message}: {n} unexpected trailing bytes at byte {}",
                self.pos
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixtures: payloads captured from a PostgreSQL 15 server (wal_level=logical) with
    //   SELECT lsn, xid, encode(data, 'hex') FROM pg_logical_slot_peek_binary_changes('s', NULL,
    //     NULL, 'proto_version', '1', 'publication_names', 'p', 'messages', 'true');
    // after this setup:
    //   CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
    //   CREATE TABLE t (id int PRIMARY KEY, name varchar(20), price numeric(10,2), m mood,
    //                   big text, note text);
    //   ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
    //   CREATE TABLE f (a int, b text);
    //   ALTER TABLE f REPLICA IDENTITY FULL;
    //   CREATE PUBLICATION p FOR TABLE t, f;
    //   SELECT pg_replication_origin_create('upstream');
    //   SELECT pg_create_logical_replication_slot('s', 'pgoutput');
    // followed by the statements named on each constant, each in its own transaction.
    // Relation OIDs: t = 16391, f = 16398; type mood = 16385.

    /// `B` of the transaction of
    /// `INSERT INTO t VALUES (1, 'alpha', 12.34, 'happy', repeat('x', 10000), NULL);` (xid 731).
    const BEGIN: &str = "420000000001535c78000303d2dfe59c04000002db";

    /// `Y` sent before the first `R` of `t`, for its column of enum type `mood` (same transaction).
    const TYPE_MOOD: &str = "59000040017075626c6963006d6f6f6400";

    /// `R` of table `t` (same transaction).
    const RELATION_T: &str = "\
        52000040077075626c69630074006400060169640000000017ffffffff006e616d650000000413000000180070726963\
        6500000006a4000a0006006d0000004001ffffffff006269670000000019ffffffff006e6f74650000000019ffffffff\
    ";

    /// `I` of `INSERT INTO t VALUES (1, 'alpha', 12.34, 'happy', repeat('x', 10000), NULL);`:
    /// 10 000 bytes in `big` (STORAGE EXTERNAL, so stored out of line) and a NULL `note`.
    const INSERT_T_TOAST: &str = "\
        49000040074e00067400000001317400000005616c706861740000000531322e33347400000005686170707974000027\
        107878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878787878\
        78787878787878787878787878787878786e\
    ";

    /// `C` of the same transaction.
    const COMMIT: &str = "43000000000001535c780000000001535ca8000303d2dfe59c04";

    /// `U` of `UPDATE t SET note = 'n1' WHERE id = 1;`: no old tuple, `big` unchanged TOAST (`u`).
    const UPDATE_NO_OLD: &str = "\
        55000040074e00067400000001317400000005616c706861740000000531322e33347400000005686170707975740000\
        00026e31\
    ";

    /// `U` of `UPDATE t SET id = 2 WHERE id = 1;`: old key tuple (`K`), `big` unchanged TOAST.
    const UPDATE_KEY: &str = "\
        55000040074b00067400000001316e6e6e6e6e4e00067400000001327400000005616c706861740000000531322e3334\
        740000000568617070797574000000026e31\
    ";

    /// `R` of table `f` (REPLICA IDENTITY FULL), first sent in the transaction of
    /// `INSERT INTO f VALUES (1, 'one');`.
    const RELATION_F: &str =
        "520000400e7075626c696300660066000201610000000017ffffffff01620000000019ffffffff";

    /// `I` of `INSERT INTO f VALUES (1, 'one');`.
    const INSERT_F: &str = "490000400e4e000274000000013174000000036f6e65";

    /// `U` of `UPDATE f SET b = 'uno' WHERE a = 1;`: full old tuple (`O`).
    const UPDATE_FULL: &str =
        "550000400e4f000274000000013174000000036f6e654e00027400000001317400000003756e6f";

    /// `D` of `DELETE FROM t WHERE id = 2;`: old key tuple (`K`).
    const DELETE_KEY: &str = "44000040074b00067400000001326e6e6e6e6e";

    /// `D` of `DELETE FROM f WHERE a = 1;`: full old tuple (`O`).
    const DELETE_FULL: &str = "440000400e4f00027400000001317400000003756e6f";

    /// `T` of `TRUNCATE f;`.
    const TRUNCATE_ONE: &str = "5400000001000000400e";

    /// `T` of `TRUNCATE t, f RESTART IDENTITY CASCADE;`.
    const TRUNCATE_TWO: &str = "540000000203000040070000400e";

    /// `M` of `SELECT pg_logical_emit_message(true, 'doppel', 'hello');`.
    const MESSAGE_TRANSACTIONAL: &str = "4d010000000001538188646f7070656c000000000568656c6c6f";

    /// `M` of `SELECT pg_logical_emit_message(false, 'doppel', '\x00ff01'::bytea);`.
    const MESSAGE_NON_TRANSACTIONAL: &str = "4d0000000000015381f8646f7070656c000000000300ff01";

    /// `B` of the transaction replayed through origin `upstream`:
    /// `SELECT pg_replication_origin_session_setup('upstream'); BEGIN;`
    /// `SELECT pg_replication_origin_xact_setup('0/ABCDEF', '2024-01-02 03:04:05+00');`
    /// `INSERT INTO f VALUES (7, 'from upstream'); COMMIT;`
    /// Its commit timestamp is the origin's.
    const BEGIN_WITH_ORIGIN: &str = "4200000000015382480002b0ec8515f340000002e5";

    /// `O` of that transaction.
    const ORIGIN: &str = "4f0000000000abcdef757073747265616d00";

    /// `I` of that transaction (after `O` and a repeated `R` of `f`).
    const INSERT_F_ORIGIN: &str =
        "490000400e4e0002740000000137740000000d66726f6d20757073747265616d";

    /// `C` of that transaction.
    const COMMIT_WITH_ORIGIN: &str = "4300000000000153824800000000015382900002b0ec8515f340";

    /// `S` (Stream Start, first segment) captured with `proto_version '2'`, `streaming 'on'`,
    /// `SET logical_decoding_work_mem = '64kB'` on
    /// `INSERT INTO f SELECT g, md5(g::text) FROM generate_series(1, 3000) g;`.
    const STREAM_START: &str = "53000002e601";

    /// `E` (Stream Stop) of the same capture.
    const STREAM_STOP: &str = "45";

    /// `c` (Stream Commit) of the same capture.
    const STREAM_COMMIT: &str = "63000002e600000000000157eb48000000000157eb78000303d2e0c90de0";

    /// Every captured message that decodes successfully, by name.
    const DECODABLE: &[(&str, &str)] = &[
        ("BEGIN", BEGIN),
        ("TYPE_MOOD", TYPE_MOOD),
        ("RELATION_T", RELATION_T),
        ("INSERT_T_TOAST", INSERT_T_TOAST),
        ("COMMIT", COMMIT),
        ("UPDATE_NO_OLD", UPDATE_NO_OLD),
        ("UPDATE_KEY", UPDATE_KEY),
        ("RELATION_F", RELATION_F),
        ("INSERT_F", INSERT_F),
        ("UPDATE_FULL", UPDATE_FULL),
        ("DELETE_KEY", DELETE_KEY),
        ("DELETE_FULL", DELETE_FULL),
        ("TRUNCATE_ONE", TRUNCATE_ONE),
        ("TRUNCATE_TWO", TRUNCATE_TWO),
        ("MESSAGE_TRANSACTIONAL", MESSAGE_TRANSACTIONAL),
        ("MESSAGE_NON_TRANSACTIONAL", MESSAGE_NON_TRANSACTIONAL),
        ("BEGIN_WITH_ORIGIN", BEGIN_WITH_ORIGIN),
        ("ORIGIN", ORIGIN),
        ("INSERT_F_ORIGIN", INSERT_F_ORIGIN),
        ("COMMIT_WITH_ORIGIN", COMMIT_WITH_ORIGIN),
    ];

    /// The captured streaming messages (protocol 2), which must be rejected.
    const STREAMING: &[&str] = &[STREAM_START, STREAM_STOP, STREAM_COMMIT];

    const T_ID: u32 = 16391;
    const F_ID: u32 = 16398;

    /// Hex to bytes, ignoring whitespace.
    fn unhex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert!(digits.len().is_multiple_of(2), "odd hex length");
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn dec(hex: &str) -> PgOutputMessage {
        decode(&unhex(hex)).unwrap_or_else(|e| panic!("decode failed: {e}"))
    }

    fn text(s: &str) -> ColumnValue {
        ColumnValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn tuple(values: Vec<ColumnValue>) -> TupleData {
        TupleData(values)
    }

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    #[test]
    fn begin_and_commit() {
        let begin = dec(BEGIN);
        assert_eq!(
            begin,
            PgOutputMessage::Begin {
                final_lsn: lsn("0/1535C78"),
                commit_time_us: 0x0003_03d2_dfe5_9c04,
                xid: 731,
            }
        );
        assert_eq!(
            dec(COMMIT),
            PgOutputMessage::Commit {
                flags: 0,
                commit_lsn: lsn("0/1535C78"),
                end_lsn: lsn("0/1535CA8"),
                commit_time_us: 0x0003_03d2_dfe5_9c04,
            }
        );
    }

    #[test]
    fn origin_transaction() {
        // 2024-01-02 03:04:05 UTC, the timestamp given to pg_replication_origin_xact_setup.
        let origin_time_us = (1_704_164_645 - POSTGRES_EPOCH_UNIX_SECS) * 1_000_000;
        assert_eq!(
            dec(BEGIN_WITH_ORIGIN),
            PgOutputMessage::Begin {
                final_lsn: lsn("0/1538248"),
                commit_time_us: origin_time_us,
                xid: 741,
            }
        );
        assert_eq!(
            dec(ORIGIN),
            PgOutputMessage::Origin {
                commit_lsn: lsn("0/ABCDEF"),
                name: "upstream".into(),
            }
        );
        assert_eq!(
            dec(INSERT_F_ORIGIN),
            PgOutputMessage::Insert {
                relation_id: F_ID,
                new: tuple(vec![text("7"), text("from upstream")]),
            }
        );
        assert_eq!(
            dec(COMMIT_WITH_ORIGIN),
            PgOutputMessage::Commit {
                flags: 0,
                commit_lsn: lsn("0/1538248"),
                end_lsn: lsn("0/1538290"),
                commit_time_us: origin_time_us,
            }
        );
    }

    #[test]
    fn type_message_for_enum() {
        assert_eq!(
            dec(TYPE_MOOD),
            PgOutputMessage::Type {
                type_oid: 16385,
                namespace: "public".into(),
                name: "mood".into(),
            }
        );
    }

    #[test]
    fn relation_with_key_typmods_and_custom_type() {
        let col = |is_key, name: &str, type_oid, type_modifier| RelationColumn {
            is_key,
            name: name.into(),
            type_oid,
            type_modifier,
        };
        assert_eq!(
            dec(RELATION_T),
            PgOutputMessage::Relation(Relation {
                id: T_ID,
                namespace: "public".into(),
                name: "t".into(),
                replica_identity: Relation::REPLICA_IDENTITY_DEFAULT,
                columns: vec![
                    col(true, "id", 23, -1),
                    // varchar(20): 20 + VARHDRSZ
                    col(false, "name", 1043, 24),
                    // numeric(10,2): ((10 << 16) | 2) + VARHDRSZ
                    col(false, "price", 1700, (10 << 16 | 2) + 4),
                    col(false, "m", 16385, -1),
                    col(false, "big", 25, -1),
                    col(false, "note", 25, -1),
                ],
            })
        );
        // Under REPLICA IDENTITY FULL every column is flagged as key.
        assert_eq!(
            dec(RELATION_F),
            PgOutputMessage::Relation(Relation {
                id: F_ID,
                namespace: "public".into(),
                name: "f".into(),
                replica_identity: Relation::REPLICA_IDENTITY_FULL,
                columns: vec![col(true, "a", 23, -1), col(true, "b", 25, -1)],
            })
        );
    }

    #[test]
    fn insert_with_null_and_toasted_value() {
        let PgOutputMessage::Insert { relation_id, new } = dec(INSERT_T_TOAST) else {
            panic!("not an insert");
        };
        assert_eq!(relation_id, T_ID);
        assert_eq!(new.0.len(), 6);
        assert_eq!(new.0[0].as_text(), Some("1"));
        assert_eq!(new.0[1].as_text(), Some("alpha"));
        assert_eq!(new.0[2].as_text(), Some("12.34"));
        assert_eq!(new.0[3].as_text(), Some("happy"));
        assert_eq!(new.0[4].as_text(), Some("x".repeat(10_000).as_str()));
        assert_eq!(new.0[5], ColumnValue::Null);
        assert!(new.0[5].is_null());
        assert_eq!(new.0[5].as_text(), None);

        assert_eq!(
            dec(INSERT_F),
            PgOutputMessage::Insert {
                relation_id: F_ID,
                new: tuple(vec![text("1"), text("one")]),
            }
        );
    }

    #[test]
    fn update_without_old_tuple_keeps_toast_unchanged() {
        assert_eq!(
            dec(UPDATE_NO_OLD),
            PgOutputMessage::Update {
                relation_id: T_ID,
                old: None,
                new: tuple(vec![
                    text("1"),
                    text("alpha"),
                    text("12.34"),
                    text("happy"),
                    ColumnValue::UnchangedToast,
                    text("n1"),
                ]),
            }
        );
    }

    #[test]
    fn update_of_primary_key_carries_old_key() {
        let msg = dec(UPDATE_KEY);
        let old_key = tuple(vec![
            text("1"),
            ColumnValue::Null,
            ColumnValue::Null,
            ColumnValue::Null,
            ColumnValue::Null,
            ColumnValue::Null,
        ]);
        assert_eq!(
            msg,
            PgOutputMessage::Update {
                relation_id: T_ID,
                old: Some(OldTuple::Key(old_key.clone())),
                new: tuple(vec![
                    text("2"),
                    text("alpha"),
                    text("12.34"),
                    text("happy"),
                    ColumnValue::UnchangedToast,
                    text("n1"),
                ]),
            }
        );
        let PgOutputMessage::Update {
            old: Some(old),
            new,
            ..
        } = msg
        else {
            unreachable!()
        };
        assert_eq!(old.tuple(), &old_key);
        assert!(new.0[4].is_unchanged_toast());
        assert_eq!(new.0[4].as_text(), None);
    }

    #[test]
    fn update_under_replica_identity_full() {
        assert_eq!(
            dec(UPDATE_FULL),
            PgOutputMessage::Update {
                relation_id: F_ID,
                old: Some(OldTuple::Full(tuple(vec![text("1"), text("one")]))),
                new: tuple(vec![text("1"), text("uno")]),
            }
        );
    }

    #[test]
    fn deletes() {
        assert_eq!(
            dec(DELETE_KEY),
            PgOutputMessage::Delete {
                relation_id: T_ID,
                old: OldTuple::Key(tuple(vec![
                    text("2"),
                    ColumnValue::Null,
                    ColumnValue::Null,
                    ColumnValue::Null,
                    ColumnValue::Null,
                    ColumnValue::Null,
                ])),
            }
        );
        assert_eq!(
            dec(DELETE_FULL),
            PgOutputMessage::Delete {
                relation_id: F_ID,
                old: OldTuple::Full(tuple(vec![text("1"), text("uno")])),
            }
        );
    }

    #[test]
    fn truncates() {
        assert_eq!(
            dec(TRUNCATE_ONE),
            PgOutputMessage::Truncate {
                options: 0,
                relation_ids: vec![F_ID],
            }
        );
        assert_eq!(
            dec(TRUNCATE_TWO),
            PgOutputMessage::Truncate {
                options: TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY,
                relation_ids: vec![T_ID, F_ID],
            }
        );
    }

    #[test]
    fn logical_messages() {
        assert_eq!(
            dec(MESSAGE_TRANSACTIONAL),
            PgOutputMessage::Message {
                transactional: true,
                lsn: lsn("0/1538188"),
                prefix: "doppel".into(),
                content: Bytes::from_static(b"hello"),
            }
        );
        assert_eq!(
            dec(MESSAGE_NON_TRANSACTIONAL),
            PgOutputMessage::Message {
                transactional: false,
                lsn: lsn("0/15381F8"),
                prefix: "doppel".into(),
                content: Bytes::from_static(&[0x00, 0xff, 0x01]),
            }
        );
    }

    #[test]
    fn decode_bytes_shares_the_input_buffer() {
        let input = Bytes::from(unhex(INSERT_T_TOAST));
        let range = input.as_ptr() as usize..input.as_ptr() as usize + input.len();
        let PgOutputMessage::Insert { new, .. } = decode_bytes(input.clone()).unwrap() else {
            panic!("not an insert");
        };
        let ColumnValue::Text(big) = &new.0[4] else {
            panic!("not text");
        };
        assert_eq!(big.len(), 10_000);
        assert!(range.contains(&(big.as_ptr() as usize)));
    }

    #[test]
    fn binary_column_values() {
        // Hand-built (doppel never requests binary): Insert into relation 1 of one binary
        // int4 value 7.
        let msg = decode(b"I\0\0\0\x01N\0\x01b\0\0\0\x04\0\0\0\x07").unwrap();
        let PgOutputMessage::Insert { new, .. } = msg else {
            panic!("not an insert");
        };
        assert_eq!(
            new.0,
            vec![ColumnValue::Binary(Bytes::from_static(&[0, 0, 0, 7]))]
        );
        assert_eq!(new.0[0].as_text(), None);
    }

    #[test]
    fn streaming_messages_are_unsupported() {
        for hex in STREAMING {
            match decode(&unhex(hex)) {
                Err(DecodeError::Unsupported(text)) => {
                    assert!(text.contains("stream"), "{text}");
                }
                other => panic!("expected Unsupported, got {other:?}"),
            }
        }
        // Stream Abort ('A': xid, subtransaction xid), hand-built.
        let abort = decode(b"A\0\0\x02\xe6\0\0\x02\xe7").unwrap_err();
        assert!(matches!(&abort, DecodeError::Unsupported(t) if t.contains("Stream Abort")));
    }

    #[test]
    fn two_phase_messages_are_unsupported() {
        // Hand-built: tag plus some body; the body is not inspected.
        for tag in [b'b', b'P', b'K', b'r', b'p'] {
            let buf = [tag, 0, 0, 0, 0, 0, 0, 0, 1];
            match decode(&buf) {
                Err(DecodeError::Unsupported(text)) => {
                    assert!(text.contains("two-phase"), "{text}");
                }
                other => panic!("expected Unsupported for {}, got {other:?}", tag as char),
            }
        }
    }

    #[test]
    fn unknown_and_empty_input() {
        assert_eq!(decode(b"Z\0\0"), Err(DecodeError::UnknownMessage(b'Z')));
        assert_eq!(decode(&[0xff]), Err(DecodeError::UnknownMessage(0xff)));
        assert_eq!(
            decode(b"").unwrap_err(),
            DecodeError::Truncated {
                what: "message type",
                offset: 0,
                needed: 1,
                available: 0,
            }
        );
        assert_eq!(
            DecodeError::UnknownMessage(b'Z').to_string(),
            "unknown pgoutput message type 0x5a (Z)"
        );
    }

    #[test]
    fn truncated_reports_field_and_position() {
        let full = unhex(BEGIN);
        let err = decode(&full[..full.len() - 1]).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Truncated {
                what: "Begin xid",
                offset: 17,
                needed: 4,
                available: 3,
            }
        );
        assert_eq!(
            err.to_string(),
            "pgoutput message truncated: Begin xid at byte 17 needs 4 bytes, 3 left"
        );
        // A string without its NUL.
        let err = decode(b"O\0\0\0\0\0\0\0\x01upstr").unwrap_err();
        assert_eq!(
            err,
            DecodeError::Truncated {
                what: "Origin name",
                offset: 9,
                needed: 6,
                available: 5,
            }
        );
    }

    #[test]
    fn every_strict_prefix_is_truncated() {
        for (name, hex) in DECODABLE {
            let full = unhex(hex);
            assert!(decode(&full).is_ok(), "{name}");
            for cut in 0..full.len() {
                match decode(&full[..cut]) {
                    Err(DecodeError::Truncated { .. }) => {}
                    other => panic!("{name} cut at {cut}: expected Truncated, got {other:?}"),
                }
            }
        }
        for hex in STREAMING {
            let full = unhex(hex);
            assert!(decode(&full[..0]).is_err());
            for cut in 1..full.len() {
                assert!(matches!(
                    decode(&full[..cut]),
                    Err(DecodeError::Unsupported(_))
                ));
            }
        }
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        for (name, hex) in DECODABLE {
            let mut buf = unhex(hex);
            buf.push(0);
            assert!(
                matches!(decode(&buf), Err(DecodeError::Malformed(_))),
                "{name}"
            );
        }
    }

    #[test]
    fn malformed_inputs() {
        let malformed = |buf: &[u8]| match decode(buf) {
            Err(DecodeError::Malformed(text)) => text,
            other => panic!("expected Malformed for {buf:?}, got {other:?}"),
        };
        // Insert without the 'N' marker.
        assert!(malformed(b"I\0\0\0\x01X\0\0").contains("'N'"));
        // Update with a bad first marker, and with a 'K' tuple not followed by 'N'.
        assert!(malformed(b"U\0\0\0\x01X\0\0").contains("'K', 'O' or 'N'"));
        assert!(malformed(b"U\0\0\0\x01K\0\0K\0\0").contains("'N'"));
        // Delete needs 'K' or 'O'.
        assert!(malformed(b"D\0\0\0\x01N\0\0").contains("'K' or 'O'"));
        // Unknown column kind.
        assert!(malformed(b"I\0\0\0\x01N\0\x01x").contains("column kind"));
        // Negative column count, value length, relation count, content length.
        assert!(malformed(b"I\0\0\0\x01N\xff\xff").contains("negative"));
        assert!(malformed(b"I\0\0\0\x01N\0\x01t\xff\xff\xff\xff").contains("negative"));
        assert!(malformed(b"T\x80\0\0\0\0").contains("negative"));
        assert!(malformed(b"M\x01\0\0\0\0\0\0\0\x01p\0\xff\xff\xff\xfe").contains("negative"));
        assert!(malformed(b"R\0\0\0\x01\0t\0d\xff\xff").contains("negative"));
    }

    #[test]
    fn invalid_utf8_names() {
        assert_eq!(
            decode(b"Y\0\0\0\x01public\0\xff\xfe\0"),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(
            decode(b"R\0\0\0\x01\xc3\0t\0d\0\0"),
            Err(DecodeError::InvalidUtf8)
        );
        // Text values are not validated on decode; as_text reports them as None.
        let msg = decode(b"I\0\0\0\x01N\0\x01t\0\0\0\x01\xff").unwrap();
        let PgOutputMessage::Insert { new, .. } = msg else {
            panic!("not an insert");
        };
        assert_eq!(new.0[0], ColumnValue::Text(Bytes::from_static(b"\xff")));
        assert_eq!(new.0[0].as_text(), None);
    }

    #[test]
    fn huge_counts_do_not_allocate_or_panic() {
        // Counts and lengths far beyond the payload must fail cleanly.
        assert!(matches!(
            decode(b"T\x7f\xff\xff\xff\0"),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode(b"I\0\0\0\x01N\x7f\xff"),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode(b"I\0\0\0\x01N\0\x01t\x7f\xff\xff\xff"),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode(b"R\0\0\0\x01\0t\0d\x7f\xff"),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic xorshift so failures reproduce.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let tags = b"BCORYIUDTMSEcAbPKrpZ";
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = buf.first_mut() {
                *first = tags[(next() % tags.len() as u64) as usize];
            }
            let _ = decode(&buf);
        }
        // Single-byte corruptions of every captured message except the big insert.
        for (_, hex) in DECODABLE.iter().filter(|(n, _)| *n != "INSERT_T_TOAST") {
            let full = unhex(hex);
            for i in 0..full.len() {
                for v in [0x00, 0x01, 0x7f, 0x80, 0xff, next() as u8] {
                    let mut buf = full.clone();
                    buf[i] = v;
                    let _ = decode(&buf);
                }
            }
        }
    }
}
