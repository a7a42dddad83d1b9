//! The table itself: `--table` resolves (the way `pg_dump -t` resolves it) to a plain or
//! partitioned permanent table that is neither a partition nor in an inheritance tree
//! (docs/design.md §1.1, §1.14).

use tokio_postgres::Client;

use crate::failure::{Check, Refusal};
use crate::model::catalog::{self, Table};

/// [`Check::TableName`]: resolves `table` (as SQL writes it) to its OID through
/// `to_regclass` ([`catalog::resolve`]). Any failure, the query's included, is the refusal;
/// its reason is the resolver's message, which already says how to write the name.
pub async fn resolve(client: &Client, table: &str) -> Result<u32, Refusal> {
    catalog::resolve(client, table)
        .await
        .map_err(|e| Refusal::without_fix(Check::TableName, format!("{e:#}")))
}

/// [`Check::TableKind`], [`Check::Partition`], [`Check::Inheritance`] and
/// [`Check::Persistence`], in that order, from `pg_class` (`relkind`, `relispartition`,
/// `pg_inherits` / `relhassubclass`, `relpersistence`) as [`catalog::inspect`] read it.
pub fn check(t: &Table) -> Vec<Refusal> {
    let what = t.qualified();
    let mut refusals = Vec::new();
    let kind = |reason: String| Refusal::without_fix(Check::TableKind, reason);
    match t.relkind {
        // A partitioned table is migrated with its whole tree (docs/design.md §1.14).
        'r' | 'p' => {}
        'f' => refusals.push(kind(format!(
            "{what} is a foreign table: there is nothing local to rewrite"
        ))),
        'v' | 'm' => refusals.push(kind(format!("{what} is a view, not a table"))),
        other => refusals.push(kind(format!(
            "{what} is not a plain table (relkind '{other}')"
        ))),
    }
    if t.is_partition {
        let root = t
            .partition_root
            .as_deref()
            .unwrap_or("its partitioned table");
        refusals.push(Refusal::new(
            Check::Partition,
            format!(
                "{what} is a partition of {root}: PostgreSQL cannot change one partition's columns on its own (a partition's columns and their types must match its partitioned table's)"
            ),
            format!("migrate the partitioned table {root} instead"),
        ));
    }
    if t.inherits {
        refusals.push(Refusal::new(
            Check::Inheritance,
            format!(
                "{what} has inheritance (INHERITS) parents or children: a child must keep its parents' columns with their types, and a query on a parent reads its children, so one table of the tree cannot be swapped alone"
            ),
            "remove the inheritance first (ALTER TABLE .. NO INHERIT) or run the ALTER directly",
        ));
    }
    match t.persistence {
        'u' => refusals.push(Refusal::new(
            Check::Persistence,
            format!(
                "{what} is UNLOGGED: its changes are not in the WAL, so logical decoding cannot stream them"
            ),
            "make it logged first (ALTER TABLE .. SET LOGGED) or run the ALTER directly",
        )),
        't' => refusals.push(Refusal::without_fix(
            Check::Persistence,
            format!("{what} is a temporary table, private to one session"),
        )),
        _ => {}
    }
    refusals
}
