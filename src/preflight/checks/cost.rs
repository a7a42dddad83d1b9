//! What the ALTER would cost if PostgreSQL ran it directly, judged on the empty clone:
//! rewrite, scan under lock, or metadata-only (docs/design.md §1.1). Each clause's cost,
//! with what else it touches, decides its strategy (docs/design.md §1.10).

use crate::model::catalog::Table;
use crate::plan::Rewrite;

/// The cost class of turning `before` into `after` (the clone before and after the ALTER,
/// from `pg_class.relfilenode`, `pg_index` and `pg_constraint`): a new relfilenode is a
/// rewrite; a rebuilt index, a new validated constraint or a new NOT NULL is a scan under the
/// lock; anything else is metadata-only.
pub fn classify(before: &Table, after: &Table) -> Rewrite {
    let index_rebuilt = after.indexes.iter().any(|a| {
        before
            .indexes
            .iter()
            .find(|b| b.oid == a.oid)
            .is_none_or(|b| b.relfilenode != a.relfilenode)
    });
    if after.relfilenode != before.relfilenode {
        return Rewrite::Rewrite;
    }
    let new_constraint = after.constraints.iter().any(|a| {
        a.validated
            && !before
                .constraints
                .iter()
                .any(|b| b.name == a.name && b.definition == a.definition)
    });
    let new_not_null = after.columns.iter().any(|a| {
        a.not_null
            && before
                .columns
                .iter()
                .any(|b| b.attnum == a.attnum && !b.not_null)
    });
    if index_rebuilt || new_constraint || new_not_null {
        Rewrite::ScanUnderLock
    } else {
        Rewrite::MetadataOnly
    }
}
