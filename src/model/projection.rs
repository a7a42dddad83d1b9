//! The column projection from the original to the shadow, and the SQL text the copy, the
//! applier and verification run from it. Pure code (no I/O), unit-tested.
//!
//! **Projection.** Each shadow column that comes from an original column is computed by one
//! SQL expression over the original row, aliased `src`: the `USING` expression of its
//! `ALTER COLUMN .. TYPE` when there is one, else the column itself (an INSERT then applies
//! the assignment cast, exactly as `ALTER COLUMN .. TYPE` without `USING` does). The copy
//! evaluates it over `FROM ONLY t AS src`; the applier over
//! `FROM (SELECT u.p1::oldtype AS "col", ..) AS src` built from the decoded text values, so a
//! value takes the same path from old type to new on both sides (docs/design.md §2). Columns the
//! ALTER adds get their defaults, or the value of their `--backfill` expression (an SQL
//! expression over `src`, subqueries and function calls allowed, evaluated by the copy and the
//! applier alike); generated columns are computed by the shadow.

use crate::model::catalog::Column;
use crate::sql::ident;

/// How one shadow column is filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMap {
    /// The shadow column (its name, type, ...), as the ALTER left it on the clone.
    pub target: Column,
    /// The original column it comes from; `None` for a column the ALTER adds.
    pub source: Option<Column>,
    /// SQL expression over `src` computing the value (empty for an added column without a
    /// `--backfill`: it takes its default).
    pub expression: String,
}

/// A primary-key column: original name and type, shadow name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    /// Column in the original.
    pub source: Column,
    /// Column in the shadow.
    pub target: Column,
    /// Position in the replicated relation's column list (pgoutput tuple index).
    pub relation_position: usize,
}

/// The column projection and every SQL statement derived from it.
#[derive(Debug, Clone)]
pub struct Projection {
    /// Shadow columns, in shadow order.
    pub columns: Vec<ColumnMap>,
    /// Primary-key columns in key order.
    pub key: Vec<KeyColumn>,
    /// Columns of the original as pgoutput sends them (live, not generated), in `attnum` order.
    pub relation: Vec<Column>,
    /// The shadow has an identity column (inserts need `OVERRIDING SYSTEM VALUE`).
    pub has_identity: bool,
    /// Shadow columns whose type has no extended hash function (e.g. `point`): verification
    /// hashes their text form instead.
    pub text_hashed: Vec<String>,
    /// The original and the shadow are partitioned tables (docs/design.md §1.14): the
    /// statements read them whole, without `ONLY`, and PostgreSQL routes each row written
    /// through the shadow to its partition.
    pub partitioned: bool,
}

impl Projection {
    /// `ONLY ` before a table read by a statement, or nothing when the tables are
    /// partitioned ([`Projection::partitioned`]).
    pub fn only(&self) -> &'static str {
        if self.partitioned { "" } else { "ONLY " }
    }

    /// Shadow columns written by the copy and the applier: those with an expression (mapped
    /// from an original column, or given a `--backfill`), not generated.
    pub fn written(&self) -> Vec<&ColumnMap> {
        self.columns
            .iter()
            .filter(|c| !c.expression.is_empty() && c.target.generated_sql.is_none())
            .collect()
    }

    /// The applier's `src` row with one element per replicated column, for checking that
    /// the projection's expressions evaluate over it: `SELECT u.p1::oldtype AS "c1", .. FROM
    /// unnest($1::text[], ..) AS u(p1, ..)`.
    pub fn decoded_row_sql(&self) -> String {
        let relation: Vec<&Column> = self.relation.iter().collect();
        Self::unnest_source(&relation)
    }

    fn target_list(&self) -> String {
        self.written()
            .iter()
            .map(|c| ident(&c.target.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn expression_list(&self) -> String {
        self.written()
            .iter()
            .map(|c| c.expression.clone())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn overriding(&self) -> &'static str {
        if self.has_identity {
            " OVERRIDING SYSTEM VALUE"
        } else {
            ""
        }
    }

    /// `ON CONFLICT (key) DO UPDATE SET c = EXCLUDED.c, ..` (or `DO NOTHING` when every written
    /// column is a key column).
    fn on_conflict(&self) -> String {
        let keys: Vec<&str> = self.key.iter().map(|k| k.target.name.as_str()).collect();
        let sets: Vec<String> = self
            .written()
            .iter()
            .filter(|c| !keys.contains(&c.target.name.as_str()))
            .map(|c| format!("{0} = EXCLUDED.{0}", ident(&c.target.name)))
            .collect();
        let key_list = keys.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ");
        if sets.is_empty() {
            format!(" ON CONFLICT ({key_list}) DO NOTHING")
        } else {
            format!(
                " ON CONFLICT ({key_list}) DO UPDATE SET {}",
                sets.join(", ")
            )
        }
    }

    /// `(src."k1", src."k2")` over the original.
    pub fn source_key_tuple(&self) -> String {
        let cols: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("src.{}", ident(&k.source.name)))
            .collect();
        format!("({})", cols.join(", "))
    }

    /// `("k1", "k2")` over the shadow.
    pub fn target_key_tuple(&self) -> String {
        let cols: Vec<String> = self.key.iter().map(|k| ident(&k.target.name)).collect();
        format!("({})", cols.join(", "))
    }

    /// `ORDER BY "k1", "k2"` list over the original.
    pub fn source_key_order(&self) -> String {
        self.key
            .iter()
            .map(|k| format!("src.{}", ident(&k.source.name)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `($1::text::oldtype, ..)` with parameters starting at `$first`.
    fn key_params(&self, first: usize) -> String {
        let params: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("${}::text::{}", first + i, k.source.type_sql))
            .collect();
        format!("({})", params.join(", "))
    }

    /// Chunk boundary: the key of the `$n`-th row after the lower bound, as text.
    /// Parameters: `$1` = row count (bigint), then the lower bound's key values as text when
    /// `has_lower` (omitted for the first chunk).
    ///
    /// The key is cast to text outside the subquery that finds the row, so only that row is
    /// cast: in one list the scan's projection casts every row the `OFFSET` skips (a
    /// 250,000-row offset over a `bigint` key took 24-31 ms that way, 12-16 ms this way,
    /// PostgreSQL 15).
    pub fn chunk_boundary_sql(&self, table: &str, has_lower: bool) -> String {
        let only = self.only();
        let (inner, outer): (Vec<String>, Vec<String>) = self
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| {
                (
                    format!("src.{} AS k{i}", ident(&k.source.name)),
                    format!("b.k{i}::text"),
                )
            })
            .unzip();
        let filter = if has_lower {
            format!(
                " WHERE {} > {}",
                self.source_key_tuple(),
                self.key_params(2)
            )
        } else {
            String::new()
        };
        format!(
            "SELECT {} FROM (SELECT {} FROM {only}{table} AS src{filter} ORDER BY {} LIMIT 1 OFFSET $1::bigint - 1) AS b",
            outer.join(", "),
            inner.join(", "),
            self.source_key_order()
        )
    }

    /// `WHERE` predicate for the key range `(lower, upper]` over the original (`src`), with
    /// text parameters starting at `$1`: lower bound first (if any), then upper bound (if any).
    pub fn source_range(&self, has_lower: bool, has_upper: bool) -> String {
        let mut parts = Vec::new();
        let mut next = 1;
        if has_lower {
            parts.push(format!(
                "{} > {}",
                self.source_key_tuple(),
                self.key_params(next)
            ));
            next += self.key.len();
        }
        if has_upper {
            parts.push(format!(
                "{} <= {}",
                self.source_key_tuple(),
                self.key_params(next)
            ));
        }
        if parts.is_empty() {
            "true".to_string()
        } else {
            parts.join(" AND ")
        }
    }

    /// The same range over the shadow (its key columns cast from the original's key types).
    pub fn target_range(&self, has_lower: bool, has_upper: bool) -> String {
        let tuple = self.target_key_tuple();
        let cast_params = |first: usize| {
            let params: Vec<String> = self
                .key
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    format!(
                        "CAST(${}::text::{} AS {})",
                        first + i,
                        k.source.type_sql,
                        k.target.type_sql
                    )
                })
                .collect();
            format!("({})", params.join(", "))
        };
        let mut parts = Vec::new();
        let mut next = 1;
        if has_lower {
            parts.push(format!("{tuple} > {}", cast_params(next)));
            next += self.key.len();
        }
        if has_upper {
            parts.push(format!("{tuple} <= {}", cast_params(next)));
        }
        if parts.is_empty() {
            "true".to_string()
        } else {
            parts.join(" AND ")
        }
    }

    /// Backfill of one chunk: `INSERT INTO shadow (..) SELECT <projection> FROM ONLY t AS src
    /// WHERE <range>`. Parameters as [`Projection::source_range`].
    pub fn copy_sql(&self, table: &str, shadow: &str, has_lower: bool, has_upper: bool) -> String {
        let only = self.only();
        format!(
            "INSERT INTO {shadow} ({}){} SELECT {} FROM {only}{table} AS src WHERE {}",
            self.target_list(),
            self.overriding(),
            self.expression_list(),
            self.source_range(has_lower, has_upper)
        )
    }

    /// Backfill of one chunk by TID range (`--chunk-by tid`): as [`Projection::copy_sql`]
    /// over the heap pages `[lo, hi)`, `WHERE src.ctid >= $1 AND src.ctid < $2` (a TID Range
    /// Scan, PostgreSQL 14+), with `$1` and `$2` as text (`'(lo,0)'`); without `has_upper`
    /// the range runs to the end of the table.
    pub fn tid_copy_sql(&self, table: &str, shadow: &str, has_upper: bool) -> String {
        let upper = if has_upper {
            " AND src.ctid < $2::text::tid"
        } else {
            ""
        };
        format!(
            "INSERT INTO {shadow} ({}){} SELECT {} FROM {}{table} AS src WHERE src.ctid >= $1::text::tid{upper}",
            self.target_list(),
            self.overriding(),
            self.expression_list(),
            self.only()
        )
    }

    /// `CREATE TEMP TABLE {table} ("k1" type, .., PRIMARY KEY (..))`: the original's key
    /// columns in their types, for a set of keys kept on the server rather than in doppel's
    /// memory (the keys a TID-range backfill may have copied twice,
    /// [`crate::phases::tid_chunks`]).
    pub fn key_set_table_sql(&self, table: &str) -> String {
        let columns: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("{} {}", ident(&k.source.name), k.source.type_sql))
            .collect();
        let names: Vec<String> = self.key.iter().map(|k| ident(&k.source.name)).collect();
        format!(
            "CREATE TEMP TABLE {table} ({}, PRIMARY KEY ({}))",
            columns.join(", "),
            names.join(", ")
        )
    }

    /// `INSERT INTO {table} SELECT .. FROM unnest($1::text[], ..) ON CONFLICT DO NOTHING`: adds
    /// the keys of the text arrays `$1`, `$2`, .. (one per key column, in key order, as the
    /// original's key types print; [`key_arrays`]) to a table of
    /// [`Projection::key_set_table_sql`]; its row count is the number of keys new to the set.
    pub fn insert_key_set_sql(&self, table: &str) -> String {
        let keys: Vec<&Column> = self.key.iter().map(|k| &k.source).collect();
        format!(
            "INSERT INTO {table} {} ON CONFLICT DO NOTHING",
            Self::unnest_source(&keys)
        )
    }

    /// `DELETE` of the shadow rows whose key is in `table` (of
    /// [`Projection::key_set_table_sql`]), in one statement: one scan of the shadow.
    pub fn delete_key_set_sql(&self, shadow: &str, table: &str) -> String {
        format!(
            "DELETE FROM {shadow} WHERE {} IN (SELECT {} FROM {table} AS k)",
            self.target_key_tuple(),
            self.target_key_casts("k"),
        )
    }

    /// `CAST(alias."k1" AS newtype), ..`: the original's key columns of `alias` as the
    /// shadow's key types.
    fn target_key_casts(&self, alias: &str) -> String {
        self.key
            .iter()
            .map(|k| {
                format!(
                    "CAST({alias}.{} AS {})",
                    ident(&k.source.name),
                    k.target.type_sql
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `SELECT u.p1::oldtype AS "c1", .. FROM unnest($1::text[], ..) AS u(p1, ..)` over the
    /// given original columns: decoded text values, one array parameter per column.
    fn unnest_source(columns: &[&Column]) -> String {
        let casts: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("u.p{}::{} AS {}", i + 1, c.type_sql, ident(&c.name)))
            .collect();
        let params: Vec<String> = (1..=columns.len())
            .map(|i| format!("${i}::text[]"))
            .collect();
        let aliases: Vec<String> = (1..=columns.len()).map(|i| format!("p{i}")).collect();
        format!(
            "SELECT {} FROM unnest({}) AS u({})",
            casts.join(", "),
            params.join(", "),
            aliases.join(", ")
        )
    }

    /// Applier upsert of full rows: one `text[]` parameter per replicated column (in relation
    /// order), one element per row; rows must have distinct keys.
    pub fn upsert_sql(&self, shadow: &str) -> String {
        let relation: Vec<&Column> = self.relation.iter().collect();
        format!(
            "INSERT INTO {shadow} ({}){} SELECT {} FROM ({}) AS src{}",
            self.target_list(),
            self.overriding(),
            self.expression_list(),
            Self::unnest_source(&relation),
            self.on_conflict()
        )
    }

    /// Applier delete by key: one `text[]` parameter per key column.
    pub fn delete_sql(&self, shadow: &str) -> String {
        let keys: Vec<&Column> = self.key.iter().map(|k| &k.source).collect();
        let projected: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("CAST({} AS {})", self.key_expression(k), k.target.type_sql))
            .collect();
        format!(
            "DELETE FROM {shadow} WHERE {} IN (SELECT {} FROM ({}) AS src)",
            self.target_key_tuple(),
            projected.join(", "),
            Self::unnest_source(&keys)
        )
    }

    /// Applier re-read by key: copies the rows' current versions from the original (used for
    /// UPDATEs that pgoutput sent without their unchanged TOASTed values). One `text[]`
    /// parameter per key column; keys absent from the original are skipped.
    pub fn reread_sql(&self, table: &str, shadow: &str) -> String {
        let only = self.only();
        let keys: Vec<&Column> = self.key.iter().map(|k| &k.source).collect();
        let key_cols: Vec<String> = self.key.iter().map(|k| ident(&k.source.name)).collect();
        format!(
            "INSERT INTO {shadow} ({}){} SELECT {} FROM {only}{table} AS src WHERE {} IN (SELECT {} FROM ({}) AS k){}",
            self.target_list(),
            self.overriding(),
            self.expression_list(),
            self.source_key_tuple(),
            key_cols.join(", "),
            Self::unnest_source(&keys),
            self.on_conflict()
        )
    }

    /// Applier re-read of keys missing from the shadow: [`Projection::reread_sql`] that keeps
    /// a row already in the shadow (`ON CONFLICT .. DO NOTHING`). Runs after a batch for the
    /// keys a [`Projection::partial_update_shadow_sql`] found absent: a later change in the
    /// same batch may have written them since, and its version is newer than any re-read.
    pub fn reread_missing_sql(&self, table: &str, shadow: &str) -> String {
        let only = self.only();
        let keys: Vec<&Column> = self.key.iter().map(|k| &k.source).collect();
        let key_cols: Vec<String> = self.key.iter().map(|k| ident(&k.source.name)).collect();
        let key_list: Vec<String> = self.key.iter().map(|k| ident(&k.target.name)).collect();
        format!(
            "INSERT INTO {shadow} ({}){} SELECT {} FROM {only}{table} AS src WHERE {} IN (SELECT {} FROM ({}) AS k) ON CONFLICT ({}) DO NOTHING",
            self.target_list(),
            self.overriding(),
            self.expression_list(),
            self.source_key_tuple(),
            key_cols.join(", "),
            Self::unnest_source(&keys),
            key_list.join(", ")
        )
    }

    /// Applier partial update that touches only the shadow (so it never waits for a lock on
    /// the original, e.g. while the cutover holds ACCESS EXCLUSIVE on it): sets the sent,
    /// written, non-key columns on the key and reports 0 rows when the key is absent (the
    /// applier then re-reads it with [`Projection::reread_missing_sql`]). Parameters as
    /// [`Projection::partial_update_sql`]: the sent relation columns' text values in relation
    /// order, then the key values as text.
    pub fn partial_update_shadow_sql(&self, shadow: &str, sent: &[bool]) -> String {
        let (casts, sets, key_match, n) = self.partial_parts(shadow, sent);
        // The key parameters are referenced in src so that they keep their types.
        let key_refs: Vec<String> = (0..self.key.len())
            .map(|i| format!("${}::text AS doppel_key_{i}", n + 1 + i))
            .collect();
        format!(
            "WITH src AS (SELECT {}, {}) UPDATE {shadow} SET {} FROM src WHERE {}",
            casts.join(", "),
            key_refs.join(", "),
            sets.join(", "),
            key_match.join(" AND ")
        )
    }

    /// Applier partial update (pgoutput sent the row without its unchanged TOASTed values):
    /// set the sent, written, non-key columns on the key; if the key is absent from the
    /// shadow, re-read the row from the original instead. Parameters: the sent relation
    /// columns' text values in relation order, then the key values as text.
    pub fn partial_update_sql(&self, table: &str, shadow: &str, sent: &[bool]) -> String {
        let only = self.only();
        let (casts, sets, key_match, n) = self.partial_parts(shadow, sent);
        format!(
            "WITH src AS (SELECT {}),
                  upd AS (UPDATE {shadow} SET {} FROM src WHERE {} RETURNING 1)
             INSERT INTO {shadow} ({}){} SELECT {} FROM {only}{table} AS src
             WHERE {} = {} AND NOT EXISTS (SELECT 1 FROM upd){}",
            casts.join(", "),
            sets.join(", "),
            key_match.join(" AND "),
            self.target_list(),
            self.overriding(),
            self.expression_list(),
            self.source_key_tuple(),
            self.key_params(n + 1),
            self.on_conflict()
        )
    }

    /// The parts of a partial update: the sent values cast to their source types (`src`
    /// columns), the `SET` list, the key match against `src`, and the number of sent values.
    fn partial_parts(
        &self,
        shadow: &str,
        sent: &[bool],
    ) -> (Vec<String>, Vec<String>, Vec<String>, usize) {
        let mut casts = Vec::new();
        let mut sent_names = Vec::new();
        let mut n = 0;
        for (i, col) in self.relation.iter().enumerate() {
            if sent.get(i).copied().unwrap_or(false) {
                n += 1;
                casts.push(format!(
                    "${n}::text::{} AS {}",
                    col.type_sql,
                    ident(&col.name)
                ));
                sent_names.push(col.name.as_str());
            }
        }
        let keys: Vec<&str> = self.key.iter().map(|k| k.target.name.as_str()).collect();
        let mut sets: Vec<String> = self
            .written()
            .iter()
            .filter(|c| !keys.contains(&c.target.name.as_str()))
            .filter(|c| {
                c.source
                    .as_ref()
                    .is_some_and(|s| sent_names.contains(&s.name.as_str()))
            })
            .map(|c| format!("{} = {}", ident(&c.target.name), c.expression))
            .collect();
        if sets.is_empty() {
            sets.push(format!("{0} = {0}", ident(keys[0])));
        }
        let key_match: Vec<String> = self
            .key
            .iter()
            .map(|k| {
                format!(
                    "{shadow}.{} = CAST(src.{} AS {})",
                    ident(&k.target.name),
                    ident(&k.source.name),
                    k.target.type_sql
                )
            })
            .collect();
        (casts, sets, key_match, n)
    }

    fn key_expression<'a>(&'a self, key: &'a KeyColumn) -> &'a str {
        self.columns
            .iter()
            .find(|c| c.target.name == key.target.name)
            .map(|c| c.expression.as_str())
            .unwrap_or("NULL")
    }

    /// `ROW(..)` of the projected original row, each value cast to its shadow type (text for
    /// types without a hash function), for `hash_record_extended`.
    fn source_row(&self) -> String {
        let cols: Vec<String> = self
            .written()
            .iter()
            .map(|c| {
                let cast = format!("CAST({} AS {})", c.expression, c.target.type_sql);
                if self.text_hashed.contains(&c.target.name) {
                    format!("{cast}::text")
                } else {
                    cast
                }
            })
            .collect();
        format!("ROW({})", cols.join(", "))
    }

    /// `ROW(..)` of the shadow row's written columns, matching [`Projection::source_row`].
    fn target_row(&self) -> String {
        let cols: Vec<String> = self
            .written()
            .iter()
            .map(|c| {
                if self.text_hashed.contains(&c.target.name) {
                    format!("{}::text", ident(&c.target.name))
                } else {
                    ident(&c.target.name)
                }
            })
            .collect();
        format!("ROW({})", cols.join(", "))
    }

    /// Verification aggregate over the original's key range: `count(*)` and an
    /// order-independent 64-bit set hash of the projected rows, see `hash_aggregate`.
    /// Parameters as [`Projection::source_range`].
    pub fn verify_source_sql(&self, table: &str, has_lower: bool, has_upper: bool) -> String {
        let only = self.only();
        hash_aggregate(
            &self.source_row(),
            &format!(
                "{only}{table} AS src WHERE {}",
                self.source_range(has_lower, has_upper)
            ),
        )
    }

    /// The same aggregate over the shadow's rows in the same key range.
    pub fn verify_target_sql(&self, shadow: &str, has_lower: bool, has_upper: bool) -> String {
        let only = self.only();
        hash_aggregate(
            &self.target_row(),
            &format!(
                "{only}{shadow} WHERE {}",
                self.target_range(has_lower, has_upper)
            ),
        )
    }

    /// Keys whose projected rows differ between original and shadow in a key range:
    /// `(key text[] in the original's key types, side)` rows, at most `$n` of them, where `$n` follows the range parameters
    /// (which are passed twice: once for the original, once for the shadow).
    ///
    /// One statement, so one snapshot, but it materializes and sorts both sides' rows: about
    /// 17 times the cost of the chunk's hash. The verification lists a chunk's differences by
    /// buckets instead ([`Projection::bucket_sql`], [`Projection::bucket_rows_sql`]) and comes
    /// here only when so many buckets differ that the keys are past its limit anyway.
    pub fn diff_keys_sql(
        &self,
        table: &str,
        shadow: &str,
        has_lower: bool,
        has_upper: bool,
    ) -> String {
        let nparams = self.range_params(has_lower, has_upper);
        let a = self.side(Side::Original, table, has_lower, has_upper, 0);
        let b = self.side(Side::Shadow, shadow, has_lower, has_upper, nparams);
        format!(
            "WITH a AS (SELECT {} AS k, hash_record_extended({}, 0) AS h FROM {}),
                  b AS (SELECT {} AS k, hash_record_extended({}, 0) AS h FROM {})
             SELECT k, 'original' FROM (SELECT * FROM a EXCEPT SELECT * FROM b) x
             UNION ALL SELECT k, 'shadow' FROM (SELECT * FROM b EXCEPT SELECT * FROM a) y
             LIMIT ${}",
            a.key,
            a.row,
            a.from,
            b.key,
            b.row,
            b.from,
            2 * nparams + 1
        )
    }

    /// The rows of one side's key range grouped by the low bits of their hash: `(bucket int,
    /// rows bigint, xor bigint)`, one row per non-empty bucket of `buckets` (a power of two).
    /// Parameters as [`Projection::source_range`]. A row that differs between the sides moves
    /// the aggregate of its bucket on each side (of two buckets when its hash changed), so the
    /// buckets whose aggregates differ hold every differing row, and few others.
    pub fn bucket_sql(
        &self,
        side: Side,
        relation: &str,
        has_lower: bool,
        has_upper: bool,
        buckets: u32,
    ) -> String {
        let s = self.side(side, relation, has_lower, has_upper, 0);
        let mask = buckets.max(1) - 1;
        format!(
            "SELECT (h & {mask})::int, count(*)::bigint, bit_xor(h)
               FROM (SELECT hash_record_extended({}, 0) AS h FROM {}) x GROUP BY 1",
            s.row, s.from
        )
    }

    /// The rows of one side's key range that fall in the buckets of [`Projection::bucket_sql`]
    /// given as an `int[]` parameter after the range's: `(key text[] in the original's key
    /// types, hash bigint)`.
    pub fn bucket_rows_sql(
        &self,
        side: Side,
        relation: &str,
        has_lower: bool,
        has_upper: bool,
        buckets: u32,
    ) -> String {
        let s = self.side(side, relation, has_lower, has_upper, 0);
        let mask = buckets.max(1) - 1;
        let n = self.range_params(has_lower, has_upper) + 1;
        format!(
            "SELECT k, h FROM (SELECT {} AS k, hash_record_extended({}, 0) AS h FROM {}) x
              WHERE (h & {mask})::int = ANY(${n}::int[])",
            s.key, s.row, s.from
        )
    }

    /// `ARRAY[src."k1"::text, ..]`: the original's key as `text[]`.
    fn source_key_array(&self) -> String {
        let keys: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("src.{}::text", ident(&k.source.name)))
            .collect();
        format!("ARRAY[{}]", keys.join(", "))
    }

    /// `ARRAY["k1"::oldtype::text, ..]`: the shadow's key as `text[]` in the original's key
    /// types, comparable with [`Projection::source_key_array`].
    fn target_key_array(&self) -> String {
        let keys: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("{}::{}::text", ident(&k.target.name), k.source.type_sql))
            .collect();
        format!("ARRAY[{}]", keys.join(", "))
    }

    /// Parameters of a key range (`$1..`): one per key column per bound.
    fn range_params(&self, has_lower: bool, has_upper: bool) -> usize {
        self.key.len() * (usize::from(has_lower) + usize::from(has_upper))
    }

    /// The key, row and range of one side of a comparison, as the statements above read it;
    /// the range's parameters are numbered from `$1 + shift`.
    fn side(
        &self,
        side: Side,
        relation: &str,
        has_lower: bool,
        has_upper: bool,
        shift: usize,
    ) -> SideSql {
        let only = self.only();
        match side {
            Side::Original => SideSql {
                key: self.source_key_array(),
                row: self.source_row(),
                from: format!(
                    "{only}{relation} AS src WHERE {}",
                    shift_params(&self.source_range(has_lower, has_upper), shift)
                ),
            },
            Side::Shadow => SideSql {
                key: self.target_key_array(),
                row: self.target_row(),
                from: format!(
                    "{only}{relation} WHERE {}",
                    shift_params(&self.target_range(has_lower, has_upper), shift)
                ),
            },
        }
    }
}

/// Which table of a comparison a statement reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The original (or, after a cutover, the kept old table), projected onto the shadow's
    /// columns.
    Original,
    /// The shadow (or, after a cutover, the new table).
    Shadow,
}

/// The SQL pieces of one side: its key as `text[]` in the original's key types, its
/// `ROW(..)` to hash, and `<relation> WHERE <range>`.
struct SideSql {
    key: String,
    row: String,
    from: String,
}

/// Renumbers `$n` placeholders in `sql` by `by`.
fn shift_params(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c == '$' {
            let mut digits = String::new();
            while let Some(&(_, d)) = chars.peek() {
                if d.is_ascii_digit() {
                    digits.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            match digits.parse::<usize>() {
                Ok(n) => out.push_str(&format!("${}", n + by)),
                Err(_) => out.push('$'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `SELECT count, hash FROM <from>`: the row count and an order-independent 64-bit set hash
/// — the XOR of each row's `hash_record_extended(row, 0)` (PostgreSQL 14+) — as text. Every
/// row contains its primary key, so no row can appear twice and XOR loses nothing a sum would
/// catch; a chunk that differs compares equal with probability about 2^-64. One hash per row
/// instead of two (seeds 0 and 1, a 128-bit hash) makes a chunk's comparison about 40%
/// cheaper (250,000 rows of the benchmark's `orders` table: 50 ms instead of 85 ms).
fn hash_aggregate(row: &str, from: &str) -> String {
    format!(
        "SELECT count(*)::bigint, coalesce(bit_xor(hash_record_extended({row}, 0)), 0)::text
         FROM {from}"
    )
}

impl Projection {
    /// Keys (as `text[]` in the original's key types) among a given set whose projected rows
    /// differ between original and shadow: one `text[]` parameter per key column (the
    /// original's key values as text). Used to re-check keys that were changing during
    /// verification, and under the cutover lock, when nothing can change them.
    pub fn recheck_keys_sql(&self, table: &str, shadow: &str) -> String {
        let only = self.only();
        let keys: Vec<&Column> = self.key.iter().map(|k| &k.source).collect();
        let key_cols: Vec<String> = self.key.iter().map(|k| ident(&k.source.name)).collect();
        format!(
            "WITH k AS ({}),
                  a AS (SELECT {} AS k, hash_record_extended({}, 0) AS h FROM {only}{table} AS src WHERE {} IN (SELECT {} FROM k)),
                  b AS (SELECT {} AS k, hash_record_extended({}, 0) AS h FROM {only}{shadow} WHERE {} IN (SELECT {} FROM k AS k))
             SELECT DISTINCT k FROM ((SELECT * FROM a EXCEPT ALL SELECT * FROM b) UNION ALL (SELECT * FROM b EXCEPT ALL SELECT * FROM a)) d",
            Self::unnest_source(&keys),
            self.source_key_array(),
            self.source_row(),
            self.source_key_tuple(),
            key_cols.join(", "),
            self.target_key_array(),
            self.target_row(),
            self.target_key_tuple(),
            self.target_key_casts("k"),
        )
    }
}

/// One `text[]` per key column (`width` of them), one element per key: the parameters of the
/// key-set queries ([`Projection::recheck_keys_sql`], [`Projection::insert_key_set_sql`]).
pub fn key_arrays<K: AsRef<[Option<String>]>>(
    width: usize,
    keys: &[K],
) -> Vec<Vec<Option<String>>> {
    (0..width)
        .map(|i| {
            keys.iter()
                .map(|k| k.as_ref().get(i).cloned().flatten())
                .collect()
        })
        .collect()
}
