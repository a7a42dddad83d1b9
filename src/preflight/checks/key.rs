//! The key: a primary key (doppel copies in primary-key chunks and matches streamed changes by
//! it) and a REPLICA IDENTITY that streams that key (docs/design.md §1.1).

use crate::failure::{Check, Refusal};
use crate::model::catalog::Table;

/// [`Check::PrimaryKey`], then [`Check::ReplicaIdentity`] (only for a table with a primary
/// key): `pg_index.indisprimary`, `pg_class.relreplident` and `pg_index.indisreplident` as
/// [`crate::model::catalog::inspect`] read them. REPLICA IDENTITY DEFAULT, FULL and USING
/// INDEX of the primary key are accepted.
pub fn check(t: &Table) -> Option<Refusal> {
    let what = t.qualified();
    let Some(pk) = t.primary_key() else {
        return Some(Refusal::new(
            Check::PrimaryKey,
            format!(
                "{what} has no primary key: doppel copies in primary-key chunks and matches streamed changes by key"
            ),
            "add one first (e.g. CREATE UNIQUE INDEX CONCURRENTLY .., then ALTER TABLE .. ADD PRIMARY KEY USING INDEX ..)",
        ));
    };
    match t.replica_identity {
        'n' => Some(Refusal::new(
            Check::ReplicaIdentity,
            format!(
                "{what} has REPLICA IDENTITY NOTHING: once published, its UPDATEs and DELETEs would fail"
            ),
            format!("set ALTER TABLE {what} REPLICA IDENTITY DEFAULT"),
        )),
        'i' if !pk.is_replica_identity => Some(Refusal::new(
            Check::ReplicaIdentity,
            format!(
                "{what} uses REPLICA IDENTITY USING INDEX on an index other than the primary key: streamed changes would carry keys that are not the chunk key"
            ),
            "set REPLICA IDENTITY DEFAULT",
        )),
        _ => None,
    }
}
