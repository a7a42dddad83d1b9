//! `doppel demo`: a real online migration on a throwaway cluster.
//!
//! Starts a private PostgreSQL cluster from the installed server binaries, loads the demo
//! table (default 1,000,000 rows) and its twin, runs the concurrent writer
//! ([`doppel_testkit::workload`]) during `ALTER COLUMN customer_id TYPE bigint, ADD COLUMN note2 text`,
//! checks the result against the twin, prints the figures and removes the cluster.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cancel::Cancel;
use crate::run::{self, Outcome, RunOptions};
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
    /// Migration wall time.
    pub migration: Duration,
    /// Cutover lock hold.
    pub lock_held: Duration,
    /// Writer transactions during the migration, errors, worst latency.
    pub writer: workload::WorkloadReport,
    /// Rows differing from the twin (0 = exact).
    pub mismatches: i64,
    /// Row changes applied from the stream.
    pub applied: u64,
}

/// Runs the demo. Errors: the cluster cannot start, the migration fails, or the result differs
/// from the twin.
pub async fn run(options: &DemoOptions, cancel: &Cancel) -> Result<DemoReport> {
    println!("starting a throwaway PostgreSQL cluster ...");
    let mut cluster = LocalCluster::start(ClusterOptions::default()).await?;
    let result = run_on(&cluster, options, cancel).await;
    cluster.stop().ok();
    result
}

async fn run_on(
    cluster: &LocalCluster,
    options: &DemoOptions,
    cancel: &Cancel,
) -> Result<DemoReport> {
    let client = cluster.connect("postgres").await?;
    println!(
        "loading {} rows into public.orders and its twin ...",
        options.rows
    );
    let load = Instant::now();
    workload::create_tables(&client, "orders", "orders_twin", options.rows).await?;
    println!("loaded in {:.1} s", load.elapsed().as_secs_f64());
    let config: tokio_postgres::Config = cluster
        .conninfo("postgres")
        .parse()
        .context("cluster conninfo")?;
    let writer = Workload::start(
        &config,
        "orders",
        "orders_twin",
        42,
        Duration::from_millis(2),
    )
    .await?;
    let mut run = options.run.clone();
    run.table = "public.orders".into();
    run.alters = vec![
        "ALTER COLUMN customer_id TYPE bigint".into(),
        "ADD COLUMN note2 text".into(),
    ];
    run.execute = true;
    // The rollback script and cutover record belong to this throwaway cluster: keep them in
    // its scratch directory, removed with it, not in the current directory.
    run.rollback_dir = cluster.scratch_dir().to_path_buf();
    println!(
        "running: doppel run --table public.orders --alter \"ALTER COLUMN customer_id TYPE bigint\" --alter \"ADD COLUMN note2 text\" --execute"
    );
    let started = Instant::now();
    let outcome = run::run(&config, &run, cancel).await;
    let migration_time = started.elapsed();
    let writer_report = writer.stop().await?;
    let report = match outcome? {
        Outcome::Migrated(r) => r,
        Outcome::Planned(_) => bail!("the demo ran as a dry run"),
    };
    let mismatches = workload::mismatches(&client, "orders", "orders_twin").await?;
    let slots: i64 = client
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await?
        .get(0);
    println!();
    println!("rows loaded:            {}", options.rows);
    println!(
        "migration wall time:    {:.1} s",
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
    println!(
        "writer during the run:  {} transactions, {} errors, worst latency {:.1} ms (p99 {:.1} ms)",
        writer_report.transactions,
        writer_report.errors,
        writer_report.max_latency.as_secs_f64() * 1000.0,
        writer_report.p99.as_secs_f64() * 1000.0
    );
    for e in &writer_report.first_errors {
        println!("  writer error: {e}");
    }
    println!("rows differing from the twin table: {mismatches}");
    println!("replication slots left: {slots}");
    println!(
        "rollback script: {} (removed with the demo cluster)",
        report.cutover.rollback_path.display()
    );
    if mismatches != 0 {
        bail!("the migrated table differs from the oracle twin in {mismatches} row(s)");
    }
    if slots != 0 {
        bail!("{slots} replication slot(s) left behind");
    }
    Ok(DemoReport {
        rows: options.rows,
        migration: migration_time,
        lock_held: report.cutover.lock_held,
        writer: writer_report,
        mismatches,
        applied: report.applied_changes,
    })
}
