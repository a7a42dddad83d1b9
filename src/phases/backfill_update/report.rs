//! The validation report that ends `doppel backfill` (docs/design.md §1.12): completeness
//! (rows still matching `--where`), correctness (rows whose value differs from the
//! expression, with example keys) and, for a column a foreign key constrains, its orphans.
//! Each is one query over the whole table, under its own statement snapshot: rows the
//! application writes meanwhile are counted as they stand.

use anyhow::{Context, Result};
use tokio_postgres::Client;

use super::UpdateSpec;
use crate::phases::violations::{self, Offenders, Subject};
use crate::sql::ident;

/// Example keys listed per finding.
const EXAMPLES: i64 = 5;

/// One assigned column's checks.
#[derive(Debug, Clone)]
pub struct ColumnCheck {
    /// The column.
    pub column: String,
    /// Rows whose value differs from the expression.
    pub mismatches: Offenders,
    /// For each foreign key on the column: its name and its orphans.
    pub orphans: Vec<(String, Offenders)>,
}

/// The validation report.
#[derive(Debug, Clone)]
pub struct Validation {
    /// Rows still matching `--where` (`None` without one).
    pub remaining: Option<i64>,
    /// One per assignment.
    pub columns: Vec<ColumnCheck>,
}

impl Validation {
    /// True when nothing is missing, different or orphaned.
    pub fn clean(&self) -> bool {
        self.remaining.unwrap_or(0) == 0
            && self
                .columns
                .iter()
                .all(|c| c.mismatches.count == 0 && c.orphans.iter().all(|(_, o)| o.count == 0))
    }

    /// The report's lines.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(n) = self.remaining {
            out.push(format!("rows still matching --where: {n}"));
        }
        for c in &self.columns {
            out.push(format!(
                "column {}: mismatches {}",
                ident(&c.column),
                c.mismatches.describe("row(s)")
            ));
            for (fk, o) in &c.orphans {
                out.push(format!(
                    "column {}: orphans of foreign key {}: {}",
                    ident(&c.column),
                    ident(fk),
                    o.describe("row(s)")
                ));
            }
        }
        out
    }
}

/// Validates `spec`'s table against its assignments.
///
/// Errors: a query fails.
pub async fn validate(client: &Client, spec: &UpdateSpec) -> Result<Validation> {
    let t = spec.table.qualified();
    let only = spec.keys().only();
    let remaining = match &spec.filter {
        Some(w) => Some(
            client
                .query_one(
                    &format!("SELECT count(*) FROM {only}{t} AS src WHERE ({w})"),
                    &[],
                )
                .await
                .context("counting the rows still matching --where")?
                .get(0),
        ),
        None => None,
    };
    let subject = Subject {
        table: &t,
        key: &spec.table.pk_columns,
    };
    let mut columns = Vec::new();
    for a in &spec.sets {
        let differs = crate::plan::Violation::Check {
            expression: format!(
                "src.{} IS NOT DISTINCT FROM {}",
                ident(&a.column),
                spec.value(a)
            ),
        };
        let mismatches = violations::find(client, &subject, &differs, EXAMPLES)
            .await
            .context("counting mismatches")?;
        let mut orphans = Vec::new();
        for (name, fk) in violations::foreign_keys_on(client, &subject, &a.column).await? {
            orphans.push((
                name,
                violations::find(client, &subject, &fk, EXAMPLES).await?,
            ));
        }
        columns.push(ColumnCheck {
            column: a.column.clone(),
            mismatches,
            orphans,
        });
    }
    Ok(Validation { remaining, columns })
}
