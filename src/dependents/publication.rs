//! Membership of the table in publications other than doppel's own.
//!
//! `pg_publication_rel` binds a publication to the table's OID, with its row filter and
//! column list (PostgreSQL 15+). The cutover drops the old table from each publication and
//! adds the new one with the same row filter and column list; the rollback script does the
//! reverse.

use super::read::{Batch, Params, Query, ReadContext, Rows};
use super::{Dependents, Kind, Move, Refusal};
use crate::sql::ident;

/// Membership of the table in a publication other than doppel's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Publication name.
    pub name: String,
    /// Row filter (`pg_get_expr(prqual, prrelid)`, PostgreSQL 15+), without `WHERE`.
    pub row_filter: Option<String>,
    /// Column list (`prattrs`, PostgreSQL 15+); `None` publishes every column.
    pub columns: Option<Vec<String>>,
    /// Columns of the table the membership uses (column list and row filter).
    pub used_columns: Vec<String>,
}

impl Publication {
    /// `ALTER PUBLICATION .. ADD TABLE <relation> (cols) WHERE (filter)`.
    fn add_sql(&self, relation: &str) -> String {
        let mut sql = format!(
            "ALTER PUBLICATION {} ADD TABLE {relation}",
            ident(&self.name)
        );
        if let Some(columns) = &self.columns {
            sql.push_str(&format!(" ({})", crate::sql::ident_list(columns)));
        }
        if let Some(filter) = &self.row_filter {
            sql.push_str(&format!(" WHERE ({filter})"));
        }
        sql
    }
}

/// Publication membership (PostgreSQL 15+: row filters and column lists).
const PUBLICATIONS: Query = Query {
    what: "reading publication membership",
    sql: "SELECT p.pubname::text, pg_get_expr(pr.prqual, pr.prrelid),
            CASE WHEN pr.prattrs IS NULL THEN NULL ELSE
              ARRAY(SELECT a.attname::text FROM unnest(pr.prattrs::int2[]) WITH ORDINALITY AS k(attnum, ord)
                    JOIN pg_attribute a ON a.attrelid = pr.prrelid AND a.attnum = k.attnum
                    ORDER BY k.ord) END,
            pr.oid, pg_has_role(p.pubowner, 'USAGE'), pg_get_userbyid(p.pubowner)::text
     FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
     WHERE pr.prrelid = $1 AND p.pubname <> $2 ORDER BY 1",
    batch: Batch::Second,
    params: Params::OidAndPublication,
    versions: 150000..i32::MAX,
};

/// Publication membership before PostgreSQL 15 (no row filters, no column lists).
const PUBLICATIONS_BEFORE_15: Query = Query {
    what: "reading publication membership",
    sql: "SELECT p.pubname::text, NULL::text, NULL::text[], pr.oid,
            pg_has_role(p.pubowner, 'USAGE'), pg_get_userbyid(p.pubowner)::text
     FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
     WHERE pr.prrelid = $1 AND p.pubname <> $2 ORDER BY 1",
    batch: Batch::Second,
    params: Params::OidAndPublication,
    versions: 0..150000,
};

/// Publication membership of the table.
pub(super) struct Publications;

impl Kind for Publications {
    fn queries(&self) -> &'static [&'static Query] {
        &[&PUBLICATIONS, &PUBLICATIONS_BEFORE_15]
    }

    /// The memberships into `deps.publications` (one of the two queries ran); refused when
    /// the publication's owner is a role the current user is not a member of.
    fn read(&self, rows: &mut Rows, cx: &ReadContext, deps: &mut Dependents) {
        let mut found = rows.take(&PUBLICATIONS);
        found.extend(rows.take(&PUBLICATIONS_BEFORE_15));
        for r in found {
            let list: Option<Vec<String>> = r.get(2);
            let mut used_columns = cx.columns("pg_publication_rel", r.get(3));
            for c in list.iter().flatten() {
                if !used_columns.contains(c) {
                    used_columns.push(c.clone());
                }
            }
            let publication = Publication {
                name: r.get(0),
                row_filter: r.get(1),
                columns: list,
                used_columns,
            };
            if !r.get::<_, bool>(4) {
                deps.unsupported.push(Refusal::new(
                    format!("publication {}", publication.name),
                    format!(
                        "includes {} and is owned by {}, a role the current user is not a member of: the cutover cannot move the membership to the new table",
                        cx.table,
                        r.get::<_, String>(5)
                    ),
                ));
            }
            deps.publications.push(publication);
        }
    }

    fn column_users<'d>(&self, deps: &'d Dependents) -> Vec<(String, &'d [String])> {
        deps.publications
            .iter()
            .map(|p| {
                (
                    format!("the membership in publication {}", p.name),
                    &p.used_columns[..],
                )
            })
            .collect()
    }

    /// Per publication: `m.from` dropped from it, `m.table` added with the same row filter
    /// and column list.
    fn forward(&self, deps: &Dependents, m: &Move) -> Vec<String> {
        let mut out = Vec::new();
        for p in &deps.publications {
            out.push(format!(
                "ALTER PUBLICATION {} DROP TABLE {}",
                ident(&p.name),
                m.from
            ));
            out.push(p.add_sql(&m.table));
        }
        out
    }
}
