//! Apply throughput of `doppel::phases::apply::Applier` against a real server (row changes/s),
//! issue 5.
//!
//! Setup (once): a private cluster (`doppel_testkit::cluster::LocalCluster`, fsync on), the
//! benchmark's `orders` table (`benches/orders_generate.sql` + `orders_restore.sql`: bigserial
//! PK, indexes on `customer_id` and `created_at`), a `Plan` from `doppel::preflight::run` for
//! `ALTER COLUMN customer_id TYPE bigint`, and the shadow as `doppel run` has it while it
//! catches up: `shadow::create_sql`, the backfill (`Projection::copy_sql`),
//! `shadow::primary_key_sql` and `shadow::plain_index_sql`, then `VACUUM (ANALYZE)`.
//!
//! Each timed run: a spool (`doppel::phases::capture::spool::create`) holding hand-built pgoutput messages —
//! one Relation with the table's real OID and column type OIDs, then Begin, Insert / Update /
//! Delete, Commit per source transaction, and last a transaction holding the fence logical
//! message (`fence:1` under the plan's message prefix) — is written and published, an
//! `Applier` is spawned on it (paused; statements prepared) and the clock runs from `resume()`
//! until `wait_fence(1)` returns, i.e. until the shadow transaction holding the last change
//! committed. Between runs (not timed) the shadow is put back (rows the run inserted deleted,
//! rows it deleted copied back) and vacuumed.
//!
//! Groups (criterion's `elem/s` is row changes/s; messages/s is printed after each bench):
//! - `inserts`: one INSERT of a new key per source transaction;
//! - `updates`: one UPDATE of a distinct existing key per source transaction;
//! - `hot_updates/collapse_on|off`: UPDATEs of 100 hot keys (random order), one per source
//!   transaction, with `Applier::set_collapse` on (the default while only the primary key
//!   constrains the shadow: last write per key) and off (source order, as after unique
//!   indexes are built);
//! - `writer_mix`: the transactions of `benches/writer.pgbench.sql` (UPDATE of a random
//!   existing key + INSERT, DELETE of the updated key in 1 of 10);
//! - `writer_mix/apply_workers_2|4`, `updates/apply_workers_2|4`: the same with the parallel
//!   apply (`--apply-workers`): the applier's session and 1 or 3 more, each batch split by key
//!   hash (`writer_mix` and `updates` are the 1-session figures). Only these:
//!   `cargo bench --bench apply_batching -- 'writer_mix|updates'`.
//!
//! Run: `cargo bench --bench apply_batching` (needs the PostgreSQL server binaries, see
//! `LocalCluster::find_bin_dir`; as root the server runs as `postgres`). Environment:
//! `DOPPEL_BENCH_ROWS` (table rows, default 1,000,000), `DOPPEL_BENCH_CHANGES` (row changes per
//! timed run, default 40,000).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use criterion::{Criterion, SamplingMode, Throughput};
use doppel::phases::apply::Applier;
use doppel::plan::Plan;
use doppel_testkit::cluster::{ClusterOptions, LocalCluster};
use pglogrepl::lsn::Lsn;
use tokio::runtime::Runtime;
use tokio_postgres::Client;

const ALTER: &str = "ALTER COLUMN customer_id TYPE bigint";
const DB: &str = "bench";
const HOT_KEYS: u64 = 100;

/// pgoutput column value: `Some(text)` is `t` + length + bytes, `None` is `n` (NULL).
type Col = Option<String>;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

/// splitmix64: deterministic, dependency-free randomness for the generated workloads.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `1..=n`.
    fn key(&mut self, n: u64) -> u64 {
        1 + self.next() % n
    }
}

/// Builds pgoutput (protocol version 1) messages for the plan's original table.
struct Messages {
    oid: u32,
    prefix: String,
    relation: Bytes,
    width: usize,
    lsn: u64,
    xid: u32,
    ts: i64,
}

impl Messages {
    fn new(plan: &Plan) -> Messages {
        let rel = &plan.projection.relation;
        let mut b = BytesMut::new();
        b.put_u8(b'R');
        b.put_u32(plan.original.oid);
        b.put_slice(plan.original.schema.as_bytes());
        b.put_u8(0);
        b.put_slice(plan.original.name.as_bytes());
        b.put_u8(0);
        b.put_u8(b'd');
        b.put_i16(i16::try_from(rel.len()).expect("few columns"));
        for c in rel {
            let is_key = plan.projection.key.iter().any(|k| k.source.name == c.name);
            b.put_u8(u8::from(is_key));
            b.put_slice(c.name.as_bytes());
            b.put_u8(0);
            b.put_u32(c.type_oid);
            b.put_i32(c.type_modifier);
        }
        Messages {
            oid: plan.original.oid,
            prefix: plan.names.message_prefix.clone(),
            relation: b.freeze(),
            width: rel.len(),
            lsn: 0x1_5000_0000,
            xid: 1000,
            ts: 849_000_000_000_000, // 2026-11-22, microseconds since 2000-01-01
        }
    }

    fn begin(&mut self) -> Bytes {
        self.xid = self.xid.wrapping_add(1).max(3);
        self.ts += 1;
        let mut b = BytesMut::new();
        b.put_u8(b'B');
        b.put_u64(self.lsn + 400);
        b.put_i64(self.ts);
        b.put_u32(self.xid);
        b.freeze()
    }

    fn commit(&mut self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'C');
        b.put_u8(0);
        b.put_u64(self.lsn + 400);
        b.put_u64(self.lsn + 448);
        b.put_i64(self.ts);
        self.lsn += 512;
        b.freeze()
    }

    fn tuple(b: &mut BytesMut, cols: &[Col]) {
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

    fn insert(&self, row: &[Col]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(self.oid);
        b.put_u8(b'N');
        Self::tuple(&mut b, row);
        b.freeze()
    }

    /// An UPDATE that keeps the key: no old tuple, only `N`.
    fn update(&self, row: &[Col]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'U');
        b.put_u32(self.oid);
        b.put_u8(b'N');
        Self::tuple(&mut b, row);
        b.freeze()
    }

    /// A DELETE under REPLICA IDENTITY DEFAULT: the key (first column), the others NULL.
    fn delete(&self, id: u64) -> Bytes {
        let mut cols: Vec<Col> = vec![None; self.width];
        cols[0] = Some(id.to_string());
        let mut b = BytesMut::new();
        b.put_u8(b'D');
        b.put_u32(self.oid);
        b.put_u8(b'K');
        Self::tuple(&mut b, &cols);
        b.freeze()
    }

    /// The fence doppel emits (`pg_logical_emit_message(true, prefix, 'fence:N')`), as a
    /// transactional Message inside its own transaction.
    fn fence(&mut self, n: u64, out: &mut Vec<Bytes>) {
        out.push(self.begin());
        let content = format!("fence:{n}");
        let mut b = BytesMut::new();
        b.put_u8(b'M');
        b.put_u8(1);
        b.put_u64(self.lsn + 200);
        b.put_slice(self.prefix.as_bytes());
        b.put_u8(0);
        b.put_i32(i32::try_from(content.len()).expect("short"));
        b.put_slice(content.as_bytes());
        out.push(b.freeze());
        out.push(self.commit());
    }
}

/// A row of `orders` (`id, customer_id, status, amount, note, created_at`) as pgoutput sends
/// it in text form; `v` varies the non-key values.
fn orders_row(id: u64, v: u64) -> Vec<Col> {
    let x = id ^ v.wrapping_mul(0x9e37_79b9);
    vec![
        Some(id.to_string()),
        Some(((x * 7919) % 100_000).to_string()),
        Some(["pending", "paid", "shipped", "refunded"][(x % 4) as usize].to_string()),
        Some(format!("{}.{:02}", (x * 31) % 1000, x % 100)),
        Some(format!(
            "{:016x}{:016x}",
            x.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            x ^ 0xdead_beef
        )),
        Some("2026-11-22 02:17:43.123456+00".to_string()),
    ]
}

#[derive(Clone, Copy, Debug)]
enum Workload {
    /// One INSERT of a new key per transaction.
    Inserts,
    /// One UPDATE of a distinct existing key per transaction.
    Updates,
    /// One UPDATE of one of `HOT_KEYS` keys per transaction.
    HotUpdates,
    /// benches/writer.pgbench.sql: UPDATE + INSERT, DELETE of the updated key in 1 of 10.
    WriterMix,
}

/// One timed run's input.
struct Generated {
    messages: Vec<Bytes>,
    changes: u64,
    /// Keys above the table's rows that the run inserts (deleted afterwards).
    inserted: bool,
    /// Existing keys the run deletes (copied back afterwards).
    deleted: Vec<i64>,
}

fn generate(m: &mut Messages, w: Workload, rows: u64, changes: u64, run: u64) -> Generated {
    let mut rng = Rng(0x5eed ^ run.wrapping_mul(0x1234_5678_9abc));
    let mut out = vec![m.relation.clone()];
    let mut done = 0;
    let mut deleted = Vec::new();
    // New keys start above the table's rows (like the bigserial's next values).
    let mut next_id = rows + 1;
    // Distinct existing keys: a stride through 1..=rows, from a different start each run.
    let stride = 7_919 * 104_729; // coprime with the default row counts (powers of 10)
    let start = rng.next() % rows;
    let mut distinct = 0u64;
    let mut distinct_key = || {
        distinct += 1;
        1 + (start + distinct * stride) % rows
    };
    while done < changes {
        out.push(m.begin());
        match w {
            Workload::Inserts => {
                out.push(m.insert(&orders_row(next_id, run)));
                next_id += 1;
                done += 1;
            }
            Workload::Updates => {
                out.push(m.update(&orders_row(distinct_key(), run + 1)));
                done += 1;
            }
            Workload::HotUpdates => {
                out.push(m.update(&orders_row(rng.key(HOT_KEYS), done)));
                done += 1;
            }
            Workload::WriterMix => {
                let id = rng.key(rows);
                out.push(m.update(&orders_row(id, run + 1)));
                out.push(m.insert(&orders_row(next_id, run)));
                next_id += 1;
                done += 2;
                if rng.next().is_multiple_of(10) {
                    out.push(m.delete(id));
                    deleted.push(id as i64);
                    done += 1;
                }
            }
        }
        out.push(m.commit());
    }
    m.fence(1, &mut out);
    Generated {
        messages: out,
        changes: done,
        inserted: matches!(w, Workload::Inserts | Workload::WriterMix),
        deleted,
    }
}

/// The cluster, the plan and the shadow, shared by every bench.
struct Env {
    rt: Runtime,
    cluster: LocalCluster,
    admin: Client,
    plan: Arc<Plan>,
    rows: u64,
    spool_dir: tempfile::TempDir,
}

impl Env {
    fn start(rows: u64) -> Result<Env> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (cluster, admin, plan) = rt.block_on(async {
            let t0 = Instant::now();
            let cluster = LocalCluster::start(ClusterOptions {
                fsync: true,
                extra_conf: vec![
                    ("shared_buffers".into(), "512MB".into()),
                    ("max_wal_size".into(), "8GB".into()),
                ],
                ..ClusterOptions::default()
            })
            .await?;
            cluster.create_database(DB).await?;
            let mut admin = cluster.connect(DB).await?;
            admin
                .batch_execute(&format!(
                    "SET client_min_messages = warning;
                     CREATE TABLE public.orders (
                       id bigserial, customer_id int NOT NULL, status text NOT NULL,
                       amount numeric(12,2) NOT NULL, note text, created_at timestamptz NOT NULL DEFAULT now());
                     SELECT setseed(0.42);
                     INSERT INTO public.orders (id, customer_id, status, amount, note, created_at)
                     SELECT i, (random()*100000)::int, (ARRAY['pending','paid','shipped','refunded'])[1+(i%4)],
                            (random()*1000)::numeric(12,2), md5(i::text) || md5((i*7)::text),
                            now() - (i || ' seconds')::interval
                     FROM generate_series(1, {rows}) i;
                     ALTER TABLE public.orders ADD PRIMARY KEY (id);
                     CREATE INDEX orders_customer_idx ON public.orders(customer_id);
                     CREATE INDEX orders_created_idx ON public.orders(created_at);
                     SELECT setval('public.orders_id_seq', {rows});"
                ))
                .await
                .context("generating public.orders")?;
            admin.batch_execute("VACUUM ANALYZE public.orders").await?;
            let plan = doppel::preflight::run(&mut admin, "public.orders", &[ALTER.to_string()], false)
                .await
                .context("preflight")?;
            let shadow = plan.names.shadow_qualified();
            let table = plan.original.qualified();
            let mut ddl = doppel::phases::shadow::create_sql(&plan);
            ddl.push(plan.projection.copy_sql(&table, &shadow, false, false));
            ddl.push("SET maintenance_work_mem = '1GB'".into());
            ddl.extend(doppel::phases::shadow::primary_key_sql(&plan));
            ddl.extend(doppel::phases::shadow::plain_index_sql(&plan));
            for statement in ddl {
                admin
                    .batch_execute(&statement)
                    .await
                    .with_context(|| format!("building the shadow: {statement}"))?;
            }
            admin
                .batch_execute(&format!("VACUUM (ANALYZE) {shadow}"))
                .await?;
            eprintln!(
                "apply_batching: PostgreSQL {} at {}:{}, {rows} rows in {table}, shadow {shadow} with its primary key and {} plain index(es), ready in {:.1} s",
                cluster.server_version_num(),
                cluster.host(),
                cluster.port(),
                doppel::phases::shadow::plain_index_sql(&plan).len(),
                t0.elapsed().as_secs_f64()
            );
            anyhow::Ok((cluster, admin, plan))
        })?;
        Ok(Env {
            rt,
            cluster,
            admin,
            plan: Arc::new(plan),
            rows,
            spool_dir: tempfile::tempdir()?,
        })
    }

    /// One timed run: spool `g`, spawn the applier with `workers` sessions, time `resume()` ..
    /// `wait_fence(1)`.
    fn apply(&self, g: &Generated, collapse: bool, workers: usize) -> Result<Duration> {
        let path = self.spool_dir.path().join("bench.spool");
        let (mut writer, reader) = doppel::phases::capture::spool::create(&path)?;
        for (i, m) in g.messages.iter().enumerate() {
            writer.append(Lsn(0x1_5000_0000 + i as u64), m)?;
        }
        writer.publish()?;
        let took = self.rt.block_on(async {
            let client = self.cluster.connect(DB).await?;
            client
                .batch_execute("SET application_name = 'doppel applier'")
                .await?;
            let mut sessions = Vec::new();
            for n in 2..=workers {
                let session = self.cluster.connect(DB).await?;
                session
                    .batch_execute(&format!("SET application_name = 'doppel applier {n}'"))
                    .await?;
                sessions.push(session);
            }
            let applier = Applier::spawn(
                client,
                self.plan.clone(),
                reader,
                doppel::phases::apply::ApplyOptions {
                    sessions,
                    ..doppel::phases::apply::ApplyOptions::default()
                },
            )
            .await?;
            applier.set_collapse(collapse);
            let t0 = Instant::now();
            applier.resume();
            applier.wait_fence(1, Duration::from_secs(600)).await?;
            let took = t0.elapsed();
            let status = applier.status();
            anyhow::ensure!(
                status.changes == g.changes,
                "the applier applied {} changes, {} were spooled",
                status.changes,
                g.changes
            );
            applier.stop().await?;
            anyhow::Ok(took)
        })?;
        drop(writer);
        Ok(took)
    }

    /// Puts the shadow back as it was before a run (not timed): inserted keys deleted,
    /// deleted keys copied back from the original, dead rows vacuumed.
    fn reset(&self, g: &Generated) -> Result<()> {
        let shadow = self.plan.names.shadow_qualified();
        let table = self.plan.original.qualified();
        self.rt.block_on(async {
            if g.inserted {
                self.admin
                    .execute(
                        &format!("DELETE FROM {shadow} WHERE id > $1"),
                        &[&(self.rows as i64)],
                    )
                    .await?;
            }
            if !g.deleted.is_empty() {
                self.admin
                    .execute(
                        &format!(
                            "INSERT INTO {shadow} SELECT * FROM ONLY {table} WHERE id = ANY($1) ON CONFLICT DO NOTHING"
                        ),
                        &[&g.deleted],
                    )
                    .await?;
            }
            self.admin
                .batch_execute(&format!("VACUUM {shadow}"))
                .await?;
            anyhow::Ok(())
        })
    }
}

/// Per-run figures of one bench, for the messages/s line.
#[derive(Default)]
struct Tally {
    runs: Vec<(u64, u64, Duration)>,
}

impl Tally {
    fn line(&self, name: &str) -> String {
        let mut rates: Vec<(f64, f64)> = self
            .runs
            .iter()
            .map(|(c, m, d)| {
                let s = d.as_secs_f64().max(1e-9);
                (*c as f64 / s, *m as f64 / s)
            })
            .collect();
        if rates.is_empty() {
            return format!("{name}: no timed runs");
        }
        rates.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mid = rates[rates.len() / 2];
        let (c, m, _) = self.runs[0];
        format!(
            "{name}: median {:.0} changes/s, {:.0} messages/s over {} timed runs (warm-up included) of {c} changes ({m} messages); min {:.0}, max {:.0} changes/s",
            mid.0,
            mid.1,
            rates.len(),
            rates[0].0,
            rates[rates.len() - 1].0
        )
    }
}

fn bench_apply(c: &mut Criterion, env: &Env, changes: u64, summary: &mut Vec<String>) {
    let mut g = c.benchmark_group("apply_batching");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    let cases: [(&str, Workload, bool, usize); 9] = [
        ("inserts", Workload::Inserts, true, 1),
        ("updates", Workload::Updates, true, 1),
        ("hot_updates/collapse_on", Workload::HotUpdates, true, 1),
        ("hot_updates/collapse_off", Workload::HotUpdates, false, 1),
        ("writer_mix", Workload::WriterMix, true, 1),
        ("writer_mix/apply_workers_2", Workload::WriterMix, true, 2),
        ("writer_mix/apply_workers_4", Workload::WriterMix, true, 4),
        ("updates/apply_workers_2", Workload::Updates, true, 2),
        ("updates/apply_workers_4", Workload::Updates, true, 4),
    ];
    for (name, workload, collapse, workers) in cases {
        let mut messages = Messages::new(&env.plan);
        let sample = generate(&mut messages, workload, env.rows, changes, 0);
        g.throughput(Throughput::Elements(sample.changes));
        let tally = RefCell::new(Tally::default());
        let run = RefCell::new(0u64);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let n = {
                        let mut r = run.borrow_mut();
                        *r += 1;
                        *r
                    };
                    let input = generate(&mut messages, workload, env.rows, changes, n);
                    let took = env.apply(&input, collapse, workers).expect("apply run");
                    env.reset(&input).expect("resetting the shadow");
                    tally.borrow_mut().runs.push((
                        input.changes,
                        input.messages.len() as u64,
                        took,
                    ));
                    total += took;
                }
                total
            })
        });
        let line = tally.borrow().line(&format!("apply_batching/{name}"));
        eprintln!("{line}");
        summary.push(line);
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    if let Err(e) = LocalCluster::find_bin_dir(None) {
        eprintln!("apply_batching: skipped, no PostgreSQL server binaries: {e:#}");
        return;
    }
    let rows = env_u64("DOPPEL_BENCH_ROWS", 1_000_000);
    let changes = env_u64("DOPPEL_BENCH_CHANGES", 40_000);
    let env = match Env::start(rows) {
        Ok(env) => env,
        Err(e) => panic!("apply_batching: setting up the cluster failed: {e:#}"),
    };
    let mut summary = Vec::new();
    bench_apply(&mut c, &env, changes, &mut summary);
    c.final_summary();
    eprintln!(
        "\napply_batching summary ({rows} rows, {} cores, load average {}):",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    );
    for line in summary {
        eprintln!("  {line}");
    }
}
