//! Index definitions as `pg_get_indexdef` prints them, pointed at another table or renamed:
//! the clone copies the original's indexes with them, and the shadow phase rebuilds the
//! clone's (`crate::phases::shadow`).

use crate::sql::ident;

/// Rewrites an index definition from `pg_get_indexdef` to target another table:
/// `CREATE [UNIQUE] INDEX name ON <from> USING ..` → `.. ON <to> USING ..`. `None` when the
/// definition is not `.. ON <from> USING ..`.
pub fn retarget_index(definition: &str, from: &str, to: &str) -> Option<String> {
    let (at, needle) = table_part(definition, from)?;
    Some(format!(
        "{} ON {to} USING {}",
        &definition[..at],
        &definition[at + needle.len()..]
    ))
}

/// Replaces the index name in a `pg_get_indexdef` definition whose table part is `on`, and
/// the table with `new_table`. `None` when the definition is not `.. ON <on> USING ..`.
pub fn rename_index_definition(
    definition: &str,
    on: &str,
    new_name: &str,
    new_table: &str,
) -> Option<String> {
    let (at, needle) = table_part(definition, on)?;
    let head = if definition.starts_with("CREATE UNIQUE INDEX ") {
        "CREATE UNIQUE INDEX"
    } else {
        "CREATE INDEX"
    };
    Some(format!(
        "{head} {} ON {new_table} USING {}",
        ident(new_name),
        &definition[at + needle.len()..]
    ))
}

/// Where ` ON <table> USING ` (or ` ON ONLY <table> USING `, as `pg_get_indexdef` prints a
/// partitioned table's index) starts in `definition`, and that text. The rewritten
/// definition drops `ONLY`: built on a partitioned table, the index is built on every
/// partition too (docs/design.md §1.14).
fn table_part(definition: &str, table: &str) -> Option<(usize, String)> {
    [
        format!(" ON {table} USING "),
        format!(" ON ONLY {table} USING "),
    ]
    .into_iter()
    .find_map(|needle| definition.find(&needle).map(|at| (at, needle)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retargets_index_definitions() {
        let def = "CREATE INDEX orders_created_idx ON public.orders USING btree (created_at) WHERE (amount > (0)::numeric)";
        assert_eq!(
            retarget_index(def, "public.orders", "pg_temp.orders").unwrap(),
            "CREATE INDEX orders_created_idx ON pg_temp.orders USING btree (created_at) WHERE (amount > (0)::numeric)"
        );
        assert!(retarget_index(def, "public.other", "x").is_none());
        assert_eq!(
            rename_index_definition(
                "CREATE UNIQUE INDEX \"Odd Name\" ON pg_temp.orders USING btree (lower(email))",
                "pg_temp.orders",
                "_doppel_1_new_i0",
                "\"public\".\"s\""
            )
            .unwrap(),
            "CREATE UNIQUE INDEX \"_doppel_1_new_i0\" ON \"public\".\"s\" USING btree (lower(email))"
        );
    }

    #[test]
    fn a_partitioned_tables_index_is_built_on_the_whole_tree() {
        let def = "CREATE INDEX p_amount_idx ON ONLY public.p USING btree (amount)";
        assert_eq!(
            retarget_index(def, "public.p", "pg_temp.p").unwrap(),
            "CREATE INDEX p_amount_idx ON pg_temp.p USING btree (amount)"
        );
        assert_eq!(
            rename_index_definition(def, "public.p", "t0", "public.s").unwrap(),
            "CREATE INDEX \"t0\" ON public.s USING btree (amount)"
        );
    }
}
