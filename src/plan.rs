//! The migration plan: everything preflight learned and decided about one run (the original,
//! the shadow's shape, the projection, doppel's names, the dependents to move, warnings),
//! the input of every later phase.

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
}
