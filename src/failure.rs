//! Failure classes and the exit codes `doppel` returns for them, so scripts and runbooks can
//! tell "refused, nothing done" from "aborted by the operator" from "the cutover lock could not
//! be had". Every class leaves the original table untouched and removes what doppel created.
//!
//! | exit | class |
//! |---|---|
//! | 0 | migrated and verified, or a dry run with nothing to refuse |
//! | 1 | internal or unexpected error (connection lost, query failed, ...) |
//! | 2 | preflight refused (see `preflight::Refused`), or an invalid command line |
//! | 3 | aborted by the operator: Ctrl-C, SIGTERM, the panic flag file, the `abort` command, a failing start-up hook |
//! | 4 | the replication stream or slot was lost |
//! | 5 | the cutover budget was exhausted (every attempt timed out on the lock or on the drain under it) |
//! | 6 | verification found an unexplained difference |
//! | 7 | a critical threshold was crossed (`--critical-retained-wal`, `--critical-query`) |
//! | 8 | the original changed in a way the migration cannot follow (DDL, TRUNCATE), or rows, existing or written live, that the new schema rejects (a new UNIQUE, EXCLUDE, CHECK or NOT NULL, a failing cast) |

use crate::preflight::Refused;

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
        }
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

/// The class of `err`, looking through its context chain.
pub fn kind_of(err: &anyhow::Error) -> Option<FailureKind> {
    err.chain()
        .find_map(|c| c.downcast_ref::<Failure>())
        .map(|f| f.kind)
}

/// The exit code for `err`: 2 for a refusal, the class's code, else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|c| c.downcast_ref::<Refused>().is_some()) {
        return 2;
    }
    kind_of(err).map(FailureKind::exit_code).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_class_through_context() {
        let e = fail(FailureKind::LockBudget, "no lock").context("cutover");
        assert_eq!(exit_code(&e), 5);
        assert_eq!(exit_code(&anyhow::anyhow!("boom")), 1);
        let refused: anyhow::Error = Refused(vec!["no".into()]).into();
        assert_eq!(exit_code(&refused), 2);
    }
}
