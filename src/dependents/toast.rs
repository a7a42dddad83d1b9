//! The reloptions of the table's TOAST table (`toast.autovacuum_*`, ...), read with the
//! table's row.
//!
//! Nothing else carries them to the new table (its own reloptions come with the shadow's
//! DDL); the cutover sets them with `ALTER TABLE .. SET (toast.name = 'value')`, which the
//! server ignores when the new table has no TOAST table. The rollback leaves them alone: the
//! old table never lost them.

use super::{Dependents, Kind, Move, options_sql};

/// The TOAST reloptions, set on the new table.
pub(super) struct ToastOptions;

impl Kind for ToastOptions {
    /// `ALTER TABLE .. SET (toast.name = 'value', ..)` on `m.table`, when there are any.
    fn forward(&self, deps: &Dependents, m: &Move) -> Vec<String> {
        if deps.toast_reloptions.is_empty() {
            return Vec::new();
        }
        let prefixed: Vec<String> = deps
            .toast_reloptions
            .iter()
            .map(|o| format!("toast.{o}"))
            .collect();
        vec![format!(
            "ALTER TABLE {} SET ({})",
            m.table,
            options_sql(&prefixed)
        )]
    }

    /// Nothing: the restored original kept its TOAST reloptions.
    fn rollback(&self, _deps: &Dependents, _m: &Move) -> Vec<String> {
        Vec::new()
    }
}
