//! [`decode`] and [`decode_bytes`]: one pgoutput payload to one [`PgOutputMessage`].

use bytes::Bytes;

use super::error::DecodeError;
use super::message::{ColumnValue, OldTuple, PgOutputMessage, Relation, RelationColumn, TupleData};
use super::reader::{Reader, bad_marker};

/// Decodes one pgoutput message (the payload of one `XLogData` message).
///
/// Copies `buf` once; use [`decode_bytes`] to make the returned column values and
/// message contents share an existing [`Bytes`] buffer instead.
///
/// # Errors
/// [`DecodeError::Truncated`] if `buf` ends early (also for an empty `buf`),
/// [`DecodeError::UnknownMessage`] for an unknown tag, [`DecodeError::Unsupported`] for
/// streaming and two-phase messages, [`DecodeError::InvalidUtf8`] for non-UTF-8 names and
/// [`DecodeError::Malformed`] for anything else that does not follow the format,
/// including bytes left over after a complete message. Never panics.
pub fn decode(buf: &[u8]) -> Result<PgOutputMessage, DecodeError> {
    decode_bytes(Bytes::copy_from_slice(buf))
}

/// Decodes one pgoutput message like [`decode`], without copying: the
/// [`ColumnValue::Text`]/[`ColumnValue::Binary`] values and [`PgOutputMessage::Message`]
/// contents are slices of `buf`.
///
/// # Errors
/// As for [`decode`].
pub fn decode_bytes(buf: Bytes) -> Result<PgOutputMessage, DecodeError> {
    let mut r = Reader::new(buf);
    let tag = r.u8("message type")?;
    let msg = match tag {
        b'B' => PgOutputMessage::Begin {
            final_lsn: r.lsn("Begin final LSN")?,
            commit_time_us: r.i64("Begin commit timestamp")?,
            xid: r.u32("Begin xid")?,
        },
        b'C' => PgOutputMessage::Commit {
            flags: r.u8("Commit flags")?,
            commit_lsn: r.lsn("Commit LSN")?,
            end_lsn: r.lsn("Commit end LSN")?,
            commit_time_us: r.i64("Commit timestamp")?,
        },
        b'O' => PgOutputMessage::Origin {
            commit_lsn: r.lsn("Origin commit LSN")?,
            name: r.string("Origin name")?,
        },
        b'R' => PgOutputMessage::Relation(read_relation(&mut r)?),
        b'Y' => PgOutputMessage::Type {
            type_oid: r.u32("Type OID")?,
            namespace: r.string("Type namespace")?,
            name: r.string("Type name")?,
        },
        b'I' => {
            let relation_id = r.u32("Insert relation id")?;
            r.expect_new_marker("Insert")?;
            PgOutputMessage::Insert {
                relation_id,
                new: read_tuple(&mut r)?,
            }
        }
        b'U' => read_update(&mut r)?,
        b'D' => {
            let relation_id = r.u32("Delete relation id")?;
            let marker_at = r.pos;
            let old = match r.u8("Delete tuple marker")? {
                b'K' => OldTuple::Key(read_tuple(&mut r)?),
                b'O' => OldTuple::Full(read_tuple(&mut r)?),
                other => {
                    return Err(bad_marker("Delete", "'K' or 'O'", other, marker_at));
                }
            };
            PgOutputMessage::Delete { relation_id, old }
        }
        b'T' => {
            let count_at = r.pos;
            let count = r.i32("Truncate relation count")?;
            let count = usize::try_from(count).map_err(|_| {
                DecodeError::Malformed(format!(
                    "Truncate relation count {count} is negative (at byte {count_at})"
                ))
            })?;
            let options = r.u8("Truncate options")?;
            let mut relation_ids = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relation_ids.push(r.u32("Truncate relation id")?);
            }
            PgOutputMessage::Truncate {
                options,
                relation_ids,
            }
        }
        b'M' => {
            let flags = r.u8("Message flags")?;
            let lsn = r.lsn("Message LSN")?;
            let prefix = r.string("Message prefix")?;
            let content = r.length_prefixed("Message content length", "Message content")?;
            PgOutputMessage::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content,
            }
        }
        b'S' | b'E' | b'c' | b'A' => {
            return Err(DecodeError::Unsupported(format!(
                "{} ('{}'): streamed in-progress transactions need protocol version 2 and \
                 the streaming option, which doppel leaves off",
                message_name(tag),
                tag as char
            )));
        }
        b'b' | b'P' | b'K' | b'r' | b'p' => {
            return Err(DecodeError::Unsupported(format!(
                "{} ('{}'): two-phase commit decoding needs protocol version 3 and a \
                 two_phase slot, which doppel does not use",
                message_name(tag),
                tag as char
            )));
        }
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    r.finish(message_name(tag))?;
    Ok(msg)
}

/// Human-readable name of a message tag, for error texts.
fn message_name(tag: u8) -> &'static str {
    match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        b'b' => "Begin Prepare",
        b'P' => "Prepare",
        b'K' => "Commit Prepared",
        b'r' => "Rollback Prepared",
        b'p' => "Stream Prepare",
        _ => "unknown message",
    }
}

fn read_relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    let id = r.u32("Relation id")?;
    let namespace = r.string("Relation namespace")?;
    let name = r.string("Relation name")?;
    let replica_identity = r.u8("Relation replica identity")?;
    let count = r.count16("Relation column count")?;
    // Each column takes at least 10 bytes; do not trust the count for the allocation.
    let mut columns = Vec::with_capacity(count.min(r.remaining() / 10));
    for _ in 0..count {
        let flags = r.u8("Relation column flags")?;
        columns.push(RelationColumn {
            is_key: flags & 1 != 0,
            name: r.string("Relation column name")?,
            type_oid: r.u32("Relation column type OID")?,
            type_modifier: r.i32("Relation column type modifier")?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn read_update(r: &mut Reader) -> Result<PgOutputMessage, DecodeError> {
    let relation_id = r.u32("Update relation id")?;
    let marker_at = r.pos;
    let old = match r.u8("Update tuple marker")? {
        b'N' => None,
        b'K' => Some(OldTuple::Key(read_tuple(r)?)),
        b'O' => Some(OldTuple::Full(read_tuple(r)?)),
        other => return Err(bad_marker("Update", "'K', 'O' or 'N'", other, marker_at)),
    };
    if old.is_some() {
        r.expect_new_marker("Update")?;
    }
    Ok(PgOutputMessage::Update {
        relation_id,
        old,
        new: read_tuple(r)?,
    })
}

fn read_tuple(r: &mut Reader) -> Result<TupleData, DecodeError> {
    let count = r.count16("TupleData column count")?;
    // Each column takes at least one byte.
    let mut values = Vec::with_capacity(count.min(r.remaining()));
    for _ in 0..count {
        let kind_at = r.pos;
        let value = match r.u8("TupleData column kind")? {
            b'n' => ColumnValue::Null,
            b'u' => ColumnValue::UnchangedToast,
            b't' => ColumnValue::Text(
                r.length_prefixed("TupleData column length", "TupleData column value")?,
            ),
            b'b' => ColumnValue::Binary(
                r.length_prefixed("TupleData column length", "TupleData column value")?,
            ),
            other => {
                return Err(DecodeError::Malformed(format!(
                    "TupleData: unknown column kind {other:#04x} ('{}') at byte {kind_at}, \
                     expected 'n', 'u', 't' or 'b'",
                    (other as char).escape_default()
                )));
            }
        };
        values.push(value);
    }
    Ok(TupleData(values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;
    use crate::pgoutput::fixtures::*;
    use crate::pgoutput::message::{
        POSTGRES_EPOCH_UNIX_SECS, TRUNCATE_CASCADE, TRUNCATE_RESTART_IDENTITY,
    };

    fn dec(hex: &str) -> PgOutputMessage {
        decode(&unhex(hex)).unwrap_or_else(|e| panic!("decode failed: {e}"))
    }

    fn text(s: &str) -> ColumnValue {
        ColumnValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn tuple(values: Vec<ColumnValue>) -> TupleData {
        TupleData(values)
    }

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    #[test]
    fn begin_and_commit() {
        let begin = dec(BEGIN);
        assert_eq!(
            begin,
            PgOutputMessage::Begin {
                final_lsn: lsn("0/1535C78"),
                commit_time_us: 0x0003_03d2_dfe5_9c04,
                xid: 731,
            }
        );
        assert_eq!(
            dec(COMMIT),
            PgOutputMessage::Commit {
                flags: 0,
                commit_lsn: lsn("0/1535C78"),
                end_lsn: lsn("0/1535CA8"),
                commit_time_us: 0x0003_03d2_dfe5_9c04,
            }
        );
    }

    #[test]
    fn origin_transaction() {
        // 2024-01-02 03:04:05 UTC, the timestamp given to pg_replication_origin_xact_setup.
        let origin_time_us = (1_704_164_645 - POSTGRES_EPOCH_UNIX_SECS) * 1_000_000;
        assert_eq!(
            dec(BEGIN_WITH_ORIGIN),
            PgOutputMessage::Begin {
                final_lsn: lsn("0/1538248"),
                commit_time_us: origin_time_us,
                xid: 741,
            }
        );
        assert_eq!(
            dec(ORIGIN),
            PgOutputMessage::Origin {
                commit_lsn: lsn("0/ABCDEF"),
                name: "upstream".into(),
            }
        );
        assert_eq!(
            dec(INSERT_F_ORIGIN),
            PgOutputMessage::Insert {
                relation_id: F_ID,
                new: tuple(vec![text("7"), text("from upstream")]),
            }
        );
        assert_eq!(
            dec(COMMIT_WITH_ORIGIN),
            PgOutputMessage::Commit {
                flags: 0,
                commit_lsn: lsn("0/1538248"),
                end_lsn: lsn("0/1538290"),
                commit_time_us: origin_time_us,
            }
        );
    }

    #[test]
    fn type_message_for_enum() {
        assert_eq!(
            dec(TYPE_MOOD),
            PgOutputMessage::Type {
                type_oid: 16385,
                namespace: "public".into(),
                name: "mood".into(),
            }
        );
    }

    #[test]
    fn relation_with_key_typmods_and_custom_type() {
        let col = |is_key, name: &str, type_oid, type_modifier| RelationColumn {
            is_key,
            name: name.into(),
            type_oid,
            type_modifier,
        };
        assert_eq!(
            dec(RELATION_T),
            PgOutputMessage::Relation(Relation {
                id: T_ID,
                namespace: "public".into(),
                name: "t".into(),
                replica_identity: Relation::REPLICA_IDENTITY_DEFAULT,
                columns: vec![
                    col(true, "id", 23, -1),
                    // varchar(20): 20 + VARHDRSZ
                    col(false, "name", 1043, 24),
                    // numeric(10,2): ((10 << 16) | 2) + VARHDRSZ
                    col(false, "price", 1700, (10 << 16 | 2) + 4),
                    col(false, "m", 16385, -1),
                    col(false, "big", 25, -1),
                    col(false, "note", 25, -1),
                ],
            })
        );
        // Under REPLICA IDENTITY FULL every column is flagged as key.
        assert_eq!(
            dec(RELATION_F),
            PgOutputMessage::Relation(Relation {
                id: F_ID,
                namespace: "public".into(),
                name: "f".into(),
                replica_identity: Relation::REPLICA_IDENTITY_FULL,
                columns: vec![col(true, "a", 23, -1), col(true, "b", 25, -1)],
            })
        );
    }

    #[test]
    fn insert_with_null_and_toasted_value() {
        let PgOutputMessage::Insert { relation_id, new } = dec(INSERT_T_TOAST) else {
            panic!("not an insert");
        };
        assert_eq!(relation_id, T_ID);
        assert_eq!(new.0.len(), 6);
        assert_eq!(new.0[0].as_text(), Some("1"));
        assert_eq!(new.0[1].as_text(), Some("alpha"));
        assert_eq!(new.0[2].as_text(), Some("12.34"));
        assert_eq!(new.0[3].as_text(), Some("happy"));
        assert_eq!(new.0[4].as_text(), Some("x".repeat(10_000).as_str()));
        assert_eq!(new.0[5], ColumnValue::Null);
        assert!(new.0[5].is_null());
        assert_eq!(new.0[5].as_text(), None);

        assert_eq!(
            dec(INSERT_F),
            PgOutputMessage::Insert {
                relation_id: F_ID,
                new: tuple(vec![text("1"), text("one")]),
            }
        );
    }

    #[test]
    fn update_without_old_tuple_keeps_toast_unchanged() {
        assert_eq!(
            dec(UPDATE_NO_OLD),
            PgOutputMessage::Update {
                relation_id: T_ID,
                old: None,
                new: tuple(vec![
                    text("1"),
                    text("alpha"),
                    text("12.34"),
                    text("happy"),
                    ColumnValue::UnchangedToast,
                    text("n1"),
                ]),
            }
        );
    }

    #[test]
    fn update_of_primary_key_carries_old_key() {
        let msg = dec(UPDATE_KEY);
        let old_key = tuple(vec![
            text("1"),
            ColumnValue::Null,
            ColumnValue::Null,
            ColumnValue::Null,
            ColumnValue::Null,
            ColumnValue::Null,
        ]);
        assert_eq!(
            msg,
            PgOutputMessage::Update {
                relation_id: T_ID,
                old: Some(OldTuple::Key(old_key.clone())),
                new: tuple(vec![
                    text("2"),
                    text("alpha"),
                    text("12.34"),
                    text("happy"),
                    ColumnValue::UnchangedToast,
                    text("n1"),
                ]),
            }
        );
        let PgOutputMessage::Update {
            old: Some(old),
            new,
            ..
        } = msg
        else {
            unreachable!()
        };
        assert_eq!(old.tuple(), &old_key);
        assert!(new.0[4].is_unchanged_toast());
        assert_eq!(new.0[4].as_text(), None);
    }

    #[test]
    fn update_under_replica_identity_full() {
        assert_eq!(
            dec(UPDATE_FULL),
            PgOutputMessage::Update {
                relation_id: F_ID,
                old: Some(OldTuple::Full(tuple(vec![text("1"), text("one")]))),
                new: tuple(vec![text("1"), text("uno")]),
            }
        );
    }

    #[test]
    fn deletes() {
        assert_eq!(
            dec(DELETE_KEY),
            PgOutputMessage::Delete {
                relation_id: T_ID,
                old: OldTuple::Key(tuple(vec![
                    text("2"),
                    ColumnValue::Null,
                    ColumnValue::Null,
                    ColumnValue::Null,
                    ColumnValue::Null,
                    ColumnValue::Null,
                ])),
            }
        );
        assert_eq!(
            dec(DELETE_FULL),
            PgOutputMessage::Delete {
                relation_id: F_ID,
                old: OldTuple::Full(tuple(vec![text("1"), text("uno")])),
            }
        );
    }

    #[test]
    fn truncates() {
        assert_eq!(
            dec(TRUNCATE_ONE),
            PgOutputMessage::Truncate {
                options: 0,
                relation_ids: vec![F_ID],
            }
        );
        assert_eq!(
            dec(TRUNCATE_TWO),
            PgOutputMessage::Truncate {
                options: TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY,
                relation_ids: vec![T_ID, F_ID],
            }
        );
    }

    #[test]
    fn logical_messages() {
        assert_eq!(
            dec(MESSAGE_TRANSACTIONAL),
            PgOutputMessage::Message {
                transactional: true,
                lsn: lsn("0/1538188"),
                prefix: "doppel".into(),
                content: Bytes::from_static(b"hello"),
            }
        );
        assert_eq!(
            dec(MESSAGE_NON_TRANSACTIONAL),
            PgOutputMessage::Message {
                transactional: false,
                lsn: lsn("0/15381F8"),
                prefix: "doppel".into(),
                content: Bytes::from_static(&[0x00, 0xff, 0x01]),
            }
        );
    }

    #[test]
    fn decode_bytes_shares_the_input_buffer() {
        let input = Bytes::from(unhex(INSERT_T_TOAST));
        let range = input.as_ptr() as usize..input.as_ptr() as usize + input.len();
        let PgOutputMessage::Insert { new, .. } = decode_bytes(input.clone()).unwrap() else {
            panic!("not an insert");
        };
        let ColumnValue::Text(big) = &new.0[4] else {
            panic!("not text");
        };
        assert_eq!(big.len(), 10_000);
        assert!(range.contains(&(big.as_ptr() as usize)));
    }

    #[test]
    fn binary_column_values() {
        // Hand-built (doppel never requests binary): Insert into relation 1 of one binary
        // int4 value 7.
        let msg = decode(b"I\0\0\0\x01N\0\x01b\0\0\0\x04\0\0\0\x07").unwrap();
        let PgOutputMessage::Insert { new, .. } = msg else {
            panic!("not an insert");
        };
        assert_eq!(
            new.0,
            vec![ColumnValue::Binary(Bytes::from_static(&[0, 0, 0, 7]))]
        );
        assert_eq!(new.0[0].as_text(), None);
    }

    #[test]
    fn streaming_messages_are_unsupported() {
        for hex in STREAMING {
            match decode(&unhex(hex)) {
                Err(DecodeError::Unsupported(text)) => {
                    assert!(text.contains("stream"), "{text}");
                }
                other => panic!("expected Unsupported, got {other:?}"),
            }
        }
        // Stream Abort ('A': xid, subtransaction xid), hand-built.
        let abort = decode(b"A\0\0\x02\xe6\0\0\x02\xe7").unwrap_err();
        assert!(matches!(&abort, DecodeError::Unsupported(t) if t.contains("Stream Abort")));
    }

    #[test]
    fn two_phase_messages_are_unsupported() {
        // Hand-built: tag plus some body; the body is not inspected.
        for tag in [b'b', b'P', b'K', b'r', b'p'] {
            let buf = [tag, 0, 0, 0, 0, 0, 0, 0, 1];
            match decode(&buf) {
                Err(DecodeError::Unsupported(text)) => {
                    assert!(text.contains("two-phase"), "{text}");
                }
                other => panic!("expected Unsupported for {}, got {other:?}", tag as char),
            }
        }
    }

    #[test]
    fn unknown_and_empty_input() {
        assert_eq!(decode(b"Z\0\0"), Err(DecodeError::UnknownMessage(b'Z')));
        assert_eq!(decode(&[0xff]), Err(DecodeError::UnknownMessage(0xff)));
        assert_eq!(
            decode(b"").unwrap_err(),
            DecodeError::Truncated {
                what: "message type",
                offset: 0,
                needed: 1,
                available: 0,
            }
        );
        assert_eq!(
            DecodeError::UnknownMessage(b'Z').to_string(),
            "unknown pgoutput message type 0x5a (Z)"
        );
    }

    #[test]
    fn truncated_reports_field_and_position() {
        let full = unhex(BEGIN);
        let err = decode(&full[..full.len() - 1]).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Truncated {
                what: "Begin xid",
                offset: 17,
                needed: 4,
                available: 3,
            }
        );
        assert_eq!(
            err.to_string(),
            "pgoutput message truncated: Begin xid at byte 17 needs 4 bytes, 3 left"
        );
        // A string without its NUL.
        let err = decode(b"O\0\0\0\0\0\0\0\x01upstr").unwrap_err();
        assert_eq!(
            err,
            DecodeError::Truncated {
                what: "Origin name",
                offset: 9,
                needed: 6,
                available: 5,
            }
        );
    }

    #[test]
    fn every_strict_prefix_is_truncated() {
        for (name, hex) in DECODABLE {
            let full = unhex(hex);
            assert!(decode(&full).is_ok(), "{name}");
            for cut in 0..full.len() {
                match decode(&full[..cut]) {
                    Err(DecodeError::Truncated { .. }) => {}
                    other => panic!("{name} cut at {cut}: expected Truncated, got {other:?}"),
                }
            }
        }
        for hex in STREAMING {
            let full = unhex(hex);
            assert!(decode(&full[..0]).is_err());
            for cut in 1..full.len() {
                assert!(matches!(
                    decode(&full[..cut]),
                    Err(DecodeError::Unsupported(_))
                ));
            }
        }
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        for (name, hex) in DECODABLE {
            let mut buf = unhex(hex);
            buf.push(0);
            assert!(
                matches!(decode(&buf), Err(DecodeError::Malformed(_))),
                "{name}"
            );
        }
    }

    #[test]
    fn malformed_inputs() {
        let malformed = |buf: &[u8]| match decode(buf) {
            Err(DecodeError::Malformed(text)) => text,
            other => panic!("expected Malformed for {buf:?}, got {other:?}"),
        };
        // Insert without the 'N' marker.
        assert!(malformed(b"I\0\0\0\x01X\0\0").contains("'N'"));
        // Update with a bad first marker, and with a 'K' tuple not followed by 'N'.
        assert!(malformed(b"U\0\0\0\x01X\0\0").contains("'K', 'O' or 'N'"));
        assert!(malformed(b"U\0\0\0\x01K\0\0K\0\0").contains("'N'"));
        // Delete needs 'K' or 'O'.
        assert!(malformed(b"D\0\0\0\x01N\0\0").contains("'K' or 'O'"));
        // Unknown column kind.
        assert!(malformed(b"I\0\0\0\x01N\0\x01x").contains("column kind"));
        // Negative column count, value length, relation count, content length.
        assert!(malformed(b"I\0\0\0\x01N\xff\xff").contains("negative"));
        assert!(malformed(b"I\0\0\0\x01N\0\x01t\xff\xff\xff\xff").contains("negative"));
        assert!(malformed(b"T\x80\0\0\0\0").contains("negative"));
        assert!(malformed(b"M\x01\0\0\0\0\0\0\0\x01p\0\xff\xff\xff\xfe").contains("negative"));
        assert!(malformed(b"R\0\0\0\x01\0t\0d\xff\xff").contains("negative"));
    }

    #[test]
    fn invalid_utf8_names() {
        assert_eq!(
            decode(b"Y\0\0\0\x01public\0\xff\xfe\0"),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(
            decode(b"R\0\0\0\x01\xc3\0t\0d\0\0"),
            Err(DecodeError::InvalidUtf8)
        );
        // Text values are not validated on decode; as_text reports them as None.
        let msg = decode(b"I\0\0\0\x01N\0\x01t\0\0\0\x01\xff").unwrap();
        let PgOutputMessage::Insert { new, .. } = msg else {
            panic!("not an insert");
        };
        assert_eq!(new.0[0], ColumnValue::Text(Bytes::from_static(b"\xff")));
        assert_eq!(new.0[0].as_text(), None);
    }

    #[test]
    fn huge_counts_do_not_allocate_or_panic() {
        // Counts and lengths far beyond the payload must fail cleanly.
        assert!(matches!(
            decode(b"T\x7f\xff\xff\xff\0"),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode(b"I\0\0\0\x01N\x7f\xff"),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode(b"I\0\0\0\x01N\0\x01t\x7f\xff\xff\xff"),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode(b"R\0\0\0\x01\0t\0d\x7f\xff"),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic xorshift so failures reproduce.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let tags = b"BCORYIUDTMSEcAbPKrpZ";
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = buf.first_mut() {
                *first = tags[(next() % tags.len() as u64) as usize];
            }
            let _ = decode(&buf);
        }
        // Single-byte corruptions of every captured message except the big insert.
        for (_, hex) in DECODABLE.iter().filter(|(n, _)| *n != "INSERT_T_TOAST") {
            let full = unhex(hex);
            for i in 0..full.len() {
                for v in [0x00, 0x01, 0x7f, 0x80, 0xff, next() as u8] {
                    let mut buf = full.clone();
                    buf[i] = v;
                    let _ = decode(&buf);
                }
            }
        }
    }

    /// xorshift64: a deterministic generator, so a failure reproduces from its seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Uniform in `0..n` (`n` > 0).
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Values that sit on the decoder's boundaries, for count, length and marker fields.
    const EDGE_I32: [i32; 10] = [
        0,
        1,
        2,
        -1,
        -2,
        127,
        128,
        i16::MAX as i32,
        i32::MAX,
        i32::MIN,
    ];
    const EDGE_I16: [i16; 7] = [0, 1, 2, -1, 255, i16::MAX, i16::MIN];
    const EDGE_U8: &[u8] = b"\x00\x01\x7f\x80\xffNKOntub";

    /// Applies one random mutation to `buf`: a bit flip, an edge byte, an edge Int16 or Int32
    /// written over the bytes at a random offset, an inserted, removed or duplicated run of
    /// bytes, a truncation, or the tail of `other` spliced in.
    fn mutate(rng: &mut Rng, buf: &mut Vec<u8>, other: &[u8]) {
        let at = if buf.is_empty() {
            0
        } else {
            rng.below(buf.len())
        };
        match rng.below(9) {
            0 if !buf.is_empty() => buf[at] ^= 1 << rng.below(8),
            1 if !buf.is_empty() => buf[at] = EDGE_U8[rng.below(EDGE_U8.len())],
            2 => {
                let v = EDGE_I16[rng.below(EDGE_I16.len())].to_be_bytes();
                for (i, b) in v.iter().enumerate() {
                    if let Some(slot) = buf.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            3 => {
                let v = EDGE_I32[rng.below(EDGE_I32.len())];
                // Also lengths that are just right, one short and one long.
                let rest = (buf.len() - at).saturating_sub(4) as i32;
                let v = [v, rest, rest - 1, rest + 1][rng.below(4)].to_be_bytes();
                for (i, b) in v.iter().enumerate() {
                    if let Some(slot) = buf.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            4 => {
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                buf.splice(at..at, bytes);
            }
            5 if !buf.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(buf.len());
                buf.drain(at..end);
            }
            6 if !buf.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(buf.len());
                let run = buf[at..end].to_vec();
                buf.splice(at..at, run);
            }
            7 => buf.truncate(at),
            _ => {
                let from = if other.is_empty() {
                    0
                } else {
                    rng.below(other.len())
                };
                buf.truncate(at);
                buf.extend_from_slice(&other[from..]);
            }
        }
    }

    /// Decodes `buf` both ways and checks what must hold for any input: no panic, the same
    /// result from [`decode`] and [`decode_bytes`], an error text that formats, and a
    /// Truncated error that points inside the buffer. Panics with the input in hex otherwise.
    fn check_never_panics(buf: &[u8], origin: &str) {
        let outcome = std::panic::catch_unwind(|| {
            let copied = decode(buf);
            let shared = decode_bytes(Bytes::copy_from_slice(buf));
            assert_eq!(copied, shared, "decode and decode_bytes disagree");
            match copied {
                Ok(_) => {}
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    if let DecodeError::Truncated {
                        offset,
                        needed,
                        available,
                        ..
                    } = e
                    {
                        assert_eq!(offset + available, buf.len(), "{e}");
                        assert!(needed > available, "{e}");
                    }
                }
            }
        });
        if let Err(panic) = outcome {
            let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("decoding a mutant of {origin} panicked ({what}); input: {hex}");
        }
    }

    /// Property test: thousands of mutants of every captured message (one to four random
    /// mutations each, see [`mutate`]), every prefix of each mutant's first 64 bytes, and
    /// random byte strings behind every tag, never make the decoder panic.
    /// `PGLOGREPL_PROPTEST_CASES` (mutants per message, default 500) and
    /// `PGLOGREPL_PROPTEST_SEED` make longer or other runs.
    #[test]
    fn mutated_messages_never_panic() {
        let env = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let cases = env("PGLOGREPL_PROPTEST_CASES", 500);
        let seed = env("PGLOGREPL_PROPTEST_SEED", 0x2545_f491_4f6c_dd1d).max(1);
        let mut rng = Rng(seed);
        let captured: Vec<(&str, Vec<u8>)> = DECODABLE
            .iter()
            .map(|(name, hex)| (*name, unhex(hex)))
            .chain(
                STREAMING
                    .iter()
                    .map(|hex| ("a streaming message", unhex(hex))),
            )
            .collect();
        for (name, full) in &captured {
            for _ in 0..cases {
                let mut buf = full.clone();
                let other = &captured[rng.below(captured.len())].1;
                for _ in 0..1 + rng.below(4) {
                    mutate(&mut rng, &mut buf, other);
                }
                check_never_panics(&buf, name);
                for cut in 0..buf.len().min(64) {
                    check_never_panics(&buf[..cut], name);
                }
            }
        }
        let tags = b"BCORYIUDTMSEcAbPKrpZ\0\xff";
        for _ in 0..cases * 10 {
            let len = rng.below(256);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Some(first) = buf.first_mut() {
                *first = tags[rng.below(tags.len())];
            }
            check_never_panics(&buf, "random bytes");
        }
    }
}
