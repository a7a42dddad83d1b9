//! `doppel history`: the runs and backfills recorded in the history table.

use clap::Args;
use doppel::conninfo;
use doppel::ops::history;

use super::args::{ConnArgs, HistoryArgs};

#[derive(Args, Debug)]
pub(crate) struct HistoryCliArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// Only the runs on this table (written as SQL writes it).
    #[arg(long)]
    pub(crate) table: Option<String>,
    /// One JSON object per line, every column.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) history: HistoryArgs,
}

/// Prints the history, oldest first.
pub(crate) async fn history(args: HistoryCliArgs) -> anyhow::Result<()> {
    let config = conninfo::resolve(args.conn.dsn.as_deref())?;
    let client = conninfo::connect(&config).await?;
    let options = args.history.options()?;
    let rows = history::list(&client, &options, args.table.as_deref()).await?;
    if args.json {
        for row in &rows {
            println!("{}", row.json);
        }
        return Ok(());
    }
    if rows.is_empty() {
        println!("no run recorded in {}", options.qualified());
        return Ok(());
    }
    for row in &rows {
        let j = &row.json;
        let text = |k: &str| j[k].as_str().unwrap_or("-").to_string();
        let strategies: Vec<String> = j["strategies"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["strategy"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "#{} {} {} {} by {}@{} {} -> {} (exit {}): {}",
            j["id"],
            text("started_at"),
            text("kind"),
            text("table_name"),
            text("operator"),
            text("host"),
            if strategies.is_empty() {
                String::new()
            } else {
                format!("[{}]", strategies.join(", "))
            },
            text("outcome"),
            j["exit_code"],
            j["clauses"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join("; "))
                .unwrap_or_default()
        );
        let mut extra = Vec::new();
        if !j["rows_copied"].is_null() {
            extra.push(format!("rows {}", j["rows_copied"]));
        }
        if let Some(ms) = j["lock_hold_ms"].as_f64() {
            extra.push(format!("lock hold {ms:.1} ms"));
        }
        if let Some(lsn) = j["cutover_lsn"].as_str() {
            extra.push(format!("cutover LSN {lsn}"));
        }
        if let Some(e) = j["error"].as_str() {
            extra.push(format!("error: {}", e.lines().next().unwrap_or_default()));
        }
        if !extra.is_empty() {
            println!("    {}", extra.join("; "));
        }
    }
    Ok(())
}
