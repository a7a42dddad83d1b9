//! Foreign keys defined on a partitioned table that reference the table (issue 15).
//!
//! PostgreSQL propagates a foreign key defined on a partitioned table to every partition as
//! a clone (`pg_constraint.conparentid` points at the parent's key). Moving such a key to
//! the new table depends on the server major:
//!
//! - **PostgreSQL 18+** accepts `NOT VALID` on a partitioned table's foreign key, and
//!   `VALIDATE CONSTRAINT` on the parent validates every partition under SHARE UPDATE
//!   EXCLUSIVE: the key moves as any other (`foreign_key.rs`).
//! - **PostgreSQL 12 to 17** refuse it ("cannot add NOT VALID foreign key on partitioned
//!   table"), and re-adding the key valid under the cutover lock would scan every partition.
//!   The sound way, measured on 14 to 17: in the cutover transaction drop the parent's key
//!   (which drops its clones) and add the same key `NOT VALID` on each leaf partition, under
//!   the clone's name (new rows are checked at once, nothing is scanned); after the commit
//!   validate each leaf (SHARE UPDATE EXCLUSIVE on that leaf only), then add the key on the
//!   parent again. Adding a key to a partitioned table attaches an equal, validated key
//!   found on a partition instead of creating one (`tryAttachPartitionForeignKey`), so this
//!   last step scans nothing; it takes SHARE ROW EXCLUSIVE on the tree and, when dropping
//!   the leaves' own action triggers, ACCESS EXCLUSIVE on the referenced (new) table for an
//!   instant, hence a short `lock_timeout` retried with backoff. Until it succeeds, every
//!   leaf enforces the key on its own: the rows are as checked as before; only a partition
//!   attached in between would lack the key, so the step refuses to run then. One thing a
//!   partition's own key does differently: its cascades are `UPDATE ONLY` of that partition
//!   (`ri_triggers.c`), which cannot move a row to another partition, so a key whose
//!   `ON UPDATE`/`ON DELETE` action writes a partition key column is refused there.
//!
//! The pending re-add is written into the catalog with the leaves' keys: inside the cutover
//! transaction each leaf's key gets a comment starting with [`PENDING_REATTACH_MARK`]
//! followed by the parent, key name and definition (JSON), which the re-add replaces by the
//! clone's own comment. A run killed between the commit and the re-add finishes it on
//! `--resume` from those comments ([`pending_reattach_sql`]).

use anyhow::{Context, Result};
use tokio_postgres::Client;

use super::ForeignKey;
use crate::sql::{do_block, ident, literal};

/// The words that start the comment on a leaf partition's key while its partitioned
/// table's key waits to be added back; the JSON of a [`Pending`] follows.
pub const PENDING_REATTACH_MARK: &str = "doppel: pending re-add on the partitioned table: ";

/// What the comment after [`PENDING_REATTACH_MARK`] records (as a JSON object with these
/// three string fields).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    /// `"schema"."parent"`.
    table: String,
    /// The key's name.
    name: String,
    /// Its `pg_get_constraintdef` text.
    definition: String,
}

/// `lock_timeout` of each try to re-add a partitioned table's foreign key on the parent
/// after its partitions' keys were validated (ms).
pub const REATTACH_LOCK_TIMEOUT_MS: u32 = 200;

/// Tries to re-add it before giving up (backoff between tries: 50 ms × 2^n, at most 2 s,
/// ±50% jitter; about 10 s in all).
pub const REATTACH_ATTEMPTS: u32 = 10;

/// The server version (`server_version_num`) from which a partitioned table's foreign key
/// can be added `NOT VALID` and validated on the parent.
pub const NOT_VALID_ON_PARTITIONED: i32 = 180_000;

impl Pending {
    /// `{"table":..,"name":..,"definition":..}`.
    fn to_json(&self) -> String {
        serde_json::json!({
            "table": self.table,
            "name": self.name,
            "definition": self.definition,
        })
        .to_string()
    }

    /// The inverse of [`Pending::to_json`].
    ///
    /// Errors: not JSON, or a field missing or not a string.
    fn from_json(text: &str) -> Result<Pending> {
        let v: serde_json::Value = serde_json::from_str(text)?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|f| f.as_str())
                .map(str::to_string)
                .with_context(|| format!("no string field {k}"))
        };
        Ok(Pending {
            table: field("table")?,
            name: field("name")?,
            definition: field("definition")?,
        })
    }
}

/// A clone of a partitioned table's foreign key on one leaf partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafKey {
    /// OID of the leaf partition.
    pub leaf_oid: u32,
    /// `"schema"."leaf"`.
    pub leaf: String,
    /// The clone's constraint name (usually the parent key's), kept when it is re-added.
    pub name: String,
    /// The clone's comment (`COMMENT ON CONSTRAINT`), put back by the re-add.
    pub comment: Option<String>,
}

impl LeafKey {
    /// `COMMENT ON CONSTRAINT name ON leaf IS ..` (`NULL` for none).
    fn comment_sql(&self, comment: Option<&str>) -> String {
        format!(
            "COMMENT ON CONSTRAINT {} ON {} IS {}",
            ident(&self.name),
            self.leaf,
            comment.map_or_else(|| "NULL".to_string(), literal)
        )
    }

    /// `ALTER TABLE leaf VALIDATE CONSTRAINT name`.
    fn validate_sql(&self) -> String {
        format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {}",
            self.leaf,
            ident(&self.name)
        )
    }
}

/// Clones, on leaf partitions, of the foreign keys of partitioned tables that reference the
/// table, with the child and name of the key defined on the root of the tree, by root then
/// leaf OID. Read on servers before [`NOT_VALID_ON_PARTITIONED`] only.
pub(super) const LEAF_KEYS_SQL: &str = "WITH RECURSIVE k(root, oid) AS (
      SELECT oid, oid FROM pg_constraint
      WHERE contype = 'f' AND confrelid = $1 AND conrelid <> $1 AND conparentid = 0
      UNION ALL
      SELECT k.root, c.oid FROM pg_constraint c JOIN k ON c.conparentid = k.oid
    )
    SELECT r.conrelid, r.conname::text, c.conrelid, n.nspname::text, l.relname::text,
           c.conname::text, obj_description(c.oid, 'pg_constraint')
    FROM k JOIN pg_constraint c ON c.oid = k.oid JOIN pg_constraint r ON r.oid = k.root
    JOIN pg_class l ON l.oid = c.conrelid JOIN pg_namespace n ON n.oid = l.relnamespace
    WHERE k.oid <> k.root AND l.relkind = 'r'
    ORDER BY r.conrelid, r.conname, c.conrelid";

impl ForeignKey {
    /// True when this key moves through its leaf partitions (see the module docs).
    pub fn through_leaves(&self) -> bool {
        self.leaf_keys.is_some()
    }

    /// The move inside the cutover transaction when [`ForeignKey::through_leaves`]: drop
    /// the parent's key (and its clones), add it `NOT VALID` on every leaf, each marked
    /// with the pending re-add ([`PENDING_REATTACH_MARK`]). One entry holding every
    /// statement, separated by `;`, so the cutover sends them in one round trip (with 100
    /// partitions, 201 round trips cost more than the server's work on a loaded machine).
    pub(super) fn leaves_forward(&self, leaves: &[LeafKey]) -> Vec<String> {
        let drop = format!(
            "ALTER TABLE {} DROP CONSTRAINT {}",
            self.child,
            ident(&self.name)
        );
        let add = add_through_leaves(&self.child, &self.name, &self.definition, leaves);
        vec![format!("{drop};\n{add}")]
    }

    /// After the commit, when [`ForeignKey::through_leaves`]: each leaf's key validated
    /// (labelled `name on "s"."leaf"`), then the key added on the parent again
    /// ([`ForeignKey::reattach_sql`], labelled with the key's name).
    pub(super) fn leaves_after_commit(&self, leaves: &[LeafKey]) -> Vec<(String, String)> {
        validate_and_reattach(&self.child, &self.name, &self.definition, leaves)
    }
}

/// The key `name` (`definition`, without `NOT VALID`) of the partitioned table `table`
/// added `NOT VALID` on each of its `leaves` instead of on `table` (servers before
/// [`NOT_VALID_ON_PARTITIONED`], module docs), each marked with the pending re-add
/// ([`PENDING_REATTACH_MARK`]): one entry, the statements separated by `;`. Used for the
/// keys of other partitioned tables that reference the migrated table and for the migrated
/// partitioned table's own keys (docs/design.md §1.14).
pub fn add_through_leaves(table: &str, name: &str, definition: &str, leaves: &[LeafKey]) -> String {
    let pending = Pending {
        table: table.to_string(),
        name: name.to_string(),
        definition: definition.to_string(),
    };
    let mark = format!("{PENDING_REATTACH_MARK}{}", pending.to_json());
    let mut out = Vec::new();
    for l in leaves {
        out.push(format!(
            "ALTER TABLE {} ADD CONSTRAINT {} {definition} NOT VALID",
            l.leaf,
            ident(&l.name),
        ));
        out.push(l.comment_sql(Some(&mark)));
    }
    out.join(";\n")
}

/// After the commit, for a key added by [`add_through_leaves`]: each leaf's key validated
/// (labelled `name on "s"."leaf"`), then the key added on `table` again (labelled with the
/// key's name), which attaches the leaves' keys.
pub fn validate_and_reattach(
    table: &str,
    name: &str,
    definition: &str,
    leaves: &[LeafKey],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = leaves
        .iter()
        .map(|l| (format!("{} on {}", l.name, l.leaf), l.validate_sql()))
        .collect();
    out.push((
        name.to_string(),
        reattach_sql(table, name, definition, leaves),
    ));
    out
}

/// One `DO` block: refuse unless every leaf of the tree `child` has its key and it is valid
/// (a partition attached since the cutover, or a validation that failed, would make the
/// parent's key scan under SHARE ROW EXCLUSIVE), then add the key `name` with `definition` on
/// the parent, each try under a `lock_timeout` of [`REATTACH_LOCK_TIMEOUT_MS`], up to
/// [`REATTACH_ATTEMPTS`] tries, and give the leaves' keys their own comments back. On
/// failure the leaves keep enforcing the key, and the error says what to run.
fn reattach_sql(child: &str, name: &str, definition: &str, leaves: &[LeafKey]) -> String {
    let add = format!(
        "ALTER TABLE {child} ADD CONSTRAINT {} {definition}",
        ident(name),
    );
    let comments: String = leaves
        .iter()
        .map(|l| {
            format!(
                "  EXECUTE {};\n",
                literal(&l.comment_sql(l.comment.as_deref()))
            )
        })
        .collect();
    let pairs: Vec<String> = leaves
        .iter()
        .map(|l| format!("({}::regclass, {})", literal(&l.leaf), literal(&l.name)))
        .collect();
    let expected = if pairs.is_empty() {
        "SELECT NULL::regclass, NULL::text WHERE false".to_string()
    } else {
        format!("VALUES {}", pairs.join(", "))
    };
    let body = format!(
        "DECLARE\n  attempt int := 0;\n  missing text;\nBEGIN\n  \
             SELECT string_agg(p.relid::regclass::text, ', ') INTO missing\n  \
             FROM pg_partition_tree({child}::regclass) p\n  \
             WHERE p.isleaf AND NOT EXISTS (\n    \
               SELECT 1 FROM ({expected}) AS e(rel, con)\n    \
               JOIN pg_constraint c ON c.conrelid = e.rel AND c.conname = e.con AND c.convalidated\n    \
               WHERE e.rel = p.relid);\n  \
             IF missing IS NOT NULL THEN\n    \
               RAISE EXCEPTION 'these partitions have no valid copy of the key: %', missing;\n  \
             END IF;\n  \
             LOOP\n    BEGIN\n      \
               PERFORM set_config('lock_timeout', '{REATTACH_LOCK_TIMEOUT_MS}ms', true);\n      \
               EXECUTE {add_lit};\n      EXIT;\n    \
             EXCEPTION WHEN lock_not_available THEN\n      \
               attempt := attempt + 1;\n      \
               IF attempt >= {REATTACH_ATTEMPTS} THEN RAISE; END IF;\n      \
               PERFORM pg_sleep(least(2.0, 0.05 * 2 ^ attempt) * (0.5 + random()));\n    \
             END;\n  END LOOP;\n{comments}\
             EXCEPTION WHEN OTHERS THEN\n  \
               RAISE EXCEPTION USING MESSAGE = {message} || SQLERRM, ERRCODE = SQLSTATE, HINT = {hint};\n\
             END",
        child = literal(child),
        add_lit = literal(&add),
        message = literal(&format!(
            "foreign key {name} was not added back on the partitioned table {child}; each partition enforces it with a key of its own: "
        )),
        hint = literal(&format!(
            "Validate the partitions' keys that are NOT VALID, then run: {add}"
        )),
    );
    do_block(&body)
}

/// The re-adds that a run killed between its cutover's commit and its after-commit steps
/// left pending for the table `oid` (found from the [`PENDING_REATTACH_MARK`] comments on
/// leaf partitions' keys that reference it), as (key name, SQL) pairs to run after the
/// leaves' keys are validated.
///
/// Errors: the catalog query failed, or a mark does not hold the JSON doppel writes.
pub async fn pending_reattach_sql(client: &Client, oid: u32) -> Result<Vec<(String, String)>> {
    let rows = client
        .query(
            "SELECT d.description, n.nspname::text, l.relname::text, c.conname::text, c.conrelid
             FROM pg_constraint c JOIN pg_description d
               ON d.classoid = 'pg_constraint'::regclass AND d.objoid = c.oid AND d.objsubid = 0
             JOIN pg_class l ON l.oid = c.conrelid JOIN pg_namespace n ON n.oid = l.relnamespace
             WHERE c.contype = 'f' AND starts_with(d.description, $2)
               AND (c.confrelid = $1 OR c.conrelid IN (SELECT relid FROM pg_partition_tree($1::oid::regclass)))
             ORDER BY d.description, c.conrelid",
            &[&oid, &PENDING_REATTACH_MARK],
        )
        .await
        .context("reading foreign keys waiting to be added back on partitioned tables")?;
    let mut groups: Vec<(String, Vec<LeafKey>)> = Vec::new();
    for r in rows {
        let mark: String = r.get(0);
        let leaf = LeafKey {
            leaf_oid: r.get(4),
            leaf: crate::sql::qualified(&r.get::<_, String>(1), &r.get::<_, String>(2)),
            name: r.get(3),
            comment: None,
        };
        match groups.last_mut() {
            Some((m, leaves)) if *m == mark => leaves.push(leaf),
            _ => groups.push((mark, vec![leaf])),
        }
    }
    groups
        .into_iter()
        .map(|(mark, leaves)| {
            let p = Pending::from_json(&mark[PENDING_REATTACH_MARK.len()..])
                .with_context(|| format!("reading the pending re-add {mark:?}"))?;
            let mut sql: Vec<String> = leaves.iter().map(LeafKey::validate_sql).collect();
            sql.push(reattach_sql(&p.table, &p.name, &p.definition, &leaves));
            Ok((p.name, sql.join(";\n")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ForeignKey {
        ForeignKey {
            child_oid: 1,
            child: "\"public\".\"pay\"".into(),
            child_partitioned: true,
            name: "pay_t_fk".into(),
            definition: "FOREIGN KEY (t_id) REFERENCES public.t(id)".into(),
            validated: true,
            referenced_columns: vec!["id".into()],
            referenced_index: Some("t_pkey".into()),
            leaf_keys: Some(vec![LeafKey {
                leaf_oid: 2,
                leaf: "\"public\".\"pay_1\"".into(),
                name: "pay_t_fk".into(),
                comment: None,
            }]),
            action_moves_rows: false,
        }
    }

    #[test]
    fn leaves_get_not_valid_keys_under_the_lock() {
        let fk = key();
        let leaves = fk.leaf_keys.clone().unwrap();
        assert_eq!(
            fk.leaves_forward(&leaves)[0].split(";\n").collect::<Vec<_>>()[..2],
            [
                "ALTER TABLE \"public\".\"pay\" DROP CONSTRAINT \"pay_t_fk\"".to_string(),
                "ALTER TABLE \"public\".\"pay_1\" ADD CONSTRAINT \"pay_t_fk\" FOREIGN KEY (t_id) REFERENCES public.t(id) NOT VALID".to_string(),
            ]
        );
    }

    #[test]
    fn leaves_are_marked_with_the_pending_re_add() {
        let fk = key();
        let leaves = fk.leaf_keys.clone().unwrap();
        let forward: Vec<String> = fk.leaves_forward(&leaves)[0]
            .split(";\n")
            .map(str::to_string)
            .collect();
        assert_eq!(forward.len(), 3);
        let prefix = "COMMENT ON CONSTRAINT \"pay_t_fk\" ON \"public\".\"pay_1\" IS ";
        assert!(forward[2].starts_with(prefix), "{}", forward[2]);
        assert!(forward[2].contains(PENDING_REATTACH_MARK), "{}", forward[2]);
        let p = Pending {
            table: fk.child.clone(),
            name: fk.name.clone(),
            definition: fk.definition.clone(),
        };
        assert_eq!(Pending::from_json(&p.to_json()).unwrap(), p);
    }

    #[test]
    fn after_commit_validates_leaves_then_reattaches() {
        let fk = key();
        let leaves = fk.leaf_keys.clone().unwrap();
        let steps = fk.leaves_after_commit(&leaves);
        assert_eq!(steps.len(), 2);
        assert_eq!(
            steps[0].1,
            "ALTER TABLE \"public\".\"pay_1\" VALIDATE CONSTRAINT \"pay_t_fk\""
        );
        assert!(steps[1].1.starts_with("DO $doppel$"));
        assert!(steps[1].1.contains("pg_partition_tree"));
        assert_eq!(steps[1].0, "pay_t_fk");
    }
}
