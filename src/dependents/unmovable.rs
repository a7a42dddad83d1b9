//! Other objects bound to the table, a dependent view or their row types, that no kind
//! moves: they are refused at preflight.
//!
//! `pg_depend` records every object that refers to the table by OID. Those the other kinds
//! move (views, rules, policies, publication membership, statistics, triggers and
//! constraints of the table and its views, foreign keys) are excluded; what remains would
//! keep using the old table after the cutover: functions with an SQL-standard body
//! (`BEGIN ATOMIC` / `RETURN`, bound at creation, unlike a string body which resolves names
//! when it runs), users of the table's row type (the new table has a new one), and anything
//! else this version cannot move.

use super::read::{Batch, EVERY_VERSION, Params, Query, ReadContext, Rows};
use super::{Dependents, Joint, Kind, Refusal};

/// Other objects bound to the table, a view or their row types.
const OTHERS: Query = Query {
    what: "reading other dependents",
    sql: concat!(
        "SELECT DISTINCT pg_describe_object(d.classid, d.objid, 0),
            d.classid = 'pg_proc'::regclass
              AND EXISTS (SELECT 1 FROM pg_proc p WHERE p.oid = d.objid AND p.prosqlbody IS NOT NULL),
            d.refclassid = 'pg_type'::regclass,
            pg_describe_object(CASE WHEN d.refclassid = 'pg_type'::regclass
                                    THEN 'pg_class'::regclass ELSE d.refclassid END,
                               CASE WHEN d.refclassid = 'pg_type'::regclass
                                    THEN (SELECT typrelid FROM pg_type WHERE oid = d.refobjid)
                                    ELSE d.refobjid END, 0)
     FROM pg_depend d
     WHERE ",
        references_1_2!(),
        " AND d.deptype IN ('n', 'a')
       AND d.classid NOT IN ('pg_rewrite'::regclass, 'pg_policy'::regclass,
                             'pg_publication_rel'::regclass, 'pg_statistic_ext'::regclass)
       AND NOT (d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass)
       AND NOT (d.classid = 'pg_trigger'::regclass AND EXISTS (
             SELECT 1 FROM pg_trigger tg LEFT JOIN pg_constraint con ON con.oid = tg.tgconstraint
             WHERE tg.oid = d.objid
               AND (tg.tgrelid = ANY($1::oid[]) OR con.conrelid = $3
                    OR (con.contype = 'f' AND con.confrelid = $3))))
       AND NOT (d.classid = 'pg_constraint'::regclass AND EXISTS (
             SELECT 1 FROM pg_constraint con WHERE con.oid = d.objid
               AND (con.conrelid = ANY($1::oid[]) OR (con.contype = 'f' AND con.confrelid = $3))))
       AND NOT (d.classid = 'pg_attrdef'::regclass AND EXISTS (
             SELECT 1 FROM pg_attrdef ad WHERE ad.oid = d.objid AND ad.adrelid = ANY($1::oid[])))
     ORDER BY 1"
    ),
    batch: Batch::Second,
    params: Params::RelationsTypesAndOid,
    versions: EVERY_VERSION,
};

/// Objects bound to the table that cannot be moved: read and refused, nothing else.
pub(super) struct Unmovable;

impl Kind for Unmovable {
    fn queries(&self) -> &'static [&'static Query] {
        &[&OTHERS]
    }

    /// Each object onto `deps.unsupported`, with the reason that fits it.
    fn read(&self, rows: &mut Rows, _cx: &ReadContext, deps: &mut Dependents) {
        for r in rows.take(&OTHERS) {
            let what: String = r.get(0);
            let sql_body: bool = r.get(1);
            let row_type: bool = r.get(2);
            let on: String = r.get(3);
            deps.unsupported.push(if sql_body {
                Refusal::new(
                    what,
                    format!("has an SQL-standard body (BEGIN ATOMIC / RETURN) bound to {on} by OID: after the cutover it would keep using the old table"),
                )
                .with_fix(
                    Joint::Period,
                    "Drop it before the migration and recreate it after, or give it a string body (AS $$ .. $$), which resolves names when it runs",
                )
            } else if row_type {
                Refusal::new(
                    what,
                    format!("uses the row type of {on}, which stays with the old table (the new table has a new row type)"),
                )
                .with_fix(Joint::Colon, "drop or change it before the migration")
            } else {
                Refusal::new(
                    what,
                    format!("depends on {on} and this doppel version cannot move it to the new table"),
                )
                .with_fix(Joint::Colon, "drop it before the migration and recreate it after")
            });
        }
    }
}
