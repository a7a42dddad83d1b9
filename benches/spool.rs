//! The applier's input path without a server (messages/s): the change spool
//! (`doppel::phases::capture::spool`: append, publish, read back) plus pgoutput decoding.
//!
//! The messages are the hand-built stream of the `pgoutput_decode` bench of the `pglogrepl`
//! crate (its `orders_stream`, rebuilt here): pgoutput protocol version 1 messages shaped like
//! the benchmark's `orders` table (`id bigint, customer_id int, status text,
//! amount numeric(12,2), note text, created_at timestamptz`) and the changes of the
//! `benches/writer.pgbench.sql` load — one Relation, then per transaction Begin, an UPDATE, an
//! INSERT, a DELETE every fourth, Commit. Decoding alone is measured by
//! `cargo bench -p pglogrepl --bench pgoutput_decode`; the apply batching (which needs a
//! server) by `cargo bench --bench apply_batching`.
//!
//! Run: `cargo bench --bench spool` (add `-- --quick` for a short run).

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pglogrepl::lsn::Lsn;
use pglogrepl::pgoutput::decode_bytes;

/// OID of the `orders` table in the hand-built messages.
const ORDERS: u32 = 16_390;

/// pgoutput column value: `Some(text)` is `t` + length + bytes, `None` is `n` (NULL).
type Col<'a> = Option<&'a str>;

fn put_tuple(b: &mut BytesMut, cols: &[Col<'_>]) {
    b.put_i16(i16::try_from(cols.len()).expect("few columns"));
    for c in cols {
        match c {
            Some(text) => {
                b.put_u8(b't');
                b.put_i32(i32::try_from(text.len()).expect("short value"));
                b.put_slice(text.as_bytes());
            }
            None => b.put_u8(b'n'),
        }
    }
}

fn relation_orders() -> Bytes {
    // (is_key, name, type oid, typmod)
    let cols: [(bool, &str, u32, i32); 6] = [
        (true, "id", 20, -1),
        (false, "customer_id", 23, -1),
        (false, "status", 25, -1),
        (false, "amount", 1700, (12 << 16 | 2) + 4),
        (false, "note", 25, -1),
        (false, "created_at", 1184, -1),
    ];
    let mut b = BytesMut::new();
    b.put_u8(b'R');
    b.put_u32(ORDERS);
    b.put_slice(b"public\0orders\0");
    b.put_u8(b'd');
    b.put_i16(6);
    for (key, name, oid, typmod) in cols {
        b.put_u8(u8::from(key));
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.put_u32(oid);
        b.put_i32(typmod);
    }
    b.freeze()
}

/// A row message: `tag` `I` (insert) or `U` (update keeping the key) with new tuple `N`, or
/// `D` (delete under REPLICA IDENTITY DEFAULT) with key tuple `K`.
fn row_message(tag: u8, marker: u8, cols: &[Col<'_>]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(tag);
    b.put_u32(ORDERS);
    b.put_u8(marker);
    put_tuple(&mut b, cols);
    b.freeze()
}

fn orders_row(id: u64) -> [String; 6] {
    [
        id.to_string(),
        ((id * 7919) % 100_000).to_string(),
        ["pending", "paid", "shipped", "refunded"][(id % 4) as usize].to_string(),
        format!("{}.{:02}", (id * 31) % 1000, id % 100),
        format!(
            "{:032x}{:032x}",
            id.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            id ^ 0xdead_beef
        ),
        "2026-11-22 02:17:43.123456+00".to_string(),
    ]
}

fn row_cols(r: &[String; 6]) -> [Col<'_>; 6] {
    [
        Some(&r[0]),
        Some(&r[1]),
        Some(&r[2]),
        Some(&r[3]),
        Some(&r[4]),
        Some(&r[5]),
    ]
}

/// The message stream of `txs` transactions of the benchmark writer's mix (per transaction:
/// one UPDATE, one INSERT, and a DELETE every fourth), framed by Begin/Commit, preceded by
/// one Relation message.
fn orders_stream(txs: u64) -> Vec<Bytes> {
    let ts = 849_000_000_000_000_i64; // 2026-11-22, microseconds since 2000-01-01
    let mut lsn = 0x1_5000_0000_u64;
    let mut out = vec![relation_orders()];
    for t in 0..txs {
        let xid = 1000 + u32::try_from(t).expect("few transactions");
        let mut begin = BytesMut::new();
        begin.put_u8(b'B');
        begin.put_u64(lsn + 400);
        begin.put_i64(ts + t as i64);
        begin.put_u32(xid);
        out.push(begin.freeze());
        let upd = orders_row(1 + (t * 104_729) % 10_000_000);
        out.push(row_message(b'U', b'N', &row_cols(&upd)));
        let ins = orders_row(10_000_001 + t);
        out.push(row_message(b'I', b'N', &row_cols(&ins)));
        if t % 4 == 3 {
            let id = (1 + (t * 15_485_863) % 10_000_000).to_string();
            out.push(row_message(
                b'D',
                b'K',
                &[Some(&id), None, None, None, None, None],
            ));
        }
        let mut commit = BytesMut::new();
        commit.put_u8(b'C');
        commit.put_u8(0);
        commit.put_u64(lsn + 400);
        commit.put_u64(lsn + 448);
        commit.put_i64(ts + t as i64);
        out.push(commit.freeze());
        lsn += 512;
    }
    out
}

/// Spool append + publish + read back + decode: what the applier's input costs per message,
/// without the SQL side.
fn bench_spool(c: &mut Criterion) {
    let stream = orders_stream(2000);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("spool");
    let mut g = c.benchmark_group("spool_roundtrip_decode");
    g.throughput(Throughput::Elements(stream.len() as u64));
    g.bench_function(format!("orders_{}_msgs", stream.len()), |b| {
        b.iter_batched(
            || doppel::phases::capture::spool::create(&path).expect("spool"),
            |(mut w, mut r)| {
                for (i, m) in stream.iter().enumerate() {
                    w.append(Lsn(i as u64), m).expect("append");
                }
                w.publish().expect("publish");
                let mut n = 0usize;
                while let Some((_, payload)) = r.try_next().expect("read") {
                    if decode_bytes(payload).is_ok() {
                        n += 1;
                    }
                }
                assert_eq!(n, stream.len());
                n
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_spool);
criterion_main!(benches);
