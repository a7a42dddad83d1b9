//! Dependents bound to the original table's OID, moved to the new table in the cutover
//! transaction (DESIGN.md §4, issue 4).
//!
//! `ALTER TABLE t RENAME TO old` keeps every object that refers to `t` by OID attached to
//! `old`: foreign keys from other tables, views (and views on those views), triggers, rules,
//! row-level security policies and flags, publication membership, replica identity, extended
//! statistics, materialized views. The new table takes the name but none of these. This
//! module reads them from the catalog **before** the cutover ([`read`], while the original
//! still has its name, so every `pg_get_*def` text names the table as `schema.table`, which
//! resolves to the new table once it has taken the name), says which of them cannot be moved
//! safely
//! ([`Dependents::blockers`]), and produces the SQL that moves them
//! ([`Dependents::forward`], [`Dependents::forward_after_commit`]) and moves them back
//! ([`Dependents::rollback`], [`Dependents::rollback_after_commit`]).
//!
//! Techniques and their sources:
//! - Definitions come from the server's own deparsers, the way `pg_dump` recreates objects:
//!   `pg_get_viewdef`, `pg_get_triggerdef`, `pg_get_ruledef`, `pg_get_constraintdef`,
//!   `pg_get_statisticsobjdef`, `pg_get_indexdef`, `pg_get_expr` (policies and publication
//!   row filters, which have no `pg_get_*def`). They are read with an empty `search_path`, so
//!   every relation, function, type and operator outside `pg_catalog` is schema-qualified and
//!   the text means the same whatever `search_path` the cutover session has.
//! - Views are dropped and created again (leaf first, then root first), not
//!   `CREATE OR REPLACE`d: `CREATE OR REPLACE VIEW` refuses a column whose type changed
//!   (PostgreSQL docs, CREATE VIEW: "the new query must generate the same columns ... with the
//!   same column types"). Dropping a view drops its grants, comments, triggers, rules and
//!   column defaults; they are read and recreated with it, and so is its owner.
//! - Foreign keys from other tables are dropped and re-added `NOT VALID` (no scan of the child
//!   under the lock) and validated after commit (`VALIDATE CONSTRAINT` takes only SHARE UPDATE
//!   EXCLUSIVE on the child: PostgreSQL docs, ALTER TABLE). Child tables are locked in OID
//!   order (DESIGN.md §4: "take the locks in a fixed order").
//! - Materialized views are not touched by the cutover transaction: they stay populated and
//!   readable (they are stale by nature) while still reading the old table. After the commit
//!   each is rebuilt ([`Dependents::forward_after_commit`]): a copy is created `WITH NO DATA`
//!   from the definition read before the cutover, given the owner, grants, comments, storage
//!   options and indexes, filled by `REFRESH MATERIALIZED VIEW` (which runs the query as the
//!   owner in a security-restricted operation, as every refresh does: PostgreSQL docs, REFRESH
//!   MATERIALIZED VIEW / `ExecRefreshMatView`), then swapped in: lock the old one under a short
//!   retried `lock_timeout`, drop it, rename the copy and its indexes. One `DO` block, so a
//!   failure leaves the old materialized view exactly as it was and nothing else behind. The
//!   rollback script does the same against the restored original. Materialized views that
//!   something depends on (views, policies, statistics) or that use a dependent view are
//!   refused ([`Dependents::unsupported`]).
//! - `LOCK TABLE` on a view also locks, in the same mode, every relation its query uses
//!   (PostgreSQL 11+, docs of LOCK) after checking the view owner's privileges on them, and
//!   refuses materialized views; [`Dependents::lock_sql`] locks views with a no-op owner
//!   change instead, before the table, the order in which readers of a view lock.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result, bail};
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row, Statement};

use crate::model::names::Names;
use crate::sql::comment_sql;
use crate::sql::{ident, literal, qualified};

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

/// A foreign key of another table that references the table (`pg_constraint.confrelid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// OID of the child (referencing) table; children are locked and altered in this order.
    pub child_oid: u32,
    /// `"schema"."child"`.
    pub child: String,
    /// The child is a partitioned table (`NOT VALID` foreign keys cannot be added to one
    /// before PostgreSQL 18: a blocker).
    pub child_partitioned: bool,
    /// Constraint name (kept).
    pub name: String,
    /// `pg_get_constraintdef` text without a trailing ` NOT VALID`, e.g.
    /// `FOREIGN KEY (t_id) REFERENCES public.t(id) ON DELETE CASCADE`.
    pub definition: String,
    /// `convalidated`: validated after the cutover commits when true.
    pub validated: bool,
    /// Columns of the table the key references (`confkey`), in key order.
    pub referenced_columns: Vec<String>,
    /// Name of the unique index of the table that backs the key (`conindid`); the new table
    /// must have a unique index on the same columns for the key to be re-added.
    pub referenced_index: Option<String>,
}

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

/// A row-level security policy on the table, or on another table whose policy expressions
/// use the table or a dependent view (e.g. `USING (EXISTS (SELECT 1 FROM t ..))`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Policy name.
    pub name: String,
    /// OID of the table the policy is on.
    pub relation_oid: u32,
    /// `"schema"."table"` the policy is on.
    pub relation: String,
    /// `polpermissive`: `AS PERMISSIVE` when true, `AS RESTRICTIVE` otherwise.
    pub permissive: bool,
    /// `ALL`, `SELECT`, `INSERT`, `UPDATE` or `DELETE` (from `polcmd`).
    pub command: String,
    /// `PUBLIC` or quoted role names (from `polroles`).
    pub roles: Vec<String>,
    /// `pg_get_expr(polqual, polrelid)`: the `USING` expression.
    pub using: Option<String>,
    /// `pg_get_expr(polwithcheck, polrelid)`: the `WITH CHECK` expression.
    pub with_check: Option<String>,
    /// Columns of the table the policy's expressions use, from `pg_depend`.
    pub columns: Vec<String>,
}

impl ForeignKey {
    /// `ALTER TABLE child VALIDATE CONSTRAINT name`.
    fn validate_sql(&self) -> String {
        format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {}",
            self.child,
            ident(&self.name)
        )
    }
}

impl Policy {
    /// `CREATE POLICY` reproducing this policy on its relation (the equivalent of the
    /// `pg_get_policydef` PostgreSQL does not have; `pg_dump`'s `dumpPolicy` builds the same).
    pub fn create_sql(&self) -> String {
        let mut sql = format!(
            "CREATE POLICY {} ON {} AS {} FOR {} TO {}",
            ident(&self.name),
            self.relation,
            if self.permissive {
                "PERMISSIVE"
            } else {
                "RESTRICTIVE"
            },
            self.command,
            self.roles.join(", ")
        );
        if let Some(using) = &self.using {
            sql.push_str(&format!(" USING ({using})"));
        }
        if let Some(check) = &self.with_check {
            sql.push_str(&format!(" WITH CHECK ({check})"));
        }
        sql
    }
}

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

/// An index of a dependent materialized view, recreated on its rebuilt copy.
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

/// `lock_timeout` of each try to take the lock that swaps a rebuilt materialized view in.
pub const MATVIEW_SWAP_LOCK_TIMEOUT_MS: u32 = 200;

/// Tries to take that lock before the rebuild gives up (backoff between tries: 50 ms × 2^n,
/// at most 2 s, ±50% jitter; about 10 s in all).
pub const MATVIEW_SWAP_ATTEMPTS: u32 = 10;

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

    fn keyword(&self) -> &'static str {
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
    fn with_options(&self) -> String {
        if self.options.is_empty() {
            String::new()
        } else {
            format!(" WITH ({})", options_sql(&self.options))
        }
    }

    /// Owner, grants and comments of the view, applied to the relation `q`.
    fn decorations(&self, q: &str) -> Vec<String> {
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
        let tmp_name = self.rebuild_name(table_oid);
        let tmp = qualified(&self.schema, &tmp_name);
        let tablespace = self
            .tablespace
            .as_ref()
            .map(|t| format!(" TABLESPACE {}", ident(t)))
            .unwrap_or_default();
        // Created empty by the current user (which runs no query), then filled by REFRESH,
        // which runs the query as the owner in a security-restricted operation, exactly as
        // the refreshes the owner runs: a definition cannot act with the rights of the role
        // running doppel.
        let mut build = vec![format!(
            "CREATE MATERIALIZED VIEW {tmp}{}{tablespace} AS {} WITH NO DATA",
            self.with_options(),
            self.definition,
        )];
        build.extend(self.decorations(&tmp));
        let mut swap = vec![
            format!("DROP MATERIALIZED VIEW {q}"),
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
        let mut tag = "$doppel$".to_string();
        let mut n = 0;
        while body.contains(&tag) {
            n += 1;
            tag = format!("$doppel{n}$");
        }
        format!("DO {tag}\n{body}\n{tag}")
    }
}

/// Everything bound to the original's OID that the cutover must move, read from the catalog.
///
/// Compare two reads with `==`: [`read`] again under the cutover lock (before the renames)
/// tells whether DDL changed a dependent during the migration (a view replaced, a trigger
/// added), which would otherwise be silently reverted by recreating the stale definitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependents {
    /// OID of the original table.
    pub table_oid: u32,
    /// Schema of the table.
    pub schema: String,
    /// Name of the table when read.
    pub table: String,
    /// Foreign keys from other tables, ordered by child OID then name.
    pub foreign_keys: Vec<ForeignKey>,
    /// Views and materialized views on the table, transitively, root first (by depth, then
    /// OID).
    pub views: Vec<View>,
    /// Triggers on the table (not internal ones: those of foreign keys and constraints are
    /// recreated with their constraints).
    pub triggers: Vec<Trigger>,
    /// Rules on the table.
    pub rules: Vec<Rule>,
    /// Row-level security policies on the table.
    pub policies: Vec<Policy>,
    /// `relrowsecurity` (`ENABLE ROW LEVEL SECURITY`).
    pub row_security: bool,
    /// `relforcerowsecurity` (`FORCE ROW LEVEL SECURITY`).
    pub force_row_security: bool,
    /// Publications other than doppel's own that list the table (`pg_publication_rel`).
    pub publications: Vec<Publication>,
    /// `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: char,
    /// The replica identity index when `replica_identity` is `i`.
    pub replica_identity_index: Option<String>,
    /// Per-column statistics targets (`attstattarget`) as (column, target). Carried to the
    /// shadow by `shadow::create_sql` from the clone (which also reflects an ALTER that
    /// changes them), so [`Dependents::forward`] does not apply them; read for completeness.
    pub statistics_targets: Vec<(String, i32)>,
    /// The table's `reloptions` (`name=value`). Carried by `shadow::create_sql` like the
    /// statistics targets; not applied here.
    pub reloptions: Vec<String>,
    /// The TOAST table's `reloptions` (without the `toast.` prefix). Nothing else carries
    /// them; [`Dependents::forward`] sets them on the new table (ignored by the server when
    /// the new table has no TOAST table).
    pub toast_reloptions: Vec<String>,
    /// Extended statistics objects on the table.
    pub statistics: Vec<StatisticsObject>,
    /// Policies on other tables whose expressions use the table or a dependent view.
    pub other_policies: Vec<Policy>,
    /// Rules on other relations whose actions use the table or a dependent view.
    pub other_rules: Vec<Rule>,
    /// Reasons found while reading that make a safe move impossible whatever the ALTER:
    /// SQL-standard-body functions, users of the row type, temporary views, dependents owned
    /// by roles the current user cannot act as, materialized views that something depends on
    /// or that use a dependent view, other objects bound to the OID.
    pub unsupported: Vec<String>,
}

/// Reads the dependents of the table `table_oid`, skipping membership in the publication
/// `own_publication` (doppel's, dropped at cleanup). Run it before the cutover: the
/// definitions name the table as it is named now. Changes nothing: `search_path` is set to
/// `''` for the reads (so every name is schema-qualified) and restored afterwards.
///
/// Errors: no relation has OID `table_oid`; a catalog query fails (e.g. the connection is
/// lost or the transaction it runs in is aborted); `search_path` cannot be restored.
pub async fn read(
    client: &impl GenericClient,
    table_oid: u32,
    own_publication: &str,
) -> Result<Dependents> {
    let row = client
        .query_one(
            "SELECT current_setting('search_path'), current_setting('server_version_num')::int",
            &[],
        )
        .await
        .context("reading search_path")?;
    let (saved, version): (String, i32) = (row.get(0), row.get(1));
    client
        .execute("SELECT set_config('search_path', '', false)", &[])
        .await
        .context("clearing search_path to read qualified definitions")?;
    let result = read_qualified(client, Source::Text, table_oid, own_publication, version).await;
    let restored = client
        .execute("SELECT set_config('search_path', $1, false)", &[&saved])
        .await;
    let dependents = result?;
    restored.context("restoring search_path after reading the dependents")?;
    Ok(dependents)
}

/// The statements of [`read`] for one table, prepared on one connection and planned there,
/// so that a later [`Prepared::read`] on that connection only executes them.
///
/// The cutover prepares them before it asks for its lock and reads the dependents again
/// under the lock: the reads then cost their execution only (parsing and planning ~20
/// catalog queries is most of what a [`read`] costs). The statements are the same SQL as
/// [`read`]'s, executed with their parameters under the empty `search_path` they were
/// parsed with; each execution takes a new snapshot (or, in a `REPEATABLE READ` transaction,
/// the transaction's), so a read returns what [`read`] would return at that moment, changes
/// committed after the preparation included. A plan the server finds stale (the plan cache
/// is invalidated by changes to the catalogs' own definitions or statistics) is simply made
/// again at that execution.
///
/// Plans are kept by forcing generic plans (`plan_cache_mode = force_generic_plan`) for the
/// duration of each read: a statement with parameters is otherwise planned again for each
/// of its first five executions. The plans are made by the first read, which [`Prepared::new`]
/// runs.
pub struct Prepared {
    table_oid: u32,
    own_publication: String,
    version: i32,
    /// [`SETUP_SQL`], prepared under the connection's own `search_path` (where it runs).
    setup: Statement,
    /// [`RESTORE_SQL`].
    restore: Statement,
    /// `search_path` and `plan_cache_mode` when prepared: put back if a read fails.
    saved: (String, String),
    statements: HashMap<Query, Statement>,
}

impl Prepared {
    /// Prepares the statements of [`read`] for the table `table_oid` (skipping membership in
    /// `own_publication`) on `client`'s connection and runs them once, which plans them.
    /// Leaves the connection's `search_path` and `plan_cache_mode` as they were.
    ///
    /// Errors: a statement cannot be prepared or the first read fails (see [`read`]); the
    /// settings cannot be restored.
    pub async fn new(
        client: &impl GenericClient,
        table_oid: u32,
        own_publication: &str,
    ) -> Result<Prepared> {
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .context("reading the server version")?
            .get(0);
        let setup = client
            .prepare(SETUP_SQL)
            .await
            .context("preparing the dependents read")?;
        // Everything else is parsed under the empty search_path it runs with (a statement
        // parsed under another one is analysed again at its next execution).
        let saved = client
            .query_one(&setup, &[])
            .await
            .context("clearing search_path to prepare the dependents read")?;
        let saved: (String, String) = (saved.get(0), saved.get(1));
        let queries: Vec<Query> = Query::ALL
            .into_iter()
            .filter(|q| q.runs_on(version))
            .collect();
        let statements = futures_util::future::try_join_all(
            queries
                .iter()
                .map(|q| client.prepare(q.sql()))
                .chain(std::iter::once(client.prepare(RESTORE_SQL))),
        )
        .await
        .context("preparing the dependents read");
        let restored = client
            .execute(RESTORE_SQL, &[&saved.0, &saved.1])
            .await
            .context("restoring search_path after preparing the dependents read");
        let mut statements = statements?;
        restored?;
        let restore = statements.pop().context("the restore statement")?;
        let prepared = Prepared {
            table_oid,
            own_publication: own_publication.to_string(),
            version,
            setup,
            restore,
            saved,
            statements: queries.into_iter().zip(statements).collect(),
        };
        prepared.read(client).await?;
        Ok(prepared)
    }

    /// [`read`] with the prepared statements, on the connection they were prepared on (or a
    /// transaction of it): the same result, without parsing or planning. Two round trips:
    /// the settings change and the queries that need only the table's OID, then the others
    /// and the settings restore, each pipelined.
    ///
    /// Errors: as [`read`]; also when `client` is another connection (the server knows no
    /// such prepared statement).
    pub async fn read(&self, client: &impl GenericClient) -> Result<Dependents> {
        let result = read_qualified(
            client,
            Source::Prepared(self),
            self.table_oid,
            &self.own_publication,
            self.version,
        )
        .await;
        if result.is_err() {
            // Best effort: in a transaction the failure aborted it, and its rollback puts the
            // settings back.
            let _ = client
                .execute(&self.restore, &[&self.saved.0, &self.saved.1])
                .await;
        }
        result
    }
}

/// Columns of the table used by each dependent object, keyed by (catalog, object OID).
type ColumnUse = HashMap<(String, u32), Vec<String>>;

fn used(columns: &ColumnUse, catalog: &str, oid: u32) -> Vec<String> {
    columns
        .get(&(catalog.to_string(), oid))
        .cloned()
        .unwrap_or_default()
}

fn first_char(s: String) -> char {
    s.chars().next().unwrap_or(' ')
}

fn strip_semicolon(def: &str) -> String {
    def.trim().trim_end_matches(';').trim_end().to_string()
}

/// The `pg_depend` condition "references one of the relations `$1` or their row types `$2`"
/// for the alias `d`, as a literal for `concat!`.
macro_rules! references_1_2 {
    () => {
        "((d.refclassid = 'pg_class'::regclass AND d.refobjid = ANY($1::oid[]))
          OR (d.refclassid = 'pg_type'::regclass AND d.refobjid = ANY($2::oid[])))"
    };
}

/// Where [`read_qualified`] takes its statements from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// The SQL text: each call parses, plans, runs and closes its statement.
    Text,
    /// Statements prepared and planned on the connection.
    Prepared(&'a Prepared),
}

/// Rows of `query`; errors carry `what` (e.g. "reading triggers").
///
/// With [`Source::Prepared`], the request is sent when the future is first polled, so
/// futures polled together (`try_join!`) run on the server in the order they are listed.
async fn fetch(
    client: &impl GenericClient,
    source: Source<'_>,
    query: Query,
    params: &[&(dyn ToSql + Sync)],
    what: &'static str,
) -> Result<Vec<Row>> {
    match source {
        Source::Text => client.query(query.sql(), params).await,
        Source::Prepared(p) => match p.statements.get(&query) {
            Some(statement) => client.query(statement, params).await,
            None => bail!("{what}: the statement was not prepared"),
        },
    }
    .context(what)
}

/// The row of `query`, if any; errors carry `what`.
async fn fetch_opt(
    client: &impl GenericClient,
    source: Source<'_>,
    query: Query,
    params: &[&(dyn ToSql + Sync)],
    what: &'static str,
) -> Result<Option<Row>> {
    let mut rows = fetch(client, source, query, params, what).await?;
    if rows.len() > 1 {
        bail!("{what}: more than one row");
    }
    Ok(rows.pop())
}

/// The catalog queries of [`read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Query {
    Table,
    StatisticsTargets,
    ColumnUse,
    Views,
    ForeignKeys,
    Statistics,
    ViewGrants,
    ViewColumnComments,
    ViewColumnDefaults,
    MatviewIndexes,
    MatviewViews,
    MatviewDependents,
    Triggers,
    Rules,
    Policies,
    Publications,
    PublicationsBefore15,
    Others,
}

impl Query {
    const ALL: [Query; 18] = [
        Query::Table,
        Query::StatisticsTargets,
        Query::ColumnUse,
        Query::Views,
        Query::ForeignKeys,
        Query::Statistics,
        Query::ViewGrants,
        Query::ViewColumnComments,
        Query::ViewColumnDefaults,
        Query::MatviewIndexes,
        Query::MatviewViews,
        Query::MatviewDependents,
        Query::Triggers,
        Query::Rules,
        Query::Policies,
        Query::Publications,
        Query::PublicationsBefore15,
        Query::Others,
    ];

    fn sql(self) -> &'static str {
        match self {
            Query::Table => TABLE_SQL,
            Query::StatisticsTargets => STATISTICS_TARGETS_SQL,
            Query::ColumnUse => COLUMN_USE_SQL,
            Query::Views => VIEWS_SQL,
            Query::ForeignKeys => FOREIGN_KEYS_SQL,
            Query::Statistics => STATISTICS_SQL,
            Query::ViewGrants => VIEW_GRANTS_SQL,
            Query::ViewColumnComments => VIEW_COLUMN_COMMENTS_SQL,
            Query::ViewColumnDefaults => VIEW_COLUMN_DEFAULTS_SQL,
            Query::MatviewIndexes => MATVIEW_INDEXES_SQL,
            Query::MatviewViews => MATVIEW_VIEWS_SQL,
            Query::MatviewDependents => MATVIEW_DEPENDENTS_SQL,
            Query::Triggers => TRIGGERS_SQL,
            Query::Rules => RULES_SQL,
            Query::Policies => POLICIES_SQL,
            Query::Publications => PUBLICATIONS_SQL,
            Query::PublicationsBefore15 => PUBLICATIONS_BEFORE_15_SQL,
            Query::Others => OTHERS_SQL,
        }
    }

    /// The query is valid SQL on the server version `version` (`server_version_num`).
    fn runs_on(self, version: i32) -> bool {
        match self {
            Query::Publications => version >= 150000,
            Query::PublicationsBefore15 => version < 150000,
            _ => true,
        }
    }
}

/// [`Prepared::read`]'s first statement: returns `search_path` and `plan_cache_mode`, then
/// empties the one (qualified definitions) and forces generic plans (planned once, kept).
/// `MATERIALIZED`: the values are read before they are changed.
const SETUP_SQL: &str = "WITH saved AS MATERIALIZED (
      SELECT current_setting('search_path') AS search_path,
             current_setting('plan_cache_mode') AS plan_cache_mode)
    SELECT search_path, plan_cache_mode, set_config('search_path', '', false),
           set_config('plan_cache_mode', 'force_generic_plan', false)
    FROM saved";

/// [`Prepared::read`]'s last statement: puts back what [`SETUP_SQL`] returned.
const RESTORE_SQL: &str =
    "SELECT set_config('search_path', $1, false), set_config('plan_cache_mode', $2, false)";

/// Catalog query of [`read`]: the table.
const TABLE_SQL: &str =
    "SELECT n.nspname::text, c.relname::text, c.relrowsecurity, c.relforcerowsecurity,
           c.relreplident::text,
           (SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
             WHERE i.indrelid = c.oid AND i.indisreplident),
           coalesce(c.reloptions, '{}')::text[], coalesce(tc.reloptions, '{}')::text[], c.reltype
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_class tc ON tc.oid = c.reltoastrelid
    WHERE c.oid = $1";

/// Catalog query of [`read`]: statistics targets.
const STATISTICS_TARGETS_SQL: &str = "SELECT attname::text, attstattarget::int FROM pg_attribute
    WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
      AND nullif(attstattarget::int, -1) IS NOT NULL ORDER BY attnum";

/// Catalog query of [`read`]: column dependencies.
const COLUMN_USE_SQL: &str =
    "SELECT d.classid::regclass::text, d.objid::oid, array_agg(DISTINCT a.attname::text)
    FROM pg_depend d
    JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
    WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = $1 AND d.refobjsubid > 0
    GROUP BY 1, 2";

/// Catalog query of [`read`]: dependent views.
const VIEWS_SQL: &str = "WITH RECURSIVE chain(oid, depth) AS (
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
    ORDER BY deepest.depth, v.oid";

/// Catalog query of [`read`]: foreign keys from other tables.
const FOREIGN_KEYS_SQL: &str =
    "SELECT con.conrelid, n.nspname::text, c.relname::text, c.relkind = 'p',
           con.conname::text, pg_get_constraintdef(con.oid), con.convalidated,
           ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
                 ORDER BY k.ord),
           (SELECT relname::text FROM pg_class WHERE oid = con.conindid),
           pg_has_role(c.relowner, 'USAGE'), pg_get_userbyid(c.relowner)::text
    FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE con.contype = 'f' AND con.confrelid = $1 AND con.conrelid <> $1
      AND con.conparentid = 0
    ORDER BY con.conrelid, con.conname";

/// Catalog query of [`read`]: extended statistics.
const STATISTICS_SQL: &str =
    "SELECT s.oid, n.nspname::text, s.stxname::text, pg_get_statisticsobjdef(s.oid),
           nullif(coalesce(s.stxstattarget::int, -1), -1),
           pg_get_userbyid(s.stxowner)::text, pg_has_role(s.stxowner, 'USAGE'),
           obj_description(s.oid, 'pg_statistic_ext')
    FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
    WHERE s.stxrelid = $1 ORDER BY n.nspname, s.stxname";

/// Catalog query of [`read`]: grants on dependent views.
const VIEW_GRANTS_SQL: &str = "SELECT c.oid, NULL::text,
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
    ORDER BY 1, 2 NULLS FIRST, 3, 4";

/// Catalog query of [`read`]: column comments of dependent views.
const VIEW_COLUMN_COMMENTS_SQL: &str = "SELECT d.objoid, a.attname::text, d.description
    FROM pg_description d
    JOIN pg_attribute a ON a.attrelid = d.objoid AND a.attnum = d.objsubid
    WHERE d.classoid = 'pg_class'::regclass AND d.objoid = ANY($1::oid[]) AND d.objsubid > 0
    ORDER BY 1, a.attnum";

/// Catalog query of [`read`]: column defaults of dependent views.
const VIEW_COLUMN_DEFAULTS_SQL: &str =
    "SELECT ad.adrelid, a.attname::text, pg_get_expr(ad.adbin, ad.adrelid)
    FROM pg_attrdef ad
    JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
    WHERE ad.adrelid = ANY($1::oid[]) ORDER BY 1, a.attnum";

/// Catalog query of [`read`]: indexes of dependent materialized views.
const MATVIEW_INDEXES_SQL: &str =
    "SELECT i.indrelid, i.indexrelid, ic.relname::text, i.indisunique,
           pg_get_indexdef(i.indexrelid),
           format('CREATE %sINDEX %s ON %s.%s ', CASE WHEN i.indisunique THEN 'UNIQUE ' ELSE '' END,
                  quote_ident(ic.relname), quote_ident(n.nspname), quote_ident(c.relname)),
           (SELECT spcname::text FROM pg_tablespace WHERE oid = ic.reltablespace),
           i.indisclustered, obj_description(i.indexrelid, 'pg_class')
    FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE i.indrelid = ANY($1::oid[]) ORDER BY i.indrelid, i.indexrelid";

/// Catalog query of [`read`]: the views materialized views use.
const MATVIEW_VIEWS_SQL: &str =
    "SELECT DISTINCT format('%I.%I', mn.nspname, m.relname), format('%I.%I', vn.nspname, v.relname)
    FROM pg_rewrite r JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
    JOIN pg_class v ON (d.refclassid = 'pg_class'::regclass AND v.oid = d.refobjid)
                    OR (d.refclassid = 'pg_type'::regclass AND v.reltype = d.refobjid)
    JOIN pg_namespace vn ON vn.oid = v.relnamespace
    JOIN pg_class m ON m.oid = r.ev_class JOIN pg_namespace mn ON mn.oid = m.relnamespace
    WHERE r.rulename = '_RETURN' AND r.ev_class = ANY($1::oid[]) AND v.oid = ANY($2::oid[])
    ORDER BY 1, 2";

/// Catalog query of [`read`]: what depends on materialized views.
const MATVIEW_DEPENDENTS_SQL: &str = "SELECT DISTINCT format('%I.%I', mn.nspname, m.relname),
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
    ORDER BY 1, 2";

/// Catalog query of [`read`]: triggers.
const TRIGGERS_SQL: &str =
    "SELECT tg.oid, tg.tgrelid, n.nspname::text, c.relname::text, tg.tgname::text,
           pg_get_triggerdef(tg.oid, false), tg.tgenabled::text
    FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE tg.tgrelid = ANY($1::oid[]) AND NOT tg.tgisinternal
    ORDER BY tg.tgrelid, tg.tgname";

/// Catalog query of [`read`]: rules.
const RULES_SQL: &str = concat!(
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
);

/// Catalog query of [`read`]: row-level security policies.
const POLICIES_SQL: &str = concat!(
    "SELECT p.oid, p.polrelid, n.nspname::text, c.relname::text, p.polname::text,
            p.polcmd::text, p.polpermissive,
            ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r)) END
                  FROM unnest(p.polroles) AS r),
            pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid),
            pg_has_role(c.relowner, 'USAGE'), pg_get_userbyid(c.relowner)::text
     FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
     JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE p.polrelid = $3
        OR p.oid IN (SELECT d.objid FROM pg_depend d
                     WHERE d.classid = 'pg_policy'::regclass AND ",
    references_1_2!(),
    ")
     ORDER BY p.polrelid, p.polname"
);

/// Catalog query of [`read`]: publication membership (PostgreSQL 15+: row filters and
/// column lists).
const PUBLICATIONS_SQL: &str = "SELECT p.pubname::text, pg_get_expr(pr.prqual, pr.prrelid),
            CASE WHEN pr.prattrs IS NULL THEN NULL ELSE
              ARRAY(SELECT a.attname::text FROM unnest(pr.prattrs::int2[]) WITH ORDINALITY AS k(attnum, ord)
                    JOIN pg_attribute a ON a.attrelid = pr.prrelid AND a.attnum = k.attnum
                    ORDER BY k.ord) END,
            pr.oid, pg_has_role(p.pubowner, 'USAGE'), pg_get_userbyid(p.pubowner)::text
     FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
     WHERE pr.prrelid = $1 AND p.pubname <> $2 ORDER BY 1";

/// Catalog query of [`read`]: publication membership before PostgreSQL 15.
const PUBLICATIONS_BEFORE_15_SQL: &str = "SELECT p.pubname::text, NULL::text, NULL::text[], pr.oid,
            pg_has_role(p.pubowner, 'USAGE'), pg_get_userbyid(p.pubowner)::text
     FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
     WHERE pr.prrelid = $1 AND p.pubname <> $2 ORDER BY 1";

/// Catalog query of [`read`]: other objects bound to the table, a view or their row types.
const OTHERS_SQL: &str = concat!(
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
);

/// The reads of [`read`] and [`Prepared::read`], with `search_path` already empty for
/// [`Source::Text`] (for [`Source::Prepared`], its first and last statements empty it and put
/// it back). `version` is the server's `server_version_num`.
async fn read_qualified(
    client: &impl GenericClient,
    source: Source<'_>,
    oid: u32,
    own_publication: &str,
    version: i32,
) -> Result<Dependents> {
    // Every query that needs only the table's OID, pipelined (sent together on the
    // connection, not one round trip after the other): the read runs again under the
    // cutover lock, where each round trip lengthens the lock hold. The prepared read's
    // settings change goes first in the same round trip.
    let setup = async {
        match source {
            Source::Prepared(p) => client
                .query_one(&p.setup, &[])
                .await
                .map(Some)
                .context("clearing search_path to read qualified definitions"),
            Source::Text => Ok(None),
        }
    };
    let by_oid: [&(dyn ToSql + Sync); 1] = [&oid];
    let (saved, row, stat_targets, column_rows, view_rows, fk_rows, statistics_rows) = futures_util::try_join!(
        setup,
        fetch_opt(client, source, Query::Table, &by_oid, "reading the table"),
        fetch(
            client,
            source,
            Query::StatisticsTargets,
            &by_oid,
            "reading statistics targets"
        ),
        fetch(
            client,
            source,
            Query::ColumnUse,
            &by_oid,
            "reading column dependencies"
        ),
        fetch(
            client,
            source,
            Query::Views,
            &by_oid,
            "reading dependent views"
        ),
        fetch(
            client,
            source,
            Query::ForeignKeys,
            &by_oid,
            "reading foreign keys from other tables"
        ),
        fetch(
            client,
            source,
            Query::Statistics,
            &by_oid,
            "reading extended statistics"
        ),
    )?;
    // What the prepared read's last statement puts back.
    let saved: Option<(String, String)> = saved.map(|r| (r.get(0), r.get(1)));
    let Some(row) = row else {
        bail!("no relation has OID {oid}: was the table dropped?");
    };
    let mut deps = Dependents {
        table_oid: oid,
        schema: row.get(0),
        table: row.get(1),
        row_security: row.get(2),
        force_row_security: row.get(3),
        replica_identity: first_char(row.get(4)),
        replica_identity_index: row.get(5),
        reloptions: row.get(6),
        toast_reloptions: row.get(7),
        foreign_keys: Vec::new(),
        views: Vec::new(),
        triggers: Vec::new(),
        rules: Vec::new(),
        policies: Vec::new(),
        publications: Vec::new(),
        statistics_targets: Vec::new(),
        statistics: Vec::new(),
        other_policies: Vec::new(),
        other_rules: Vec::new(),
        unsupported: Vec::new(),
    };
    let table_q = qualified(&deps.schema, &deps.table);
    let table_type: u32 = row.get(8);

    deps.statistics_targets = stat_targets.iter().map(|r| (r.get(0), r.get(1))).collect();

    // Which columns of the table each dependent object uses (pg_depend on the column).
    let mut columns: ColumnUse = HashMap::new();
    for r in column_rows {
        let catalog: String = r.get(0);
        let catalog = catalog.trim_start_matches("pg_catalog.").to_string();
        columns.insert((catalog, r.get(1)), r.get(2));
    }

    // Views, transitively: a view depends on the table (or a view, or their row types)
    // through its _RETURN rule. Depth is the longest chain from the table.
    let rows = view_rows;
    let mut set_types: Vec<u32> = vec![table_type];
    for r in &rows {
        set_types.push(r.get(14));
        let view = View {
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
            columns: used(&columns, "pg_rewrite", r.get(13)),
            grants: Vec::new(),
            column_comments: Vec::new(),
            column_defaults: Vec::new(),
            triggers: Vec::new(),
            rules: Vec::new(),
            indexes: Vec::new(),
        };
        let can_own: bool = r.get(10);
        if !can_own {
            deps.unsupported.push(format!(
                "{} {} is owned by {}, a role the current user is not a member of: the cutover must drop and recreate it; run doppel as a superuser or GRANT {} TO the doppel user",
                view.keyword().to_lowercase(),
                view.qualified(),
                view.owner,
                ident(&view.owner)
            ));
        }
        if view.temporary {
            deps.unsupported.push(format!(
                "temporary view {} (of a session) depends on {table_q}: it cannot be recreated from another session; end that session or drop the view",
                view.qualified()
            ));
        }
        deps.views.push(view);
    }
    let view_oids: Vec<u32> = deps.views.iter().map(|v| v.oid).collect();
    let mut set: Vec<u32> = vec![oid];
    set.extend(&view_oids);
    let view_index: HashMap<u32, usize> = deps
        .views
        .iter()
        .enumerate()
        .map(|(i, v)| (v.oid, i))
        .collect();
    let matviews: Vec<u32> = deps
        .views
        .iter()
        .filter(|v| v.materialized)
        .map(|v| v.oid)
        .collect();
    let plain: Vec<u32> = deps
        .views
        .iter()
        .filter(|v| !v.materialized)
        .map(|v| v.oid)
        .collect();
    let by_views: [&(dyn ToSql + Sync); 1] = [&view_oids];
    let by_matviews: [&(dyn ToSql + Sync); 1] = [&matviews];
    let by_matviews_plain: [&(dyn ToSql + Sync); 2] = [&matviews, &plain];
    let by_set: [&(dyn ToSql + Sync); 1] = [&set];
    let by_set_types: [&(dyn ToSql + Sync); 2] = [&set, &set_types];
    let by_set_types_oid: [&(dyn ToSql + Sync); 3] = [&set, &set_types, &oid];
    let by_oid_publication: [&(dyn ToSql + Sync); 2] = [&oid, &own_publication];
    let publications = if version >= 150000 {
        Query::Publications
    } else {
        Query::PublicationsBefore15
    };
    let restore = async {
        match (source, &saved) {
            (Source::Prepared(p), Some((search_path, plan_cache_mode))) => client
                .execute(&p.restore, &[search_path, plan_cache_mode])
                .await
                .map(|_| ())
                .context("restoring search_path after reading the dependents"),
            _ => Ok(()),
        }
    };
    // Everything else, pipelined as well; the prepared read's settings restore goes last.
    let (
        grant_rows,
        comment_rows,
        default_rows,
        index_rows,
        mv_view_rows,
        mv_dependent_rows,
        trigger_rows,
        rule_rows,
        policy_rows,
        publication_rows,
        other_rows,
        (),
    ) = futures_util::try_join!(
        fetch(
            client,
            source,
            Query::ViewGrants,
            &by_views,
            "reading grants on dependent views"
        ),
        fetch(
            client,
            source,
            Query::ViewColumnComments,
            &by_views,
            "reading column comments of dependent views"
        ),
        fetch(
            client,
            source,
            Query::ViewColumnDefaults,
            &by_views,
            "reading column defaults of dependent views"
        ),
        fetch(
            client,
            source,
            Query::MatviewIndexes,
            &by_views,
            "reading indexes of dependent materialized views"
        ),
        fetch(
            client,
            source,
            Query::MatviewViews,
            &by_matviews_plain,
            "reading the views materialized views use"
        ),
        fetch(
            client,
            source,
            Query::MatviewDependents,
            &by_matviews,
            "reading what depends on materialized views"
        ),
        fetch(client, source, Query::Triggers, &by_set, "reading triggers"),
        fetch(client, source, Query::Rules, &by_set_types, "reading rules"),
        fetch(
            client,
            source,
            Query::Policies,
            &by_set_types_oid,
            "reading row-level security policies"
        ),
        fetch(
            client,
            source,
            publications,
            &by_oid_publication,
            "reading publication membership"
        ),
        fetch(
            client,
            source,
            Query::Others,
            &by_set_types_oid,
            "reading other dependents"
        ),
        restore,
    )?;

    if !view_oids.is_empty() {
        for r in grant_rows {
            deps.views[view_index[&r.get::<_, u32>(0)]]
                .grants
                .push(Grant {
                    column: r.get(1),
                    grantee: r.get(2),
                    privilege: r.get(3),
                    grantable: r.get(4),
                });
        }
        for r in comment_rows {
            deps.views[view_index[&r.get::<_, u32>(0)]]
                .column_comments
                .push((r.get(1), r.get(2)));
        }
        for r in default_rows {
            deps.views[view_index[&r.get::<_, u32>(0)]]
                .column_defaults
                .push((r.get(1), r.get(2)));
        }
        // pg_get_indexdef starts with `CREATE [UNIQUE] INDEX name ON schema.relation `
        // (quote_ident'ed, always qualified: ruleutils' generate_qualified_relation_name);
        // the rest (`USING ..`) is reused on the rebuilt copy.
        for r in index_rows {
            let view = &mut deps.views[view_index[&r.get::<_, u32>(0)]];
            let definition: String = r.get(4);
            let prefix: String = r.get(5);
            let Some(body) = definition.strip_prefix(&prefix) else {
                deps.unsupported.push(format!(
                    "index {} of materialized view {} has a definition doppel cannot rebuild on a copy ({definition}): drop the materialized view before the migration and recreate it after",
                    r.get::<_, String>(2),
                    view.qualified()
                ));
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

        // Materialized views are rebuilt after the cutover commits (a new relation replaces
        // each): nothing may depend on one, and one may not depend on a plain view (which
        // the cutover drops and recreates).
        if !matviews.is_empty() {
            for r in mv_view_rows {
                deps.unsupported.push(format!(
                    "materialized view {} uses the view {}, which depends on {table_q}: the cutover recreates that view, which it cannot do while a materialized view uses it; drop the materialized view before the migration and recreate it after",
                    r.get::<_, String>(0),
                    r.get::<_, String>(1)
                ));
            }
            for r in mv_dependent_rows {
                deps.unsupported.push(format!(
                    "{} depends on materialized view {}, which doppel rebuilds after the cutover (a new relation replaces it, so the old one cannot be dropped while this uses it): drop it before the migration and recreate it after",
                    r.get::<_, String>(1),
                    r.get::<_, String>(0)
                ));
            }
        }
    }

    // Triggers on the table and on the views.
    for r in trigger_rows {
        let relid: u32 = r.get(1);
        let trigger = Trigger {
            name: r.get(4),
            relation: qualified(&r.get::<_, String>(2), &r.get::<_, String>(3)),
            definition: r.get(5),
            enabled: first_char(r.get(6)),
            columns: used(&columns, "pg_trigger", r.get(0)),
        };
        if relid == oid {
            deps.triggers.push(trigger);
        } else {
            deps.views[view_index[&relid]].triggers.push(trigger);
        }
    }

    // Rules on the table, on the views, and on other relations that use them.
    for r in rule_rows {
        let relid: u32 = r.get(1);
        let rule = Rule {
            name: r.get(4),
            relation_oid: relid,
            relation: qualified(&r.get::<_, String>(2), &r.get::<_, String>(3)),
            on_table: r.get(9),
            definition: strip_semicolon(&r.get::<_, String>(5)),
            enabled: first_char(r.get(6)),
            columns: used(&columns, "pg_rewrite", r.get(0)),
        };
        if relid == oid {
            deps.rules.push(rule);
        } else if let Some(&i) = view_index.get(&relid) {
            deps.views[i].rules.push(rule);
        } else {
            if !r.get::<_, bool>(7) {
                deps.unsupported.push(format!(
                    "rule {} on {} uses {table_q}; it is owned by {}, a role the current user is not a member of, so the cutover cannot recreate it",
                    rule.name,
                    rule.relation,
                    r.get::<_, String>(8)
                ));
            }
            deps.other_rules.push(rule);
        }
    }

    // Policies on the table, and on other tables whose expressions use it or a view.
    for r in policy_rows {
        let relid: u32 = r.get(1);
        let command = match first_char(r.get(5)) {
            'r' => "SELECT",
            'a' => "INSERT",
            'w' => "UPDATE",
            'd' => "DELETE",
            _ => "ALL",
        };
        let policy = Policy {
            name: r.get(4),
            relation_oid: relid,
            relation: qualified(&r.get::<_, String>(2), &r.get::<_, String>(3)),
            command: command.to_string(),
            permissive: r.get(6),
            roles: r.get(7),
            using: r.get(8),
            with_check: r.get(9),
            columns: used(&columns, "pg_policy", r.get(0)),
        };
        if relid == oid {
            deps.policies.push(policy);
        } else {
            if !r.get::<_, bool>(10) {
                deps.unsupported.push(format!(
                    "policy {} on {} uses {table_q}; the table is owned by {}, a role the current user is not a member of, so the cutover cannot recreate the policy",
                    policy.name,
                    policy.relation,
                    r.get::<_, String>(11)
                ));
            }
            deps.other_policies.push(policy);
        }
    }

    // Foreign keys from other tables (not the clones on partitions: they follow the parent).
    for r in fk_rows {
        let definition: String = r.get(5);
        let fk = ForeignKey {
            child_oid: r.get(0),
            child: qualified(&r.get::<_, String>(1), &r.get::<_, String>(2)),
            child_partitioned: r.get(3),
            name: r.get(4),
            definition: definition
                .strip_suffix(" NOT VALID")
                .unwrap_or(&definition)
                .to_string(),
            validated: r.get(6),
            referenced_columns: r.get(7),
            referenced_index: r.get(8),
        };
        if !r.get::<_, bool>(9) {
            deps.unsupported.push(format!(
                "foreign key {} on {} references {table_q}; {} is owned by {}, a role the current user is not a member of, so the cutover cannot re-point it",
                fk.name,
                fk.child,
                fk.child,
                r.get::<_, String>(10)
            ));
        }
        deps.foreign_keys.push(fk);
    }

    // Publications (row filters and column lists exist from PostgreSQL 15).
    for r in publication_rows {
        let list: Option<Vec<String>> = r.get(2);
        let mut used_columns = used(&columns, "pg_publication_rel", r.get(3));
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
            deps.unsupported.push(format!(
                "publication {} includes {table_q} and is owned by {}, a role the current user is not a member of: the cutover cannot move the membership to the new table",
                publication.name,
                r.get::<_, String>(5)
            ));
        }
        deps.publications.push(publication);
    }

    // Extended statistics objects.
    for r in statistics_rows {
        let stats = StatisticsObject {
            name: qualified(&r.get::<_, String>(1), &r.get::<_, String>(2)),
            definition: r.get(3),
            target: r.get(4),
            owner: r.get(5),
            comment: r.get(7),
            columns: used(&columns, "pg_statistic_ext", r.get(0)),
        };
        if !r.get::<_, bool>(6) {
            deps.unsupported.push(format!(
                "statistics object {} is owned by {}, a role the current user is not a member of: the cutover cannot move it",
                stats.name, stats.owner
            ));
        }
        deps.statistics.push(stats);
    }

    // Anything else bound to the table, a view or their row types that is not moved above.
    for r in other_rows {
        let what: String = r.get(0);
        let sql_body: bool = r.get(1);
        let row_type: bool = r.get(2);
        let on: String = r.get(3);
        deps.unsupported.push(if sql_body {
            format!(
                "{what} has an SQL-standard body (BEGIN ATOMIC / RETURN) bound to {on} by OID: after the cutover it would keep using the old table. Drop it before the migration and recreate it after, or give it a string body (AS $$ .. $$), which resolves names when it runs"
            )
        } else if row_type {
            format!(
                "{what} uses the row type of {on}, which stays with the old table (the new table has a new row type): drop or change it before the migration"
            )
        } else {
            format!(
                "{what} depends on {on} and this doppel version cannot move it to the new table: drop it before the migration and recreate it after"
            )
        });
    }
    Ok(deps)
}

/// `name = 'value'` list for `WITH (..)` / `SET (..)` from `name=value` reloption strings.
fn options_sql(options: &[String]) -> String {
    options
        .iter()
        .map(|o| match o.split_once('=') {
            Some((name, value)) => format!("{name} = {}", literal(value)),
            None => o.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ALTER TABLE .. {DISABLE|ENABLE REPLICA|ENABLE ALWAYS} {TRIGGER|RULE} ..` for a
/// non-default firing state (`tgenabled` / `ev_enabled`); none for `O`.
fn enable_sql(kind: &str, relation: &str, name: &str, state: char) -> Option<String> {
    let action = match state {
        'D' => "DISABLE",
        'R' => "ENABLE REPLICA",
        'A' => "ENABLE ALWAYS",
        _ => return None,
    };
    Some(format!(
        "ALTER TABLE {relation} {action} {kind} {}",
        ident(name)
    ))
}

impl Dependents {
    /// True when nothing is bound to the table's OID that the cutover must move.
    pub fn is_empty(&self) -> bool {
        self.foreign_keys.is_empty()
            && self.views.is_empty()
            && self.triggers.is_empty()
            && self.rules.is_empty()
            && self.policies.is_empty()
            && !self.row_security
            && !self.force_row_security
            && self.publications.is_empty()
            && self.statistics.is_empty()
            && self.other_policies.is_empty()
            && self.other_rules.is_empty()
    }

    /// Statements taking the locks the move needs besides the table's, in a fixed order, to
    /// run in the cutover transaction under its `lock_timeout` right BEFORE it locks the table
    /// (and again, as no-ops, at the start of [`Dependents::forward`]):
    ///
    /// 1. `LOCK TABLE <tables> IN ACCESS EXCLUSIVE MODE` for the foreign-key children and the
    ///    tables whose policies or rules are recreated, by OID (DESIGN.md §4: child locks in a
    ///    fixed order). `ALTER TABLE .. DROP CONSTRAINT` needs ACCESS EXCLUSIVE on the child.
    /// 2. For each plain view, leaf first, `ALTER VIEW v OWNER TO <its owner>`: a
    ///    no-op owner change takes ACCESS EXCLUSIVE on the view alone and changes no catalog
    ///    row (PostgreSQL's `ATExecChangeOwner` does nothing when the owner is unchanged).
    ///    `LOCK TABLE` is not usable here: on a view it also locks the view's base tables
    ///    after checking that the *view owner* holds UPDATE/DELETE/TRUNCATE on them (which a
    ///    read-only view owner does not).
    ///
    /// Materialized views are not locked: the cutover leaves them alone (they are rebuilt
    /// after it commits, see [`Dependents::forward_after_commit`]).
    ///
    /// A query on a view locks the view, then its tables; taking the views before the table
    /// keeps the cutover in that order, so a reader that opened a view just before the table
    /// lock cannot deadlock with the `DROP VIEW`. Orders still conflict with writers that lock
    /// the table before a child (e.g. `ON DELETE CASCADE`); `lock_timeout` bounds that wait
    /// and the attempt is retried. Empty when there is nothing to lock.
    pub fn lock_sql(&self) -> Vec<String> {
        let mut tables: BTreeMap<u32, String> = BTreeMap::new();
        for fk in &self.foreign_keys {
            tables.insert(fk.child_oid, fk.child.clone());
        }
        for p in &self.other_policies {
            tables.insert(p.relation_oid, p.relation.clone());
        }
        for r in self.other_rules.iter().filter(|r| r.on_table) {
            tables.insert(r.relation_oid, r.relation.clone());
        }
        tables.remove(&self.table_oid);
        let mut out = Vec::new();
        if !tables.is_empty() {
            out.push(format!(
                "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                tables.into_values().collect::<Vec<_>>().join(", ")
            ));
        }
        for v in self.views.iter().rev().filter(|v| !v.materialized) {
            out.push(format!(
                "ALTER VIEW {} OWNER TO {}",
                v.qualified(),
                ident(&v.owner)
            ));
        }
        out
    }

    /// Problems that make a safe move impossible, each with its reason; empty = everything
    /// movable. `renamed_columns` are (old name, new name) pairs and `dropped_columns` the
    /// columns the ALTER removes: a definition naming such a column cannot be recreated on
    /// the new table. Also reported: everything in [`Dependents::unsupported`] (including
    /// materialized views something depends on or that use a dependent view), foreign keys
    /// from partitioned tables (no `NOT VALID` foreign key on a partitioned table before
    /// PostgreSQL 18).
    ///
    /// Not detected: an expression that no longer type-checks after a column type change
    /// (e.g. a view comparing the column with a literal of the old type); the cutover
    /// transaction then fails with the server's error and rolls back, the original untouched.
    pub fn blockers(
        &self,
        renamed_columns: &[(String, String)],
        dropped_columns: &[String],
    ) -> Vec<String> {
        let table = qualified(&self.schema, &self.table);
        let mut out = self.unsupported.clone();
        for fk in self.foreign_keys.iter().filter(|f| f.child_partitioned) {
            out.push(format!(
                "foreign key {} on the partitioned table {} references {table}: a foreign key cannot be re-added NOT VALID on a partitioned table, and validating it under the cutover lock would scan every partition; drop it before the migration and re-add it after",
                fk.name, fk.child
            ));
        }
        let mut check = |what: String, columns: &[String]| {
            for c in columns {
                if dropped_columns.contains(c) {
                    out.push(format!(
                        "{what} uses column {c} of {table}, which the ALTER drops: it cannot be recreated on the new table; drop or change it first"
                    ));
                }
                if let Some((_, new)) = renamed_columns.iter().find(|(old, _)| old == c) {
                    out.push(format!(
                        "{what} uses column {c} of {table}, which the ALTER renames to {new}: its definition names the old column and cannot be recreated on the new table; rename the column in a separate, metadata-only ALTER instead"
                    ));
                }
            }
        };
        for v in &self.views {
            check(
                format!("{} {}", v.keyword().to_lowercase(), v.qualified()),
                &v.columns,
            );
        }
        for t in &self.triggers {
            check(format!("trigger {}", t.name), &t.columns);
        }
        for r in self.rules.iter().chain(&self.other_rules) {
            check(format!("rule {} on {}", r.name, r.relation), &r.columns);
        }
        for p in self.policies.iter().chain(&self.other_policies) {
            check(format!("policy {} on {}", p.name, p.relation), &p.columns);
        }
        for fk in &self.foreign_keys {
            check(
                format!("foreign key {} on {}", fk.name, fk.child),
                &fk.referenced_columns,
            );
        }
        for p in &self.publications {
            check(
                format!("the membership in publication {}", p.name),
                &p.used_columns,
            );
        }
        for s in &self.statistics {
            check(format!("statistics object {}", s.name), &s.columns);
        }
        out
    }

    /// SQL run inside the cutover transaction after the renames (the original is now named
    /// `names.old`, the new table has the original name, and its indexes their final names).
    /// In order: lock the other relations ([`Dependents::lock_sql`]; instant when the
    /// cutover already holds them); drop policies and rules of other tables that use the
    /// table or a view; drop the views, leaf first; per foreign-key child (by OID) drop the
    /// key and re-add it `NOT VALID` (it now references the new table); move triggers, rules
    /// and policies (create on the new table, drop from the old one so nothing fires twice on
    /// the kept table) and set the RLS flags on the new table; replica identity; publication
    /// membership (drop the old table, add the new one with the same row filter and column
    /// list); extended statistics; TOAST reloptions; create the views root first with owner,
    /// options, grants, comments, defaults, triggers and rules; recreate the other tables'
    /// policies and rules. The old table keeps its RLS flags (without policies it denies
    /// every role but its owner) and its replica identity. Materialized views are left
    /// alone (still populated, still reading the old table until their rebuild after commit).
    pub fn forward(&self, names: &Names) -> Vec<String> {
        self.script(names, &names.old_qualified(), true)
    }

    /// Run after the cutover commits, outside its transaction, each entry with one
    /// `batch_execute` (an entry may be several statements): first the rebuild of each
    /// materialized view on the new table (one `DO` block each, see [`View`]; on failure the
    /// materialized view is unchanged, still reads the kept old table, and the error says
    /// so), then `ALTER TABLE child VALIDATE CONSTRAINT ..` for each foreign key that was
    /// validated before (SHARE UPDATE EXCLUSIVE on the child: reads and writes continue; a
    /// failure leaves the key `NOT VALID` but enforced for new rows). Report failures.
    /// [`Dependents::forward_after_commit_labeled`] names what each entry does.
    pub fn forward_after_commit(&self, names: &Names) -> Vec<String> {
        self.forward_after_commit_labeled(names)
            .into_iter()
            .map(|(_, sql)| sql)
            .collect()
    }

    /// [`Dependents::forward_after_commit`] as (what, SQL) pairs: `what` is
    /// `materialized view "schema"."name"` for a rebuild and the constraint name for a
    /// validation, for reporting a failed entry.
    pub fn forward_after_commit_labeled(&self, names: &Names) -> Vec<(String, String)> {
        self.after_commit(
            &format!("the new table {}", names.table_qualified()),
            &format!("the kept old table {}", names.old_qualified()),
        )
    }

    /// The same in reverse for the rollback script, run after the new table was renamed back
    /// to `names.shadow` and the old one back to the original name: the same statements with
    /// `names.shadow` as the table the dependents are taken from (the definitions name the
    /// original name, which is the old table again). Replica identity and TOAST options were
    /// never changed on the old table and are left alone.
    pub fn rollback(&self, names: &Names) -> Vec<String> {
        self.script(names, &names.shadow_qualified(), false)
    }

    /// After the rollback commits, in the rollback script: the rebuild of each materialized
    /// view on the restored original (as in [`Dependents::forward_after_commit`]; on failure
    /// it still reads the migrated table, renamed back to `names.shadow`), then the
    /// `VALIDATE CONSTRAINT` statements. The rebuilds come first because psql stops at the
    /// first error (`ON_ERROR_STOP`) and a validation fails when a child row references a
    /// row written only to the new table after the cutover (such writes are lost by a
    /// rollback); the key then stays `NOT VALID`.
    pub fn rollback_after_commit(&self, names: &Names) -> Vec<String> {
        self.after_commit(
            &format!("the restored table {}", names.table_qualified()),
            &format!("the migrated table {}", names.shadow_qualified()),
        )
        .into_iter()
        .map(|(_, sql)| sql)
        .collect()
    }

    /// Matview rebuilds (reading `onto`; on failure still reading `still_reads`), then
    /// foreign-key validations.
    fn after_commit(&self, onto: &str, still_reads: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .views
            .iter()
            .filter(|v| v.materialized)
            .map(|v| {
                (
                    format!("materialized view {}", v.qualified()),
                    v.rebuild_sql(self.table_oid, onto, still_reads),
                )
            })
            .collect();
        out.extend(
            self.foreign_keys
                .iter()
                .filter(|fk| fk.validated)
                .map(|fk| (fk.name.clone(), fk.validate_sql())),
        );
        out
    }

    /// The move, from the relation `from` (where the table-bound objects are now) to the
    /// relation named `names.table`.
    fn script(&self, names: &Names, from: &str, forward: bool) -> Vec<String> {
        let table = names.table_qualified();
        let mut out = self.lock_sql();
        for p in &self.other_policies {
            out.push(format!("DROP POLICY {} ON {}", ident(&p.name), p.relation));
        }
        for r in &self.other_rules {
            out.push(format!("DROP RULE {} ON {}", ident(&r.name), r.relation));
        }
        for v in self.views.iter().rev().filter(|v| !v.materialized) {
            out.push(format!("DROP VIEW {}", v.qualified()));
        }
        for fk in &self.foreign_keys {
            out.push(format!(
                "ALTER TABLE {} DROP CONSTRAINT {}",
                fk.child,
                ident(&fk.name)
            ));
            out.push(format!(
                "ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID",
                fk.child,
                ident(&fk.name),
                fk.definition
            ));
        }
        for t in &self.triggers {
            out.push(format!("DROP TRIGGER {} ON {from}", ident(&t.name)));
            out.push(t.definition.clone());
            out.extend(enable_sql("TRIGGER", &table, &t.name, t.enabled));
        }
        for r in &self.rules {
            out.push(format!("DROP RULE {} ON {from}", ident(&r.name)));
            out.push(r.definition.clone());
            out.extend(enable_sql("RULE", &table, &r.name, r.enabled));
        }
        for p in &self.policies {
            out.push(format!("DROP POLICY {} ON {from}", ident(&p.name)));
            out.push(
                Policy {
                    relation: table.clone(),
                    ..p.clone()
                }
                .create_sql(),
            );
        }
        if self.row_security {
            out.push(format!("ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"));
        }
        if self.force_row_security {
            out.push(format!("ALTER TABLE {table} FORCE ROW LEVEL SECURITY"));
        }
        if forward {
            match (self.replica_identity, &self.replica_identity_index) {
                ('f', _) => out.push(format!("ALTER TABLE {table} REPLICA IDENTITY FULL")),
                ('n', _) => out.push(format!("ALTER TABLE {table} REPLICA IDENTITY NOTHING")),
                ('i', Some(index)) => out.push(format!(
                    "ALTER TABLE {table} REPLICA IDENTITY USING INDEX {}",
                    ident(index)
                )),
                _ => {}
            }
        }
        for p in &self.publications {
            out.push(format!(
                "ALTER PUBLICATION {} DROP TABLE {from}",
                ident(&p.name)
            ));
            out.push(p.add_sql(&table));
        }
        for s in &self.statistics {
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
        if forward && !self.toast_reloptions.is_empty() {
            let prefixed: Vec<String> = self
                .toast_reloptions
                .iter()
                .map(|o| format!("toast.{o}"))
                .collect();
            out.push(format!(
                "ALTER TABLE {table} SET ({})",
                options_sql(&prefixed)
            ));
        }
        for v in self.views.iter().filter(|v| !v.materialized) {
            out.extend(v.create_sql());
        }
        for r in &self.other_rules {
            out.push(r.definition.clone());
            out.extend(enable_sql("RULE", &r.relation, &r.name, r.enabled));
        }
        for p in &self.other_policies {
            out.push(p.create_sql());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_quoted() {
        assert_eq!(
            options_sql(&["security_barrier=true".into(), "check_option=local".into()]),
            "security_barrier = 'true', check_option = 'local'"
        );
    }

    #[test]
    fn firing_states() {
        assert_eq!(enable_sql("TRIGGER", "\"s\".\"t\"", "x", 'O'), None);
        assert_eq!(
            enable_sql("RULE", "\"s\".\"t\"", "x", 'A').as_deref(),
            Some("ALTER TABLE \"s\".\"t\" ENABLE ALWAYS RULE \"x\"")
        );
    }

    #[test]
    fn policy_sql() {
        let p = Policy {
            name: "p".into(),
            relation_oid: 1,
            relation: "\"public\".\"t\"".into(),
            permissive: false,
            command: "INSERT".into(),
            roles: vec!["tenant".into()],
            using: None,
            with_check: Some("(amount >= 0)".into()),
            columns: vec![],
        };
        assert_eq!(
            p.create_sql(),
            "CREATE POLICY \"p\" ON \"public\".\"t\" AS RESTRICTIVE FOR INSERT TO tenant WITH CHECK ((amount >= 0))"
        );
    }

    /// The prepared read (and the prepared fingerprint) return what the unprepared ones do,
    /// including changes committed by another session after the preparation, read in a
    /// transaction holding the table's ACCESS EXCLUSIVE lock as the cutover does; the
    /// connection's settings are left as they were, after a failed read too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prepared_reads_see_changes_committed_after_preparing() {
        use crate::model::catalog::{PreparedFingerprint, fingerprint};
        let cluster = doppel_testkit::cluster::LocalCluster::start(Default::default())
            .await
            .unwrap();
        let mut client = cluster.connect("postgres").await.unwrap();
        let other = cluster.connect("postgres").await.unwrap();
        client
            .batch_execute(
                "CREATE TABLE t (id int PRIMARY KEY, v int);
                 CREATE VIEW v1 AS SELECT id, v FROM t;
                 CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;",
            )
            .await
            .unwrap();
        let oid = crate::model::catalog::resolve(&client, "t").await.unwrap();
        async fn settings_of(c: &tokio_postgres::Client) -> (String, String) {
            let r = c
                .query_one(
                    "SELECT current_setting('search_path'), current_setting('plan_cache_mode')",
                    &[],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1))
        }
        let initial = settings_of(&client).await;
        let prepared = Prepared::new(&client, oid, "doppel_own").await.unwrap();
        let prepared_fingerprint = PreparedFingerprint::new(&client, oid).await.unwrap();
        assert_eq!(settings_of(&client).await, initial);
        let mut previous = read(&client, oid, "doppel_own").await.unwrap();
        assert_eq!(prepared.read(&client).await.unwrap(), previous);
        assert_eq!(settings_of(&client).await, initial);
        let mut previous_fingerprint = fingerprint(&client, oid).await.unwrap();
        assert_eq!(
            prepared_fingerprint.compute(&client).await.unwrap(),
            previous_fingerprint
        );

        for (ddl, changes_fingerprint) in [
            ("CREATE VIEW v2 AS SELECT id FROM v1", false),
            ("GRANT SELECT ON v1 TO PUBLIC", false),
            ("COMMENT ON COLUMN v1.v IS 'x'", false),
            ("CREATE RULE r AS ON DELETE TO v1 DO INSTEAD NOTHING", false),
            ("ALTER VIEW v1 ALTER COLUMN v SET DEFAULT 1", false),
            (
                "CREATE TRIGGER tg BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
                true,
            ),
            ("CREATE POLICY pol ON t USING (v > 0)", true),
            ("CREATE TABLE c (t_id int REFERENCES t (id))", true),
            ("ALTER TABLE t SET (fillfactor = 50)", true),
            ("ALTER TABLE t ALTER COLUMN v SET STATISTICS 500", false),
            ("CREATE STATISTICS st ON id, v FROM t", false),
            ("CREATE PUBLICATION p2 FOR TABLE t", true),
            ("ALTER TABLE t ADD COLUMN w int", true),
            ("CREATE INDEX t_v ON t (v)", true),
        ] {
            other.batch_execute(ddl).await.unwrap();
            let tx = client.transaction().await.unwrap();
            tx.batch_execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            let now_fingerprint = prepared_fingerprint.compute(&tx).await.unwrap();
            let now = prepared.read(&tx).await.unwrap();
            tx.rollback().await.unwrap();
            assert_eq!(
                now,
                read(&client, oid, "doppel_own").await.unwrap(),
                "{ddl}"
            );
            assert_eq!(now_fingerprint, fingerprint(&client, oid).await.unwrap());
            if ddl.starts_with("ALTER TABLE t ADD") || ddl.starts_with("CREATE INDEX") {
                assert_eq!(now, previous, "{ddl}: not a dependent");
            } else {
                assert_ne!(now, previous, "{ddl}");
            }
            assert_eq!(
                now_fingerprint != previous_fingerprint,
                changes_fingerprint,
                "{ddl}"
            );
            assert_eq!(settings_of(&client).await, initial, "{ddl}");
            previous = now;
            previous_fingerprint = now_fingerprint;
        }

        // Every prepared statement was planned once (generic plans), never per execution.
        let plans = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE custom_plans > 0),
                        min(generic_plans) FILTER (WHERE statement NOT LIKE '%pg_prepared_statements%')
                 FROM pg_prepared_statements",
                &[],
            )
            .await
            .unwrap();
        let (statements, custom, generic): (i64, i64, i64) =
            (plans.get(0), plans.get(1), plans.get(2));
        assert!(statements >= 20, "{statements} statements prepared");
        assert_eq!(custom, 0, "no statement planned for its parameters");
        assert!(generic >= 15, "each ran with its generic plan: {generic}");

        other.batch_execute("DROP TABLE t CASCADE").await.unwrap();
        let err = prepared.read(&client).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("no relation has OID"),
            "{err:#}"
        );
        assert_eq!(settings_of(&client).await, initial);
    }
}
