//! The keys the stream changed between the slot's consistent point and a marker: the keys a
//! TID-range backfill may have copied twice ([`crate::phases::tid_chunks`], docs/design.md
//! §1.4). Decoded with the applier's own rules for keys (old and new key of an UPDATE).

use std::collections::HashSet;

use anyhow::{Context, Result, bail};
use pglogrepl::pgoutput::{self, PgOutputMessage};

use super::relation::{check_relation, expect_relation, key_of, values};
use crate::phases::capture::spool::{self, SpoolReader};
use crate::plan::Plan;

/// Reads `reader` (a reader of the run's spool from its first record) up to the logical
/// message of the run's prefix whose content is `marker`, and returns the keys (as text, one
/// value per key column) whose version an UPDATE or DELETE before it replaced: the old key of
/// an UPDATE when pgoutput sends it (a key change, REPLICA IDENTITY FULL), else its new key,
/// and the old key of a DELETE. Only such a key can have two versions visible to two chunk
/// snapshots; an INSERT creates a key's first version (a key re-inserted after a DELETE is
/// in the set through that DELETE). Waits for the stream to spool the marker.
///
/// Errors: the spool ends before the marker (the stream stopped), a record cannot be
/// decoded, the original's definition changed (exit 8), a key cannot be read.
pub async fn changed_keys(
    plan: &Plan,
    mut reader: SpoolReader,
    marker: &str,
) -> Result<HashSet<Vec<Option<String>>>> {
    let mut keys = HashSet::new();
    let mut relation_checked = false;
    loop {
        let Some((lsn, payload)) = reader.next().await? else {
            bail!("the change stream stopped before the end of the backfill was spooled");
        };
        if spool::is_doppel_record(&payload) {
            continue;
        }
        let message = pgoutput::decode_bytes(payload)
            .with_context(|| format!("decoding the spooled message at {lsn}"))?;
        match message {
            PgOutputMessage::Relation(rel) => relation_checked |= check_relation(plan, &rel)?,
            PgOutputMessage::Insert { relation_id, .. } => {
                expect_relation(plan, relation_id, relation_checked)?;
            }
            PgOutputMessage::Update {
                relation_id,
                old,
                new,
            } => {
                expect_relation(plan, relation_id, relation_checked)?;
                // The key of the version this update replaced: the old key when pgoutput
                // sends it (a key change, or REPLICA IDENTITY FULL), else the new one.
                keys.insert(match old {
                    Some(old) => key_of(plan, &values(old.tuple())?)?,
                    None => key_of(plan, &values(&new)?)?,
                });
            }
            PgOutputMessage::Delete { relation_id, old } => {
                expect_relation(plan, relation_id, relation_checked)?;
                keys.insert(key_of(plan, &values(old.tuple())?)?);
            }
            PgOutputMessage::Message {
                prefix, content, ..
            } if prefix == plan.names.message_prefix && content.as_ref() == marker.as_bytes() => {
                return Ok(keys);
            }
            _ => {}
        }
    }
}
