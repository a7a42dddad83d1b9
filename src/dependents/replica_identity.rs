//! The table's replica identity (`relreplident`), read with the table's row.
//!
//! `REPLICA IDENTITY FULL`, `NOTHING` or `USING INDEX` is a property of the table the new
//! table does not inherit; the cutover sets it on the new table (the index has its final
//! name by then). The rollback leaves it alone: the old table never lost it.

use super::{Dependents, Kind, Move};
use crate::sql::ident;

/// The replica identity, set on the new table.
pub(super) struct ReplicaIdentity;

impl Kind for ReplicaIdentity {
    /// `ALTER TABLE .. REPLICA IDENTITY ..` on `m.table` unless it is the default.
    fn forward(&self, deps: &Dependents, m: &Move) -> Vec<String> {
        let table = &m.table;
        match (deps.replica_identity, &deps.replica_identity_index) {
            ('f', _) => vec![format!("ALTER TABLE {table} REPLICA IDENTITY FULL")],
            ('n', _) => vec![format!("ALTER TABLE {table} REPLICA IDENTITY NOTHING")],
            ('i', Some(index)) => vec![format!(
                "ALTER TABLE {table} REPLICA IDENTITY USING INDEX {}",
                ident(index)
            )],
            _ => Vec::new(),
        }
    }

    /// Nothing: the restored original kept its replica identity.
    fn rollback(&self, _deps: &Dependents, _m: &Move) -> Vec<String> {
        Vec::new()
    }
}
