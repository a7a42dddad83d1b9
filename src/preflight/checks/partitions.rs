//! A partitioned table's tree (issue 15, docs/design.md §1.14): what doppel migrates with
//! the whole tree, and what it refuses. Every member must be a permanent table (a foreign
//! table as a partition holds rows doppel cannot copy or stream; an UNLOGGED partition's
//! changes are not in the WAL). Objects bound to one member rather than to the partitioned
//! table are refused, each named: triggers and rules defined on a member alone, foreign keys
//! defined on a sub-partitioned member (those of a leaf move with it), foreign keys of other tables that reference a member, row security policies on a
//! member, views that read a member directly, publications that list a member, statistics
//! objects on a member, and a member's REPLICA IDENTITY USING INDEX. Those defined on the
//! partitioned table (PostgreSQL clones its triggers, foreign keys and indexes onto every
//! member) move with it, as for a plain table.

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::failure::{Check, Refusal};
use crate::model::partitions::PartitionTree;

/// What is bound to one member of the tree `$1`: (kind, member, object), for the kinds the
/// module docs list.
const MEMBER_OBJECTS: &str = "WITH m AS (
    SELECT relid AS oid FROM pg_partition_tree($1::oid::regclass) WHERE level > 0)
SELECT 'a trigger', t.tgrelid::regclass::text, t.tgname::text
  FROM pg_trigger t JOIN m ON m.oid = t.tgrelid
  WHERE NOT t.tgisinternal AND t.tgparentid = 0
UNION ALL
SELECT 'a foreign key (on a sub-partitioned partition)', c.conrelid::regclass::text, c.conname::text
  FROM pg_constraint c JOIN m ON m.oid = c.conrelid JOIN pg_class r ON r.oid = c.conrelid
  WHERE c.contype = 'f' AND c.conparentid = 0 AND r.relkind = 'p'
UNION ALL
SELECT 'a foreign key referencing it', c.confrelid::regclass::text,
       c.conname::text || ' on ' || c.conrelid::regclass::text
  FROM pg_constraint c JOIN m ON m.oid = c.confrelid
  WHERE c.contype = 'f' AND c.conparentid = 0
UNION ALL
SELECT 'a rule', r.ev_class::regclass::text, r.rulename::text
  FROM pg_rewrite r JOIN m ON m.oid = r.ev_class WHERE r.rulename <> '_RETURN'
UNION ALL
SELECT 'a row security policy', p.polrelid::regclass::text, p.polname::text
  FROM pg_policy p JOIN m ON m.oid = p.polrelid
UNION ALL
SELECT DISTINCT 'a view reading it', d.refobjid::regclass::text, r.ev_class::regclass::text
  FROM pg_depend d JOIN m ON m.oid = d.refobjid
  JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
  WHERE d.refclassid = 'pg_class'::regclass AND r.ev_class <> d.refobjid
UNION ALL
SELECT 'a publication', pr.prrelid::regclass::text, p.pubname::text
  FROM pg_publication_rel pr JOIN m ON m.oid = pr.prrelid
  JOIN pg_publication p ON p.oid = pr.prpubid
UNION ALL
SELECT 'a statistics object', s.stxrelid::regclass::text, s.stxname::text
  FROM pg_statistic_ext s JOIN m ON m.oid = s.stxrelid
UNION ALL
SELECT 'REPLICA IDENTITY USING INDEX', c.oid::regclass::text, ''
  FROM pg_class c JOIN m ON m.oid = c.oid WHERE c.relreplident = 'i'
UNION ALL
SELECT CASE c.relkind WHEN 'f' THEN 'a foreign table as a partition'
                      ELSE 'an UNLOGGED partition' END, c.oid::regclass::text, ''
  FROM pg_class c JOIN m ON m.oid = c.oid
  WHERE c.relkind = 'f' OR c.relpersistence <> 'p'
ORDER BY 1, 2, 3";

/// [`Check::Partition`] refusals for the tree of the partitioned table `tree` (module docs),
/// one per object, each saying how to proceed.
///
/// Errors: the catalog query failed.
pub async fn check(client: &Client, tree: &PartitionTree) -> Result<Vec<Refusal>> {
    let rows = client
        .query(MEMBER_OBJECTS, &[&tree.root_oid])
        .await
        .context("reading what is bound to the partitions")?;
    Ok(rows
        .iter()
        .map(|r| {
            let (kind, member, object): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            refusal(&kind, &member, &object)
        })
        .collect())
}

/// The refusal for one object bound to a member.
fn refusal(kind: &str, member: &str, object: &str) -> Refusal {
    let named = if object.is_empty() {
        String::new()
    } else {
        format!(" ({object})")
    };
    let (is, why, fix) = match kind {
        "a foreign table as a partition" => (
            "is a foreign table",
            "its rows live on another server: doppel can neither copy nor stream them",
            "detach it for the run, or run the ALTER directly",
        ),
        "an UNLOGGED partition" => (
            "is UNLOGGED",
            "its changes are not in the WAL, so logical decoding cannot stream them",
            "make it logged (ALTER TABLE .. SET LOGGED) or run the ALTER directly",
        ),
        _ => (
            "",
            "doppel moves what is defined on the partitioned table, not what is bound to a single partition",
            "define it on the partitioned table instead, or drop it for the run and create it again on the new partition afterwards",
        ),
    };
    let what = if is.is_empty() {
        format!("has {kind}{named}")
    } else {
        is.to_string()
    };
    Refusal::new(
        Check::Partition,
        format!("partition {member} {what}: {why}"),
        fix,
    )
}
