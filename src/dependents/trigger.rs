//! Triggers on the table (and on dependent views, recreated with their view by `view.rs`).
//!
//! A trigger is bound to its relation's OID. The cutover drops each from the kept old table
//! (so nothing fires twice there) and creates it on the new table from
//! `pg_get_triggerdef`, which names the table by its name, now the new table's; its firing
//! state (`ALTER TABLE .. DISABLE / ENABLE REPLICA / ENABLE ALWAYS TRIGGER`) follows. Internal
//! triggers (those of foreign keys and constraints) are not read: they come back with their
//! constraints; nor are the clones PostgreSQL puts on a partition of a partitioned table's
//! trigger (`tgparentid`): they come back when the trigger is created on the parent.

use super::read::{Batch, EVERY_VERSION, Params, Query, ReadContext, Rows};
use super::{Dependents, Kind, Move, enable_sql, first_char};
use crate::sql::{ident, qualified};

/// A trigger (not internal) on the table or on a dependent view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// Trigger name.
    pub name: String,
    /// `"schema"."relation"` the trigger is on, as named when read.
    pub relation: String,
    /// `pg_get_triggerdef(oid, false)`: `CREATE [CONSTRAINT] TRIGGER .. ON schema.relation ..`.
    pub definition: String,
    /// `tgenabled`: `O` (origin/local, the default), `D` disabled, `R` replica, `A` always.
    pub enabled: char,
    /// Columns of the table the trigger uses (`UPDATE OF`, `WHEN`), from `pg_depend`.
    pub columns: Vec<String>,
}

/// Triggers on the table and on the dependent views; not the clones of a partitioned
/// table's trigger on its partitions (`tgparentid`), which follow it.
const TRIGGERS: Query = Query {
    what: "reading triggers",
    sql: "SELECT tg.oid, tg.tgrelid, n.nspname::text, c.relname::text, tg.tgname::text,
           pg_get_triggerdef(tg.oid, false), tg.tgenabled::text
    FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE tg.tgrelid = ANY($1::oid[]) AND NOT tg.tgisinternal AND tg.tgparentid = 0
    ORDER BY tg.tgrelid, tg.tgname",
    batch: Batch::Second,
    params: Params::Relations,
    versions: EVERY_VERSION,
};

/// Triggers of the table.
pub(super) struct Triggers;

impl Kind for Triggers {
    fn queries(&self) -> &'static [&'static Query] {
        &[&TRIGGERS]
    }

    /// Triggers on the table into `deps.triggers`, those on a view into its
    /// [`super::View::triggers`].
    fn read(&self, rows: &mut Rows, cx: &ReadContext, deps: &mut Dependents) {
        for r in rows.take(&TRIGGERS) {
            let relid: u32 = r.get(1);
            let trigger = Trigger {
                name: r.get(4),
                relation: qualified(&r.get::<_, String>(2), &r.get::<_, String>(3)),
                definition: r.get(5),
                enabled: first_char(r.get(6)),
                columns: cx.columns("pg_trigger", r.get(0)),
            };
            if relid == cx.oid {
                deps.triggers.push(trigger);
            } else {
                deps.views[cx.view_index[&relid]].triggers.push(trigger);
            }
        }
    }

    fn column_users<'d>(&self, deps: &'d Dependents) -> Vec<(String, &'d [String])> {
        deps.triggers
            .iter()
            .map(|t| (format!("trigger {}", t.name), &t.columns[..]))
            .collect()
    }

    /// Per trigger: dropped from `m.from`, created from its definition, firing state set.
    fn forward(&self, deps: &Dependents, m: &Move) -> Vec<String> {
        let mut out = Vec::new();
        for t in &deps.triggers {
            out.push(format!("DROP TRIGGER {} ON {}", ident(&t.name), m.from));
            out.push(t.definition.clone());
            out.extend(enable_sql("TRIGGER", &m.table, &t.name, t.enabled));
        }
        out
    }
}
