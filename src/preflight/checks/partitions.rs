//! A partitioned table's tree (issue 15, docs/design.md §1.14): what doppel migrates with
//! the whole tree, and what it refuses. Every member must be a permanent table (a foreign
//! table as a partition holds rows doppel cannot copy or stream; an UNLOGGED partition's
//! changes are not in the WAL). Objects defined on the partitioned table (PostgreSQL clones
//! its triggers, foreign keys and indexes onto every member) move with it, as for a plain
//! table; those bound to a single member move to the new member that takes its name
//! (`crate::dependents::MemberDependents`: its own triggers, rules, row security policies
//! and flags, the views that read it, the publications that list it, its statistics objects,
//! the foreign keys of other tables that reference it), and a leaf's own foreign keys move
//! with it. Refused here, each named: foreign keys defined on a sub-partitioned member, a
//! trigger of the partitioned table that a member fires differently (`ALTER TABLE member
//! DISABLE TRIGGER`: the new member would fire it as the parent does), and a member's
//! REPLICA IDENTITY USING INDEX (the new member's indexes get their names only after the
//! cutover commits).

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::failure::{Check, Refusal};
use crate::model::partitions::PartitionTree;

/// What is bound to one member of the tree `$1` and refused: (kind, member, object), for
/// the kinds the module docs list.
const MEMBER_OBJECTS: &str = "WITH m AS (
    SELECT relid AS oid FROM pg_partition_tree($1::oid::regclass) WHERE level > 0)
SELECT 'a foreign key (on a sub-partitioned partition)', c.conrelid::regclass::text, c.conname::text
  FROM pg_constraint c JOIN m ON m.oid = c.conrelid JOIN pg_class r ON r.oid = c.conrelid
  WHERE c.contype = 'f' AND c.conparentid = 0 AND r.relkind = 'p'
UNION ALL
SELECT 'a trigger of the partitioned table fired differently on it', t.tgrelid::regclass::text,
       t.tgname::text
  FROM pg_trigger t JOIN m ON m.oid = t.tgrelid JOIN pg_trigger p ON p.oid = t.tgparentid
  WHERE t.tgenabled <> p.tgenabled
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
        "a trigger of the partitioned table fired differently on it" => (
            "",
            "the new partition gets the parent's trigger as the parent fires it (ALTER TABLE .. DISABLE/ENABLE TRIGGER on one partition is not carried), so it would fire differently after the cutover",
            "make the partition fire it as the parent does for the run (ALTER TABLE <partition> ENABLE TRIGGER <name>, or the parent's ENABLE REPLICA/ALWAYS), then set it again on the new partition afterwards",
        ),
        "an UNLOGGED partition" => (
            "is UNLOGGED",
            "its changes are not in the WAL, so logical decoding cannot stream them",
            "make it logged (ALTER TABLE .. SET LOGGED) or run the ALTER directly",
        ),
        _ => (
            "",
            "doppel cannot move it to the new partition",
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
