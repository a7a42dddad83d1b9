//! `doppel verify`: the verify phase's comparison, on demand.

use std::time::Duration;

use clap::Args;
use doppel::conninfo;

use super::args::ConnArgs;

#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// The table: during a run the original (compared with `_doppel_<oid>_new_<name>`), after
    /// the cutover the new table (compared with --against).
    #[arg(long)]
    pub(crate) table: String,
    /// The old table kept by the cutover (`_doppel_<oid>_old_<name>`): its columns are
    /// projected onto the new table's by name.
    #[arg(long)]
    pub(crate) against: Option<String>,
    /// The run's --alter clauses (repeatable), only for their USING expressions; without them
    /// each old value is cast to the new column's type.
    #[arg(long = "alter")]
    pub(crate) alters: Vec<String>,
    /// The run's --backfill assignments (repeatable), `column = expression` over the old row:
    /// such a column of the new table is compared with the expression's value.
    #[arg(long = "backfill")]
    pub(crate) backfills: Vec<String>,
    /// Rows per chunk.
    #[arg(long, default_value_t = doppel::phases::verify::VERIFY_CHUNK_ROWS)]
    pub(crate) chunk_rows: i64,
    /// Re-checks of a differing key before it is reported (a live stream applies changes a
    /// moment after they commit).
    #[arg(long, default_value_t = doppel::phases::verify::RECHECKS)]
    pub(crate) rechecks: usize,
    /// Pause before each re-check, in ms.
    #[arg(long, default_value_t = 1000)]
    pub(crate) recheck_interval: u64,
    /// Differing keys listed at most.
    #[arg(long, default_value_t = 100)]
    pub(crate) max_keys: usize,
    /// Parallel query workers each of the two comparing sessions may use
    /// (max_parallel_workers_per_gather); 0 leaves the server's parallel workers to the
    /// application.
    #[arg(long, default_value_t = 0)]
    pub(crate) parallel_workers: u32,
}

/// `doppel verify`: prints chunks, rows and the keys that still differ; exit 6 when any do.
pub(crate) async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    use doppel::phases::verify::{CheckOptions, KeyDifference, check, describe_key};
    let config = conninfo::resolve(args.conn.dsn.as_deref())?;
    let options = CheckOptions {
        against: args.against,
        alters: args.alters,
        backfills: args.backfills,
        chunk_rows: args.chunk_rows,
        rechecks: args.rechecks,
        recheck_interval: Duration::from_millis(args.recheck_interval),
        max_keys: args.max_keys,
        parallel_workers: args.parallel_workers,
        ..CheckOptions::new(&args.table)
    };
    let report = check(&config, &options).await?;
    println!(
        "compared {} with {}: {} chunks, {} rows ({} in {}), {} re-checks",
        report.source,
        report.target,
        report.chunks,
        report.rows,
        report.target_rows,
        report.target,
        report.rechecks
    );
    println!("columns compared: {}", report.compared_columns.join(", "));
    if !report.target_only_columns.is_empty() {
        println!(
            "not compared (only in {}): {}",
            report.target,
            report.target_only_columns.join(", ")
        );
    }
    if !report.source_only_columns.is_empty() {
        println!(
            "not compared (only in {}): {}",
            report.source,
            report.source_only_columns.join(", ")
        );
    }
    if report.equal() {
        println!("equal");
        return Ok(());
    }
    println!(
        "differing keys ({}{}):",
        report.differing.len(),
        if report.truncated {
            ", more not listed"
        } else {
            ""
        }
    );
    for (key, how) in &report.differing {
        let how = match how {
            KeyDifference::Values => "values differ".to_string(),
            KeyDifference::MissingFromTarget => format!("only in {}", report.source),
            KeyDifference::OnlyInTarget => format!("only in {}", report.target),
        };
        println!("  {}: {how}", describe_key(key));
    }
    println!("not equal");
    Err(doppel::failure::fail(
        doppel::failure::FailureKind::Verification,
        format!(
            "{} and {} differ in {} chunk(s) ({} key(s) listed{}) after {} re-check(s)",
            report.source,
            report.target,
            report.differing_chunks,
            report.differing.len(),
            if report.truncated {
                ", more not listed"
            } else {
                ""
            },
            args.rechecks
        ),
    ))
}
