//! The rows that violate a constraint, named for the DBA (docs/design.md §1.10): a `VALIDATE
//! CONSTRAINT` or a unique index build that fails says which keys are at fault, and so do a
//! foreign key validated after a cutover and `doppel backfill`'s report. Each finder counts
//! the offending rows and lists a few, each by the table's primary key (or `ctid` without
//! one) with the values at fault. They read the whole table: they run only when something
//! failed, or at the end of a backfill.

use anyhow::{Context, Result};
use tokio_postgres::GenericClient;

use crate::plan::Violation;
use crate::sql::ident;

/// Offending rows: how many, and a few of them described.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offenders {
    /// Rows (or, for a unique key, duplicated values) at fault.
    pub count: i64,
    /// Up to the requested number, e.g. `(id)=(7): (state_id)=(9)` or `(email)=(a@b) appears 2
    /// times`.
    pub examples: Vec<String>,
}

impl Offenders {
    /// `3 row(s), e.g. (id)=(7), (id)=(9)`; `none` when there are none.
    pub fn describe(&self, what: &str) -> String {
        if self.count == 0 {
            return "none".into();
        }
        format!("{} {what}, e.g. {}", self.count, self.examples.join("; "))
    }
}

/// A table the finders read: its name as SQL writes it and its primary-key columns (empty:
/// rows are named by `ctid`).
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    /// `"schema"."table"`.
    pub table: &'a str,
    /// Primary-key columns, in key order.
    pub key: &'a [String],
}

impl Subject<'_> {
    /// `format('(k1, k2)=(%s, %s)', src.k1, src.k2)`: how a row is named.
    fn row_name(&self) -> String {
        if self.key.is_empty() {
            return "'ctid ' || src.ctid::text".into();
        }
        tuple_text(self.key, "src")
    }
}

/// `'(a, b)=(' || concat_ws(', ', alias.a::text, alias.b::text) || ')'` (NULL shown as
/// `NULL`).
fn tuple_text(columns: &[String], alias: &str) -> String {
    let names = columns
        .iter()
        .map(|c| c.replace('\'', "''"))
        .collect::<Vec<_>>()
        .join(", ");
    let values: Vec<String> = columns
        .iter()
        .map(|c| format!("coalesce({alias}.{}::text, 'NULL')", ident(c)))
        .collect();
    format!(
        "'({names})=(' || concat_ws(', ', {}) || ')'",
        values.join(", ")
    )
}

/// Finds the rows of `subject` that violate `violation`, listing at most `limit`.
///
/// Errors: a query fails (e.g. the expression no longer evaluates).
pub async fn find(
    client: &impl GenericClient,
    subject: &Subject<'_>,
    violation: &Violation,
    limit: i64,
) -> Result<Offenders> {
    let t = subject.table;
    let (from_where, described) = match violation {
        Violation::Check { expression } => (
            format!("FROM {t} AS src WHERE NOT ({expression})"),
            subject.row_name(),
        ),
        Violation::ForeignKey {
            columns,
            parent,
            parent_columns,
        } => {
            let set: Vec<String> = columns
                .iter()
                .map(|c| format!("src.{} IS NOT NULL", ident(c)))
                .collect();
            let matches: Vec<String> = columns
                .iter()
                .zip(parent_columns)
                .map(|(c, p)| format!("p.{} = src.{}", ident(p), ident(c)))
                .collect();
            (
                format!(
                    "FROM {t} AS src WHERE {} AND NOT EXISTS (SELECT 1 FROM {parent} AS p WHERE {})",
                    set.join(" AND "),
                    matches.join(" AND ")
                ),
                format!(
                    "{} || ': ' || {}",
                    subject.row_name(),
                    tuple_text(columns, "src")
                ),
            )
        }
        Violation::Unique {
            columns,
            nulls_not_distinct,
        } => return duplicates(client, t, columns, *nulls_not_distinct, limit).await,
    };
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) {from_where}),
                        ARRAY(SELECT {described} {from_where} LIMIT {limit})"
            ),
            &[],
        )
        .await
        .context("listing the rows that violate the constraint")?;
    Ok(Offenders {
        count: row.get(0),
        examples: row.get(1),
    })
}

/// Values of `columns` that occur more than once in `t`.
async fn duplicates(
    client: &impl GenericClient,
    t: &str,
    columns: &[String],
    nulls_not_distinct: bool,
    limit: i64,
) -> Result<Offenders> {
    let not_null = if nulls_not_distinct || columns.is_empty() {
        "true".to_string()
    } else {
        columns
            .iter()
            .map(|c| format!("src.{} IS NOT NULL", ident(c)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let cols = columns
        .iter()
        .map(|c| format!("src.{}", ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "WITH d AS (SELECT {described} AS value, count(*) AS n FROM {t} AS src
                    WHERE {not_null} GROUP BY {cols} HAVING count(*) > 1)
         SELECT (SELECT count(*) FROM d),
                ARRAY(SELECT value || ' appears ' || n || ' times' FROM d ORDER BY n DESC, value LIMIT {limit})",
        described = tuple_text(columns, "src"),
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .context("listing duplicate keys")?;
    Ok(Offenders {
        count: row.get(0),
        examples: row.get(1),
    })
}

/// The foreign key `constraint` of `subject` as a [`Violation`] (read from `pg_constraint`).
/// `None` when the table has no such foreign key.
///
/// Errors: a query fails.
pub async fn foreign_key(
    client: &impl GenericClient,
    subject: &Subject<'_>,
    constraint: &str,
) -> Result<Option<Violation>> {
    let row = client
        .query_opt(
            "SELECT ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, o)
                          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o),
                    c.confrelid::regclass::text,
                    ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, o)
                          JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o)
             FROM pg_constraint c
             WHERE c.conrelid = $1::text::regclass AND c.conname = $2 AND c.contype = 'f'",
            &[&subject.table, &constraint],
        )
        .await
        .context("reading a foreign key")?;
    Ok(row.map(|r| Violation::ForeignKey {
        columns: r.get(0),
        parent: r.get(1),
        parent_columns: r.get(2),
    }))
}

/// The foreign keys of `subject` on exactly `column`: `(constraint, violation)`.
///
/// Errors: a query fails.
pub async fn foreign_keys_on(
    client: &impl GenericClient,
    subject: &Subject<'_>,
    column: &str,
) -> Result<Vec<(String, Violation)>> {
    let rows = client
        .query(
            "SELECT c.conname::text FROM pg_constraint c
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
             WHERE c.conrelid = $1::text::regclass AND c.contype = 'f'
               AND cardinality(c.conkey) = 1 AND a.attname = $2
             ORDER BY 1",
            &[&subject.table, &column],
        )
        .await
        .context("reading foreign keys")?;
    let mut out = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        if let Some(v) = foreign_key(client, subject, &name).await? {
            out.push((name, v));
        }
    }
    Ok(out)
}

/// The orphans of the foreign key `constraint` of the table `table` (as SQL names it): the
/// rows whose key columns match no row of the referenced table, each named by the table's
/// primary key. `None` when the table has no such foreign key.
///
/// Errors: a query fails.
pub async fn orphans(
    client: &impl GenericClient,
    table: &str,
    constraint: &str,
    limit: i64,
) -> Result<Option<Offenders>> {
    let key: Vec<String> = client
        .query_one(
            "SELECT ARRAY(SELECT a.attname::text FROM pg_index i
                          CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o)
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
                          WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY k.o)",
            &[&table],
        )
        .await
        .context("reading the primary key")?
        .get(0);
    let subject = Subject { table, key: &key };
    match foreign_key(client, &subject, constraint).await? {
        Some(violation) => Ok(Some(find(client, &subject, &violation, limit).await?)),
        None => Ok(None),
    }
}
