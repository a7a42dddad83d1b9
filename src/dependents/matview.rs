//! Materialized views on the table, rebuilt after the commit.
//!
//! The cutover transaction leaves them alone: they stay populated and readable (stale by
//! nature) while still reading the old table. After the commit each is rebuilt on the table
//! that has the name ([`View::rebuild_sql`]): a copy created `WITH NO DATA` from the
//! definition read before the cutover, given the owner, grants, comments, storage options
//! and indexes, filled by `REFRESH MATERIALIZED VIEW` (which runs the query as the owner in a
//! security-restricted operation: PostgreSQL docs, REFRESH MATERIALIZED VIEW), then swapped
//! in under a short retried lock. A new relation replaces the old one, so nothing may depend
//! on a materialized view, and one may not use a plain view the cutover recreates: both are
//! refused. The [`View`] record itself is read by `view.rs` (one query reads both kinds).

use super::read::{Batch, EVERY_VERSION, Params, Query, ReadContext, Rows};
use super::{Dependents, Finish, Joint, Kind, MatviewIndex, Refusal, View};
use crate::sql::{comment_sql, ident, literal, qualified};

/// `lock_timeout` of each try to take the lock that swaps a rebuilt materialized view in.
pub const MATVIEW_SWAP_LOCK_TIMEOUT_MS: u32 = 200;

/// Tries to take that lock before the rebuild gives up (backoff between tries: 50 ms × 2^n,
/// at most 2 s, ±50% jitter; about 10 s in all).
pub const MATVIEW_SWAP_ATTEMPTS: u32 = 10;

/// Indexes of dependent materialized views, with the prefix `pg_get_indexdef` starts with.
const INDEXES: Query = Query {
    what: "reading indexes of dependent materialized views",
    sql: "SELECT i.indrelid, i.indexrelid, ic.relname::text, i.indisunique,
           pg_get_indexdef(i.indexrelid),
           format('CREATE %sINDEX %s ON %s.%s ', CASE WHEN i.indisunique THEN 'UNIQUE ' ELSE '' END,
                  quote_ident(ic.relname), quote_ident(n.nspname), quote_ident(c.relname)),
           (SELECT spcname::text FROM pg_tablespace WHERE oid = ic.reltablespace),
           i.indisclustered, obj_description(i.indexrelid, 'pg_class')
    FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE i.indrelid = ANY($1::oid[]) ORDER BY i.indrelid, i.indexrelid",
    batch: Batch::Second,
    params: Params::Views,
    versions: EVERY_VERSION,
};

/// The plain dependent views that materialized views use.
const VIEWS_USED: Query = Query {
    what: "reading the views materialized views use",
    sql: "SELECT DISTINCT format('%I.%I', mn.nspname, m.relname), format('%I.%I', vn.nspname, v.relname)
    FROM pg_rewrite r JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
    JOIN pg_class v ON (d.refclassid = 'pg_class'::regclass AND v.oid = d.refobjid)
                    OR (d.refclassid = 'pg_type'::regclass AND v.reltype = d.refobjid)
    JOIN pg_namespace vn ON vn.oid = v.relnamespace
    JOIN pg_class m ON m.oid = r.ev_class JOIN pg_namespace mn ON mn.oid = m.relnamespace
    WHERE r.rulename = '_RETURN' AND r.ev_class = ANY($1::oid[]) AND v.oid = ANY($2::oid[])
    ORDER BY 1, 2",
    batch: Batch::Second,
    params: Params::MatviewsAndPlainViews,
    versions: EVERY_VERSION,
};

/// Views, policies and statistics that depend on materialized views.
const DEPENDENTS: Query = Query {
    what: "reading what depends on materialized views",
    sql: "SELECT DISTINCT format('%I.%I', mn.nspname, m.relname),
           coalesce((SELECT pg_describe_object('pg_class'::regclass, r.ev_class, 0) FROM pg_rewrite r
                     WHERE d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid AND r.rulename = '_RETURN'),
                    pg_describe_object(d.classid, d.objid, 0))
    FROM pg_depend d
    JOIN pg_class m ON (d.refclassid = 'pg_class'::regclass AND m.oid = d.refobjid)
                    OR (d.refclassid = 'pg_type'::regclass AND m.reltype = d.refobjid)
    JOIN pg_namespace mn ON mn.oid = m.relnamespace
    WHERE m.oid = ANY($1::oid[]) AND d.deptype IN ('n', 'a')
      AND d.classid IN ('pg_rewrite'::regclass, 'pg_policy'::regclass, 'pg_statistic_ext'::regclass)
      AND NOT (d.classid = 'pg_rewrite'::regclass
               AND d.objid IN (SELECT oid FROM pg_rewrite WHERE ev_class = m.oid))
    ORDER BY 1, 2",
    batch: Batch::Second,
    params: Params::Matviews,
    versions: EVERY_VERSION,
};

/// Materialized views: their indexes, what refuses them, their rebuild after the commit.
pub(super) struct Matviews;

impl Kind for Matviews {
    fn queries(&self) -> &'static [&'static Query] {
        &[&INDEXES, &VIEWS_USED, &DEPENDENTS]
    }

    /// Indexes of the materialized views (refused when the definition does not start as
    /// expected), then the materialized views that use a dependent view and the objects that
    /// depend on a materialized view, both refused.
    fn read(&self, rows: &mut Rows, cx: &ReadContext, deps: &mut Dependents) {
        // pg_get_indexdef starts with `CREATE [UNIQUE] INDEX name ON schema.relation `
        // (quote_ident'ed, always qualified: ruleutils' generate_qualified_relation_name);
        // the rest (`USING ..`) is reused on the rebuilt copy.
        for r in rows.take(&INDEXES) {
            let view = &mut deps.views[cx.view_index[&r.get::<_, u32>(0)]];
            let definition: String = r.get(4);
            let prefix: String = r.get(5);
            let Some(body) = definition.strip_prefix(&prefix) else {
                deps.unsupported.push(
                    Refusal::new(
                        format!(
                            "index {} of materialized view {}",
                            r.get::<_, String>(2),
                            view.qualified()
                        ),
                        format!("has a definition doppel cannot rebuild on a copy ({definition})"),
                    )
                    .with_fix(
                        Joint::Colon,
                        "drop the materialized view before the migration and recreate it after",
                    ),
                );
                continue;
            };
            view.indexes.push(MatviewIndex {
                oid: r.get(1),
                name: r.get(2),
                unique: r.get(3),
                body: body.to_string(),
                tablespace: r.get(6),
                clustered: r.get(7),
                comment: r.get(8),
            });
        }
        for r in rows.take(&VIEWS_USED) {
            deps.unsupported.push(
                Refusal::new(
                    format!("materialized view {}", r.get::<_, String>(0)),
                    format!(
                        "uses the view {}, which depends on {}: the cutover recreates that view, which it cannot do while a materialized view uses it",
                        r.get::<_, String>(1),
                        cx.table
                    ),
                )
                .with_fix(
                    Joint::Semicolon,
                    "drop the materialized view before the migration and recreate it after",
                ),
            );
        }
        for r in rows.take(&DEPENDENTS) {
            deps.unsupported.push(
                Refusal::new(
                    r.get::<_, String>(1),
                    format!(
                        "depends on materialized view {}, which doppel rebuilds after the cutover (a new relation replaces it, so the old one cannot be dropped while this uses it)",
                        r.get::<_, String>(0)
                    ),
                )
                .with_fix(Joint::Colon, "drop it before the migration and recreate it after"),
            );
        }
    }

    /// The rebuild of each materialized view, labelled `materialized view "schema"."name"`.
    fn after_commit(&self, deps: &Dependents, f: &Finish) -> Vec<(String, String)> {
        deps.views
            .iter()
            .filter(|v| v.materialized)
            .map(|v| {
                (
                    format!("materialized view {}", v.qualified()),
                    v.rebuild_sql(deps.table_oid, &f.onto, &f.still_reads),
                )
            })
            .collect()
    }
}

impl View {
    /// Name of the copy a rebuild of this materialized view builds before the swap
    /// (`_doppel_<table oid>_mv<matview oid>`, in the matview's schema).
    pub fn rebuild_name(&self, table_oid: u32) -> String {
        format!("_doppel_{table_oid}_mv{}", self.oid)
    }

    /// The rebuild of a materialized view after a cutover (or a rollback) commits, as one
    /// statement (a `DO` block, hence one transaction): create a copy from the definition
    /// read before the cutover (which names the table by its name, now the other relation)
    /// `WITH NO DATA`, with its storage options, tablespace, owner, grants, comments and
    /// indexes, and fill it with `REFRESH MATERIALIZED VIEW` (as the owner, like any
    /// refresh; skipped when the materialized view was not populated); then, each try
    /// under a `lock_timeout` of [`MATVIEW_SWAP_LOCK_TIMEOUT_MS`] with up to
    /// [`MATVIEW_SWAP_ATTEMPTS`] tries and backoff, lock the materialized view (a no-op owner
    /// change: `LOCK TABLE` refuses materialized views), drop it, and rename the copy and its
    /// indexes into place. Readers of the materialized view wait only for the drop and the
    /// renames. On any error nothing is left: the copy is rolled back, the materialized view
    /// is unchanged (still reading `still_reads`), and the error names it, says so and
    /// carries the server's message and SQLSTATE. `onto` names the relation the rebuilt view
    /// reads, for the message.
    fn rebuild_sql(&self, table_oid: u32, onto: &str, still_reads: &str) -> String {
        let q = self.qualified();
        let (build, swap) = self.rebuild_steps(table_oid);
        let lock = format!(
            "ALTER MATERIALIZED VIEW {q} OWNER TO {}",
            ident(&self.owner)
        );
        let execute = |sql: &str| format!("EXECUTE {};", literal(sql));
        // Names go into a comment line: no line break may end it early.
        let comment = |text: &str| text.replace(|c: char| c.is_control(), " ");
        let mut body = String::new();
        body.push_str("DECLARE\n  attempt int := 0;\nBEGIN\n");
        body.push_str(&format!(
            "  -- rebuild {} on {}: a copy first, then swapped in under a short lock\n",
            comment(&q),
            comment(onto)
        ));
        for sql in &build {
            body.push_str(&format!("  {}\n", execute(sql)));
        }
        body.push_str(&format!(
            "  LOOP\n    BEGIN\n      PERFORM set_config('lock_timeout', '{MATVIEW_SWAP_LOCK_TIMEOUT_MS}ms', true);\n      {}\n      EXIT;\n    EXCEPTION WHEN lock_not_available THEN\n      attempt := attempt + 1;\n      IF attempt >= {MATVIEW_SWAP_ATTEMPTS} THEN RAISE; END IF;\n      PERFORM pg_sleep(least(2.0, 0.05 * 2 ^ attempt) * (0.5 + random()));\n    END;\n  END LOOP;\n",
            execute(&lock)
        ));
        for sql in &swap {
            body.push_str(&format!("  {}\n", execute(sql)));
        }
        let message = format!(
            "materialized view {q} was not rebuilt on {onto}; it is unchanged and still reads {still_reads} (REFRESH MATERIALIZED VIEW would not see rows written to {onto}): "
        );
        let hint = format!(
            "Fix the cause and rebuild it: create it again from its definition, which names {onto}, with its indexes, owner and grants (or drop it and create it again). Until then {still_reads} cannot be dropped without CASCADE."
        );
        body.push_str(&format!(
            "EXCEPTION WHEN OTHERS THEN\n  RAISE EXCEPTION USING MESSAGE = {} || SQLERRM, ERRCODE = SQLSTATE, HINT = {};\nEND",
            literal(&message),
            literal(&hint)
        ));
        crate::sql::do_block(&body)
    }

    /// The statements of a rebuild: those building the filled copy (created empty by the
    /// current user, which runs no query, then filled by REFRESH, which runs the query as the
    /// owner in a security-restricted operation, exactly as the refreshes the owner runs: a
    /// definition cannot act with the rights of the role running doppel), and those swapping
    /// it in once the materialized view is locked (drop, renames).
    fn rebuild_steps(&self, table_oid: u32) -> (Vec<String>, Vec<String>) {
        let tmp_name = self.rebuild_name(table_oid);
        let tmp = qualified(&self.schema, &tmp_name);
        let tablespace = self
            .tablespace
            .as_ref()
            .map(|t| format!(" TABLESPACE {}", ident(t)))
            .unwrap_or_default();
        let mut build = vec![format!(
            "CREATE MATERIALIZED VIEW {tmp}{}{tablespace} AS {} WITH NO DATA",
            self.with_options(),
            self.definition,
        )];
        build.extend(self.decorations(&tmp));
        let mut swap = vec![
            format!("DROP MATERIALIZED VIEW {}", self.qualified()),
            format!(
                "ALTER MATERIALIZED VIEW {tmp} RENAME TO {}",
                ident(&self.name)
            ),
        ];
        for index in &self.indexes {
            let index_tmp = format!("_doppel_{table_oid}_mvi{}", index.oid);
            if let Some(space) = &index.tablespace {
                build.push(format!("SET LOCAL default_tablespace = {}", ident(space)));
            }
            build.push(format!(
                "CREATE {}INDEX {} ON {tmp} {}",
                if index.unique { "UNIQUE " } else { "" },
                ident(&index_tmp),
                index.body
            ));
            if index.tablespace.is_some() {
                build.push("SET LOCAL default_tablespace = ''".to_string());
            }
            if index.clustered {
                build.push(format!(
                    "ALTER MATERIALIZED VIEW {tmp} CLUSTER ON {}",
                    ident(&index_tmp)
                ));
            }
            if index.comment.is_some() {
                build.push(comment_sql(
                    &format!("INDEX {}", qualified(&self.schema, &index_tmp)),
                    index.comment.as_deref(),
                ));
            }
            swap.push(format!(
                "ALTER INDEX {} RENAME TO {}",
                qualified(&self.schema, &index_tmp),
                ident(&index.name)
            ));
        }
        if self.populated {
            build.push(format!("REFRESH MATERIALIZED VIEW {tmp}"));
        }
        (build, swap)
    }
}
