//! `doppel demo --scenario ledger`: the expand/contract walk-through of the README on a
//! throwaway cluster. A ledger `transactions` moves from its `status` text to a `state_id`
//! foreign key on `transaction_state` while a writer plays the application (status only,
//! then both columns, then `state_id` only), mirroring every change into a twin:
//!
//! 1. expand: `ADD COLUMN state_id smallint REFERENCES transaction_state(id)` on the table
//!    itself (the column, the foreign key `NOT VALID`, then `VALIDATE`);
//! 2. `doppel backfill` of `state_id` from `status` while the old application runs, the switch
//!    to dual write, a pass over every row, a run again that changes nothing;
//! 3. the constraint: `SET NOT NULL` by the recipe;
//! 4. contract: `status` made nullable, the application stops writing it, `DROP COLUMN status`.
//!
//! Each step prints the locks it took and how long it held them, with the writer's worst wait
//! during the step; the backfill prints its validation report; at the end the table is
//! compared with the twin and the history is listed.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cancel::Cancel;
use crate::ops::history::{self, HistoryOptions};
use crate::run::{self, BackfillOptions, BackfillOutcome, Outcome, RunOptions};
use doppel_testkit::cluster::{ClusterOptions, LocalCluster};
use doppel_testkit::workload::ledger::{self, LedgerWriter, Mode};

/// The backfill's assignment.
pub const STATE_ID: &str = "state_id = (SELECT id FROM transaction_state s WHERE s.name = status)";

/// What the walk-through found.
#[derive(Debug, Clone)]
pub struct LedgerReport {
    /// Rows loaded.
    pub rows: i64,
    /// Each step: what, the longest hold of a lock that blocks writes, the writer's worst wait.
    pub steps: Vec<(String, Duration, Duration)>,
    /// Rows differing from the twin at the end (0 = exact).
    pub mismatches: i64,
    /// The table's OID kept throughout.
    pub oid_kept: bool,
    /// Writer errors.
    pub writer_errors: u64,
}

/// Runs the walk-through on a throwaway cluster with `rows` rows, the runs tuned like `run`.
///
/// Errors: the cluster cannot start, a step fails, or the result differs from the twin.
pub async fn walk_through(
    rows: i64,
    template: &RunOptions,
    cancel: &Cancel,
) -> Result<LedgerReport> {
    println!("starting a throwaway PostgreSQL cluster ...");
    let mut cluster = LocalCluster::start(ClusterOptions::default()).await?;
    let result = on(&cluster, rows, template, cancel).await;
    cluster.stop().ok();
    result
}

async fn on(
    cluster: &LocalCluster,
    rows: i64,
    template: &RunOptions,
    cancel: &Cancel,
) -> Result<LedgerReport> {
    let client = cluster.connect("postgres").await?;
    let config: tokio_postgres::Config = cluster
        .conninfo("postgres")
        .parse()
        .context("cluster conninfo")?;
    println!("loading {rows} rows into public.transactions (status text) and its twin ...");
    ledger::create(&client, rows).await?;
    let oid = oid_of(&client).await?;
    let writer = LedgerWriter::start(&config, Mode::Old, 16, Duration::from_millis(2)).await?;
    println!("the application writes status only; it runs through every step\n");
    let walk = Walk {
        config: &config,
        template,
        cancel,
        writer: &writer,
        dir: cluster.scratch_dir().to_path_buf(),
    };
    let mut steps = Vec::new();
    steps.push(
        walk.alter(
            "1. expand",
            "ADD COLUMN state_id smallint REFERENCES transaction_state(id)",
        )
        .await?,
    );
    walk.backfill(
        "2. backfill the NULLs (old application still running)",
        Some("state_id IS NULL"),
    )
    .await?;
    writer.switch(Mode::Dual).await;
    println!("   the application now writes both columns (dual write)");
    walk.backfill("2. backfill every row that differs (dual write)", None)
        .await?;
    walk.backfill("2. the same again: changes nothing", None)
        .await?;
    steps.push(
        walk.alter("3. constraint", "ALTER COLUMN state_id SET NOT NULL")
            .await?,
    );
    steps.push(
        walk.alter("4. contract", "ALTER COLUMN status DROP NOT NULL")
            .await?,
    );
    writer.switch(Mode::New).await;
    println!("   the application now writes state_id only");
    steps.push(walk.alter("4. contract", "DROP COLUMN status").await?);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = writer.stop().await?;
    let mismatches = ledger::mismatches(&client).await?;
    let oid_kept = oid_of(&client).await? == oid;
    println!(
        "\nwriter: {} transactions, {} errors, worst latency {:.1} ms, p99 {:.1} ms",
        report.transactions,
        report.errors,
        report.max_latency.as_secs_f64() * 1000.0,
        report.p99.as_secs_f64() * 1000.0
    );
    println!(
        "transactions keeps its OID: {oid_kept}; rows differing from the twin (state_id derived from its status): {mismatches}"
    );
    print_history(&client).await?;
    if mismatches != 0 || !oid_kept || report.errors != 0 {
        bail!(
            "the walk-through did not end where it should: {mismatches} mismatched rows, OID kept {oid_kept}, {} writer errors {:?}",
            report.errors,
            report.first_errors
        );
    }
    Ok(LedgerReport {
        rows,
        steps,
        mismatches,
        oid_kept,
        writer_errors: report.errors,
    })
}

/// What every step shares.
struct Walk<'a> {
    config: &'a tokio_postgres::Config,
    template: &'a RunOptions,
    cancel: &'a Cancel,
    writer: &'a LedgerWriter,
    dir: std::path::PathBuf,
}

impl Walk<'_> {
    /// `doppel run --alter <clause> --execute`, printed with its steps and the writer's worst wait.
    async fn alter(&self, title: &str, clause: &str) -> Result<(String, Duration, Duration)> {
        println!("{title}: doppel run --table transactions --alter \"{clause}\" --execute");
        let mut options = self.template.clone();
        options.table = "public.transactions".into();
        options.alters = vec![clause.to_string()];
        options.execute = true;
        options.work_dir = self.dir.clone();
        options.rollback_dir = self.dir.clone();
        self.writer.start_window();
        let outcome = run::run(self.config, &options, self.cancel).await?;
        let worst = self.writer.window();
        let Outcome::Altered(report) = outcome else {
            bail!("{clause} did not run on the table itself");
        };
        for c in &report.clauses {
            println!("   strategy: {} ({})", c.strategy.label(), c.reason);
        }
        for line in run::render_steps(&report.direct) {
            println!("   {line}");
        }
        let hold = report.direct.longest_blocking_hold();
        println!(
            "   longest lock blocking writes: {:.1} ms; the application's worst wait: {:.1} ms (lock_timeout {} ms)\n",
            hold.as_secs_f64() * 1000.0,
            worst.as_secs_f64() * 1000.0,
            options.lock_timeout.as_millis()
        );
        Ok((clause.to_string(), hold, worst))
    }

    /// `doppel backfill --set STATE_ID [--where ..] --execute`, printed with its report.
    async fn backfill(&self, title: &str, filter: Option<&str>) -> Result<()> {
        println!(
            "{title}: doppel backfill --table transactions --set '{STATE_ID}'{} --execute",
            filter
                .map(|f| format!(" --where '{f}'"))
                .unwrap_or_default()
        );
        let mut options = BackfillOptions::new("public.transactions", &[STATE_ID]);
        options.filter = filter.map(str::to_string);
        options.execute = true;
        options.work_dir = self.dir.clone();
        options.update.chunk_time = self.template.copy.chunk_time;
        options.update.nice_ratio = self.template.copy.nice_ratio;
        options.throttle = self.template.throttle.clone();
        let BackfillOutcome::Done(report) =
            run::backfill(self.config, &options, self.cancel).await?
        else {
            bail!("the backfill ran as a dry run");
        };
        let u = &report.update;
        println!(
            "   {} row(s) changed of {} examined in {} chunk(s) of about {} ms, {:.1} s",
            u.rows_changed,
            u.rows_examined,
            u.chunks,
            options.update.chunk_time.as_millis(),
            u.elapsed.as_secs_f64()
        );
        for line in report.validation.lines() {
            println!("   validation: {line}");
        }
        println!();
        Ok(())
    }
}

async fn oid_of(client: &tokio_postgres::Client) -> Result<u32> {
    Ok(client
        .query_one("SELECT 'public.transactions'::regclass::oid", &[])
        .await?
        .get(0))
}

/// Prints the history of the walk-through's runs.
async fn print_history(client: &tokio_postgres::Client) -> Result<()> {
    println!("\ndoppel history:");
    for row in history::list(client, &HistoryOptions::default(), None).await? {
        let j = &row.json;
        println!(
            "  #{} {:<8} {:<9} {:>9} ms lock  {}",
            j["id"],
            j["kind"].as_str().unwrap_or_default(),
            j["outcome"].as_str().unwrap_or_default(),
            j["lock_hold_ms"]
                .as_f64()
                .map(|m| format!("{m:.1}"))
                .unwrap_or_else(|| "-".into()),
            j["clauses"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join("; "))
                .unwrap_or_default()
        );
    }
    Ok(())
}
