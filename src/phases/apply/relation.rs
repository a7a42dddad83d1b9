//! Decoding helpers: the replicated relation checked against the original (DDL during the
//! run aborts), keys and values of a decoded tuple.

use anyhow::{Result, anyhow, bail};

use super::changes::{Key, Val};
use crate::plan::Plan;
use pglogrepl::pgoutput::{self, ColumnValue, TupleData};

pub(super) fn expect_relation(plan: &Plan, relation_id: u32, checked: bool) -> Result<()> {
    if relation_id != plan.original.oid {
        bail!(
            "a change for relation {relation_id} arrived on doppel's publication, which covers only {} (oid {})",
            plan.original.qualified(),
            plan.original.oid
        );
    }
    if !checked {
        bail!("a change arrived before its Relation message");
    }
    Ok(())
}

pub(super) fn key_of(plan: &Plan, row: &[Val]) -> Result<Key> {
    plan.projection
        .key
        .iter()
        .map(|k| match row.get(k.relation_position) {
            Some(Val::Text(s)) => Ok(Some(s.clone())),
            Some(Val::Unchanged) => Err(anyhow!(
                "primary-key column {:?} arrived as an unchanged TOASTed value; keys this large are not supported",
                k.source.name
            )),
            _ => Err(anyhow!("a streamed change lacks primary-key column {:?}", k.source.name)),
        })
        .collect()
}

pub(super) fn key_of_bound(plan: &Plan, row: &[Option<String>]) -> Result<Key> {
    plan.projection
        .key
        .iter()
        .map(|k| match row.get(k.relation_position) {
            Some(Some(s)) => Ok(Some(s.clone())),
            _ => Err(anyhow!(
                "a streamed change lacks primary-key column {:?}",
                k.source.name
            )),
        })
        .collect()
}

pub(super) fn values(tuple: &TupleData) -> Result<Vec<Val>> {
    tuple
        .0
        .iter()
        .map(|v| match v {
            ColumnValue::Null => Ok(Val::Null),
            ColumnValue::UnchangedToast => Ok(Val::Unchanged),
            ColumnValue::Text(_) => v
                .as_text()
                .map(|s| Val::Text(s.to_string()))
                .ok_or_else(|| anyhow!("a streamed value is not valid UTF-8")),
            ColumnValue::Binary(_) => {
                bail!("a streamed value arrived in binary format; doppel requests text")
            }
        })
        .collect()
}

/// Checks a Relation message against the original: `Ok(true)` when it describes the
/// original as planned; `Ok(false)` for a partition of a partitioned original, which
/// pgoutput describes too after the root when it publishes the partition's changes as the
/// root's (`publish_via_partition_root`, docs/design.md §1.14), and whose changes arrive as
/// the root's (checked by [`expect_relation`]).
///
/// Errors: the original's columns changed (DDL ran on it, exit 8).
pub(super) fn check_relation(plan: &Plan, rel: &pgoutput::Relation) -> Result<bool> {
    if plan.projection.partitioned && rel.id != plan.original.oid {
        return Ok(false);
    }
    let expected = &plan.projection.relation;
    let same = rel.id == plan.original.oid
        && rel.columns.len() == expected.len()
        && rel
            .columns
            .iter()
            .zip(expected)
            .all(|(a, b)| a.name == b.name && a.type_oid == b.type_oid);
    if !same {
        return Err(crate::failure::fail(
            crate::failure::FailureKind::Conflict,
            format!(
                "the definition of {} changed during the migration (DDL ran on it: relation {}.{} (oid {}) now has columns {:?}, expected oid {} with {:?}); aborting — the shadow was built for the old definition. The original table is untouched; run doppel again",
                plan.original.qualified(),
                rel.namespace,
                rel.name,
                rel.id,
                rel.columns
                    .iter()
                    .map(|c| format!("{} ({})", c.name, c.type_oid))
                    .collect::<Vec<_>>(),
                plan.original.oid,
                expected
                    .iter()
                    .map(|c| format!("{} ({})", c.name, c.type_oid))
                    .collect::<Vec<_>>()
            ),
        ));
    }
    Ok(true)
}
