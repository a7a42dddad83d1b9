//! The table itself: `--table` resolves (the way `pg_dump -t` resolves it) to a plain,
//! permanent table outside any partition or inheritance tree (docs/design.md §1.1).

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
        'r' => {}
        'p' => refusals.push(Refusal::new(
            Check::TableKind,
            format!(
                "{what} is a partitioned table: doppel does not migrate partitioned tables yet"
            ),
            "migrate its partitions' parent with native partition tools",
        )),
        'f' => refusals.push(kind(format!(
            "{what} is a foreign table: there is nothing local to rewrite"
        ))),
        'v' | 'm' => refusals.push(kind(format!("{what} is a view, not a table"))),
        other => refusals.push(kind(format!(
            "{what} is not a plain table (relkind '{other}')"
        ))),
    }
    if t.is_partition {
        refusals.push(Refusal::without_fix(
            Check::Partition,
            format!(
                "{what} is a partition of a partitioned table: doppel cannot swap a partition yet"
            ),
        ));
    }
    if t.inherits {
        refusals.push(Refusal::without_fix(
            Check::Inheritance,
            format!(
                "{what} has inheritance parents or children: doppel cannot move an inheritance tree yet"
            ),
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
