//! The pgoutput (protocol version 1) message types that [`decode`](super::decode) produces.

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
    /// a UTF-8 database). Shares the buffer given to [`decode_bytes`](super::decode_bytes).
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
