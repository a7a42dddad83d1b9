//! Names of everything doppel creates for one run: the shadow table, the kept old table, the
//! publication, the replication slot and the logical-message prefix, all derived from the
//! original table's OID so runs on different tables never collide and a leftover is
//! recognisable.

use crate::sql::{qualified, truncate_bytes};

/// PostgreSQL's identifier length limit in bytes (NAMEDATALEN - 1).
pub const MAX_IDENT: usize = 63;

/// Names of everything doppel creates for one run on the table with OID `oid`. Built from the
/// OID so two runs on different tables never collide and a leftover is recognisable; each
/// within the 63-byte identifier limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Schema of the original (and of the shadow).
    pub schema: String,
    /// The original's name.
    pub table: String,
    /// The shadow table: `_doppel_<oid>_new_<name>`.
    pub shadow: String,
    /// The name the original is kept under after cutover: `_doppel_<oid>_old_<name>`.
    pub old: String,
    /// The publication `doppel_<oid>` (FOR TABLE the original only).
    pub publication: String,
    /// The logical replication slot `doppel_<oid>`.
    pub slot: String,
    /// Prefix of doppel's logical messages (fences) for this run.
    pub message_prefix: String,
    /// The revert window's publication `doppel_<oid>_rev` (FOR TABLE the migrated table).
    pub revert_publication: String,
    /// The revert window's logical replication slot `doppel_<oid>_rev`.
    pub revert_slot: String,
    /// Prefix of the revert window's logical messages: the marker the cutover transaction
    /// carries, and the fences of a revert.
    pub revert_prefix: String,
    /// The table's OID the names derive from.
    pub oid: u32,
}

impl Names {
    /// Names for the table `schema.table` with OID `oid`.
    pub fn new(schema: &str, table: &str, oid: u32) -> Names {
        let with_prefix = |prefix: String| {
            let room = MAX_IDENT - prefix.len();
            format!("{prefix}{}", truncate_bytes(table, room))
        };
        Names {
            schema: schema.to_string(),
            table: table.to_string(),
            shadow: with_prefix(format!("_doppel_{oid}_new_")),
            old: with_prefix(format!("_doppel_{oid}_old_")),
            publication: format!("doppel_{oid}"),
            slot: format!("doppel_{oid}"),
            message_prefix: format!("doppel_{oid}"),
            revert_publication: format!("doppel_{oid}_rev"),
            revert_slot: format!("doppel_{oid}_rev"),
            revert_prefix: format!("doppel_{oid}_rev"),
            oid,
        }
    }

    /// `"schema"."shadow"`.
    pub fn shadow_qualified(&self) -> String {
        qualified(&self.schema, &self.shadow)
    }

    /// `"schema"."table"`.
    pub fn table_qualified(&self) -> String {
        qualified(&self.schema, &self.table)
    }

    /// `"schema"."old"`.
    pub fn old_qualified(&self) -> String {
        qualified(&self.schema, &self.old)
    }

    /// Temporary name of the shadow's `n`-th index until cutover: `_doppel_<oid>_new_i<n>`.
    pub fn shadow_index(&self, oid: u32, n: usize) -> String {
        format!("_doppel_{oid}_new_i{n}")
    }

    /// Name the original's `n`-th index is kept under after cutover: `_doppel_<oid>_old_i<n>`.
    pub fn old_index(&self, oid: u32, n: usize) -> String {
        format!("_doppel_{oid}_old_i{n}")
    }

    /// Name of the shadow's `n`-th partition (a member of a partitioned table's tree, in
    /// `PartitionTree::members` order) until cutover: `_doppel_<oid>_new_p<n>`.
    pub fn shadow_partition(&self, oid: u32, n: usize) -> String {
        format!("_doppel_{oid}_new_p{n}")
    }

    /// Name the original's `n`-th partition is kept under after cutover:
    /// `_doppel_<oid>_old_p<n>`.
    pub fn old_partition(&self, oid: u32, n: usize) -> String {
        format!("_doppel_{oid}_old_p{n}")
    }

    /// Temporary name of the `k`-th index defined on the shadow's `n`-th partition:
    /// `_doppel_<oid>_new_p<n>_i<k>`.
    pub fn shadow_partition_index(&self, oid: u32, n: usize, k: usize) -> String {
        format!("_doppel_{oid}_new_p{n}_i{k}")
    }

    /// Name the `k`-th index of the original's `n`-th partition is kept under after
    /// cutover: `_doppel_<oid>_old_p<n>_i<k>`.
    pub fn old_partition_index(&self, oid: u32, n: usize, k: usize) -> String {
        format!("_doppel_{oid}_old_p{n}_i{k}")
    }

    /// doppel's `n`-th helper constraint of an online recipe (the `CHECK (col IS NOT NULL)`
    /// that lets `SET NOT NULL` skip its scan): `_doppel_<oid>_nn<n>`. Dropped once the recipe
    /// completes or fails; `doppel cleanup` drops one a killed run left.
    pub fn recipe_check(&self, n: usize) -> String {
        format!("{}nn{n}", self.recipe_prefix())
    }

    /// doppel's `n`-th index built by an online recipe until `ADD CONSTRAINT .. USING INDEX`
    /// gives it the constraint's name: `_doppel_<oid>_u<n>`. Dropped when the recipe fails;
    /// `doppel cleanup` drops one a killed run left (an invalid index).
    pub fn recipe_index(&self, n: usize) -> String {
        format!("{}u{n}", self.recipe_prefix())
    }

    /// The prefix of the online recipes' helper objects: `_doppel_<oid>_`.
    pub fn recipe_prefix(&self) -> String {
        format!("_doppel_{}_", self.oid)
    }

    /// Name the original's `n`-th owned sequence is kept under after cutover.
    pub fn old_sequence(&self, oid: u32, n: usize) -> String {
        format!("_doppel_{oid}_old_s{n}")
    }
}
