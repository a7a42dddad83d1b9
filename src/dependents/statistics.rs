//! Extended statistics objects on the table (`CREATE STATISTICS`).
//!
//! A statistics object is bound to its table's OID, and its name is unique per schema: the
//! cutover drops the old table's object, then creates it on the new table from
//! `pg_get_statisticsobjdef` (which names the table by its name), with its statistics
//! target, owner and comment. (Per-column statistics targets are carried by the shadow's
//! DDL, not here.)

use super::read::{Batch, EVERY_VERSION, Params, Query, ReadContext, Rows};
use super::{Dependents, Kind, Move, Refusal};
use crate::sql::{comment_sql, ident, qualified};

/// An extended statistics object on the table (`CREATE STATISTICS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatisticsObject {
    /// `"schema"."name"` (statistics names are unique per schema, so the old table's object
    /// is dropped before the new one is created).
    pub name: String,
    /// `pg_get_statisticsobjdef`: `CREATE STATISTICS schema.name (kinds) ON .. FROM schema.t`.
    pub definition: String,
    /// `stxstattarget` when set (`ALTER STATISTICS .. SET STATISTICS`).
    pub target: Option<i32>,
    /// Owner role name.
    pub owner: String,
    /// Comment.
    pub comment: Option<String>,
    /// Columns of the table it covers, from `pg_depend`.
    pub columns: Vec<String>,
}

/// Extended statistics objects on the table.
const STATISTICS: Query = Query {
    what: "reading extended statistics",
    sql: "SELECT s.oid, n.nspname::text, s.stxname::text, pg_get_statisticsobjdef(s.oid),
           nullif(coalesce(s.stxstattarget::int, -1), -1),
           pg_get_userbyid(s.stxowner)::text, pg_has_role(s.stxowner, 'USAGE'),
           obj_description(s.oid, 'pg_statistic_ext')
    FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
    WHERE s.stxrelid = $1 ORDER BY n.nspname, s.stxname",
    batch: Batch::First,
    params: Params::Oid,
    versions: EVERY_VERSION,
};

/// Extended statistics of the table.
pub(super) struct Statistics;

impl Kind for Statistics {
    fn queries(&self) -> &'static [&'static Query] {
        &[&STATISTICS]
    }

    /// The objects into `deps.statistics`; refused when the owner is a role the current
    /// user is not a member of.
    fn read(&self, rows: &mut Rows, cx: &ReadContext, deps: &mut Dependents) {
        for r in rows.take(&STATISTICS) {
            let stats = StatisticsObject {
                name: qualified(&r.get::<_, String>(1), &r.get::<_, String>(2)),
                definition: r.get(3),
                target: r.get(4),
                owner: r.get(5),
                comment: r.get(7),
                columns: cx.columns("pg_statistic_ext", r.get(0)),
            };
            if !r.get::<_, bool>(6) {
                deps.unsupported.push(Refusal::new(
                    format!("statistics object {}", stats.name),
                    format!(
                        "is owned by {}, a role the current user is not a member of: the cutover cannot move it",
                        stats.owner
                    ),
                ));
            }
            deps.statistics.push(stats);
        }
    }

    fn column_users<'d>(&self, deps: &'d Dependents) -> Vec<(String, &'d [String])> {
        deps.statistics
            .iter()
            .map(|s| (format!("statistics object {}", s.name), &s.columns[..]))
            .collect()
    }

    /// Per object: dropped, created from its definition, target, owner and comment set.
    /// The same both ways (the definition names the table by its name).
    fn forward(&self, deps: &Dependents, _m: &Move) -> Vec<String> {
        let mut out = Vec::new();
        for s in &deps.statistics {
            out.push(format!("DROP STATISTICS {}", s.name));
            out.push(s.definition.clone());
            if let Some(target) = s.target {
                out.push(format!(
                    "ALTER STATISTICS {} SET STATISTICS {target}",
                    s.name
                ));
            }
            out.push(format!(
                "ALTER STATISTICS {} OWNER TO {}",
                s.name,
                ident(&s.owner)
            ));
            if s.comment.is_some() {
                out.push(comment_sql(
                    &format!("STATISTICS {}", s.name),
                    s.comment.as_deref(),
                ));
            }
        }
        out
    }
}
