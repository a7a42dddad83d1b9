//! Decode throughput of `pglogrepl::pgoutput::decode_bytes` (messages/s).
//!
//! Messages are built by hand following the pgoutput protocol version 1 format, shaped like
//! an `orders` table (`id bigint, customer_id int, status text, amount numeric(12,2),
//! note text, created_at timestamptz`) under a write load of one UPDATE and one INSERT per
//! transaction and a DELETE every fourth; a second group decodes payloads captured from a
//! PostgreSQL 15 server (the fixtures of `src/pgoutput/fixtures.rs`). Criterion reports
//! `elem/s`, which is messages per second.
//!
//! Run: `cargo bench -p pglogrepl --bench pgoutput_decode` (add `-- --quick` for a short run).

use std::hint::black_box;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pglogrepl::pgoutput::{PgOutputMessage, decode_bytes};

/// OID of the `orders` table in the hand-built messages.
const ORDERS: u32 = 16_390;

/// pgoutput column value: `Some(text)` is `t` + length + bytes, `None` is `n` (NULL).
type Col<'a> = Option<&'a str>;

fn begin(final_lsn: u64, ts: i64, xid: u32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'B');
    b.put_u64(final_lsn);
    b.put_i64(ts);
    b.put_u32(xid);
    b.freeze()
}

fn commit(commit_lsn: u64, end_lsn: u64, ts: i64) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'C');
    b.put_u8(0);
    b.put_u64(commit_lsn);
    b.put_u64(end_lsn);
    b.put_i64(ts);
    b.freeze()
}

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

fn insert(cols: &[Col<'_>]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'I');
    b.put_u32(ORDERS);
    b.put_u8(b'N');
    put_tuple(&mut b, cols);
    b.freeze()
}

/// An UPDATE that does not change the key: no old tuple, only `N`.
fn update(cols: &[Col<'_>]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'U');
    b.put_u32(ORDERS);
    b.put_u8(b'N');
    put_tuple(&mut b, cols);
    b.freeze()
}

/// A DELETE under REPLICA IDENTITY DEFAULT: the key, other columns NULL.
fn delete(id: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(b'D');
    b.put_u32(ORDERS);
    b.put_u8(b'K');
    put_tuple(&mut b, &[Some(id), None, None, None, None, None]);
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
        out.push(begin(lsn + 400, ts + t as i64, xid));
        let upd = orders_row(1 + (t * 104_729) % 10_000_000);
        out.push(update(&row_cols(&upd)));
        let ins = orders_row(10_000_001 + t);
        out.push(insert(&row_cols(&ins)));
        if t % 4 == 3 {
            out.push(delete(&(1 + (t * 15_485_863) % 10_000_000).to_string()));
        }
        out.push(commit(lsn + 400, lsn + 448, ts + t as i64));
        lsn += 512;
    }
    out
}

/// Hex to bytes, ignoring whitespace.
fn unhex(s: &str) -> Bytes {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len().is_multiple_of(2), "odd hex length");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
        .collect::<Vec<u8>>()
        .into()
}

/// Payloads captured from PostgreSQL 15 (the fixtures of `src/pgoutput/fixtures.rs`): the `B`, an `I`
/// without TOAST, the two `U` forms, a `D` and the `C` of table `t`/`f`.
const CAPTURED: &[(&str, &str)] = &[
    ("begin", "420000000001535c78000303d2dfe59c04000002db"),
    ("insert_f", "490000400e4e000274000000013174000000036f6e65"),
    (
        "update_no_old",
        "55000040074e00067400000001317400000005616c706861740000000531322e33347400000005686170707975740000\
         00026e31",
    ),
    (
        "update_key",
        "55000040074b00067400000001316e6e6e6e6e4e00067400000001327400000005616c706861740000000531322e3334\
         740000000568617070797574000000026e31",
    ),
    ("delete_key", "44000040074b00067400000001326e6e6e6e6e"),
    (
        "commit",
        "43000000000001535c780000000001535ca8000303d2dfe59c04",
    ),
];

/// Decodes every message once and checks the kind, so the benchmark measures real decoding.
fn check(messages: &[Bytes]) {
    for m in messages {
        let decoded = decode_bytes(m.clone()).expect("benchmark message decodes");
        let tag = m[0];
        let ok = matches!(
            (tag, &decoded),
            (b'B', PgOutputMessage::Begin { .. })
                | (b'C', PgOutputMessage::Commit { .. })
                | (b'R', PgOutputMessage::Relation(_))
                | (b'I', PgOutputMessage::Insert { .. })
                | (b'U', PgOutputMessage::Update { .. })
                | (b'D', PgOutputMessage::Delete { .. })
        );
        assert!(ok, "tag {} decoded as {decoded:?}", tag as char);
    }
}

fn decode_all(messages: &[Bytes]) -> usize {
    let mut n = 0;
    for m in messages {
        if decode_bytes(black_box(m.clone())).is_ok() {
            n += 1;
        }
    }
    n
}

fn bench_orders(c: &mut Criterion) {
    let stream = orders_stream(1000);
    check(&stream);
    let bytes: usize = stream.iter().map(Bytes::len).sum();
    let mut g = c.benchmark_group("pgoutput_decode/orders");

    g.throughput(Throughput::Elements(stream.len() as u64));
    g.bench_function(format!("mixed_stream_{}_msgs", stream.len()), |b| {
        b.iter(|| decode_all(&stream))
    });

    let one_kind = |tag: u8| -> Vec<Bytes> {
        stream
            .iter()
            .filter(|m| m[0] == tag)
            .take(250)
            .cloned()
            .collect()
    };
    for (name, tag) in [
        ("insert", b'I'),
        ("update", b'U'),
        ("delete", b'D'),
        ("begin", b'B'),
        ("commit", b'C'),
    ] {
        let msgs = one_kind(tag);
        g.throughput(Throughput::Elements(msgs.len() as u64));
        g.bench_function(name, |b| b.iter(|| decode_all(&msgs)));
    }
    g.finish();

    let mut g = c.benchmark_group("pgoutput_decode/orders_bytes");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("mixed_stream", |b| b.iter(|| decode_all(&stream)));
    g.finish();
}

fn bench_captured(c: &mut Criterion) {
    let mut g = c.benchmark_group("pgoutput_decode/captured_pg15");
    let all: Vec<Bytes> = CAPTURED.iter().map(|(_, h)| unhex(h)).collect();
    check(&all);
    for ((name, _), msg) in CAPTURED.iter().zip(&all) {
        let batch: Vec<Bytes> = std::iter::repeat_n(msg.clone(), 100).collect();
        g.throughput(Throughput::Elements(batch.len() as u64));
        g.bench_function(*name, |b| b.iter(|| decode_all(&batch)));
    }
    g.finish();
}

criterion_group!(benches, bench_orders, bench_captured);
criterion_main!(benches);
