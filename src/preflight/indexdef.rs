//! Index definitions as `pg_get_indexdef` prints them, pointed at another table or renamed:
//! the clone copies the original's indexes with them, and the shadow phase rebuilds the
//! clone's (`crate::phases::shadow`).

use crate::sql::ident;

/// Rewrites an index definition from `pg_get_indexdef` to target another table:
/// `CREATE [UNIQUE] INDEX name ON <from> USING ..` → `.. ON <to> USING ..`. `None` when the
/// definition is not `.. ON <from> USING ..`.
pub fn retarget_index(definition: &str, from: &str, to: &str) -> Option<String> {
    let needle = format!(" ON {from} USING ");
    let at = definition.find(&needle)?;
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
    let needle = format!(" ON {on} USING ");
    let at = definition.find(&needle)?;
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
}
