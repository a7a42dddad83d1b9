//! The migration plan: everything preflight learned and decided about one run — the strategy
//! of each clause ([`Migration`], docs/design.md §1.10), the direct steps ([`DirectPlan`]) or
//! the shadow migration ([`Plan`]: the original, the shadow's shape, the projection, doppel's
//! names, the dependents to move, warnings) — the input of every later phase.

use crate::model::alter::AlterSpec;
use crate::model::catalog::Table;
use crate::model::names::Names;
use crate::model::projection::Projection;

/// What the ALTER costs when PostgreSQL runs it directly, judged on the empty clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// The heap (or an index) is rewritten: the locking ALTER holds ACCESS EXCLUSIVE for the
    /// whole rewrite. This is what doppel is for.
    Rewrite,
    /// No rewrite, but the ALTER scans the table or builds an index under its lock
    /// (new constraint, NOT NULL, unique index).
    ScanUnderLock,
    /// Catalog-only change: running the ALTER directly holds its lock for milliseconds.
    MetadataOnly,
}

/// Everything preflight learned and decided; input to every later phase.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `server_version_num`, e.g. 150018.
    pub server_version: i32,
    /// The original table.
    pub original: Table,
    /// The empty clone after the ALTER (named like the original, in `pg_temp`): the shadow's
    /// columns, indexes and constraints with their final names.
    pub target: Table,
    /// `pg_temp.<name>` exactly as `pg_get_indexdef` prints the clone.
    pub clone_text: String,
    /// Sequence options (`START WITH .. INCREMENT BY ..`) of the clone's identity columns.
    pub identity_options: Vec<(String, String)>,
    /// Names of doppel's objects.
    pub names: Names,
    /// The projection from original rows to shadow rows.
    pub projection: Projection,
    /// The analysed `--alter` text.
    pub alter: AlterSpec,
    /// What the ALTER would cost if run directly.
    pub rewrite: Rewrite,
    /// Objects bound to the original's OID that the cutover moves to the new table.
    pub dependents: crate::dependents::Dependents,
    /// Things the DBA should know that do not stop the run.
    pub warnings: Vec<String>,
    /// What the application will see at the cutover (result types of `SELECT *`, the row
    /// type, old snapshots) and what to do about it: the plan's "application compatibility"
    /// lines (docs/design.md §4.6).
    pub compatibility: Vec<String>,
    /// The original's partition tree when it is a partitioned table (issue 15, docs/design.md
    /// §1.13): the whole tree is migrated in one run and swapped in one cutover.
    pub partitions: Option<crate::model::partitions::PartitionTree>,
    /// What is bound to single members of that tree rather than to the partitioned table
    /// (a partition's own triggers, policies, views, publications, ...), one entry per member
    /// that has any, in tree order: moved at the cutover to the new member that takes the
    /// member's name (docs/design.md §1.14). Empty for a plain table.
    pub member_dependents: Vec<crate::dependents::MemberDependents>,
}

/// How one clause of the ALTER is carried out (docs/design.md §1.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Run as written, on the table itself, under `lock_timeout` with retries and backoff: a
    /// catalog change whose lock is held for milliseconds.
    Direct,
    /// PostgreSQL's online recipe on the table itself: the constraint or index is added
    /// without its check (`NOT VALID`, `CREATE UNIQUE INDEX CONCURRENTLY`) under a brief lock,
    /// checked by a scan under a weak lock (`VALIDATE CONSTRAINT`, the concurrent build), and
    /// made final under a brief lock again.
    Online,
    /// The shadow-table migration (docs/design.md §1.1–§1.9).
    Shadow,
}

impl Strategy {
    /// `direct`, `online`, `shadow`.
    pub fn label(self) -> &'static str {
        match self {
            Strategy::Direct => "direct",
            Strategy::Online => "online",
            Strategy::Shadow => "shadow",
        }
    }
}

/// One clause of the ALTER (an action of one `--alter` argument) with its strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// The clause as written.
    pub text: String,
    /// How it is carried out.
    pub strategy: Strategy,
    /// What running it directly as written would cost (judged on the empty clone).
    pub cost: Rewrite,
    /// Why this strategy, in a few words (`metadata-only`, `rewrites the table`, ...).
    pub reason: String,
}

/// A table lock mode, weakest first (PostgreSQL's table-level lock modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockMode {
    /// `SHARE UPDATE EXCLUSIVE`: reads and writes go on (VALIDATE CONSTRAINT, CREATE INDEX
    /// CONCURRENTLY, SET STATISTICS, ...).
    ShareUpdateExclusive,
    /// `SHARE ROW EXCLUSIVE`: reads go on, writes wait (ADD FOREIGN KEY, triggers).
    ShareRowExclusive,
    /// `ACCESS EXCLUSIVE`: everything waits (most forms of ALTER TABLE).
    AccessExclusive,
}

impl LockMode {
    /// The mode as `LOCK TABLE .. IN <mode> MODE` writes it.
    pub fn sql(self) -> &'static str {
        match self {
            LockMode::ShareUpdateExclusive => "SHARE UPDATE EXCLUSIVE",
            LockMode::ShareRowExclusive => "SHARE ROW EXCLUSIVE",
            LockMode::AccessExclusive => "ACCESS EXCLUSIVE",
        }
    }

    /// What the mode does to the application's sessions.
    pub fn effect(self) -> &'static str {
        match self {
            LockMode::ShareUpdateExclusive => "reads and writes go on",
            LockMode::ShareRowExclusive => "reads go on, writes wait",
            LockMode::AccessExclusive => "reads and writes wait",
        }
    }
}

/// What a step of a direct plan runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Statements run in one short transaction, after `LOCK TABLE .. IN <mode> MODE` under
    /// `lock_timeout` (retried with backoff): catalog changes held for milliseconds.
    Brief(Vec<String>),
    /// `ALTER TABLE .. VALIDATE CONSTRAINT <constraint>`: a scan under SHARE UPDATE EXCLUSIVE.
    Validate {
        /// The constraint validated.
        constraint: String,
        /// How to find the rows that violate it, when it fails.
        violation: Violation,
    },
    /// `CREATE UNIQUE INDEX CONCURRENTLY <index> ..`: two scans under SHARE UPDATE EXCLUSIVE.
    BuildIndex {
        /// The statement.
        sql: String,
        /// The index it builds (doppel's temporary name until `ADD CONSTRAINT .. USING INDEX`).
        index: String,
        /// How to find the duplicate keys, when it fails.
        violation: Violation,
    },
}

/// How to list the rows that violate a constraint (docs/design.md §1.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Rows for which the CHECK expression is false.
    Check {
        /// The expression inside `CHECK (..)`.
        expression: String,
    },
    /// Rows whose foreign-key columns are all set but match no row of the referenced table.
    ForeignKey {
        /// The constrained columns.
        columns: Vec<String>,
        /// The referenced table, as SQL names it.
        parent: String,
        /// The referenced columns.
        parent_columns: Vec<String>,
    },
    /// Values of the columns that occur more than once (NULLs never collide unless
    /// `nulls_not_distinct`).
    Unique {
        /// The key columns.
        columns: Vec<String>,
        /// `NULLS NOT DISTINCT`.
        nulls_not_distinct: bool,
    },
}

/// One step of a direct plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What it runs.
    pub action: Action,
    /// The strongest lock it takes on the table.
    pub lock: LockMode,
    /// What it does, for the plan and the log.
    pub what: String,
    /// The clauses it serves (indexes into [`Migration::clauses`]).
    pub clauses: Vec<usize>,
    /// What this step creates that must be removed if its recipe does not complete, as
    /// `(recipe, statement)`: `DROP CONSTRAINT` / `DROP INDEX CONCURRENTLY`.
    pub creates: Vec<(usize, String)>,
    /// Recipes complete once this step has run (their created objects stay).
    pub finishes: Vec<usize>,
}

/// The steps that carry out the direct and online clauses, in order (docs/design.md §1.10).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirectPlan {
    /// The steps.
    pub steps: Vec<Step>,
    /// True when the brief parts of every clause are grouped into one transaction before and
    /// one after the scans (fewest lock acquisitions); false when each clause runs all its
    /// steps before the next (the clause order could not be rearranged).
    pub grouped: bool,
}

/// Everything preflight decided for one run: each clause's strategy, and either the direct
/// steps (no clause needs the shadow) or the shadow migration (docs/design.md §1.10).
#[derive(Debug, Clone)]
pub struct Migration {
    /// `server_version_num`.
    pub server_version: i32,
    /// The table as it is now.
    pub original: Table,
    /// Every clause of the ALTER, in order, with its strategy.
    pub clauses: Vec<Clause>,
    /// The direct and online steps; `None` when the clauses take the shadow.
    pub direct: Option<DirectPlan>,
    /// The shadow migration; `None` when no clause needs it.
    pub shadow: Option<Box<Plan>>,
    /// Things the DBA should know that do not stop the run.
    pub warnings: Vec<String>,
}

impl Plan {
    /// `CREATE PUBLICATION publication FOR TABLE table`, published via the partition root
    /// when the migrated table is partitioned (docs/design.md §1.14): the run's publication
    /// on the original, and the revert window's on the new table.
    pub fn create_publication_sql(&self, publication: &str, table: &str) -> String {
        let via_root = match self.partitions {
            Some(_) => " WITH (publish_via_partition_root = true)",
            None => "",
        };
        format!(
            "CREATE PUBLICATION {} FOR TABLE {table}{via_root}",
            crate::sql::ident(publication)
        )
    }
}

impl Migration {
    /// The shadow plan, when the clauses take the shadow.
    pub fn shadow_plan(&self) -> Option<&Plan> {
        self.shadow.as_deref()
    }
}
