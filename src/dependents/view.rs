//! Views on the table, transitively (views on those views), and the [`View`] record that
//! materialized views share with them (one catalog query reads both; their rebuild is in
//! `matview.rs`).
//!
//! A plain view is bound to the table's OID through its `_RETURN` rule. The cutover locks it
//! (a no-op owner change, leaf first), drops it (leaf first) before the moves and creates it
//! again (root first) after them, with everything a `DROP VIEW` removes: owner, options,
//! grants, comments, column defaults, triggers and rules. `CREATE OR REPLACE VIEW` is not
//! used: it refuses a column whose type changed (PostgreSQL docs, CREATE VIEW).

use tokio_postgres::Row;

use super::read::{Batch, EVERY_VERSION, Params, Query, ReadContext, Rows};
use super::{
    Dependents, Joint, Kind, Lock, Refusal, Rule, Trigger, enable_sql, options_sql, strip_semicolon,
};
use crate::sql::{comment_sql, ident, qualified};

/// A privilege granted on a view (or one of its columns), as `aclexplode` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `PUBLIC` or a quoted role name, ready for SQL.
    pub grantee: String,
    /// `SELECT`, `INSERT`, ... (`aclexplode`'s `privilege_type`).
    pub privilege: String,
    /// Granted `WITH GRANT OPTION`.
    pub grantable: bool,
    /// The column for a column-level grant, `None` for the whole relation.
    pub column: Option<String>,
}

/// An index of a dependent materialized view, recreated on its rebuilt copy (read and used
/// by `matview.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatviewIndex {
    /// OID of the index (names the temporary index of the rebuild).
    pub oid: u32,
    /// Index name (the rebuilt index takes it once the old one is dropped).
    pub name: String,
    /// `UNIQUE` index.
    pub unique: bool,
    /// `pg_get_indexdef` after `CREATE [UNIQUE] INDEX name ON schema.matview `: `USING
    /// method (columns) [INCLUDE ..] [WITH (..)] [WHERE ..]`.
    pub body: String,
    /// Tablespace when not the database default.
    pub tablespace: Option<String>,
    /// The materialized view is clustered on this index (`ALTER .. CLUSTER ON`).
    pub clustered: bool,
    /// Comment on the index.
    pub comment: Option<String>,
}

/// A view or materialized view that references the table, directly or through other views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// OID (a recreated view gets a new one).
    pub oid: u32,
    /// Schema name.
    pub schema: String,
    /// View name.
    pub name: String,
    /// `relkind = 'm'`.
    pub materialized: bool,
    /// Materialized view holds data (`relispopulated`): recreated `WITH DATA`.
    pub populated: bool,
    /// Temporary view (`relpersistence = 't'`), possibly of another session: a blocker.
    pub temporary: bool,
    /// Longest chain of views from the table: 1 for a view on the table, 2 for a view on such
    /// a view, ... Views are created in increasing and dropped in decreasing depth.
    pub depth: i32,
    /// `pg_get_viewdef(oid, false)` without its trailing `;`.
    pub definition: String,
    /// `reloptions` as `name=value` (`security_barrier`, `check_option`, `security_invoker`,
    /// or storage parameters of a materialized view).
    pub options: Vec<String>,
    /// Owner role name.
    pub owner: String,
    /// Tablespace of a materialized view when not the database default.
    pub tablespace: Option<String>,
    /// Grants to roles other than the owner, relation and column level.
    pub grants: Vec<Grant>,
    /// Comment on the view.
    pub comment: Option<String>,
    /// Column comments as (column, comment).
    pub column_comments: Vec<(String, String)>,
    /// Column defaults (`ALTER VIEW .. ALTER COLUMN .. SET DEFAULT`) as (column, expression).
    pub column_defaults: Vec<(String, String)>,
    /// Triggers on the view (`INSTEAD OF` ...).
    pub triggers: Vec<Trigger>,
    /// Rules on the view other than its `_RETURN` rule.
    pub rules: Vec<Rule>,
    /// Indexes of a materialized view.
    pub indexes: Vec<MatviewIndex>,
    /// Columns of the table the view's query uses directly, from `pg_depend`.
    pub columns: Vec<String>,
}

impl View {
    /// `"schema"."name"`.
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }

    /// `VIEW` or `MATERIALIZED VIEW`, for SQL and (lower-cased) messages.
    pub(super) fn keyword(&self) -> &'static str {
        if self.materialized {
            "MATERIALIZED VIEW"
        } else {
            "VIEW"
        }
    }

    /// Statements creating the (plain) view again with everything a DROP removed.
    fn create_sql(&self) -> Vec<String> {
        let q = self.qualified();
        let mut out = vec![format!(
            "CREATE VIEW {q}{} AS {}",
            self.with_options(),
            self.definition
        )];
        out.extend(self.decorations(&q));
        for (column, default) in &self.column_defaults {
            out.push(format!(
                "ALTER VIEW {q} ALTER COLUMN {} SET DEFAULT {default}",
                ident(column)
            ));
        }
        for t in &self.triggers {
            out.push(t.definition.clone());
            out.extend(enable_sql("TRIGGER", &q, &t.name, t.enabled));
        }
        for r in &self.rules {
            out.push(r.definition.clone());
            out.extend(enable_sql("RULE", &q, &r.name, r.enabled));
        }
        out
    }

    /// ` WITH (options)`, or nothing.
    pub(super) fn with_options(&self) -> String {
        if self.options.is_empty() {
            String::new()
        } else {
            format!(" WITH ({})", options_sql(&self.options))
        }
    }

    /// Owner, grants and comments of the view, applied to the relation `q`.
    pub(super) fn decorations(&self, q: &str) -> Vec<String> {
        let kw = self.keyword();
        let mut out = vec![format!("ALTER {kw} {q} OWNER TO {}", ident(&self.owner))];
        for g in &self.grants {
            let column = g
                .column
                .as_ref()
                .map(|c| format!(" ({})", ident(c)))
                .unwrap_or_default();
            out.push(format!(
                "GRANT {}{column} ON {q} TO {}{}",
                g.privilege,
                g.grantee,
                if g.grantable {
                    " WITH GRANT OPTION"
                } else {
                    ""
                }
            ));
        }
        if self.comment.is_some() {
            out.push(comment_sql(&format!("{kw} {q}"), self.comment.as_deref()));
        }
        for (column, comment) in &self.column_comments {
            out.push(comment_sql(
                &format!("COLUMN {q}.{}", ident(column)),
                Some(comment),
            ));
        }
        out
    }
}

/// Dependent views: a view depends on the table (or a view, or their row types) through its
/// `_RETURN` rule; depth is the longest chain from the table. First batch.
const VIEWS: Query = Query {
    what: "reading dependent views",
    sql: "WITH RECURSIVE chain(oid, depth) AS (
      SELECT r.ev_class, 1
      FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
      WHERE d.classid = 'pg_rewrite'::regclass AND r.rulename = '_RETURN' AND r.ev_class <> $1
        AND ((d.refclassid = 'pg_class'::regclass AND d.refobjid = $1)
          OR (d.refclassid = 'pg_type'::regclass
              AND d.refobjid = (SELECT reltype FROM pg_class WHERE oid = $1)))
      UNION
      SELECT r.ev_class, chain.depth + 1
      FROM chain JOIN pg_class base ON base.oid = chain.oid
      JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass
        AND ((d.refclassid = 'pg_class'::regclass AND d.refobjid = base.oid)
          OR (d.refclassid = 'pg_type'::regclass AND d.refobjid = base.reltype))
      JOIN pg_rewrite r ON r.oid = d.objid
      WHERE r.rulename = '_RETURN' AND r.ev_class <> base.oid AND chain.depth < 1000
    ), deepest AS (SELECT oid, max(depth) AS depth FROM chain GROUP BY oid)
    SELECT v.oid, n.nspname::text, v.relname::text, v.relkind = 'm', v.relispopulated,
           v.relpersistence = 't', deepest.depth, pg_get_viewdef(v.oid, false),
           coalesce(v.reloptions, '{}')::text[], pg_get_userbyid(v.relowner)::text,
           pg_has_role(v.relowner, 'USAGE'),
           (SELECT spcname::text FROM pg_tablespace WHERE oid = v.reltablespace),
           obj_description(v.oid, 'pg_class'),
           (SELECT r.oid FROM pg_rewrite r WHERE r.ev_class = v.oid AND r.rulename = '_RETURN'),
           v.reltype
    FROM deepest JOIN pg_class v ON v.oid = deepest.oid
    JOIN pg_namespace n ON n.oid = v.relnamespace
    ORDER BY deepest.depth, v.oid",
    batch: Batch::First,
    params: Params::Oid,
    versions: EVERY_VERSION,
};

/// Grants on dependent views, relation and column level, other than the owner's.
const GRANTS: Query = Query {
    what: "reading grants on dependent views",
    sql: "SELECT c.oid, NULL::text,
           CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
           a.privilege_type::text, a.is_grantable
    FROM pg_class c, aclexplode(c.relacl) a
    WHERE c.oid = ANY($1::oid[]) AND a.grantee <> c.relowner
    UNION ALL
    SELECT att.attrelid, att.attname::text,
           CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
           a.privilege_type::text, a.is_grantable
    FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid, aclexplode(att.attacl) a
    WHERE att.attrelid = ANY($1::oid[]) AND att.attnum > 0 AND NOT att.attisdropped
      AND a.grantee <> c.relowner
    ORDER BY 1, 2 NULLS FIRST, 3, 4",
    batch: Batch::Second,
    params: Params::Views,
    versions: EVERY_VERSION,
};

/// Column comments of dependent views.
const COLUMN_COMMENTS: Query = Query {
    what: "reading column comments of dependent views",
    sql: "SELECT d.objoid, a.attname::text, d.description
    FROM pg_description d
    JOIN pg_attribute a ON a.attrelid = d.objoid AND a.attnum = d.objsubid
    WHERE d.classoid = 'pg_class'::regclass AND d.objoid = ANY($1::oid[]) AND d.objsubid > 0
    ORDER BY 1, a.attnum",
    batch: Batch::Second,
    params: Params::Views,
    versions: EVERY_VERSION,
};

/// Column defaults of dependent views.
const COLUMN_DEFAULTS: Query = Query {
    what: "reading column defaults of dependent views",
    sql: "SELECT ad.adrelid, a.attname::text, pg_get_expr(ad.adbin, ad.adrelid)
    FROM pg_attrdef ad
    JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
    WHERE ad.adrelid = ANY($1::oid[]) ORDER BY 1, a.attnum",
    batch: Batch::Second,
    params: Params::Views,
    versions: EVERY_VERSION,
};

/// Parses the rows of the views query (first batch) into `deps.views`, root first, with
/// what is known from that row alone, and pushes the views that cannot be recreated (owned
/// by a role the current user is not a member of, temporary) onto `deps.unsupported`.
/// Returns the views' row types, in the same order: the second batch looks for users of
/// those as well.
pub(super) fn read_views(rows: &mut Rows, cx: &ReadContext, deps: &mut Dependents) -> Vec<u32> {
    let mut types = Vec::new();
    for r in rows.take(&VIEWS) {
        types.push(r.get(14));
        let view = parse_view(&r, cx);
        let can_own: bool = r.get(10);
        if !can_own {
            deps.unsupported.push(
                Refusal::new(
                    format!("{} {}", view.keyword().to_lowercase(), view.qualified()),
                    format!(
                        "is owned by {}, a role the current user is not a member of: the cutover must drop and recreate it",
                        view.owner
                    ),
                )
                .with_fix(
                    Joint::Semicolon,
                    format!(
                        "run doppel as a superuser or GRANT {} TO the doppel user",
                        ident(&view.owner)
                    ),
                ),
            );
        }
        if view.temporary {
            deps.unsupported.push(
                Refusal::new(
                    format!("temporary view {}", view.qualified()),
                    format!(
                        "(of a session) depends on {}: it cannot be recreated from another session",
                        cx.table
                    ),
                )
                .with_fix(Joint::Semicolon, "end that session or drop the view"),
            );
        }
        deps.views.push(view);
    }
    types
}

/// One row of [`VIEWS`] as a [`View`] without grants, column comments and defaults,
/// triggers, rules or indexes (read in the second batch).
fn parse_view(r: &Row, cx: &ReadContext) -> View {
    View {
        oid: r.get(0),
        schema: r.get(1),
        name: r.get(2),
        materialized: r.get(3),
        populated: r.get(4),
        temporary: r.get(5),
        depth: r.get(6),
        definition: strip_semicolon(&r.get::<_, String>(7)),
        options: r.get(8),
        owner: r.get(9),
        tablespace: r.get(11),
        comment: r.get(12),
        columns: cx.columns("pg_rewrite", r.get(13)),
        grants: Vec::new(),
        column_comments: Vec::new(),
        column_defaults: Vec::new(),
        triggers: Vec::new(),
        rules: Vec::new(),
        indexes: Vec::new(),
    }
}

/// Views and what a `DROP VIEW` removes with them. Materialized views are read here too
/// (the same query) but moved by `matview.rs`.
pub(super) struct Views;

impl Kind for Views {
    fn queries(&self) -> &'static [&'static Query] {
        &[&VIEWS, &GRANTS, &COLUMN_COMMENTS, &COLUMN_DEFAULTS]
    }

    /// Grants, column comments and column defaults of the views read by [`read_views`].
    fn read(&self, rows: &mut Rows, cx: &ReadContext, deps: &mut Dependents) {
        for r in rows.take(&GRANTS) {
            view_of(deps, cx, &r).grants.push(Grant {
                column: r.get(1),
                grantee: r.get(2),
                privilege: r.get(3),
                grantable: r.get(4),
            });
        }
        for r in rows.take(&COLUMN_COMMENTS) {
            view_of(deps, cx, &r)
                .column_comments
                .push((r.get(1), r.get(2)));
        }
        for r in rows.take(&COLUMN_DEFAULTS) {
            view_of(deps, cx, &r)
                .column_defaults
                .push((r.get(1), r.get(2)));
        }
    }

    /// Every view and materialized view with the columns its query uses directly.
    fn column_users<'d>(&self, deps: &'d Dependents) -> Vec<(String, &'d [String])> {
        deps.views
            .iter()
            .map(|v| {
                (
                    format!("{} {}", v.keyword().to_lowercase(), v.qualified()),
                    &v.columns[..],
                )
            })
            .collect()
    }

    /// `ALTER VIEW v OWNER TO <its owner>` for each plain view, leaf first: ACCESS EXCLUSIVE
    /// on the view alone, no catalog change (`ATExecChangeOwner` does nothing when the owner
    /// is unchanged); `LOCK TABLE` on a view would also lock its base tables.
    fn locks(&self, deps: &Dependents) -> Vec<Lock> {
        plain_leaf_first(deps)
            .map(|v| {
                Lock::Statement(format!(
                    "ALTER VIEW {} OWNER TO {}",
                    v.qualified(),
                    ident(&v.owner)
                ))
            })
            .collect()
    }

    /// `DROP VIEW` for each plain view, leaf first.
    fn unbind(&self, deps: &Dependents) -> Vec<String> {
        plain_leaf_first(deps)
            .map(|v| format!("DROP VIEW {}", v.qualified()))
            .collect()
    }

    /// Each plain view created again, root first, with its owner, options, grants, comments,
    /// column defaults, triggers and rules; its definition names the table, which is now the
    /// other relation.
    fn rebind(&self, deps: &Dependents) -> Vec<String> {
        deps.views
            .iter()
            .filter(|v| !v.materialized)
            .flat_map(View::create_sql)
            .collect()
    }
}

/// The view whose OID is the first column of `r`.
fn view_of<'d>(deps: &'d mut Dependents, cx: &ReadContext, r: &Row) -> &'d mut View {
    &mut deps.views[cx.view_index[&r.get::<_, u32>(0)]]
}

/// The plain views, deepest first.
fn plain_leaf_first(deps: &Dependents) -> impl Iterator<Item = &View> {
    deps.views.iter().rev().filter(|v| !v.materialized)
}
