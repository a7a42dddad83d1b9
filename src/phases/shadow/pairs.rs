//! What the backfill and the verification read, one pair of tables at a time (issue 15,
//! docs/design.md §1.14): the original and its shadow for a plain table; for a partitioned
//! one, each leaf partition with the shadow leaf of the same bound, in tree order. Reading a
//! partitioned table leaf by leaf keeps each chunk to one partition's index (a key range over
//! the root is an Append over every partition's index), lets the copy write straight into the
//! shadow leaf (no tuple routing per row), and gives the verification a result per partition.

use crate::plan::Plan;

use super::partitions;

/// One original table (or leaf partition) and the shadow table its rows go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The original (or the leaf partition), as SQL names it (quoted, schema-qualified).
    pub original: String,
    /// The shadow (or the shadow leaf of the same bound), as SQL names it.
    pub shadow: String,
    /// The leaf partition's name as messages show it (`schema.name`, unquoted); `None` for a
    /// plain table.
    pub partition: Option<String>,
}

/// The pairs of `plan`, in the order they are copied and verified: one for a plain table,
/// one per leaf partition (the partitions of sub-partitioned members included, DEFAULT
/// partitions included) for a partitioned one.
pub fn of(plan: &Plan) -> Vec<Pair> {
    match &plan.partitions {
        None => vec![Pair {
            original: plan.original.qualified(),
            shadow: plan.names.shadow_qualified(),
            partition: None,
        }],
        Some(tree) => partitions::leaves(tree, &plan.names)
            .map(|(shadow, m)| Pair {
                original: m.qualified(),
                shadow,
                partition: Some(format!("{}.{}", m.schema, m.name)),
            })
            .collect(),
    }
}

impl Pair {
    /// The leaf partition as the checkpoint records it (as SQL names it, quoted, so that no
    /// two partitions can share it); `None` for a plain table.
    pub fn checkpoint_name(&self) -> Option<&str> {
        self.partition.as_ref().map(|_| self.original.as_str())
    }

    /// The status line's step while this leaf partition, number `n` (from 0) of `count`,
    /// is copied or verified (`partition public.p3, 4 of 25`); `None` for a plain table.
    pub fn step(&self, n: usize, count: usize) -> Option<String> {
        self.partition
            .as_ref()
            .map(|p| format!("partition {p}, {} of {count}", n + 1))
    }

    /// The conflict (exit 8) when the server's error `db` on a statement reading this leaf
    /// partition says the partition was dropped or re-bound during the run
    /// ([`crate::failure::partition_changed`]); `None` for other errors and for a plain table.
    pub fn changed(&self, db: &tokio_postgres::error::DbError) -> Option<anyhow::Error> {
        self.partition
            .as_deref()
            .and_then(|p| crate::failure::partition_changed(db, p))
    }

    /// `" in partition <name>"` for a leaf partition, empty for a plain table: appended to
    /// messages about a chunk.
    pub fn in_partition(&self) -> String {
        self.partition
            .as_deref()
            .map(|p| format!(" in partition {p}"))
            .unwrap_or_default()
    }
}
