//! Failure classes and the exit codes `doppel` returns for them, so scripts and runbooks can
//! tell "refused, nothing done" from "aborted by the operator" from "the cutover lock could not
//! be had". Every class leaves the original table untouched and removes what doppel created.
//!
//! | exit | class |
//! |---|---|
//! | 0 | migrated and verified, or a dry run with nothing to refuse |
//! | 1 | internal or unexpected error (connection lost, query failed, ...) |
//! | 2 | preflight refused (see [`Refused`]), or an invalid command line |
//! | 3 | aborted by the operator: Ctrl-C, SIGTERM, the panic flag file, the `abort` command, a failing start-up hook |
//! | 4 | the replication stream or slot was lost |
//! | 5 | the cutover budget was exhausted (every attempt timed out on the lock or on the drain under it), or a direct step's lock was not granted in its attempts |
//! | 6 | verification found an unexplained difference |
//! | 7 | a critical threshold was crossed (`--critical-retained-wal`, `--critical-query`) |
//! | 8 | the original changed in a way the migration cannot follow (DDL, TRUNCATE), or rows, existing or written live, that the new schema rejects (a new UNIQUE, EXCLUDE, CHECK, NOT NULL or FOREIGN KEY, a failing cast) |
//! | 9 | doppel's spool directory is full (ENOSPC): a resumable run keeps its checkpoint; free space and `--resume` |
//!
//! A resumable run (`--resumable`) keeps its slot, shadow and checkpoint on exits 1, 4, 5 and
//! 9 (and on a connection it could not re-establish within `--reconnect-timeout`), so that
//! `--resume` continues it; exits 2, 3, 6, 7 and 8 remove everything it created.
//!
//! A refusal is typed: [`Refused`] holds one [`Refusal`] per reason, each naming the
//! [`Check`] that refused, what is wrong and how to fix it. Preflight (`crate::preflight`)
//! produces them; this module only defines them, so it depends on no phase.

/// A class of failure with its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Operator abort (exit 3).
    Aborted,
    /// Replication stream or slot lost (exit 4).
    StreamLost,
    /// Cutover lock budget exhausted (exit 5).
    LockBudget,
    /// Verification mismatch (exit 6).
    Verification,
    /// Critical threshold crossed (exit 7).
    Critical,
    /// The original changed in a way the run cannot follow (exit 8).
    Conflict,
    /// Invalid input on the command line or in the environment: an unparsable connection
    /// string, an unknown connection parameter or value (exit 2).
    Usage,
    /// The spool directory is full: writing the spool failed with ENOSPC (exit 9).
    DiskFull,
}

impl FailureKind {
    /// The process exit code for this class.
    pub fn exit_code(self) -> u8 {
        match self {
            FailureKind::Aborted => 3,
            FailureKind::StreamLost => 4,
            FailureKind::LockBudget => 5,
            FailureKind::Verification => 6,
            FailureKind::Critical => 7,
            FailureKind::Conflict => 8,
            FailureKind::Usage => 2,
            FailureKind::DiskFull => 9,
        }
    }

    /// Whether a resumable run keeps its checkpoint, slot and shadow when it stops with this
    /// class (it can be resumed): a lost stream, an exhausted cutover budget, a full disk.
    /// The operator's abort, a verification mismatch, a critical threshold and a conflict
    /// remove everything.
    pub fn keeps_resumable_state(self) -> bool {
        matches!(
            self,
            FailureKind::StreamLost | FailureKind::LockBudget | FailureKind::DiskFull
        )
    }
}

/// A classified failure; its Display is the message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// The class.
    pub kind: FailureKind,
    /// What happened and what to do.
    pub message: String,
}

/// A classified error.
pub fn fail(kind: FailureKind, message: impl Into<String>) -> anyhow::Error {
    Failure {
        kind,
        message: message.into(),
    }
    .into()
}

/// True for the server errors a row gets when the new schema rejects it: SQLSTATE classes
/// 23 (integrity constraint violation: UNIQUE, CHECK, NOT NULL, EXCLUDE) and 22 (data
/// exception: a cast that fails). Such a failure is a [`FailureKind::Conflict`] (exit 8).
pub fn rejected_by_schema(db: &tokio_postgres::error::DbError) -> bool {
    let code = db.code().code();
    code.starts_with("23") || code.starts_with("22")
}

/// When the server refused a row of `table` because the new table has no partition for it
/// (SQLSTATE 23514 "no partition of relation .. found for row"): the partition holding it in
/// the original was created or attached during the run, which the shadow's tree does not
/// have (docs/design.md §1.14). The conflict (exit 8) that says so and what to do.
pub fn partition_missing(
    db: &tokio_postgres::error::DbError,
    table: &str,
) -> Option<anyhow::Error> {
    if db.code().code() != "23514" || !db.message().starts_with("no partition of relation") {
        return None;
    }
    Some(fail(
        FailureKind::Conflict,
        format!(
            "a row of {table} has no partition in the new table ({}{}): a partition was created or attached during the run, as a partition maintenance job such as pg_partman's does; aborting, the original table is untouched. Pause the partition maintenance job and run doppel again",
            db.message(),
            db.detail().map(|d| format!(": {d}")).unwrap_or_default()
        ),
    ))
}

/// Whether the failure `db` of a statement on the leaf partition `partition` says that
/// the partition was dropped (SQLSTATE 42P01) or no longer holds rows of its bound (23514 "new
/// row .. violates partition constraint": it was detached and another table attached under
/// its name) during the run: the conflict (exit 8) that says so and what to do.
pub fn partition_changed(
    db: &tokio_postgres::error::DbError,
    partition: &str,
) -> Option<anyhow::Error> {
    let code = db.code().code();
    let moved = code == "23514" && db.message().contains("violates partition constraint");
    if code != "42P01" && !moved {
        return None;
    }
    Some(fail(
        FailureKind::Conflict,
        format!(
            "partition {partition} was dropped, detached or attached again during the run ({}), as a partition maintenance job such as pg_partman's does; aborting, the original table is untouched. Pause the partition maintenance job and run doppel again",
            db.message()
        ),
    ))
}

/// The class of `err`, looking through its context chain.
pub fn kind_of(err: &anyhow::Error) -> Option<FailureKind> {
    err.chain()
        .find_map(|c| c.downcast_ref::<Failure>())
        .map(|f| f.kind)
}

/// Whether `err` is a fault a resumable run survives by reconnecting: the connection to the
/// server closed or failed (a restart, a terminated backend or WAL sender, a network fault),
/// the server is starting up or shutting down (SQLSTATE 57P01-57P03, class 08), or the
/// replication stream was lost ([`FailureKind::StreamLost`]). Looks through the context
/// chain. A refusal or any other class is not transient.
pub fn is_transient(err: &anyhow::Error) -> bool {
    if err.chain().any(|c| c.downcast_ref::<Refused>().is_some()) {
        return false;
    }
    if let Some(kind) = kind_of(err) {
        return kind == FailureKind::StreamLost;
    }
    err.chain().any(|c| {
        if c.downcast_ref::<Disconnected>().is_some() {
            return true;
        }
        if let Some(e) = c.downcast_ref::<tokio_postgres::Error>() {
            return e.is_closed()
                || e.as_db_error()
                    .map(|db| transient_sqlstate(db.code().code()))
                    .unwrap_or_else(|| {
                        std::error::Error::source(e)
                            .and_then(|s| s.downcast_ref::<std::io::Error>())
                            .is_some_and(is_network)
                    });
        }
        if let Some(e) = c.downcast_ref::<pglogrepl::client::ReplicationError>() {
            return match e {
                pglogrepl::client::ReplicationError::Io(io) => is_network(io),
                other => other.sqlstate().is_some_and(transient_sqlstate),
            };
        }
        c.downcast_ref::<std::io::Error>().is_some_and(is_network)
    })
}

/// Whether an I/O error is a network fault (refused, reset, aborted, timed out, unreachable,
/// a connection closed mid-message), not a local one (a missing file, a full disk).
fn is_network(err: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        err.kind(),
        K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::TimedOut
            | K::UnexpectedEof
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
            | K::AddrNotAvailable
    )
}

/// A fault a resumable run survives by reconnecting, already described (a connection that
/// could not be opened to any host for a transient reason, an applier whose session was
/// lost): [`is_transient`] recognises it. Its Display is the message; it has no exit class
/// of its own (exit 1 when it ends a run).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Disconnected(pub String);

/// SQLSTATEs of a server going away or not yet back: class 08 (connection exception),
/// 57P01 (admin shutdown: `pg_terminate_backend`, a fast shutdown), 57P02 (crash shutdown),
/// 57P03 (cannot connect now: starting up, in recovery).
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

/// Whether an I/O error is ENOSPC (or EDQUOT: a quota is a full disk too).
pub fn is_disk_full(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(28) | Some(122))
        || err.kind() == std::io::ErrorKind::StorageFull
}

/// `err` as [`FailureKind::DiskFull`] when an ENOSPC is in its chain; unchanged otherwise.
pub fn classify_disk_full(err: anyhow::Error, what: &str) -> anyhow::Error {
    let full = err
        .chain()
        .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(is_disk_full));
    if !full || kind_of(&err).is_some() {
        return err;
    }
    fail(
        FailureKind::DiskFull,
        format!(
            "{what}: the filesystem is full ({err:#}); the original table is untouched. Free space on the spool's filesystem; a resumable run kept its checkpoint and spool: then run it again with --resume (the spool stays where it is)"
        ),
    )
}

/// The exit code for `err`: 2 for a refusal, the class's code, else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|c| c.downcast_ref::<Refused>().is_some()) {
        return 2;
    }
    kind_of(err).map(FailureKind::exit_code).unwrap_or(1)
}

/// The class of an exit code, as the metrics label it (`doppel_exit{class}`): `migrated`
/// (0), `internal` (1), `refused` (2), `aborted` (3), `stream lost` (4), `lock budget` (5),
/// `verification` (6), `critical` (7), `conflict` (8).
pub fn exit_class(code: u8) -> &'static str {
    match code {
        0 => "migrated",
        2 => "refused",
        3 => "aborted",
        4 => "stream lost",
        5 => "lock budget",
        6 => "verification",
        7 => "critical",
        8 => "conflict",
        _ => "internal",
    }
}

/// The check behind a [`Refusal`]: one variant per thing preflight (docs/design.md §1.1) or
/// the run's start refuses, so callers and tests can tell refusals apart by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// `server_version_num` below 140000 (PostgreSQL 14). Refused at once, alone.
    ServerVersion,
    /// `wal_level` is not `logical`.
    WalLevel,
    /// Every replication slot is taken (`max_replication_slots`, `pg_replication_slots`).
    ReplicationSlots,
    /// Every WAL sender is taken (`max_wal_senders`, walsenders in `pg_stat_activity`).
    WalSenders,
    /// The database encoding is neither UTF8 nor SQL_ASCII (`server_encoding`).
    Encoding,
    /// The role has neither REPLICATION nor SUPERUSER (`pg_roles`), nor membership in a
    /// provider role known to grant replication (`rds_replication`).
    ReplicationPrivilege,
    /// The role lacks CREATE on the database: doppel creates its publication there
    /// (`has_database_privilege`).
    DatabaseCreate,
    /// The role lacks TEMPORARY on the database: preflight tries the ALTER on a clone in
    /// `pg_temp` (`has_database_privilege`).
    TempPrivilege,
    /// The role lacks CREATE on the table's schema: the shadow table is created there
    /// (`has_schema_privilege`).
    SchemaCreate,
    /// `--table` is not a valid name or names no table visible to doppel (`to_regclass`).
    TableName,
    /// The relation is not a plain table: partitioned, foreign, a view (`pg_class.relkind`).
    TableKind,
    /// The table is a partition (`pg_class.relispartition`).
    Partition,
    /// The table has inheritance parents or children (`pg_inherits`, `relhassubclass`).
    Inheritance,
    /// The table is UNLOGGED or temporary (`pg_class.relpersistence`).
    Persistence,
    /// The current user neither owns the table nor is a member of its owner role
    /// (`pg_has_role` on `pg_class.relowner`).
    Ownership,
    /// The table has no primary key (`pg_index.indisprimary`).
    PrimaryKey,
    /// REPLICA IDENTITY NOTHING, or USING INDEX of an index other than the primary key
    /// (`pg_class.relreplident`, `pg_index.indisreplident`).
    ReplicaIdentity,
    /// A `FOR ALL TABLES` publication, or a `FOR TABLES IN SCHEMA` publication on the table's
    /// schema (`pg_publication`, `pg_publication_namespace`).
    Publication,
    /// doppel's shadow table, publication or slot for this table already exists.
    Leftovers,
    /// The `--alter` text, read before the server sees it: empty, several statements, a
    /// whole `ALTER TABLE`, a foreign key, unterminated quotes, an unsupported `USING`.
    AlterText,
    /// The ALTER as the server runs it on the empty clone: rejected, renaming or moving the
    /// table, making it UNLOGGED.
    Alter,
    /// An index of the altered table whose definition doppel cannot rebuild on the shadow.
    IndexDefinition,
    /// The ALTER changes the primary key: drops or changes a key column beyond widening an
    /// integer, gives it a `USING`, or makes it generated.
    KeyChange,
    /// doppel cannot carry a column from the original row to the new one: a `USING` it cannot
    /// evaluate or for a column the table lacks, a generated column that stops being
    /// generated, no column left to copy.
    Projection,
    /// A dependent bound to the table's OID that the cutover cannot move (views on a dropped
    /// column, materialized views with dependents, SQL-standard function bodies, ...).
    Dependents,
    /// The ALTER creates an index whose name is already taken in the schema.
    NameTaken,
    /// Another doppel run holds the table's advisory lock.
    ConcurrentRun,
    /// `--revert-window` with an ALTER whose `USING` expression a revert cannot invert.
    RevertWindow,
    /// A `--backfill` (or `doppel backfill --set`) assignment doppel cannot use: not
    /// `column = expression`, a column the new table lacks, a key or generated column, a
    /// column that also has a `USING`.
    Backfill,
    /// `doppel cleanup` found, under the shadow's name, the migrated table a rollback or a
    /// revert swapped out (it may hold writes made after the cutover) and was not given
    /// `--drop-new-table`.
    SwappedOutTable,
    /// The DSN points at a connection pooler (PgBouncer): doppel needs a direct connection.
    Pooler,
    /// A resumable run's checkpoint exists for the table and the run was not given
    /// `--resume` (or was given it and the checkpoint cannot be resumed: a different ALTER,
    /// a changed table, a lost slot, a missing spool, another doppel version, too old).
    Resume,
}

/// One reason doppel refuses to run, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The check that refused.
    pub check: Check,
    /// What is wrong, and why doppel cannot work with it.
    pub reason: String,
    /// How to fix it; `None` when there is nothing to change on the server (a feature doppel
    /// does not support yet, a relation that is not a table, ...).
    pub fix: Option<String>,
}

impl Refusal {
    /// A refusal with its fix.
    pub fn new(check: Check, reason: impl Into<String>, fix: impl Into<String>) -> Refusal {
        Refusal {
            check,
            reason: reason.into(),
            fix: Some(fix.into()),
        }
    }

    /// A refusal with no fix to offer.
    pub fn without_fix(check: Check, reason: impl Into<String>) -> Refusal {
        Refusal {
            check,
            reason: reason.into(),
            fix: None,
        }
    }
}

/// `<reason>; <fix>`, or the reason alone.
impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.fix {
            Some(fix) => write!(f, "{}; {fix}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// doppel refused the migration before creating anything (exit 2): every reason, each with
/// its fix. Preflight collects all it finds; the advisory lock adds [`Check::ConcurrentRun`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("preflight refused the migration:{}", list(.0))]
pub struct Refused(pub Vec<Refusal>);

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Refused {
        Refused(vec![refusal])
    }
}

impl Refused {
    /// The first refusal of `check`, if any.
    pub fn find(&self, check: Check) -> Option<&Refusal> {
        self.0.iter().find(|r| r.check == check)
    }
}

/// One `\n  - <refusal>` line per refusal.
fn list(refusals: &[Refusal]) -> String {
    refusals.iter().map(|r| format!("\n  - {r}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_class_through_context() {
        let e = fail(FailureKind::LockBudget, "no lock").context("cutover");
        assert_eq!(exit_code(&e), 5);
        assert_eq!(exit_code(&anyhow::anyhow!("boom")), 1);
        let refused: anyhow::Error =
            Refused(vec![Refusal::without_fix(Check::WalLevel, "no")]).into();
        assert_eq!(exit_code(&refused), 2);
        assert_eq!(exit_code(&refused.context("preflight")), 2);
    }

    #[test]
    fn refusals_render_one_line_each_with_their_fix() {
        let refused = Refused(vec![
            Refusal::new(Check::WalLevel, "wal_level is 'replica'", "set it"),
            Refusal::without_fix(Check::TableKind, "t is a view, not a table"),
        ]);
        assert_eq!(
            refused.to_string(),
            "preflight refused the migration:\n  - wal_level is 'replica'; set it\n  - t is a view, not a table"
        );
        assert_eq!(
            refused.find(Check::TableKind).map(|r| r.fix.is_none()),
            Some(true)
        );
        assert!(refused.find(Check::Leftovers).is_none());
    }
}
