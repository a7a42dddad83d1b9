//! Dependents bound to the original table's OID, moved to the new table in the cutover
//! transaction (docs/design.md §4.4, issue 4).
//!
//! `ALTER TABLE t RENAME TO old` keeps every object that refers to `t` by OID attached to
//! `old`: foreign keys from other tables, views (and views on those views), triggers, rules,
//! row-level security policies and flags, publication membership, replica identity, extended
//! statistics, materialized views. The new table takes the name but none of these. This
//! module reads them from the catalog **before** the cutover ([`read`], while the original
//! still has its name, so every `pg_get_*def` text names the table as `schema.table`, which
//! resolves to the new table once it has taken the name), says which of them cannot be moved
//! safely ([`Dependents::refusals`]), and produces the SQL that moves them
//! ([`Dependents::forward`], [`Dependents::forward_after_commit`]) and moves them back
//! ([`Dependents::rollback`], [`Dependents::rollback_after_commit`]).
//!
//! One file per kind of dependent, each implementing the module's private trait `Kind` (what
//! it reads, what it refuses, its statements in the cutover transaction and in the rollback
//! script, its steps after the commit):
//!
//! - `view.rs`: views on the table, transitively (and the [`View`] record materialized views
//!   share); `matview.rs`: materialized views, rebuilt after the commit;
//! - `foreign_key.rs`: foreign keys of other tables, re-added `NOT VALID`, validated after
//!   the commit; `foreign_key/partitioned.rs`: those defined on partitioned tables, moved
//!   through their leaf partitions before PostgreSQL 18;
//! - `trigger.rs`, `rule.rs`, `policy.rs` (with the RLS flags), `publication.rs`,
//!   `statistics.rs`, `replica_identity.rs`, `toast.rs` (TOAST reloptions);
//! - `unmovable.rs`: other objects bound to the OID, refused (`BEGIN ATOMIC` functions,
//!   users of the row type, ...);
//! - `read.rs`: the catalog reads of every kind, in two pipelined round trips, from SQL text
//!   ([`read`]) or from statements prepared before the cutover lock ([`Prepared`]);
//! - `members.rs`: what is bound to a single member of a partitioned table's tree, read and
//!   moved like a table's dependents, from the kept old member to the new one of the same
//!   name ([`MemberDependents`], docs/design.md §1.14).
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
//!   order (docs/design.md §4.4: "take the locks in a fixed order").
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

/// The `pg_depend` condition "references one of the relations `$1` or their row types `$2`"
/// for the alias `d`, as a literal for `concat!` (the rules, policies and unmovable queries).
macro_rules! references_1_2 {
    () => {
        "((d.refclassid = 'pg_class'::regclass AND d.refobjid = ANY($1::oid[]))
          OR (d.refclassid = 'pg_type'::regclass AND d.refobjid = ANY($2::oid[])))"
    };
}

mod foreign_key;
mod matview;
mod members;
mod policy;
mod publication;
mod read;
mod replica_identity;
mod rule;
mod statistics;
mod toast;
mod trigger;
mod unmovable;
mod view;

use std::collections::BTreeMap;
use std::fmt;

use crate::model::names::Names;
use crate::sql::{ident, literal, qualified};

pub use foreign_key::{
    ForeignKey, LeafKey, NOT_VALID_ON_PARTITIONED, PENDING_REATTACH_MARK, REATTACH_ATTEMPTS,
    REATTACH_LOCK_TIMEOUT_MS, add_through_leaves, pending_reattach_sql, validate_and_reattach,
};
pub use matview::{MATVIEW_SWAP_ATTEMPTS, MATVIEW_SWAP_LOCK_TIMEOUT_MS};
pub use members::{
    MEMBERS_WITH_DEPENDENTS_SQL, MemberDependents, lock_each_with_members, lock_sql_with_members,
    members_with_dependents,
};
pub use policy::Policy;
pub use publication::Publication;
pub use read::{Prepared, read};
pub use rule::Rule;
pub use statistics::StatisticsObject;
pub use trigger::Trigger;
pub use view::{Grant, MatviewIndex, View};

use read::{Query, ReadContext, Rows};

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
    /// or that use a dependent view, other objects bound to the OID. In reading order: views,
    /// materialized views, rules, policies, foreign keys, publications, statistics, others.
    pub unsupported: Vec<Refusal>,
}

/// Why a dependent cannot be moved safely, and what to do about it.
///
/// Its [`Display`](fmt::Display) is the one-line message preflight lists (it appends its
/// own "; drop and recreate it around the migration"): the object, then the reason, then the
/// fix joined by [`Refusal::joint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The object refused, as the message names it: `view "public"."v"`, `foreign key f on
    /// "public"."c"`, `function public.f()` (`pg_describe_object`).
    pub object: String,
    /// Why, continuing the sentence that starts with the object.
    pub reason: String,
    /// What the operator can do, when the message says more than the reason.
    pub fix: Option<String>,
    /// How the message joins the reason and the fix.
    pub joint: Joint,
}

/// The punctuation between a [`Refusal`]'s reason and its fix; each message keeps the
/// wording it has always had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joint {
    /// `reason; fix`.
    Semicolon,
    /// `reason: fix`.
    Colon,
    /// `reason. Fix` (the fix is a sentence of its own).
    Period,
}

impl Refusal {
    /// A refusal of `object` for `reason`, without a fix of its own.
    pub fn new(object: impl Into<String>, reason: impl Into<String>) -> Refusal {
        Refusal {
            object: object.into(),
            reason: reason.into(),
            fix: None,
            joint: Joint::Semicolon,
        }
    }

    /// The same refusal with `fix`, joined to the reason by `joint`.
    pub fn with_fix(self, joint: Joint, fix: impl Into<String>) -> Refusal {
        Refusal {
            fix: Some(fix.into()),
            joint,
            ..self
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.object, self.reason)?;
        if let Some(fix) = &self.fix {
            let joint = match self.joint {
                Joint::Semicolon => "; ",
                Joint::Colon => ": ",
                Joint::Period => ". ",
            };
            write!(f, "{joint}{fix}")?;
        }
        Ok(())
    }
}

/// A lock a kind needs before the table's (see [`Dependents::lock_sql`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lock {
    /// A table to take in ACCESS EXCLUSIVE mode with `LOCK TABLE`, by OID with the others.
    Table {
        /// Its OID: tables are locked in OID order.
        oid: u32,
        /// `"schema"."table"`.
        name: String,
    },
    /// A statement that takes the lock itself (a view's no-op owner change).
    Statement(String),
}

/// Where a move goes: the relations as named inside the cutover transaction (forward) or the
/// rollback script (backward), after the renames.
struct Move {
    /// `"schema"."table"`: the relation that has the table's name now, where table-bound
    /// objects go (the new table forward, the restored original backward).
    table: String,
    /// The relation the table-bound objects are on now: the kept old table forward, the
    /// migrated table (renamed back to the shadow's name) backward.
    from: String,
}

/// The relations named by the steps after a commit, for their failure messages.
struct Finish {
    /// What a rebuilt materialized view reads, e.g. `the new table "public"."t"`.
    onto: String,
    /// What it still reads when its rebuild fails, e.g. `the kept old table ..`.
    still_reads: String,
}

/// One kind of dependent: how it is read, refused, moved forward in the cutover transaction,
/// moved back by the rollback script, and finished after either commits. Each kind is a
/// unit struct in its own file; what it reads lives in fields of [`Dependents`] (the
/// aggregate is compared as a whole under the cutover lock). Every method has a default that
/// says nothing, so a kind implements only what it has.
trait Kind: Sync {
    /// The catalog queries of this kind, each sent in its batch of [`read`] (the first holds
    /// the queries that need only the table's OID).
    fn queries(&self) -> &'static [&'static Query] {
        &[]
    }

    /// Parses the rows of its queries (taken from `rows`) into its fields of `deps`, and
    /// pushes what it finds unmovable onto `deps.unsupported`. Called after the second batch,
    /// kind by kind in the order of [`KINDS`]. Panics only when a row does not have the
    /// shape of its query (a bug).
    fn read(&self, _rows: &mut Rows, _cx: &ReadContext, _deps: &mut Dependents) {}

    /// Refusals that depend on nothing but the read (the ALTER's column changes are checked
    /// with [`Kind::column_users`]).
    fn refusals(&self, _deps: &Dependents) -> Vec<Refusal> {
        Vec::new()
    }

    /// Each object of this kind, named for a message, with the table's columns it uses: one
    /// the ALTER drops or renames cannot be recreated on the new table.
    fn column_users<'d>(&self, _deps: &'d Dependents) -> Vec<(String, &'d [String])> {
        Vec::new()
    }

    /// Locks the move needs besides the table's, taken before it (and again, as no-ops, at
    /// the start of the move).
    fn locks(&self, _deps: &Dependents) -> Vec<Lock> {
        Vec::new()
    }

    /// Before any move: drops this kind's objects that use the table without being on it
    /// (views, other tables' rules and policies), which [`Kind::rebind`] recreates once the
    /// table has moved (called in reverse [`MOVE_ORDER`]: users of views before the views).
    fn unbind(&self, _deps: &Dependents) -> Vec<String> {
        Vec::new()
    }

    /// The move inside the cutover transaction, from `m.from` to `m.table`.
    fn forward(&self, _deps: &Dependents, _m: &Move) -> Vec<String> {
        Vec::new()
    }

    /// The move back in the rollback script; by default the same statements as
    /// [`Kind::forward`], from the migrated table to the restored original.
    fn rollback(&self, deps: &Dependents, m: &Move) -> Vec<String> {
        self.forward(deps, m)
    }

    /// After every move: recreates what [`Kind::unbind`] dropped (called in [`MOVE_ORDER`]).
    fn rebind(&self, _deps: &Dependents) -> Vec<String> {
        Vec::new()
    }

    /// Steps run after the commit, outside the transaction, as (what, SQL) pairs.
    fn after_commit(&self, _deps: &Dependents, _f: &Finish) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Every kind, in the order its rows are parsed and its refusals listed (the order preflight
/// has always listed them in).
const KINDS: [&dyn Kind; 11] = [
    &view::Views,
    &matview::Matviews,
    &trigger::Triggers,
    &rule::Rules,
    &policy::Policies,
    &foreign_key::ForeignKeys,
    &replica_identity::ReplicaIdentity,
    &publication::Publications,
    &statistics::Statistics,
    &toast::ToastOptions,
    &unmovable::Unmovable,
];

/// Every kind, in the order its statements run (docs/design.md §4.4): unbinding in reverse,
/// moves and rebinding in this order, after-commit steps in this order (materialized views
/// are rebuilt before foreign keys are validated).
const MOVE_ORDER: [&dyn Kind; 11] = [
    &view::Views,
    &matview::Matviews,
    &foreign_key::ForeignKeys,
    &trigger::Triggers,
    &rule::Rules,
    &policy::Policies,
    &replica_identity::ReplicaIdentity,
    &publication::Publications,
    &statistics::Statistics,
    &toast::ToastOptions,
    &unmovable::Unmovable,
];

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

    /// When `now` (a re-read) differs from `self` only in the leaf partitions of a
    /// partitioned table whose foreign key moves through its leaves (a partition created,
    /// attached or detached meanwhile), that table's name; `None` otherwise.
    pub fn partitions_changed(&self, now: &Dependents) -> Option<String> {
        if self.foreign_keys.len() != now.foreign_keys.len() {
            return None;
        }
        let mut changed = None;
        let mut same_keys = self.clone();
        for (mine, theirs) in same_keys.foreign_keys.iter_mut().zip(&now.foreign_keys) {
            if mine.leaf_keys != theirs.leaf_keys && mine.leaf_keys.is_some() {
                changed.get_or_insert_with(|| mine.child.clone());
                mine.leaf_keys = theirs.leaf_keys.clone();
            }
        }
        (same_keys == *now).then_some(changed).flatten()
    }

    /// Statements taking the locks the move needs besides the table's, in a fixed order, to
    /// run in the cutover transaction under its `lock_timeout` right BEFORE it locks the table
    /// (and again, as no-ops, at the start of [`Dependents::forward`]):
    ///
    /// 1. `LOCK TABLE <tables> IN ACCESS EXCLUSIVE MODE` for the foreign-key children and the
    ///    tables whose policies or rules are recreated, by OID (docs/design.md §4.4: child
    ///    locks in a fixed order). `ALTER TABLE .. DROP CONSTRAINT` needs ACCESS EXCLUSIVE on
    ///    the child.
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
        lock_sql_of(&[self], &[])
    }

    /// The same locks as [`Dependents::lock_sql`], one relation per statement and in the same
    /// order (tables by OID, then the views leaf first): the cutover gives each statement what
    /// is left of one attempt's lock budget as its `lock_timeout`, so the waits of all of them
    /// together stay within it (docs/design.md §4.2).
    pub fn lock_each(&self) -> Vec<String> {
        lock_each_of(&[self], &[])
    }

    /// Problems that make a safe move impossible, each with its reason and, when there is
    /// one, its fix; empty = everything movable. `renamed_columns` are (old name, new name)
    /// pairs and `dropped_columns` the columns the ALTER removes: a definition naming such a
    /// column cannot be recreated on the new table. Also reported: everything in
    /// [`Dependents::unsupported`] (including materialized views something depends on or that
    /// use a dependent view).
    ///
    /// Not detected: an expression that no longer type-checks after a column type change
    /// (e.g. a view comparing the column with a literal of the old type); the cutover
    /// transaction then fails with the server's error and rolls back, the original untouched.
    pub fn refusals(
        &self,
        renamed_columns: &[(String, String)],
        dropped_columns: &[String],
    ) -> Vec<Refusal> {
        let table = qualified(&self.schema, &self.table);
        let mut out = self.unsupported.clone();
        out.extend(KINDS.iter().flat_map(|k| k.refusals(self)));
        for (what, columns) in KINDS.iter().flat_map(|k| k.column_users(self)) {
            for c in columns {
                if dropped_columns.contains(c) {
                    out.push(
                        Refusal::new(
                            what.clone(),
                            format!("uses column {c} of {table}, which the ALTER drops: it cannot be recreated on the new table"),
                        )
                        .with_fix(Joint::Semicolon, "drop or change it first"),
                    );
                }
                if let Some((_, new)) = renamed_columns.iter().find(|(old, _)| old == c) {
                    out.push(
                        Refusal::new(
                            what.clone(),
                            format!("uses column {c} of {table}, which the ALTER renames to {new}: its definition names the old column and cannot be recreated on the new table"),
                        )
                        .with_fix(
                            Joint::Semicolon,
                            "rename the column in a separate, metadata-only ALTER instead",
                        ),
                    );
                }
            }
        }
        out
    }

    /// [`Dependents::refusals`] as the one-line messages preflight lists.
    pub fn blockers(
        &self,
        renamed_columns: &[(String, String)],
        dropped_columns: &[String],
    ) -> Vec<String> {
        self.refusals(renamed_columns, dropped_columns)
            .iter()
            .map(Refusal::to_string)
            .collect()
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
        let m = Move {
            table: names.table_qualified(),
            from: names.old_qualified(),
        };
        self.script(|k| k.forward(self, &m))
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
        self.after_commit(&Finish {
            onto: format!("the new table {}", names.table_qualified()),
            still_reads: format!("the kept old table {}", names.old_qualified()),
        })
    }

    /// The same in reverse for the rollback script, run after the new table was renamed back
    /// to `names.shadow` and the old one back to the original name: the same statements with
    /// `names.shadow` as the table the dependents are taken from (the definitions name the
    /// original name, which is the old table again). Replica identity and TOAST options were
    /// never changed on the old table and are left alone.
    pub fn rollback(&self, names: &Names) -> Vec<String> {
        let m = Move {
            table: names.table_qualified(),
            from: names.shadow_qualified(),
        };
        self.script(|k| k.rollback(self, &m))
    }

    /// After the rollback commits, in the rollback script: the rebuild of each materialized
    /// view on the restored original (as in [`Dependents::forward_after_commit`]; on failure
    /// it still reads the migrated table, renamed back to `names.shadow`), then the
    /// `VALIDATE CONSTRAINT` statements. The rebuilds come first because psql stops at the
    /// first error (`ON_ERROR_STOP`) and a validation fails when a child row references a
    /// row written only to the new table after the cutover (such writes are lost by a
    /// rollback); the key then stays `NOT VALID`.
    pub fn rollback_after_commit(&self, names: &Names) -> Vec<String> {
        self.after_commit(&Finish {
            onto: format!("the restored table {}", names.table_qualified()),
            still_reads: format!("the migrated table {}", names.shadow_qualified()),
        })
        .into_iter()
        .map(|(_, sql)| sql)
        .collect()
    }

    /// Materialized view rebuilds, then foreign-key validations (see [`MOVE_ORDER`]).
    fn after_commit(&self, f: &Finish) -> Vec<(String, String)> {
        MOVE_ORDER
            .iter()
            .flat_map(|k| k.after_commit(self, f))
            .collect()
    }

    /// The locks, each kind's unbinding (in reverse [`MOVE_ORDER`]), each kind's move
    /// (`moved`, forward or back), each kind's rebinding.
    fn script(&self, moved: impl Fn(&dyn Kind) -> Vec<String>) -> Vec<String> {
        let mut out = self.lock_sql();
        out.extend(self.moves(moved));
        out
    }

    /// Each kind's unbinding (in reverse [`MOVE_ORDER`]), each kind's move, each kind's
    /// rebinding: [`Dependents::script`] without the locks.
    fn moves(&self, moved: impl Fn(&dyn Kind) -> Vec<String>) -> Vec<String> {
        let mut out: Vec<String> = MOVE_ORDER
            .iter()
            .rev()
            .flat_map(|k| k.unbind(self))
            .collect();
        out.extend(MOVE_ORDER.iter().flat_map(|k| moved(*k)));
        out.extend(MOVE_ORDER.iter().flat_map(|k| k.rebind(self)));
        out
    }

    /// [`Dependents::forward`] between relations named by the caller, without the locks
    /// (taken before by the caller, see [`lock_sql_of`]): `table` is the relation that has the
    /// read table's name once the swap renamed it (where the objects go), `from` the one the
    /// objects are on (the kept old relation). For a member of a partitioned table, whose
    /// new and kept names are not those of [`Names`] (`MemberDependents`).
    pub fn forward_between(&self, table: &str, from: &str) -> Vec<String> {
        let m = Move {
            table: table.to_string(),
            from: from.to_string(),
        };
        self.moves(|k| k.forward(self, &m))
    }

    /// [`Dependents::rollback`] between relations named by the caller, without the locks:
    /// `table` is the restored original (which has the name again), `from` the migrated
    /// relation renamed back to its temporary name.
    pub fn rollback_between(&self, table: &str, from: &str) -> Vec<String> {
        let m = Move {
            table: table.to_string(),
            from: from.to_string(),
        };
        self.moves(|k| k.rollback(self, &m))
    }

    /// The after-commit steps ([`Dependents::forward_after_commit_labeled`]) as (what, SQL)
    /// pairs, `onto` and `still_reads` naming, in a failed rebuild's message, the relation a
    /// materialized view was to read and the one it still reads.
    pub fn after_commit_between(&self, onto: String, still_reads: String) -> Vec<(String, String)> {
        self.after_commit(&Finish { onto, still_reads })
    }
}

/// [`Dependents::lock_sql`] of several reads together (a partitioned table's and its
/// members', `crate::dependents::MemberDependents`): one `LOCK TABLE` of every table any of
/// them locks, by OID, then every read's other statements (the views', leaf first) in the
/// order of `all`. The tables the reads are of and the tables of `skip` are left out (a
/// partitioned table's members, which locking the partitioned table locks after it).
fn lock_sql_of(all: &[&Dependents], skip: &[u32]) -> Vec<String> {
    let (tables, statements) = locks_of(all, skip);
    let mut out = Vec::new();
    if !tables.is_empty() {
        out.push(format!(
            "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
            tables.join(", ")
        ));
    }
    out.extend(statements);
    out
}

/// [`Dependents::lock_each`] of several reads together, with the tables left out as in
/// [`lock_sql_of`].
fn lock_each_of(all: &[&Dependents], skip: &[u32]) -> Vec<String> {
    let (tables, statements) = locks_of(all, skip);
    let mut out: Vec<String> = tables
        .into_iter()
        .map(|name| format!("LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE"))
        .collect();
    out.extend(statements);
    out
}

/// The tables to lock besides those the reads `all` are of and those of `skip`, by OID, and
/// the statements that take the other locks (the views', leaf first; a view several reads
/// share is locked once).
fn locks_of(all: &[&Dependents], skip: &[u32]) -> (Vec<String>, Vec<String>) {
    let mut tables: BTreeMap<u32, String> = BTreeMap::new();
    let mut statements: Vec<String> = Vec::new();
    for deps in all {
        for lock in MOVE_ORDER.iter().flat_map(|k| k.locks(deps)) {
            match lock {
                Lock::Table { oid, name } => {
                    tables.insert(oid, name);
                }
                Lock::Statement(sql) if !statements.contains(&sql) => statements.push(sql),
                Lock::Statement(_) => {}
            }
        }
    }
    for oid in all.iter().map(|d| d.table_oid).chain(skip.iter().copied()) {
        tables.remove(&oid);
    }
    (tables.into_values().collect(), statements)
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

/// The first character of a `"char"` column read as text (`' '` when empty).
fn first_char(s: String) -> char {
    s.chars().next().unwrap_or(' ')
}

/// A deparsed definition without its trailing `;` (`pg_get_viewdef`, `pg_get_ruledef`).
fn strip_semicolon(def: &str) -> String {
    def.trim().trim_end_matches(';').trim_end().to_string()
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
    fn refusal_messages_join_reason_and_fix() {
        let plain = Refusal::new("rule r on \"s\".\"t\"", "uses \"s\".\"u\"");
        assert_eq!(plain.to_string(), "rule r on \"s\".\"t\" uses \"s\".\"u\"");
        assert_eq!(
            plain
                .clone()
                .with_fix(Joint::Period, "Drop it.")
                .to_string(),
            "rule r on \"s\".\"t\" uses \"s\".\"u\". Drop it."
        );
        assert_eq!(
            plain.with_fix(Joint::Colon, "drop it").to_string(),
            "rule r on \"s\".\"t\" uses \"s\".\"u\": drop it"
        );
    }
}
