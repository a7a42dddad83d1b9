//! Rules on the table, and rules on other relations whose actions use the table or a
//! dependent view (rules on a dependent view are recreated with it by `view.rs`).
//!
//! A rule is bound by OID to its relation and to every relation its action uses. The
//! table's own rules move like triggers: dropped from the kept old table, created on the new
//! one from `pg_get_ruledef`, firing state set. Rules of other relations are dropped before
//! the moves (they would keep the old table or a dropped view) and created again after them;
//! their tables are locked with the foreign-key children.

use super::read::{Batch, EVERY_VERSION, Params, Query, ReadContext, Rows};
use super::{Dependents, Kind, Lock, Move, Refusal, enable_sql, first_char, strip_semicolon};
use crate::sql::{ident, qualified};

/// A rule (not a view's `_RETURN` rule) on the table, on a dependent view, or on another
/// relation whose rule action uses the table or a dependent view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Rule name.
    pub name: String,
    /// OID of the relation the rule is on.
    pub relation_oid: u32,
    /// `"schema"."relation"` the rule is on.
    pub relation: String,
    /// The relation is a table (`LOCK TABLE`-able), not a view.
    pub on_table: bool,
    /// `pg_get_ruledef(oid, false)` without its trailing `;`.
    pub definition: String,
    /// `ev_enabled`: `O` (default), `D` disabled, `R` replica, `A` always.
    pub enabled: char,
    /// Columns of the table the rule uses, from `pg_depend`.
    pub columns: Vec<String>,
}

/// Rules on the table and the views, and rules whose action uses them or their row types.
const RULES: Query = Query {
    what: "reading rules",
    sql: concat!(
        "SELECT r.oid, r.ev_class, n.nspname::text, c.relname::text, r.rulename::text,
            pg_get_ruledef(r.oid, false), r.ev_enabled::text, pg_has_role(c.relowner, 'USAGE'),
            pg_get_userbyid(c.relowner)::text, c.relkind IN ('r', 'p')
     FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
     JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE r.rulename <> '_RETURN'
       AND (r.ev_class = ANY($1::oid[])
            OR r.oid IN (SELECT d.objid FROM pg_depend d
                         WHERE d.classid = 'pg_rewrite'::regclass AND ",
        references_1_2!(),
        "))
     ORDER BY r.ev_class, r.rulename"
    ),
    batch: Batch::Second,
    params: Params::RelationsAndTypes,
    versions: EVERY_VERSION,
};

/// Rules of the table and of other relations that use it.
pub(super) struct Rules;

impl Kind for Rules {
    fn queries(&self) -> &'static [&'static Query] {
        &[&RULES]
    }

    /// Rules on the table into `deps.rules`, on a view into its [`super::View::rules`], on
    /// another relation into `deps.other_rules` (refused when that relation's owner is a
    /// role the current user is not a member of).
    fn read(&self, rows: &mut Rows, cx: &ReadContext, deps: &mut Dependents) {
        for r in rows.take(&RULES) {
            let relid: u32 = r.get(1);
            let rule = Rule {
                name: r.get(4),
                relation_oid: relid,
                relation: qualified(&r.get::<_, String>(2), &r.get::<_, String>(3)),
                on_table: r.get(9),
                definition: strip_semicolon(&r.get::<_, String>(5)),
                enabled: first_char(r.get(6)),
                columns: cx.columns("pg_rewrite", r.get(0)),
            };
            if relid == cx.oid {
                deps.rules.push(rule);
            } else if let Some(&i) = cx.view_index.get(&relid) {
                deps.views[i].rules.push(rule);
            } else {
                if !r.get::<_, bool>(7) {
                    deps.unsupported.push(Refusal::new(
                        format!("rule {} on {}", rule.name, rule.relation),
                        format!(
                            "uses {}; it is owned by {}, a role the current user is not a member of, so the cutover cannot recreate it",
                            cx.table,
                            r.get::<_, String>(8)
                        ),
                    ));
                }
                deps.other_rules.push(rule);
            }
        }
    }

    fn column_users<'d>(&self, deps: &'d Dependents) -> Vec<(String, &'d [String])> {
        deps.rules
            .iter()
            .chain(&deps.other_rules)
            .map(|r| (format!("rule {} on {}", r.name, r.relation), &r.columns[..]))
            .collect()
    }

    /// The tables other rules are on (views are locked by `view.rs`).
    fn locks(&self, deps: &Dependents) -> Vec<Lock> {
        deps.other_rules
            .iter()
            .filter(|r| r.on_table)
            .map(|r| Lock::Table {
                oid: r.relation_oid,
                name: r.relation.clone(),
            })
            .collect()
    }

    /// Other relations' rules dropped.
    fn unbind(&self, deps: &Dependents) -> Vec<String> {
        deps.other_rules
            .iter()
            .map(|r| format!("DROP RULE {} ON {}", ident(&r.name), r.relation))
            .collect()
    }

    /// Per rule of the table: dropped from `m.from`, created from its definition, firing
    /// state set.
    fn forward(&self, deps: &Dependents, m: &Move) -> Vec<String> {
        let mut out = Vec::new();
        for r in &deps.rules {
            out.push(format!("DROP RULE {} ON {}", ident(&r.name), m.from));
            out.push(r.definition.clone());
            out.extend(enable_sql("RULE", &m.table, &r.name, r.enabled));
        }
        out
    }

    /// Other relations' rules created again, firing state set.
    fn rebind(&self, deps: &Dependents) -> Vec<String> {
        let mut out = Vec::new();
        for r in &deps.other_rules {
            out.push(r.definition.clone());
            out.extend(enable_sql("RULE", &r.relation, &r.name, r.enabled));
        }
        out
    }
}
