//! The keys the stream changed between the slot's consistent point and a marker: the keys a
//! TID-range backfill may have copied twice ([`crate::phases::tid_chunks`], docs/design.md
//! §1.4). Decoded with the applier's own rules for keys (old and new key of an UPDATE).

use std::collections::HashSet;

use anyhow::{Context, Result, bail};
use pglogrepl::pgoutput::{self, PgOutputMessage};

use super::changes::Key;
use super::relation::{check_relation, expect_relation, key_of, values};
use crate::phases::capture::spool::{self, SpoolReader};
use crate::plan::Plan;

/// Reads a reader of the run's spool (from its first record) up to the logical message of the
/// run's prefix whose content is a marker, and yields, in sets of bounded size, the keys whose
/// version an UPDATE or DELETE before it replaced: the old key of an UPDATE when pgoutput sends
/// it (a key change, REPLICA IDENTITY FULL), else its new key, and the old key of a DELETE.
/// Only such a key can have two versions visible to two chunk snapshots; an INSERT creates a
/// key's first version (a key re-inserted after a DELETE is in the set through that DELETE).
/// Doppel's memory holds one set at a time; a key can be in more than one set.
pub struct ChangedKeys<'a> {
    plan: &'a Plan,
    reader: SpoolReader,
    marker: &'a str,
    relation_checked: bool,
    done: bool,
}

impl<'a> ChangedKeys<'a> {
    /// Reads `reader` up to the logical message whose content is `marker`.
    pub fn new(plan: &'a Plan, reader: SpoolReader, marker: &'a str) -> ChangedKeys<'a> {
        ChangedKeys {
            plan,
            reader,
            marker,
            relation_checked: false,
            done: false,
        }
    }

    /// The next set of at most `max` distinct keys (`max` >= 1); `None` once the marker was
    /// read and every key before it yielded. Waits for the stream to spool the marker.
    ///
    /// Errors: the spool ends before the marker (the stream stopped), a record cannot be
    /// decoded, the original's definition changed (exit 8), a key cannot be read.
    pub async fn next_set(&mut self, max: usize) -> Result<Option<HashSet<Key>>> {
        let mut keys = HashSet::new();
        while !self.done && keys.len() < max {
            if let Some(key) = self.next_key().await? {
                keys.insert(key);
            }
        }
        Ok((!keys.is_empty()).then_some(keys))
    }

    /// The key the next spooled record replaced, if it replaced one; sets `done` at the marker.
    async fn next_key(&mut self) -> Result<Option<Key>> {
        let plan = self.plan;
        let Some((lsn, payload)) = self.reader.next().await? else {
            bail!("the change stream stopped before the end of the backfill was spooled");
        };
        if spool::is_doppel_record(&payload) {
            return Ok(None);
        }
        let message = pgoutput::decode_bytes(payload)
            .with_context(|| format!("decoding the spooled message at {lsn}"))?;
        Ok(match message {
            PgOutputMessage::Relation(rel) => {
                self.relation_checked |= check_relation(plan, &rel)?;
                None
            }
            PgOutputMessage::Insert { relation_id, .. } => {
                expect_relation(plan, relation_id, self.relation_checked)?;
                None
            }
            PgOutputMessage::Update {
                relation_id,
                old,
                new,
            } => {
                expect_relation(plan, relation_id, self.relation_checked)?;
                // The key of the version this update replaced: the old key when pgoutput
                // sends it (a key change, or REPLICA IDENTITY FULL), else the new one.
                Some(match old {
                    Some(old) => key_of(plan, &values(old.tuple())?)?,
                    None => key_of(plan, &values(&new)?)?,
                })
            }
            PgOutputMessage::Delete { relation_id, old } => {
                expect_relation(plan, relation_id, self.relation_checked)?;
                Some(key_of(plan, &values(old.tuple())?)?)
            }
            PgOutputMessage::Message {
                prefix, content, ..
            } if prefix == plan.names.message_prefix
                && content.as_ref() == self.marker.as_bytes() =>
            {
                self.done = true;
                None
            }
            _ => None,
        })
    }
}
