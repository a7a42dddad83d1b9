//! `doppel demo`: a real online migration on a throwaway cluster, and its revert
//! (`--scenario shadow`, the default); `--scenario ledger` walks through expand/contract on
//! the table itself ([`ledger`]).
//!
//! Starts a private PostgreSQL cluster from the installed server binaries, loads the demo
//! table (default 1,000,000 rows) and its twin, and runs the concurrent writer
//! ([`doppel_testkit::workload`], every change mirrored into the twin in the same
//! transaction) during `ALTER COLUMN customer_id TYPE bigint, ADD COLUMN note2 text` with a
//! revert window. Once the migration is cut over it checks the new table against the twin,
//! lets the writer go on writing into the new table, then reverts (`doppel ctl .. revert`)
//! with the writer still running and checks the restored table against the twin: no write
//! lost either way. Prints the figures and removes the cluster.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::task::JoinHandle;

pub mod ledger;

use crate::cancel::Cancel;
use crate::run::{self, Outcome, RunOptions, RunReport, WindowEnd};
use doppel_testkit::cluster::{ClusterOptions, LocalCluster};
use doppel_testkit::workload::{self, Workload};

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Rows to load.
    pub rows: i64,
    /// Template for the migration's options (table and alters are the demo's).
    pub run: RunOptions,
}

/// The demo's figures.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Rows loaded.
    pub rows: i64,
    /// Migration wall time, from the start to the cutover's commit.
    pub migration: Duration,
    /// Cutover lock hold.
    pub lock_held: Duration,
    /// The revert's lock hold.
    pub revert_lock_held: Duration,
    /// Changes made after the cutover and written back into the old table before the revert.
    pub written_back: u64,
    /// Writer transactions during the migration and the revert, errors, worst latency.
    pub writer: workload::WorkloadReport,
    /// Rows differing from the twin, after the cutover plus after the revert (0 = exact).
    pub mismatches: i64,
    /// Row changes applied from the stream before the cutover.
    pub applied: u64,
}

/// Runs the demo.
///
/// Errors: the cluster cannot start, the migration or the revert fails, or a result differs
/// from the twin.
pub async fn run(options: &DemoOptions, cancel: &Cancel) -> Result<DemoReport> {
    println!("starting a throwaway PostgreSQL cluster ...");
    let mut cluster = LocalCluster::start(ClusterOptions::default()).await?;
    let result = run_on(&cluster, options, cancel).await;
    cluster.stop().ok();
    result
}

/// What the demo runs against.
struct Stage<'a> {
    cluster: &'a LocalCluster,
    client: tokio_postgres::Client,
    config: tokio_postgres::Config,
    socket: PathBuf,
}

async fn run_on(
    cluster: &LocalCluster,
    options: &DemoOptions,
    cancel: &Cancel,
) -> Result<DemoReport> {
    let stage = Stage {
        cluster,
        client: cluster.connect("postgres").await?,
        config: cluster
            .conninfo("postgres")
            .parse()
            .context("cluster conninfo")?,
        socket: cluster.scratch_dir().join("doppel-demo.sock"),
    };
    println!(
        "loading {} rows into public.orders and its twin ...",
        options.rows
    );
    let load = Instant::now();
    workload::create_tables(&stage.client, "orders", "orders_twin", options.rows).await?;
    println!("loaded in {:.1} s", load.elapsed().as_secs_f64());
    let writer = Workload::start(
        &stage.config,
        "orders",
        "orders_twin",
        42,
        Duration::from_millis(2),
    )
    .await?;
    let started = Instant::now();
    let migration = start_migration(&stage, options, cancel);
    let cut_over = wait_for_window(&stage.socket, &migration).await;
    let migration_time = started.elapsed();
    let (after_cutover, report) = match cut_over {
        Ok(()) => revert(&stage, migration).await?,
        Err(e) => {
            writer.stop().await.ok();
            return Err(finished(migration).await.err().unwrap_or(e));
        }
    };
    let writer_report = writer.stop().await?;
    let after_revert = workload::mismatches(&stage.client, "orders", "orders_twin").await?;
    print_report(options, &report, &writer_report, migration_time);
    println!("rows differing from the twin after the cutover: {after_cutover}");
    println!("rows differing from the twin after the revert:  {after_revert}");
    check_nothing_left(&stage).await?;
    if after_cutover + after_revert != 0 {
        bail!(
            "the tables differ from the oracle twin: {after_cutover} row(s) after the cutover, {after_revert} after the revert"
        );
    }
    demo_report(options, &report, writer_report, migration_time)
}

/// Starts `doppel run --execute` of the demo's ALTER with a revert window, in a task.
fn start_migration(
    stage: &Stage<'_>,
    options: &DemoOptions,
    cancel: &Cancel,
) -> JoinHandle<Result<Outcome>> {
    let mut run = options.run.clone();
    run.table = "public.orders".into();
    run.alters = vec![
        "ALTER COLUMN customer_id TYPE bigint".into(),
        "ADD COLUMN note2 text".into(),
    ];
    run.execute = true;
    run.revert_window = Some(Duration::from_secs(600));
    run.control_socket = Some(stage.socket.clone());
    // The rollback script and cutover record belong to this throwaway cluster: keep them in
    // its scratch directory, removed with it, not in the current directory.
    run.rollback_dir = stage.cluster.scratch_dir().to_path_buf();
    println!(
        "running: doppel run --table public.orders --alter \"ALTER COLUMN customer_id TYPE bigint\" --alter \"ADD COLUMN note2 text\" --revert-window 10m --execute"
    );
    let config = stage.config.clone();
    let cancel = cancel.clone();
    tokio::spawn(async move { run::run(&config, &run, &cancel).await })
}

/// Waits until the run has cut over and its revert window streams; fails if the run ended
/// first.
async fn wait_for_window(socket: &Path, migration: &JoinHandle<Result<Outcome>>) -> Result<()> {
    loop {
        if migration.is_finished() {
            bail!("the migration ended before its revert window opened");
        }
        if let Ok(reply) = crate::ops::control::send(socket, "status --json").await
            && let Ok(status) = serde_json::from_str::<serde_json::Value>(&reply)
            && status["window"]["streaming"] == true
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The migration's result.
async fn finished(migration: JoinHandle<Result<Outcome>>) -> Result<RunReport> {
    match migration.await.context("the migration task failed")?? {
        Outcome::Migrated(report) => Ok(*report),
        Outcome::Planned(_) | Outcome::Altered(_) => {
            bail!("the demo's migration did not take the shadow")
        }
        Outcome::Finished(_) => bail!("the demo's run finished an interrupted one"),
    }
}

/// Checks the new table against the twin, lets the writer write into it for 3 s, reverts
/// with the writer still running; returns the rows that differed after the cutover and the
/// run's report.
async fn revert(
    stage: &Stage<'_>,
    migration: JoinHandle<Result<Outcome>>,
) -> Result<(i64, RunReport)> {
    let after_cutover = workload::mismatches(&stage.client, "orders", "orders_twin").await?;
    println!(
        "cut over; the new table equals the twin ({after_cutover} rows differ). The writer goes on; reverting in 3 s ..."
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("running: doppel ctl --table public.orders revert");
    let reply =
        crate::ops::control::send_waiting(&stage.socket, "revert", Duration::from_secs(600))
            .await?;
    println!("{reply}");
    let report = finished(migration).await?;
    Ok((after_cutover, report))
}

fn print_report(
    options: &DemoOptions,
    report: &RunReport,
    writer: &workload::WorkloadReport,
    migration_time: Duration,
) {
    println!();
    println!("rows loaded:            {}", options.rows);
    println!(
        "migration wall time:    {:.1} s (to the cutover)",
        migration_time.as_secs_f64()
    );
    for (phase, d) in &report.phases {
        println!("  {:<24}{:.2} s", phase.label(), d.as_secs_f64());
    }
    println!("rows copied:            {}", report.copy.rows);
    println!("changes applied:        {}", report.applied_changes);
    println!(
        "lock held at cutover:   {:.1} ms ({} attempt(s))",
        report.cutover.lock_held.as_secs_f64() * 1000.0,
        report.cutover.attempts
    );
    if let Some(window) = &report.window
        && let WindowEnd::Reverted(outcome) = &window.end
    {
        println!(
            "revert:                 {} change(s) written back in the window, lock held {:.1} ms ({} attempt(s))",
            window.applied,
            outcome.swap.lock_held.as_secs_f64() * 1000.0,
            outcome.swap.attempts
        );
    }
    println!(
        "writer during the run:  {} transactions, {} errors, worst latency {:.1} ms (p99 {:.1} ms)",
        writer.transactions,
        writer.errors,
        writer.max_latency.as_secs_f64() * 1000.0,
        writer.p99.as_secs_f64() * 1000.0
    );
    for e in &writer.first_errors {
        println!("  writer error: {e}");
    }
}

/// Fails when a replication slot or a publication of doppel's is left.
async fn check_nothing_left(stage: &Stage<'_>) -> Result<()> {
    let left: i64 = stage
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots)
                  + (SELECT count(*) FROM pg_publication WHERE pubname LIKE 'doppel%')",
            &[],
        )
        .await?
        .get(0);
    println!("replication slots and doppel publications left: {left}");
    if left != 0 {
        bail!("{left} replication slot(s) or publication(s) left behind");
    }
    Ok(())
}

fn demo_report(
    options: &DemoOptions,
    report: &RunReport,
    writer: workload::WorkloadReport,
    migration_time: Duration,
) -> Result<DemoReport> {
    let Some(window) = &report.window else {
        bail!("the run opened no revert window");
    };
    let WindowEnd::Reverted(outcome) = &window.end else {
        bail!("the revert window ended without a revert: {:?}", window.end);
    };
    Ok(DemoReport {
        rows: options.rows,
        migration: migration_time,
        lock_held: report.cutover.lock_held,
        revert_lock_held: outcome.swap.lock_held,
        written_back: window.applied,
        writer,
        mismatches: 0,
        applied: report.applied_changes,
    })
}
