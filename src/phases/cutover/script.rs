//! The SQL of the swap and of its reverse (docs/design.md §4.4, §4.5): the forward statements
//! run inside the cutover transaction, the after-commit validations, and the rollback script,
//! which is written and fsynced to `--rollback-dir` as the cutover phase starts and removed
//! again if the phase ends without sending COMMIT.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::model::catalog::OwnedSequence;
use crate::phases::shadow;
use crate::plan::Plan;
use crate::sql::{ident, literal, qualified};

/// The SQL of the swap and of its reverse.
#[derive(Debug, Clone)]
pub struct Script {
    /// The locks of one attempt, one relation per statement, in the order they are taken
    /// (docs/design.md §4.2), all within one lock budget: the foreign-key children and the
    /// tables whose policies or rules are recreated (ACCESS EXCLUSIVE, by OID), the
    /// dependent views (leaf first), the other tables those views read (ACCESS SHARE, which
    /// recreating and re-reading a view takes), the table itself (ACCESS EXCLUSIVE), then
    /// the tables its own foreign keys reference (ACCESS EXCLUSIVE, which dropping a foreign
    /// key takes on its referenced table). A view's other table or a referenced table the
    /// role may not lock is left to the statement that needs it, under the lock hold's limit.
    pub locks: Vec<String>,
    /// Statements run inside the cutover transaction, after the fence.
    pub forward: Vec<String>,
    /// After-commit steps, `(label, SQL)` in order: `ALTER TABLE .. VALIDATE CONSTRAINT ..`
    /// for the table's own foreign keys, then the dependents' (materialized view rebuilds,
    /// the children's foreign-key validations).
    pub validate: Vec<(String, String)>,
    /// The statements of the reverse swap, in order (the rollback script runs them after its
    /// check and its locks; a revert runs them under the cutover protocol).
    pub back: Vec<String>,
    /// After a reverse swap, `(label, SQL)` in order: the dependents' steps (materialized
    /// view rebuilds, the children's foreign-key validations), then the table's own foreign
    /// keys validated.
    pub back_validate: Vec<(String, String)>,
    /// The rollback script (psql-runnable).
    pub rollback: String,
}

impl Script {
    /// Builds the swap and rollback SQL (docs/design.md §4.4, §4.5). `lock_timeout` is the
    /// rollback script's `SET LOCAL lock_timeout` (written in ms). Reads the shadow's identity
    /// sequence names, so in an execution it must run after the shadow exists (in a dry run
    /// the sequence is named by what it is).
    ///
    /// Errors: reading the shadow's identity sequences failed (exit 1).
    pub async fn build(client: &Client, plan: &Plan, lock_timeout: Duration) -> Result<Script> {
        let n = &plan.names;
        let mut forward = Vec::new();
        let mut back = Vec::new();
        renames(plan, &mut forward, &mut back);
        let index_names = partition_renames(client, plan, &mut forward, &mut back).await?;

        let sequences = Sequences::of(client, plan).await?;
        forward.extend(sequences.forward);
        back.extend(sequences.back_first);
        back.extend(sequences.back);
        back.extend(sequences.back_values);

        let own_validations = foreign_keys(plan, &mut forward, &mut back);
        let mut validate: Vec<(String, String)> = index_names
            .iter()
            .map(|sql| ("the partitions' index names".to_string(), sql.clone()))
            .collect();
        validate.extend(own_validations.clone());

        // Dependents bound to the original's OID: views, foreign keys from other tables,
        // triggers, rules, policies, publications, replica identity, statistics objects.
        let deps = &plan.dependents;
        forward.extend(deps.forward(n));
        validate.extend(deps.forward_after_commit_labeled(n));
        back.extend(deps.rollback(n));
        // Those bound to single members of a partitioned table's tree, member by member.
        if let Some(tree) = &plan.partitions {
            // One round trip per member under the lock.
            for m in &plan.member_dependents {
                forward.push(m.forward(tree, n).join(";\n"));
                validate.extend(m.forward_after_commit(tree, n));
                back.push(m.rollback(tree, n).join(";\n"));
            }
        }
        let mut rollback =
            super::rollback::script_text(plan, &back, &own_validations, lock_timeout);
        if let Some(sql) = &index_names {
            rollback.push_str(&index_names_section(sql));
        }
        let mut back_validate: Vec<(String, String)> =
            super::rollback::dependents_after_commit(plan)
                .into_iter()
                .map(|sql| ("after the revert".to_string(), sql))
                .collect();
        back_validate.extend(own_validations);
        Ok(Script {
            locks: attempt_locks(client, plan).await?,
            forward,
            validate,
            back,
            back_validate,
            rollback,
        })
    }
}

/// The statements that take an attempt's locks, in order (see [`Script::locks`]).
///
/// Errors: reading the views' other tables or the referenced tables failed (exit 1).
async fn attempt_locks(client: &Client, plan: &Plan) -> Result<Vec<String>> {
    let deps = &plan.dependents;
    let oid = plan.original.oid;
    let members = &plan.member_dependents;
    let views: Vec<u32> = std::iter::once(deps)
        .chain(members.iter().map(|m| &m.dependents))
        .flat_map(|d| d.views.iter())
        .filter(|v| !v.materialized)
        .map(|v| v.oid)
        .collect();
    let mut locks =
        crate::dependents::lock_each_with_members(deps, members, plan.partitions.as_ref());
    // The table and, for a partitioned table, its members: locked with it, after it.
    let tree: Vec<u32> = std::iter::once(oid)
        .chain(
            plan.partitions
                .iter()
                .flat_map(|t| t.members.iter().map(|m| m.oid)),
        )
        .collect();
    // Tables (plain or partitioned: LOCK TABLE takes no other kind) the dependent views read,
    // other than the table (and its tree) and the views themselves, that the role may lock
    // in ACCESS SHARE.
    let rows = client
        .query(
            "SELECT DISTINCT c.oid, format('%I.%I', n.nspname, c.relname)
             FROM pg_rewrite r
             JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
               AND d.refclassid = 'pg_class'::regclass
             JOIN pg_class c ON c.oid = d.refobjid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE r.ev_class = ANY($1::oid[]) AND c.relkind IN ('r', 'p')
               AND c.oid <> ALL($2::oid[])
               AND has_table_privilege(c.oid, 'SELECT')
             ORDER BY 1",
            &[&views, &tree],
        )
        .await
        .context("reading the tables the dependent views read")?;
    locks.extend(rows.iter().map(|r| {
        format!(
            "LOCK TABLE ONLY {} IN ACCESS SHARE MODE",
            r.get::<_, String>(1)
        )
    }));
    locks.push(format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        plan.names.table_qualified()
    ));
    // Dropping a foreign key from the kept old table takes ACCESS EXCLUSIVE on the table it
    // references; LOCK TABLE in that mode needs UPDATE, DELETE or TRUNCATE on it.
    let rows = client
        .query(
            "SELECT DISTINCT c.oid, format('%I.%I', n.nspname, c.relname)
             FROM pg_constraint k
             JOIN pg_class c ON c.oid = k.confrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE k.conrelid = $1 AND k.contype = 'f' AND k.confrelid <> $1
               AND has_table_privilege(c.oid, 'UPDATE, DELETE, TRUNCATE')
             ORDER BY 1",
            &[&oid],
        )
        .await
        .context("reading the tables the table's foreign keys reference")?;
    locks.extend(rows.iter().map(|r| {
        format!(
            "LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE",
            r.get::<_, String>(1)
        )
    }));
    Ok(locks)
}

/// The table and index renames (docs/design.md §4.4, first item): original → kept name, its
/// indexes out of the way, shadow → original name, shadow indexes → final names; the
/// rollback mirrored.
fn renames(plan: &Plan, forward: &mut Vec<String>, back: &mut Vec<String>) {
    let n = &plan.names;
    let oid = plan.original.oid;
    let schema = &n.schema;
    let table_q = n.table_qualified();
    let shadow_q = n.shadow_qualified();
    let old_q = n.old_qualified();

    forward.push(format!("ALTER TABLE {table_q} RENAME TO {}", ident(&n.old)));
    for (i, index) in plan.original.indexes.iter().enumerate() {
        let old_name = n.old_index(oid, i);
        forward.push(format!(
            "ALTER INDEX {} RENAME TO {}",
            qualified(schema, &index.name),
            ident(&old_name)
        ));
    }
    forward.push(format!(
        "ALTER TABLE {shadow_q} RENAME TO {}",
        ident(&n.table)
    ));
    let shadow_indexes = shadow::indexes(plan);
    for index in &shadow_indexes {
        forward.push(format!(
            "ALTER INDEX {} RENAME TO {}",
            qualified(schema, &index.temp_name),
            ident(&index.final_name)
        ));
    }

    // Rollback, mirrored: new table back to the shadow name, old table back to its name.
    back.push(format!(
        "ALTER TABLE {table_q} RENAME TO {}",
        ident(&n.shadow)
    ));
    for index in &shadow_indexes {
        back.push(format!(
            "ALTER INDEX {} RENAME TO {}",
            qualified(schema, &index.final_name),
            ident(&index.temp_name)
        ));
    }
    back.push(format!("ALTER TABLE {old_q} RENAME TO {}", ident(&n.table)));
    for (i, index) in plan.original.indexes.iter().enumerate() {
        back.push(format!(
            "ALTER INDEX {} RENAME TO {}",
            qualified(schema, &n.old_index(oid, i)),
            ident(&index.name)
        ));
    }
}

/// The renames of a partitioned table's members and their indexes (docs/design.md §1.14),
/// after the roots' own. Under the lock only the tables: the originals out of the way, the
/// shadow's members to the original names, one round trip (with 100 partitions, separate
/// round trips would cost more than the server's work). The members' indexes are renamed
/// right after the commit (returned: a `DO` block that does nothing once they are renamed,
/// so it can run again), under SHARE UPDATE EXCLUSIVE on each index only, which no query
/// waits for: index names are not what the application reads, and renaming them under the
/// lock doubled its hold with 100 partitions. `back` gets a `DO` block that renames the
/// indexes back when they were renamed (the kept name of the first original index exists),
/// then the tables. Reads the shadow's tree (the names PostgreSQL gave its partitions of the
/// root's indexes); without a shadow (a dry run) there is nothing to rename yet.
///
/// Errors: reading the shadow's tree failed.
async fn partition_renames(
    client: &Client,
    plan: &Plan,
    forward: &mut Vec<String>,
    back: &mut Vec<String>,
) -> Result<Option<String>> {
    let Some(original) = &plan.partitions else {
        return Ok(None);
    };
    let shadow_oid: Option<u32> = client
        .query_one(
            "SELECT to_regclass($1)::oid",
            &[&plan.names.shadow_qualified()],
        )
        .await?
        .get(0);
    let Some(shadow_oid) = shadow_oid else {
        return Ok(None);
    };
    let shadow_tree = crate::model::partitions::read(client, shadow_oid)
        .await
        .context("reading the shadow's partitions")?;
    let indexes = shadow::indexes(plan);
    let final_name = |temp: &str| {
        indexes
            .iter()
            .find(|i| i.temp_name == temp)
            .map_or_else(|| temp.to_string(), |i| i.final_name.clone())
    };
    let r = shadow::partitions::member_renames(original, &shadow_tree, &plan.names, final_name);
    if !r.tables_forward.is_empty() {
        forward.push(r.tables_forward.join(";\n"));
    }
    let Some(first) = &r.first_kept_index else {
        if !r.tables_back.is_empty() {
            back.push(r.tables_back.join(";\n"));
        }
        return Ok(None);
    };
    back.push(renames_if(first, true, &r.indexes_back));
    back.push(r.tables_back.join(";\n"));
    Ok(Some(renames_if(first, false, &r.indexes_forward)))
}

/// A `DO` block running `statements` when the relation `probe` exists (`exists`) or does
/// not.
fn renames_if(probe: &str, exists: bool, statements: &[String]) -> String {
    let test = if exists { "IS NOT NULL" } else { "IS NULL" };
    let body: String = statements.iter().map(|s| format!("    {s};\n")).collect();
    crate::sql::do_block(&format!(
        "BEGIN\n  IF to_regclass({}) {test} THEN\n{body}  END IF;\nEND",
        literal(probe)
    ))
}

/// First line of the rollback script's section holding the partitions' index renames.
pub const INDEX_NAMES_BEGIN: &str = "-- doppel: partition index names begin";
/// Last line of that section.
pub const INDEX_NAMES_END: &str = "-- doppel: partition index names end";

/// The rollback script's commented section with `sql`, the renames of the partitions'
/// indexes run after the commit: a run stopped before them leaves the new partitions'
/// indexes under doppel's temporary names; `--resume` runs this section, and so can the DBA.
fn index_names_section(sql: &str) -> String {
    let commented: String = sql.lines().map(|l| format!("-- {l}\n")).collect();
    format!(
        "\n-- If the run stopped between the cutover's commit and the renaming of the\n\
         -- partitions' indexes (the new partitions' indexes then carry doppel's temporary\n\
         -- names), this block names them; it does nothing once they are named.\n\
         {INDEX_NAMES_BEGIN}\n{commented}{INDEX_NAMES_END}\n"
    )
}

/// The renames of the partitions' indexes in the rollback script `text` (the section
/// [`index_names_section`] wrote, uncommented), if it has one.
pub fn index_names_in(text: &str) -> Option<String> {
    let start = text.find(INDEX_NAMES_BEGIN)? + INDEX_NAMES_BEGIN.len();
    let end = start + text[start..].find(INDEX_NAMES_END)?;
    Some(
        text[start..end]
            .lines()
            .filter_map(|l| l.strip_prefix("-- "))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// Sequences (docs/design.md §4.4, second item). Identity sequences belong to their table:
/// the original's are renamed out of the way, the shadow's take their names and continue from
/// their values. Serial sequences change owner.
#[derive(Default)]
struct Sequences {
    forward: Vec<String>,
    /// The original's sequences, back to their names and owner.
    back: Vec<String>,
    /// The new table's identity sequences, out of the way (run before `back`).
    back_first: Vec<String>,
    /// The original's identity sequences continue from the new table's values.
    back_values: Vec<String>,
    /// Identity sequences of the original renamed out of the way:
    /// `(column, kept-as name, original name)`.
    renamed_identity: Vec<(String, String, String)>,
}

impl Sequences {
    /// The statements for the original's sequences, then the shadow's identity sequences.
    ///
    /// Errors: reading the shadow's identity sequences failed.
    async fn of(client: &Client, plan: &Plan) -> Result<Sequences> {
        let mut sequences = Sequences::default();
        sequences.original(plan);
        for target_seq in plan.target.sequences.iter().filter(|s| s.identity) {
            sequences.shadow_identity(client, plan, target_seq).await?;
        }
        Ok(sequences)
    }

    /// The original's sequences: identity sequences renamed out of the way, serial sequences
    /// owned by the new table's column.
    fn original(&mut self, plan: &Plan) {
        let n = &plan.names;
        let oid = plan.original.oid;
        let table_q = n.table_qualified();
        let target_name = |source: &str| {
            plan.projection
                .columns
                .iter()
                .find(|m| m.source.as_ref().is_some_and(|s| s.name == source))
                .map(|m| m.target.clone())
        };
        for (i, seq) in plan.original.sequences.iter().enumerate() {
            if seq.identity {
                let kept = n.old_sequence(oid, i);
                self.forward.push(format!(
                    "ALTER SEQUENCE {} RENAME TO {}",
                    qualified(&seq.schema, &seq.name),
                    ident(&kept)
                ));
                self.back.push(format!(
                    "ALTER SEQUENCE {} RENAME TO {}",
                    qualified(&seq.schema, &kept),
                    ident(&seq.name)
                ));
                self.renamed_identity
                    .push((seq.column.clone(), kept, seq.name.clone()));
            } else if let Some(col) = target_name(&seq.column)
                && col
                    .default_sql
                    .as_deref()
                    .is_some_and(|d| d.contains("nextval"))
            {
                self.forward.push(format!(
                    "ALTER SEQUENCE {} OWNED BY {table_q}.{}",
                    qualified(&seq.schema, &seq.name),
                    ident(&col.name)
                ));
                self.back.push(format!(
                    "ALTER SEQUENCE {} OWNED BY {table_q}.{}",
                    qualified(&seq.schema, &seq.name),
                    ident(&seq.column)
                ));
            }
        }
    }

    /// One identity sequence of the shadow: takes the original's sequence name and continues
    /// from its value (`setval(last_value, is_called)`).
    ///
    /// Errors: reading the shadow's identity sequence failed.
    async fn shadow_identity(
        &mut self,
        client: &Client,
        plan: &Plan,
        target_seq: &OwnedSequence,
    ) -> Result<()> {
        let n = &plan.names;
        let schema = &n.schema;
        let shadow_q = n.shadow_qualified();
        // The shadow's identity sequence (in a dry run, before the shadow exists, the name
        // PostgreSQL will give it).
        let current: Option<String> = client
            .query_opt(
                "SELECT s.relname::text FROM pg_depend d
                 JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                 JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                   AND d.deptype = 'i' AND d.refobjid = to_regclass($1) AND a.attname = $2",
                &[&shadow_q, &target_seq.column],
            )
            .await
            .context("reading the shadow's identity sequences")?
            .map(|r| r.get(0));
        // In a dry run the shadow does not exist yet: name its sequence by what it is.
        let current_name = current.unwrap_or_else(|| {
            format!("<identity sequence of {}.{}>", n.shadow, target_seq.column)
        });
        self.forward.push(format!(
            "ALTER SEQUENCE {} RENAME TO {}",
            qualified(schema, &current_name),
            ident(&target_seq.name)
        ));
        self.back_first.push(format!(
            "ALTER SEQUENCE {} RENAME TO {}",
            qualified(schema, &target_seq.name),
            ident(&current_name)
        ));
        let source_col = plan
            .projection
            .columns
            .iter()
            .find(|m| m.target.name == target_seq.column)
            .and_then(|m| m.source.as_ref())
            .map(|s| s.name.clone());
        if let Some((_, kept, original_name)) = self
            .renamed_identity
            .iter()
            .find(|(col, _, _)| Some(col) == source_col.as_ref())
        {
            self.forward.push(format!(
                "SELECT setval({}::regclass, s.last_value, s.is_called) FROM {} AS s",
                literal(&qualified(schema, &target_seq.name)),
                qualified(schema, kept)
            ));
            self.back_values.push(format!(
                "SELECT setval({}::regclass, s.last_value, s.is_called) FROM {} AS s",
                literal(&qualified(schema, original_name)),
                qualified(schema, &current_name)
            ));
        }
        Ok(())
    }
}

/// Foreign keys from this table (docs/design.md §4.4, third item): moved to the new table
/// (NOT VALID, validated after commit) and dropped from the kept old table, whose stale rows
/// would otherwise block valid deletes on the parents. The foreign keys of the new table are
/// those the clone has after the ALTER: the original's it kept, and those the ALTER adds
/// (`ADD CONSTRAINT .. FOREIGN KEY`, `ADD COLUMN .. REFERENCES`), which are added the same
/// way and dropped from the swapped-out table by the rollback. Returns the after-commit
/// validations of the keys that are to be valid.
fn foreign_keys(
    plan: &Plan,
    forward: &mut Vec<String>,
    back: &mut Vec<String>,
) -> Vec<(String, String)> {
    let n = &plan.names;
    let table_q = n.table_qualified();
    let old_q = n.old_qualified();
    let shadow_q = qualified(&n.schema, &n.shadow);
    let mut validate = Vec::new();
    let original: Vec<_> = plan
        .original
        .constraints
        .iter()
        .filter(|c| c.kind == 'f')
        .collect();
    let through_leaves = through_leaves(plan);
    for fk in &original {
        forward.push(format!(
            "ALTER TABLE {old_q} DROP CONSTRAINT {}",
            ident(&fk.name)
        ));
        back.push(match &through_leaves {
            Some(leaves) => crate::dependents::add_through_leaves(
                &table_q,
                &fk.name,
                fk.definition.trim_end_matches(" NOT VALID"),
                &leaves(&fk.name),
            ),
            None => format!(
                "ALTER TABLE {table_q} ADD CONSTRAINT {} {}",
                ident(&fk.name),
                not_valid(&fk.definition)
            ),
        });
    }
    for fk in plan.target.constraints.iter().filter(|c| c.kind == 'f') {
        let definition = fk.definition.trim_end_matches(" NOT VALID");
        match &through_leaves {
            Some(leaves) => {
                forward.push(crate::dependents::add_through_leaves(
                    &table_q,
                    &fk.name,
                    definition,
                    &leaves(&fk.name),
                ));
                if fk.validated {
                    validate.extend(crate::dependents::validate_and_reattach(
                        &table_q,
                        &fk.name,
                        definition,
                        &leaves(&fk.name),
                    ));
                }
            }
            None => {
                forward.push(format!(
                    "ALTER TABLE {table_q} ADD CONSTRAINT {} {}",
                    ident(&fk.name),
                    not_valid(&fk.definition)
                ));
                if fk.validated {
                    validate.push((
                        fk.name.clone(),
                        format!(
                            "ALTER TABLE {table_q} VALIDATE CONSTRAINT {}",
                            ident(&fk.name)
                        ),
                    ));
                }
            }
        }
        back.insert(
            back.len() - original.len(),
            format!("ALTER TABLE {shadow_q} DROP CONSTRAINT {}", ident(&fk.name)),
        );
    }
    validate.extend(partition_foreign_keys(plan, forward, back));
    validate
}

/// The foreign keys defined on each leaf partition of a partitioned table (not clones of
/// its parent's), moved from the kept old partition to the new one of the same name: dropped
/// from the old, added `NOT VALID` on the new under the lock, validated after the commit
/// (the returned `(label, SQL)` pairs, the same in both directions: after a revert the old
/// partitions have the names again). One entry per direction, after the renames.
fn partition_foreign_keys(
    plan: &Plan,
    forward: &mut Vec<String>,
    back: &mut Vec<String>,
) -> Vec<(String, String)> {
    let Some(tree) = &plan.partitions else {
        return Vec::new();
    };
    let (mut f, mut b, mut validate) = (Vec::new(), Vec::new(), Vec::new());
    let oid = plan.original.oid;
    for (n, m) in tree.members.iter().enumerate() {
        let old = qualified(&m.schema, &plan.names.old_partition(oid, n));
        let shadow = qualified(&m.schema, &plan.names.shadow_partition(oid, n));
        let now = m.qualified();
        for (name, definition, validated) in &m.foreign_keys {
            let name_q = ident(name);
            f.push(format!("ALTER TABLE {old} DROP CONSTRAINT {name_q}"));
            f.push(format!(
                "ALTER TABLE {now} ADD CONSTRAINT {name_q} {definition} NOT VALID"
            ));
            b.push(format!("ALTER TABLE {shadow} DROP CONSTRAINT {name_q}"));
            b.push(format!(
                "ALTER TABLE {now} ADD CONSTRAINT {name_q} {definition} NOT VALID"
            ));
            if *validated {
                validate.push((
                    format!("{name} on {now}"),
                    format!("ALTER TABLE {now} VALIDATE CONSTRAINT {name_q}"),
                ));
            }
        }
    }
    if !f.is_empty() {
        forward.push(f.join(";\n"));
        back.push(b.join(";\n"));
    }
    validate
}

/// For a partitioned table on a server before PostgreSQL 18, which refuses `NOT VALID` on
/// a partitioned table's foreign key (`dependents/foreign_key/partitioned.rs`): the leaf
/// partitions of the new tree, by the names they have once the swap renamed them, as the
/// leaves a key named as given is added through. `None` when the key can be added on the
/// table itself.
fn through_leaves(plan: &Plan) -> Option<impl Fn(&str) -> Vec<crate::dependents::LeafKey> + '_> {
    let tree = plan.partitions.as_ref()?;
    if plan.server_version >= crate::dependents::NOT_VALID_ON_PARTITIONED {
        return None;
    }
    Some(move |name: &str| {
        tree.leaves()
            .map(|m| crate::dependents::LeafKey {
                leaf_oid: 0,
                leaf: m.qualified(),
                name: name.to_string(),
                comment: None,
            })
            .collect()
    })
}

/// `definition` ending in ` NOT VALID`.
fn not_valid(definition: &str) -> String {
    if definition.ends_with("NOT VALID") {
        definition.to_string()
    } else {
        format!("{definition} NOT VALID")
    }
}
