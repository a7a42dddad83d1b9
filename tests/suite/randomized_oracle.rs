//! Seeded random workloads against a table while doppel migrates it, checked with the twin
//! oracle (issue 3, docs/design.md §2 I1/I2/I3).
//!
//! Per seed, on a database of its own (with a random session time zone): a table of the type
//! matrix plus rounding columns (`doppel_testkit::workload::matrix_columns`, `rounding_columns`) and
//! its twin are loaded with a few thousand rows (TOASTed text and bytea, edge values); a random
//! ALTER of one to three clauses is chosen from a set (key widening, rounding type changes,
//! `USING`, added and dropped columns, a TOASTed column's type, ...); then doppel runs while
//! a single writer commits random transactions that it mirrors into the twin: inserts,
//! updates with and without the TOASTed columns, deletes, delete + re-insert of a key (in one
//! transaction and across two), single and multi-row primary-key changes, multi-row updates
//! and deletes, savepoints rolled back or released, multi-statement transactions and now and
//! then a large one. Two more transactions span the start: one is open (with writes) before
//! doppel starts and commits while the slot is being created, one commits after the first
//! chunk is copied. The run is held at the `copying` pause point (and, for most seeds, at
//! `catch-up`) until the writer has committed a random number of transactions there, and the
//! writer goes on for a while after the cutover.
//!
//! Afterwards the migrated table must equal the twin altered by PostgreSQL's own `ALTER
//! TABLE` (every column, compared by text), and — when the ALTER can be projected back — the
//! migrated table projected onto the twin's columns must equal the twin.
//!
//! Seeds: `DOPPEL_SEED=<n>` replays seed n (with `DOPPEL_SEEDS=<count>`: seeds n, n+1, ..);
//! otherwise the seeds are random and printed. The default test runs 2 seeds on small
//! tables; `scripts/oracle-seeds.sh` runs the ignored `many_seeds` (50 seeds, 5,000–20,000
//! rows) and prints `seeds: 50, mismatched rows: N`.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use doppel::cancel::Cancel;
use doppel::phases::backfill::ChunkBy;
use doppel::run::{Outcome, RunOptions};
use doppel::testing as pause;
use doppel_testkit::cluster::LocalCluster;
use doppel_testkit::workload::{self, MatrixColumn, Mirror};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::task::JoinHandle;

use crate::common::{self, Tune};

/// Keys the writer never touches: the transactions that span the start use them.
const RESERVED: i64 = 950_000;
/// Multi-row key changes move keys below this into blocks of this size above it.
const BLOCK: i64 = 1_000_000;

/// One ALTER clause of the menu; `reversible` when the new table projected back onto the
/// old types must equal the twin exactly (no rounding, no dropped column).
struct AlterChoice {
    clause: &'static str,
    reversible: bool,
}

const ALTERS: &[AlterChoice] = &[
    AlterChoice {
        clause: "ALTER COLUMN id TYPE bigint",
        reversible: true,
    },
    AlterChoice {
        clause: "ALTER COLUMN r_numeric TYPE integer",
        reversible: false,
    },
    AlterChoice {
        clause: "ALTER COLUMN r_float TYPE integer",
        reversible: false,
    },
    AlterChoice {
        clause: "ALTER COLUMN r_tstz TYPE date",
        reversible: false,
    },
    AlterChoice {
        clause: "ALTER COLUMN r_digits TYPE integer USING trim(r_digits)::integer",
        reversible: false,
    },
    AlterChoice {
        clause: "ADD COLUMN added text DEFAULT 'd'",
        reversible: true,
    },
    AlterChoice {
        clause: "ADD COLUMN added_n integer NOT NULL DEFAULT 7",
        reversible: true,
    },
    AlterChoice {
        clause: "DROP COLUMN c_dropme",
        reversible: false,
    },
    AlterChoice {
        clause: "ALTER COLUMN c_doc TYPE character varying(20000)",
        reversible: true,
    },
    AlterChoice {
        clause: "ALTER COLUMN c_int2 TYPE bigint",
        reversible: true,
    },
    AlterChoice {
        clause: "ALTER COLUMN c_enum TYPE text",
        reversible: true,
    },
    AlterChoice {
        clause: "ALTER COLUMN c_float8 TYPE numeric",
        reversible: false,
    },
    AlterChoice {
        clause: "ALTER COLUMN c_numeric_p TYPE numeric(14,1)",
        reversible: false,
    },
    AlterChoice {
        clause: "ALTER COLUMN c_jsonb TYPE json",
        reversible: true,
    },
    AlterChoice {
        clause: "ALTER COLUMN c_timetz TYPE time without time zone",
        reversible: false,
    },
];

const TIME_ZONES: &[&str] = &[
    "UTC",
    "Asia/Kathmandu",
    "America/St_Johns",
    "Pacific/Chatham",
];

/// The seeds to run: `DOPPEL_SEED` (first seed) and `DOPPEL_SEEDS` (how many; 1 when only
/// `DOPPEL_SEED` is set, else `default_count`); random seeds when `DOPPEL_SEED` is unset.
pub(crate) fn seeds(default_count: u64) -> Vec<u64> {
    let env = |name: &str| {
        std::env::var(name).ok().map(|v| {
            v.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
    };
    let first = env("DOPPEL_SEED");
    let count = env("DOPPEL_SEEDS").unwrap_or(if first.is_some() { 1 } else { default_count });
    let first = first.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        (nanos ^ (std::process::id() as u64).rotate_left(32)) % 1_000_000_000
    });
    (first..first + count).collect()
}

/// What one seed did.
#[derive(Debug, Default)]
struct SeedResult {
    seed: u64,
    rows: usize,
    alters: Vec<String>,
    /// Rows differing between the migrated table and the oracles.
    mismatched: i64,
    /// The run or the workload failed (the seed counts as failed).
    failure: Option<String>,
    writer_transactions: u64,
    applied_changes: u64,
    /// doppel's phases and cutover attempts.
    phases: String,
    /// The run's paths this seed drew ([`Paths`]).
    paths: String,
    seconds: f64,
}

impl std::fmt::Display for SeedResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: {} rows, {} writer transactions, {} changes applied, {:.1} s ({}), paths [{}], alter [{}]: ",
            self.seed,
            self.rows,
            self.writer_transactions,
            self.applied_changes,
            self.seconds,
            self.phases,
            self.paths,
            self.alters.join("; ")
        )?;
        match &self.failure {
            Some(e) => write!(f, "FAILED: {e}"),
            None if self.mismatched > 0 => write!(f, "MISMATCH: {} rows", self.mismatched),
            None => write!(f, "ok, mismatched rows: 0"),
        }
    }
}

/// Runs `default_count` seeds (or the ones the environment names) with `rows` rows each,
/// prints a line per seed and the total, and fails if any seed mismatched or failed.
async fn run_seeds(default_count: u64, rows: Range<usize>, replay: &str) {
    run_seeds_with(default_count, rows, replay, None).await;
}

/// [`run_seeds`] with `--apply-workers` set to `apply_workers` (when given) in every run.
pub(crate) async fn run_seeds_with(
    default_count: u64,
    rows: Range<usize>,
    replay: &str,
    apply_workers: Option<usize>,
) {
    if std::env::var_os("RUST_LOG").is_some() {
        // doppel's log on the test's output, filtered by RUST_LOG.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let seeds = seeds(default_count);
    println!(
        "randomized oracle: seeds {:?} (replay one: DOPPEL_SEED=<seed> {replay})",
        seeds
    );
    let cluster = common::cluster().await;
    let started = Instant::now();
    let mut results = Vec::new();
    for &seed in &seeds {
        let result = run_seed(&cluster, seed, rows.clone(), apply_workers).await;
        println!("{result}");
        results.push(result);
    }
    let mismatched: i64 = results.iter().map(|r| r.mismatched).sum();
    let failed: Vec<u64> = results
        .iter()
        .filter(|r| r.failure.is_some())
        .map(|r| r.seed)
        .collect();
    println!(
        "failed seeds: {} {:?}; total {:.0} s",
        failed.len(),
        failed,
        started.elapsed().as_secs_f64()
    );
    println!("seeds: {}, mismatched rows: {mismatched}", results.len());
    assert!(
        mismatched == 0 && failed.is_empty(),
        "{mismatched} mismatched rows, failed seeds {failed:?} (replay: DOPPEL_SEED=<seed> {replay})"
    );
}

/// Columns of the random table: the type matrix and the rounding columns.
fn table_columns(with_xml: bool) -> Vec<MatrixColumn> {
    let mut columns = workload::matrix_columns(with_xml);
    columns.extend(workload::rounding_columns());
    columns
}

async fn run_seed(
    cluster: &LocalCluster,
    seed: u64,
    rows: Range<usize>,
    apply_workers: Option<usize>,
) -> SeedResult {
    let started = Instant::now();
    let mut result = SeedResult {
        seed,
        ..SeedResult::default()
    };
    let db = format!("seed_{seed}");
    let admin = cluster.connect("postgres").await.unwrap();
    for statement in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db}"),
    ] {
        admin.batch_execute(&statement).await.unwrap();
    }
    let outcome = seed_on(cluster, &db, seed, (rows, apply_workers), &mut result).await;
    if let Err(e) = outcome {
        result.failure = Some(format!("{e:#}"));
    }
    if result.failure.is_none() && result.mismatched == 0 {
        admin
            .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .await
            .unwrap();
    } else {
        println!("seed {seed}: database {db} kept for inspection");
    }
    result.seconds = started.elapsed().as_secs_f64();
    result
}

async fn seed_on(
    cluster: &LocalCluster,
    db: &str,
    seed: u64,
    (rows, apply_workers): (Range<usize>, Option<usize>),
    result: &mut SeedResult,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let zone = TIME_ZONES[rng.random_range(0..TIME_ZONES.len())];
    {
        let c = cluster.connect(db).await?;
        c.batch_execute(&format!("ALTER DATABASE {db} SET timezone TO '{zone}'"))
            .await?;
    }
    let client = cluster.connect(db).await?;
    let with_xml = workload::server_has_xml(&client).await;
    let columns = table_columns(with_xml);
    let n = rng.random_range(rows);
    result.rows = n;
    load_tables(&client, &columns, &mut rng, n).await?;
    let (alters, reversible) = pick_alters(&mut rng);
    result.alters = alters.clone();
    let fixed = apply_workers.or_else(common::apply_workers_override);
    let paths = Paths::pick(&mut rng, seed, fixed, cluster.server_version_num());
    result.paths = paths.to_string();
    println!(
        "seed {seed}: {n} rows loaded in {:.1} s, time zone {zone}, paths [{paths}], alter {alters:?}",
        started.elapsed().as_secs_f64()
    );

    let mut stand = SeedStand {
        cluster,
        db,
        client,
        columns,
        mirror: Mirror::new("t", "twin"),
        paths,
        rng,
        seed,
        loaded: n as i64,
        started,
    };
    let migrated = stand.migrate_under_writer(&alters).await?;
    let migrated_after = migrated.migrated_after;
    record_run(migrated, result)?;

    let client = &stand.client;
    println!(
        "seed {seed}: migrated at {migrated_after:.1} s, writer stopped at {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let reference =
        workload::compare_with_reference(client, "t", "twin", "reference", &alters).await?;
    result.mismatched += reference.rows();
    if reference.rows() > 0 {
        println!("seed {seed}: migrated table vs ALTER TABLE on the twin: {reference}");
    }
    if reversible {
        let twin = workload::compare_with_twin(client, "t", "twin").await?;
        result.mismatched += twin.rows();
        if twin.rows() > 0 {
            println!("seed {seed}: migrated table projected onto the twin: {twin}");
        }
    }
    Ok(())
}

/// Creates `t` (the matrix `columns` and `c_dropme`) and its twin, and loads `n` rows: random
/// values (edge values one time in four) at keys 1..=n, and edge rows before the first key
/// and near the last. Loaded into the table, then copied into the twin.
async fn load_tables(
    client: &tokio_postgres::Client,
    columns: &[MatrixColumn],
    rng: &mut StdRng,
    n: usize,
) -> anyhow::Result<()> {
    client.batch_execute(workload::MATRIX_TYPES_SQL).await?;
    workload::create_matrix_tables(client, "t", "twin", columns).await?;
    client
        .batch_execute(
            "ALTER TABLE t ADD COLUMN c_dropme text DEFAULT 'x';
             ALTER TABLE twin ADD COLUMN c_dropme text DEFAULT 'x';",
        )
        .await?;
    let mut keys: Vec<i64> = (1..=n as i64).collect();
    keys.extend(workload::edge_rows(columns, -20).iter().map(|(k, _)| *k));
    for chunk in keys.chunks(250) {
        let batch: Vec<(i64, Vec<String>)> = chunk
            .iter()
            .map(|&id| (id, random_row(columns, rng)))
            .collect();
        client
            .batch_execute(&workload::insert_template(columns, &batch).replace("{t}", "t"))
            .await?;
    }
    let end_rows = workload::edge_rows(columns, RESERVED - 100);
    client
        .batch_execute(&workload::insert_template(columns, &end_rows).replace("{t}", "t"))
        .await?;
    client
        .batch_execute("INSERT INTO twin SELECT * FROM t")
        .await?;
    for table in ["t", "twin"] {
        client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await?;
    }
    Ok(())
}

/// The ALTER: one to three distinct clauses of the menu; whether all are reversible.
fn pick_alters(rng: &mut StdRng) -> (Vec<String>, bool) {
    let mut picked: Vec<usize> = Vec::new();
    let wanted = rng.random_range(1..=3);
    while picked.len() < wanted {
        let i = rng.random_range(0..ALTERS.len());
        if !picked.contains(&i) {
            picked.push(i);
        }
    }
    let alters: Vec<String> = picked
        .iter()
        .map(|&i| ALTERS[i].clause.to_string())
        .collect();
    let reversible = picked.iter().all(|&i| ALTERS[i].reversible);
    (alters, reversible)
}

/// One seed's database with its loaded tables, and what the steps of its run share.
struct SeedStand<'a> {
    cluster: &'a LocalCluster,
    db: &'a str,
    client: tokio_postgres::Client,
    columns: Vec<MatrixColumn>,
    mirror: Mirror,
    /// The seed's random sequence (after loading and picking the ALTER).
    rng: StdRng,
    seed: u64,
    /// Rows loaded at keys 1..=loaded.
    loaded: i64,
    /// The run's paths this seed drew.
    paths: Paths,
    started: Instant,
}

/// The run's paths a seed draws, so the oracle covers each of them under the random writer
/// (issue 17: "the 50-seed oracle still passes with every new path").
#[derive(Debug, Clone, Copy)]
struct Paths {
    /// `--apply-workers`: 1, 2 (the default) or 4, or the caller's fixed count.
    apply_workers: usize,
    /// PostgreSQL 16+ only (`None` before): the copy under replication origins (`--copy-origin`,
    /// the default: the copy's rows are dropped at decode time) or not (`--no-copy-origin`).
    copy_origin: Option<bool>,
    /// `--resumable`: the checkpoint written with every chunk.
    resumable: bool,
    /// `--max-write-latency` in ms: the copy, verification and apply paced by the probe.
    max_write_latency_ms: Option<u64>,
    /// `--chunk-by tid` (not with `--resumable`, which keeps key ranges).
    tid_chunks: bool,
}

impl Paths {
    /// Draws the paths from the seed's `rng` (`--chunk-by tid` from `seed` apart); `apply_workers` fixes that count when given (the
    /// caller's, or `DOPPEL_TEST_APPLY_WORKERS`).
    fn pick(
        rng: &mut StdRng,
        seed: u64,
        apply_workers: Option<usize>,
        server_version_num: u32,
    ) -> Paths {
        let drawn = [1, 2, 4][rng.random_range(0..3)];
        let copy_origin = (server_version_num >= 160_000).then(|| rng.random_bool(0.5));
        let resumable = rng.random_bool(0.3);
        let max_write_latency_ms = rng.random_bool(0.25).then(|| rng.random_range(1..20));
        Paths {
            apply_workers: apply_workers.unwrap_or(drawn),
            copy_origin,
            resumable,
            max_write_latency_ms,
            // From a generator of its own, so that the seed's other draws (and so the
            // seeds recorded before this path existed) stay as they were.
            tid_chunks: !resumable && StdRng::seed_from_u64(seed ^ 0x7469_6463).random_bool(0.5),
        }
    }

    /// `options` with these paths.
    fn apply(self, options: RunOptions) -> RunOptions {
        let mut options = options.apply_workers(self.apply_workers);
        options.copy_origin = self.copy_origin.unwrap_or(false);
        options.resumable = self.resumable;
        options.max_write_latency = self.max_write_latency_ms.map(Duration::from_millis);
        if self.tid_chunks {
            options.copy.chunk_by = ChunkBy::Tid;
        }
        options
    }
}

impl std::fmt::Display for Paths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--apply-workers {}", self.apply_workers)?;
        match self.copy_origin {
            Some(true) => write!(f, " --copy-origin")?,
            Some(false) => write!(f, " --no-copy-origin")?,
            None => {}
        }
        if self.resumable {
            write!(f, " --resumable")?;
        }
        if let Some(ms) = self.max_write_latency_ms {
            write!(f, " --max-write-latency {ms}")?;
        }
        if self.tid_chunks {
            write!(f, " --chunk-by tid")?;
        }
        Ok(())
    }
}

/// How the run and the writer ended.
struct Migrated {
    outcome: anyhow::Result<Outcome>,
    /// Seconds from the seed's start to the end of the run.
    migrated_after: f64,
    /// The writer committed more transactions after the cutover (true when the run failed).
    after_cutover: bool,
    report: WriterReport,
}

/// The handles of the writer task.
struct WriterHandles {
    task: JoinHandle<anyhow::Result<WriterReport>>,
    progress: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    calm: Arc<AtomicBool>,
}

type RunHandle = JoinHandle<anyhow::Result<Outcome>>;

impl SeedStand<'_> {
    /// Runs doppel with `alters` under the random writer, with the two transactions that span
    /// the start; holds the run at `copying` (and, for most seeds, at `catch-up`) until the
    /// writer has committed a random number of transactions there; stops the writer a while
    /// after the cutover.
    async fn migrate_under_writer(&mut self, alters: &[String]) -> anyhow::Result<Migrated> {
        let config: tokio_postgres::Config = self.cluster.conninfo(self.db).parse()?;
        let dir = tempfile::tempdir()?;
        let alter_refs: Vec<&str> = alters.iter().map(String::as_str).collect();
        let options = common::options(dir.path(), "t", &alter_refs)
            .copy_workers(self.rng.random_range(1..=2))
            .cutover_retries(30)
            .fence_timeout(Duration::from_millis(1000))
            .status_interval(Duration::from_secs(60))
            .chunk_time(Duration::from_millis(self.rng.random_range(10..60)))
            .initial_rows(self.rng.random_range(200..1000));
        let options = self.paths.apply(options);
        let hold_catch_up = self.rng.random_bool(0.7);

        // A transaction with writes open before doppel starts: the slot's creation waits for it.
        let mut before = self.cluster.connect(self.db).await?;
        let before_tx = before.transaction().await?;
        let first_rows = insert_sql(&self.columns, &mut self.rng, RESERVED + 1, 20);
        self.mirror.execute(&before_tx, &first_rows).await?;

        let writer = self.start_writer(&config);
        let pause_dir = common::pause_dir(dir.path());
        pause::arm(&pause_dir, "copying")?;
        if hold_catch_up {
            pause::arm(&pause_dir, "catch-up")?;
        }
        let mut run: RunHandle =
            tokio::spawn(
                async move { common::run_paused(&config, &options, &Cancel::never()).await },
            );

        self.commit_during_slot_creation(&run, before_tx).await?;
        let mut across = self.cluster.connect(self.db).await?;
        let across_tx = self.begin_across_the_start(&run, &mut across).await?;

        let stopped = common::wait_until_async(Duration::from_secs(120), || async {
            pause::reached(&pause_dir, "copying").is_some() || run.is_finished()
        })
        .await;
        anyhow::ensure!(stopped, "the run did not reach the copying pause in 120 s");
        let delete = format!(
            "DELETE FROM {{t}} WHERE id BETWEEN {} AND {}",
            RESERVED - 89,
            RESERVED - 85
        );
        self.mirror.execute(&across_tx, &delete).await?;
        across_tx.commit().await?;
        if !run.is_finished() {
            let more = self.rng.random_range(10..80);
            anyhow::ensure!(
                wait_writer(&writer.progress, more).await,
                "the writer stalled during the copy"
            );
        }
        pause::release(&pause_dir, "copying")?;
        if hold_catch_up {
            self.hold_at_catch_up(&pause_dir, &run, &writer.progress)
                .await?;
        }

        writer.calm.store(true, Ordering::Relaxed);
        let outcome = (&mut run).await?;
        let migrated_after = self.started.elapsed().as_secs_f64();
        // Writes after the cutover land on the new table (and in the twin).
        let after_cutover = if outcome.is_ok() {
            let more = self.rng.random_range(5..30);
            wait_writer(&writer.progress, more).await
        } else {
            true
        };
        writer.stop.store(true, Ordering::Relaxed);
        let report = writer.task.await??;
        Ok(Migrated {
            outcome,
            migrated_after,
            after_cutover,
            report,
        })
    }

    /// Starts the random writer on its own connection.
    fn start_writer(&self, config: &tokio_postgres::Config) -> WriterHandles {
        let mut writer = Writer::new(&self.columns, self.seed, self.loaded);
        let progress = writer.progress.clone();
        let stop = writer.stop.clone();
        let calm = writer.calm.clone();
        let writer_config = config.clone();
        let writer_mirror = self.mirror.clone();
        let task = tokio::spawn(async move {
            let mut c = doppel::conninfo::connect(&writer_config).await?;
            writer.run(&mut c, &writer_mirror).await
        });
        WriterHandles {
            task,
            progress,
            stop,
            calm,
        }
    }

    /// Once the slot exists (its creation waits for `before_tx`), writes more in `before_tx`
    /// and commits it.
    async fn commit_during_slot_creation(
        &self,
        run: &RunHandle,
        before_tx: tokio_postgres::Transaction<'_>,
    ) -> anyhow::Result<()> {
        let slot_exists = common::wait_until_async(Duration::from_secs(60), || async {
            run.is_finished()
                || common::scalar(
                    &self.client,
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'doppel%'",
                )
                .await
                    > 0
        })
        .await;
        anyhow::ensure!(slot_exists, "the slot did not appear in 60 s");
        self.mirror
            .execute(
                &before_tx,
                &format!(
                    "UPDATE {{t}} SET c_text = 'committed during slot creation' WHERE id BETWEEN {} AND {}",
                    RESERVED + 1,
                    RESERVED + 5
                ),
            )
            .await?;
        before_tx.commit().await?;
        Ok(())
    }

    /// A transaction open across the copy's start: begun on `across` once the slot is
    /// consistent (begun earlier, the slot's creation would wait for it), with writes; the
    /// caller commits it after the first chunk.
    async fn begin_across_the_start<'c>(
        &mut self,
        run: &RunHandle,
        across: &'c mut tokio_postgres::Client,
    ) -> anyhow::Result<tokio_postgres::Transaction<'c>> {
        let consistent = common::wait_until_async(Duration::from_secs(60), || async {
            run.is_finished()
                || common::scalar(
                    &self.client,
                    "SELECT count(*) FROM pg_replication_slots
                     WHERE slot_name LIKE 'doppel%' AND confirmed_flush_lsn IS NOT NULL",
                )
                .await
                    > 0
        })
        .await;
        anyhow::ensure!(consistent, "the slot did not become consistent in 60 s");
        let across_tx = across.transaction().await?;
        let inserts = insert_sql(&self.columns, &mut self.rng, RESERVED + 100, 30);
        self.mirror.execute(&across_tx, &inserts).await?;
        self.mirror
            .execute(
                &across_tx,
                &format!(
                    "UPDATE {{t}} SET c_doc = {} WHERE id BETWEEN {} AND {}",
                    workload::big_text_sql(self.seed),
                    RESERVED - 100,
                    RESERVED - 90
                ),
            )
            .await?;
        Ok(across_tx)
    }

    /// Waits for the run at `catch-up`, lets the writer commit a random number of
    /// transactions there, and releases it.
    async fn hold_at_catch_up(
        &mut self,
        pause_dir: &Path,
        run: &RunHandle,
        progress: &AtomicU64,
    ) -> anyhow::Result<()> {
        let stopped = common::wait_until_async(Duration::from_secs(180), || async {
            pause::reached(pause_dir, "catch-up").is_some() || run.is_finished()
        })
        .await;
        anyhow::ensure!(stopped, "the run did not reach the catch-up pause");
        if !run.is_finished() {
            let more = self.rng.random_range(10..80);
            anyhow::ensure!(
                wait_writer(progress, more).await,
                "the writer stalled at catch-up"
            );
        }
        pause::release(pause_dir, "catch-up")?;
        Ok(())
    }
}

/// Waits (up to 120 s) until the writer has committed `more` transactions beyond `progress`.
async fn wait_writer(progress: &AtomicU64, more: u64) -> bool {
    let target = progress.load(Ordering::Relaxed) + more;
    common::wait_until_async(Duration::from_secs(120), || async {
        progress.load(Ordering::Relaxed) >= target
    })
    .await
}

/// Records in `result` what the run did; fails the seed when the run or the writer failed.
fn record_run(migrated: Migrated, result: &mut SeedResult) -> anyhow::Result<()> {
    let Migrated {
        outcome,
        after_cutover,
        report,
        ..
    } = migrated;
    result.writer_transactions = report.transactions;
    match outcome {
        Ok(Outcome::Migrated(run)) => {
            result.applied_changes = run.applied_changes;
            let mut phases: Vec<String> = run
                .phases
                .iter()
                .map(|(phase, d)| format!("{} {:.1}s", phase.label(), d.as_secs_f64()))
                .collect();
            phases.push(format!(
                "{} cutover attempts, lock held {} ms",
                run.cutover.attempts,
                run.cutover.lock_held.as_millis()
            ));
            result.phases = phases.join(", ");
        }
        Ok(other) => anyhow::bail!("a shadow migration was expected, got {other:?}"),
        Err(e) => anyhow::bail!("the migration failed: {e:#}"),
    }
    anyhow::ensure!(after_cutover, "the writer stalled after the cutover");
    anyhow::ensure!(
        report.errors.is_empty(),
        "{} writer transactions failed: {:?}",
        report.errors.len(),
        report.errors.iter().take(3).collect::<Vec<_>>()
    );
    Ok(())
}

/// A random row: every column a random value (an edge value one time in four).
fn random_row(columns: &[MatrixColumn], rng: &mut StdRng) -> Vec<String> {
    columns.iter().map(|c| c.random_value(rng)).collect()
}

/// `INSERT INTO {t}` of `count` random rows at keys `first..`.
fn insert_sql(columns: &[MatrixColumn], rng: &mut StdRng, first: i64, count: i64) -> String {
    let rows: Vec<(i64, Vec<String>)> = (first..first + count)
        .map(|id| (id, random_row(columns, rng)))
        .collect();
    workload::insert_template(columns, &rows)
}

/// A statement of a writer transaction: mirrored into the twin, or run once (savepoints).
enum Step {
    Mirrored(String),
    Once(String),
}

/// What the writer did.
struct WriterReport {
    transactions: u64,
    errors: Vec<String>,
}

/// The random writer: one connection, one transaction at a time, every write mirrored.
struct Writer {
    rng: StdRng,
    columns: Vec<MatrixColumn>,
    /// Keys 1..=loaded were loaded; fresh inserts take keys above them.
    loaded: i64,
    next_fresh: i64,
    next_negative: i64,
    next_block: i64,
    /// Keys deleted by single-key deletes, to be inserted again later.
    graveyard: VecDeque<i64>,
    /// Keys created recently (inserts, key changes), often picked.
    recent: VecDeque<i64>,
    progress: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Set by the test once the run has left its pause points: from then on no large
    /// transactions, and 10 ms between transactions. A saturating writer makes the cutover
    /// retry many times: a large transaction, or an update leaving a TOASTed value unchanged
    /// (see `toast_unchanged_update_committed_as_the_cutover_waits_does_not_stall_the_fence`
    /// in tests/suite/type_matrix.rs), committed while the lock is requested keeps the applier from
    /// reaching the fence in time.
    calm: Arc<AtomicBool>,
}

impl Writer {
    fn new(columns: &[MatrixColumn], seed: u64, loaded: i64) -> Writer {
        Writer {
            rng: StdRng::seed_from_u64(seed ^ 0x5EED_0F0A_11E5),
            columns: columns.to_vec(),
            loaded,
            next_fresh: loaded + 1,
            next_negative: -1000,
            next_block: 1,
            graveyard: VecDeque::new(),
            recent: VecDeque::new(),
            progress: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            calm: Arc::new(AtomicBool::new(false)),
        }
    }

    async fn run(
        &mut self,
        client: &mut tokio_postgres::Client,
        mirror: &Mirror,
    ) -> anyhow::Result<WriterReport> {
        let mut report = WriterReport {
            transactions: 0,
            errors: Vec::new(),
        };
        while !self.stop.load(Ordering::Relaxed) {
            let steps = self.transaction();
            let outcome = async {
                let tx = client.transaction().await?;
                for step in &steps {
                    match step {
                        Step::Mirrored(s) => {
                            mirror.execute(&tx, s).await?;
                        }
                        Step::Once(s) => tx.batch_execute(s).await?,
                    }
                }
                tx.commit().await?;
                Ok::<_, anyhow::Error>(())
            }
            .await;
            match outcome {
                Ok(()) => {
                    report.transactions += 1;
                    self.progress.fetch_add(1, Ordering::Relaxed);
                    if self.calm.load(Ordering::Relaxed) {
                        // Load shaping, not synchronisation: a steady, not saturating, writer.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Err(e) => {
                    report.errors.push(format!("{e:#}"));
                    if report.errors.len() > 20 {
                        break;
                    }
                }
            }
        }
        Ok(report)
    }

    /// A key that probably exists (loaded or recently created), sometimes one that does not.
    /// The keys that do not exist lie just below [`BLOCK`], out of reach of the fresh keys
    /// (`loaded + 1` up, inserted without `ON CONFLICT` in bulk) and of the shifted ranges: a
    /// delete-and-insert or a re-insert from the graveyard may create one, and a fresh key it
    /// took would fail the next bulk insert with a duplicate key (as the old `loaded + 10`
    /// range did, seed 438704572).
    fn some_key(&mut self) -> i64 {
        if !self.recent.is_empty() && self.rng.random_bool(0.25) {
            return self.recent[self.rng.random_range(0..self.recent.len())];
        }
        let loaded = self.loaded.max(1);
        match self.rng.random_range(1..=loaded + 10) {
            k if k <= loaded => k,
            k => BLOCK - (k - loaded),
        }
    }

    fn remember(&mut self, key: i64) {
        self.recent.push_back(key);
        if self.recent.len() > 200 {
            self.recent.pop_front();
        }
    }

    /// Random assignments to 1..=max columns, never the key, optionally excluding the
    /// TOASTed `c_doc` and `c_bytea` (so pgoutput sends them as unchanged).
    fn assignments(&mut self, max: usize, with_toast: bool) -> String {
        let count = self.rng.random_range(1..=max);
        let mut sets = Vec::new();
        for _ in 0..count {
            let c = &self.columns[self.rng.random_range(0..self.columns.len())];
            if !with_toast && (c.name == "c_doc" || c.name == "c_bytea") {
                continue;
            }
            if sets
                .iter()
                .any(|s: &String| s.starts_with(&format!("{} =", c.name)))
            {
                continue;
            }
            let v = c.random_value(&mut self.rng);
            sets.push(format!("{} = {v}", c.name));
        }
        if sets.is_empty() {
            sets.push("c_bool = NOT c_bool".into());
        }
        sets.join(", ")
    }

    fn insert(&mut self, id: i64) -> String {
        let row = random_row(&self.columns, &mut self.rng);
        format!(
            "{} ON CONFLICT (id) DO NOTHING",
            workload::insert_template(&self.columns, &[(id, row)])
        )
    }

    /// One write (one or more statements of a transaction).
    fn op(&mut self) -> Vec<Step> {
        use Step::Mirrored as M;
        match self.rng.random_range(0..100) {
            0..=27 => {
                let id = self.next_fresh;
                self.next_fresh += 1;
                self.remember(id);
                vec![M(self.insert(id))]
            }
            28..=45 => {
                let (sets, id) = (self.assignments(4, false), self.some_key());
                vec![M(format!("UPDATE {{t}} SET {sets} WHERE id = {id}"))]
            }
            46..=53 => {
                let id = self.some_key();
                let doc = match self.rng.random_range(0..4) {
                    0 => "NULL".to_string(),
                    1 => "''".to_string(),
                    2 => "'short ✓'".to_string(),
                    _ => workload::big_text_sql(self.rng.random_range(0..1_000_000)),
                };
                let more = if self.rng.random_bool(0.5) {
                    format!(", {}", self.assignments(3, false))
                } else {
                    String::new()
                };
                vec![M(format!(
                    "UPDATE {{t}} SET c_doc = {doc}{more} WHERE id = {id}"
                ))]
            }
            54..=63 => {
                let id = self.some_key();
                self.graveyard.push_back(id);
                vec![M(format!("DELETE FROM {{t}} WHERE id = {id}"))]
            }
            64..=68 => match self.graveyard.pop_front() {
                Some(id) => {
                    self.remember(id);
                    vec![M(self.insert(id))]
                }
                None => vec![M(self.insert(-999))],
            },
            69..=73 => {
                let id = self.some_key();
                vec![
                    M(format!("DELETE FROM {{t}} WHERE id = {id}")),
                    M(self.insert(id)),
                ]
            }
            74..=80 => {
                let (from, to) = (self.some_key(), self.next_negative);
                self.next_negative -= 1;
                self.remember(to);
                let more = if self.rng.random_bool(0.3) {
                    format!(", {}", self.assignments(2, false))
                } else {
                    String::new()
                };
                vec![M(format!(
                    "UPDATE {{t}} SET id = {to}{more} WHERE id = {from}"
                ))]
            }
            81..=83 => {
                let a = self.rng.random_range(1..=self.loaded.max(1));
                let w = self.rng.random_range(1..20);
                let shift = BLOCK * self.next_block;
                self.next_block += 1;
                self.remember(a + shift);
                vec![M(format!(
                    "UPDATE {{t}} SET id = id + {shift} WHERE id BETWEEN {a} AND {} AND id < {BLOCK}",
                    a + w
                ))]
            }
            84..=91 => {
                let a = self.rng.random_range(1..=self.loaded.max(1));
                let w = self.rng.random_range(1..200);
                let sets = self.assignments(2, false);
                vec![M(format!(
                    "UPDATE {{t}} SET {sets} WHERE id BETWEEN {a} AND {}",
                    a + w
                ))]
            }
            92..=95 => {
                let a = self.rng.random_range(1..=self.loaded.max(1));
                let w = self.rng.random_range(1..30);
                vec![M(format!(
                    "DELETE FROM {{t}} WHERE id BETWEEN {a} AND {}",
                    a + w
                ))]
            }
            _ => {
                let sets = self.assignments(3, true);
                let (a, b) = (self.some_key(), self.some_key());
                vec![M(format!("UPDATE {{t}} SET {sets} WHERE id IN ({a}, {b})"))]
            }
        }
    }

    /// One transaction: mostly a single write; sometimes several, a savepoint rolled back or
    /// released, or a large one.
    fn transaction(&mut self) -> Vec<Step> {
        match self.rng.random_range(0..100) {
            0..=79 => self.op(),
            80..=91 => {
                let n = self.rng.random_range(2..=6);
                (0..n).flat_map(|_| self.op()).collect()
            }
            92..=97 => {
                let mut steps = self.op();
                steps.push(Step::Once("SAVEPOINT s".into()));
                // Keys created inside the savepoint may be rolled back: do not remember them.
                let recent = self.recent.clone();
                let graveyard = self.graveyard.clone();
                let n = self.rng.random_range(1..=4);
                steps.extend((0..n).flat_map(|_| self.op()));
                if self.rng.random_bool(0.7) {
                    steps.push(Step::Once("ROLLBACK TO SAVEPOINT s".into()));
                    self.recent = recent;
                    self.graveyard = graveyard;
                } else {
                    steps.push(Step::Once("RELEASE SAVEPOINT s".into()));
                }
                steps.extend(self.op());
                steps
            }
            _ if self.calm.load(Ordering::Relaxed) => self.op(),
            _ => {
                if self.rng.random_bool(0.5) {
                    // Many rows updated at once (TOASTed values unchanged).
                    let a = self.rng.random_range(1..=self.loaded.max(1));
                    let w = self.rng.random_range(1000..4000);
                    let sets = self.assignments(2, false);
                    vec![Step::Mirrored(format!(
                        "UPDATE {{t}} SET {sets} WHERE id BETWEEN {a} AND {}",
                        a + w
                    ))]
                } else {
                    // Many rows inserted at once.
                    let first = self.next_fresh;
                    let count = self.rng.random_range(200..600);
                    self.next_fresh += count;
                    let rows: Vec<(i64, Vec<String>)> = (first..first + count)
                        .map(|id| (id, random_row(&self.columns, &mut self.rng)))
                        .collect();
                    vec![Step::Mirrored(workload::insert_template(
                        &self.columns,
                        &rows,
                    ))]
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workloads_leave_the_table_equal_to_the_oracles() {
    run_seeds(
        2,
        2_000..5_000,
        "cargo test --test suite randomized_oracle::random_workloads",
    )
    .await;
}

/// The long run (`scripts/oracle-seeds.sh`): 50 seeds (`DOPPEL_SEEDS`), 5,000–20,000 rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 50 seeds; run by scripts/oracle-seeds.sh"]
async fn many_seeds() {
    run_seeds(
        50,
        5_000..20_000,
        "cargo test --release --test suite randomized_oracle::many_seeds -- --ignored",
    )
    .await;
}
