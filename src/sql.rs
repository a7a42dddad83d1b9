//! SQL text helpers: identifier and literal quoting (postgres-protocol's escaping, the same
//! rules as libpq's `PQescapeIdentifier`/`PQescapeLiteral`) and qualified names.

use postgres_protocol::escape::{escape_identifier, escape_literal};

/// The settings of doppel's working sessions (control, copy, applier, verification, `doppel
/// backfill`):
///
/// - `jit = off`: their statements are many and short, and JIT compilation, which the
///   planner turns on above `jit_above_cost`, costs more than it saves there. Measured on a
///   partitioned table of 10M rows in 24 partitions, whose chunk statements the planner
///   estimates high (a row comparison over every partition): 173 ms of JIT compilation for a
///   chunk that copies 100 rows, which made the copy 30 times slower.
/// - `max_parallel_workers_per_gather = 0`: no parallel query worker taken from the pool the
///   application's queries share ([`parallel_workers_sql`]); the verification sessions
///   raise it to `--verify-parallel-workers`.
pub const WORKING_SESSION: &str = "SET jit = off; SET max_parallel_workers_per_gather = 0";

/// `SET max_parallel_workers_per_gather = <workers>`: the parallel query workers one of
/// doppel's reading sessions may use (`--verify-parallel-workers`). Parallel workers come from
/// the server's `max_parallel_workers` pool, which the application's queries share; with the
/// server's default of 2 per query, the two verification sessions ran six processes, and on
/// 2 cores a writer's p50 latency went from 3 ms to 7 ms while they ran (from 30 ms to 340-810
/// ms on a busy machine; docs/design.md §1.6, BENCHMARKS.md).
pub fn parallel_workers_sql(workers: u32) -> String {
    format!("SET max_parallel_workers_per_gather = {workers}")
}

/// Quotes an identifier for SQL text: `Order-Lines` → `"Order-Lines"`, `a"b` → `"a""b"`.
/// Always quotes, so a hostile or mixed-case name can never change the statement.
pub fn ident(name: &str) -> String {
    escape_identifier(name)
}

/// Quotes a string literal for SQL text (`'it''s'`, with the `E''` form when it has backslashes).
pub fn literal(value: &str) -> String {
    escape_literal(value)
}

/// `"schema"."name"`, both parts quoted.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// Comma-separated quoted identifiers: `"a", "b"`.
pub fn ident_list<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| ident(n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Truncates `name` to at most `max` bytes on a UTF-8 character boundary (PostgreSQL's
/// identifiers are limited to 63 bytes, NAMEDATALEN - 1).
pub fn truncate_bytes(name: &str, max: usize) -> &str {
    if name.len() <= max {
        return name;
    }
    let mut end = max;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// `COMMENT ON ..` with a literal (or `NULL`).
pub fn comment_sql(target: &str, text: Option<&str>) -> String {
    format!(
        "COMMENT ON {target} IS {}",
        text.map(literal).unwrap_or_else(|| "NULL".into())
    )
}

/// `DO <tag> <body> <tag>`: an anonymous PL/pgSQL block, dollar-quoted with a tag
/// (`$doppel$`, `$doppel1$`, ...) that does not occur in `body`, so identifiers and literals
/// inside it cannot end the block.
pub fn do_block(body: &str) -> String {
    let mut tag = "$doppel$".to_string();
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$doppel{n}$");
    }
    format!("DO {tag}\n{body}\n{tag}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_hostile_identifiers() {
        assert_eq!(ident("Order-Lines"), "\"Order-Lines\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified("Sales Data", "x"), "\"Sales Data\".\"x\"");
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn do_blocks_pick_a_tag_the_body_does_not_hold() {
        assert_eq!(
            do_block("BEGIN NULL; END"),
            "DO $doppel$\nBEGIN NULL; END\n$doppel$"
        );
        let hostile = "BEGIN PERFORM 1 FROM \"x$doppel$y\"; END";
        assert!(do_block(hostile).starts_with("DO $doppel1$\n"));
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let s = "ééééé"; // 2 bytes each
        assert_eq!(truncate_bytes(s, 5), "éé");
        assert_eq!(truncate_bytes("abc", 63), "abc");
    }
}
