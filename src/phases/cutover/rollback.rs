//! The rollback script (docs/design.md §4.5) and the marks that make it safe: the kept old
//! table's comment, set inside the cutover transaction, records the transaction's snapshot;
//! the script compares the new table against it before swapping back, and refuses when rows
//! were written after the cutover (unless run with `-v force=1`). The script is written and
//! fsynced to `--rollback-dir` as the cutover phase starts and removed again if the phase
//! ends without sending COMMIT.
//!
//! How the script knows (a row's `xmin` is the transaction that wrote that version): every
//! row version of the new table written before the cutover committed is visible in the
//! cutover's snapshot, and every one written after is not (a transaction that was running
//! when the cutover took its snapshot is in its in-progress list). So, with `written` the
//! rows whose `xmin` the snapshot does not see: no insert, update or delete reached the new
//! table after the cutover exactly when `written = 0` and the new table holds as many rows
//! as the kept old table (which nothing writes after the cutover: with no insert or update,
//! a delete can only lower the count). It reads both tables in full, while writes to the
//! table wait (`SHARE` lock) and reads go on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::Script;
use crate::plan::Plan;
use crate::sql::{comment_sql, do_block, literal};

/// The words that start the comment the cutover puts on the kept old table.
pub const KEPT_MARK: &str = "doppel: the table ";

/// The words that start the comment the rollback script or a revert puts on the migrated
/// table it swaps out: `doppel cleanup` never drops a table carrying it without
/// `--drop-new-table`.
pub const SWAPPED_OUT_MARK: &str = "doppel: the migrated table ";

/// The statement that comments the kept old table inside the cutover transaction: what it
/// is, the cutover's `snapshot` (`pg_snapshot` text) and where the rollback script is.
pub(super) fn kept_comment_sql(plan: &Plan, snapshot: &str, script: &Path) -> String {
    let text = format!(
        "{KEPT_MARK}{} as it was when its cutover committed (snapshot {snapshot}); kept for the rollback script {}. Drop it once you no longer need a rollback.",
        plan.original.qualified(),
        script.display()
    );
    comment_sql(
        &format!("TABLE {}", plan.names.old_qualified()),
        Some(&text),
    )
}

/// The cutover snapshot recorded in a kept old table's comment ([`kept_comment_sql`]).
pub fn snapshot_of_comment(comment: &str) -> Option<&str> {
    let rest = comment.strip_prefix(KEPT_MARK)?;
    let start = rest.find("(snapshot ")? + "(snapshot ".len();
    let end = start + rest[start..].find(')')?;
    Some(&rest[start..end])
}

/// The rollback script's text: what it does and loses, in plain words; the check that
/// refuses when the new table was written after the cutover; `BEGIN`, `SET LOCAL
/// lock_timeout` (`lock_timeout` in ms), the locks, the `back` statements, the comments;
/// `COMMIT`; then the dependents' after-commit steps and the validation of each foreign key
/// of `validations` (`(name, ALTER TABLE .. VALIDATE CONSTRAINT ..)`), a failure of which
/// is reported by name with what to run and does not stop the script.
pub(super) fn script_text(
    plan: &Plan,
    back: &[String],
    validations: &[(String, String)],
    lock_timeout: Duration,
) -> String {
    let n = &plan.names;
    let table_q = n.table_qualified();
    let old_q = n.old_qualified();
    let locks: String = crate::dependents::lock_sql_with_members(
        &plan.dependents,
        &plan.member_dependents,
        plan.partitions.as_ref(),
    )
    .iter()
    .map(|l| format!("{l};\n"))
    .collect();
    let mut after_commit: String = dependents_after_commit(plan)
        .iter()
        .map(|l| format!("{l};\n"))
        .collect();
    for (name, sql) in validations {
        after_commit.push_str(&validate_or_warn(name, sql));
    }
    format!(
        "{header}\
         \\set ON_ERROR_STOP on\n\
         \\if :{{?force}}\n\\else\n\\set force 0\n\\endif\n\
         BEGIN;\n\
         SET LOCAL lock_timeout = '{lock_ms}ms';\n\
         SELECT set_config('doppel.force', :'force', true);\n\
         LOCK TABLE {table_q} IN SHARE MODE;\n\
         {check};\n\
         {locks}\
         LOCK TABLE {table_q}, {old_q} IN ACCESS EXCLUSIVE MODE;\n\
         {statements};\n\
         {restored_comment};\n\
         {swapped_out_comment};\n\
         COMMIT;\n\
         {after_commit}",
        header = header(plan),
        lock_ms = lock_timeout.as_millis(),
        check = check_block(plan),
        statements = back.join(";\n"),
        restored_comment = comment_sql(
            &format!("TABLE {table_q}"),
            plan.original.comment.as_deref()
        ),
        swapped_out_comment = swapped_out_comment(plan),
    )
}

/// The dependents' steps after a swap back commits: the table's
/// ([`crate::dependents::Dependents::rollback_after_commit`]), then each member's of a
/// partitioned table (materialized view rebuilds, validations of the foreign keys that
/// reference it).
pub(super) fn dependents_after_commit(plan: &Plan) -> Vec<String> {
    let mut out = plan.dependents.rollback_after_commit(&plan.names);
    if let Some(tree) = &plan.partitions {
        for m in &plan.member_dependents {
            out.extend(m.rollback_after_commit(tree, &plan.names));
        }
    }
    out
}

/// The script's first lines: what it does, what it loses, how to run it.
fn header(plan: &Plan) -> String {
    let n = &plan.names;
    let table = plan.original.qualified();
    let shadow = n.shadow_qualified();
    format!(
        "-- doppel rollback script for {table}\n\
         --\n\
         -- WHAT IT DOES: swaps the original table back. {old} becomes {table} again, the\n\
         -- migrated table becomes {shadow}, and what the cutover moved (views, foreign keys,\n\
         -- triggers, policies, sequences, ...) goes back to the original.\n\
         -- WHAT IT LOSES: writes made to {table} after the cutover exist only in the migrated\n\
         -- table. So it first counts them (it reads both tables in full; meanwhile writes to\n\
         -- {table} wait and reads go on) and refuses, changing nothing, if there are any.\n\
         -- To lose nothing, revert with `doppel ctl --table {table} revert` while the doppel run\n\
         -- keeps its revert window open (--revert-window). To roll back anyway, the writes\n\
         -- staying only in {shadow}: psql -v force=1 -v ON_ERROR_STOP=1 -f <this file>\n\
         --\n\
         -- Run it with: psql -v ON_ERROR_STOP=1 -f <this file> (with -h/-p/-U/-d for the\n\
         -- database). If a lock is not granted within the timeout, nothing changes: run it again.\n\
         -- Foreign keys are re-added NOT VALID and validated after the COMMIT; one that fails\n\
         -- is named with the command to run once its rows are fixed.\n",
        old = n.old_qualified(),
    )
}

/// The PL/pgSQL check (see the module docs): sets `doppel.written` (rows inserted or updated
/// after the cutover) for the swapped-out table's comment, and raises, changing nothing,
/// when writes reached the table after the cutover, unless `doppel.force` is `1`.
fn check_block(plan: &Plan) -> String {
    let n = &plan.names;
    let t = literal(&n.table_qualified());
    let old = literal(&n.old_qualified());
    let shadow = literal(&n.shadow_qualified());
    let table_q = n.table_qualified();
    let old_q = n.old_qualified();
    // A partitioned table holds no rows itself: count its partitions' (docs/design.md §1.14).
    let only = plan.projection.only();
    let force_hint = format!(
        "'Nothing was changed. Without losing them: doppel ctl --table ' || {t} || ' revert, while the doppel run that migrated it keeps its revert window open. To roll back anyway, the writes staying only in ' || {shadow} || ' (which doppel cleanup then keeps): psql -v force=1 -f <this script>'"
    );
    do_block(&format!(
        "DECLARE
  marker text := obj_description({old}::regclass, 'pg_class');
  snap pg_snapshot := substring(marker from '\\(snapshot ([0-9]+:[0-9]+:[0-9,]*)\\)')::pg_snapshot;
  horizon bigint := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
  forced boolean := current_setting('doppel.force') = '1';
  written bigint;
  rows_now bigint;
  rows_then bigint;
BEGIN
  IF snap IS NULL THEN
    PERFORM set_config('doppel.written', 'an unknown number of', true);
    IF forced THEN
      RETURN;
    END IF;
    RAISE EXCEPTION 'cannot tell whether % received writes after the cutover: the comment doppel put on % is gone', {t}, {old}
      USING HINT = {force_hint};
  END IF;
  SELECT count(*), count(*) FILTER (WHERE NOT pg_visible_in_snapshot(
           GREATEST(((horizon >> 32) << 32) + x
                    - CASE WHEN x > (horizon & 4294967295) THEN 4294967296 ELSE 0 END, 0)::text::xid8,
           snap))
    INTO rows_now, written
    FROM (SELECT xmin::text::bigint AS x FROM {only}{table_q}) AS r;
  SELECT count(*) INTO rows_then FROM {only}{old_q};
  PERFORM set_config('doppel.written', written::text, true);
  IF written = 0 AND rows_now = rows_then THEN
    RAISE NOTICE 'no write reached % after the cutover: the rollback loses nothing', {t};
  ELSIF forced THEN
    RAISE WARNING 'rolling back with force=1: % row(s) of % were inserted or updated after the cutover and it holds % row(s) against % at the cutover; those writes stay only in %', written, {t}, rows_now, rows_then, {shadow};
  ELSE
    RAISE EXCEPTION '% received writes after the cutover: % row(s) inserted or updated, and it holds % row(s) against % at the cutover (inserts and deletes make the difference); rolling back would lose them from %', {t}, written, rows_now, rows_then, {t}
      USING HINT = {force_hint};
  END IF;
END"
    ))
}

/// The comment the rollback puts on the migrated table it swaps out: what it is, and that
/// the writes made after the cutover exist only there.
fn swapped_out_comment(plan: &Plan) -> String {
    let n = &plan.names;
    let t = literal(&n.table_qualified());
    do_block(&format!(
        "BEGIN
  EXECUTE format('COMMENT ON TABLE %s IS %L', {shadow}, {mark} || {t}
    || ', swapped out by the rollback script at ' || now()::text || '. The '
    || current_setting('doppel.written') || ' row(s) inserted or updated in it after the cutover, and its deletes, exist only here. doppel cleanup keeps it unless given --drop-new-table.');
END",
        shadow = literal(&n.shadow_qualified()),
        mark = literal(SWAPPED_OUT_MARK),
    ))
}

/// `sql` (a `VALIDATE CONSTRAINT`) in a block that turns its failure into a warning naming
/// the foreign key `name` and what to run once its rows are fixed.
fn validate_or_warn(name: &str, sql: &str) -> String {
    format!(
        "{};\n",
        do_block(&format!(
            "BEGIN
  {sql};
EXCEPTION WHEN OTHERS THEN
  RAISE WARNING 'foreign key % is still NOT VALID: %', {name}, SQLERRM
    USING HINT = 'Fix the rows it reports, then run: ' || {stmt};
END",
            name = literal(name),
            stmt = literal(sql),
        ))
    )
}

/// The rollback script on disk (docs/design.md §4.5). Until [`RollbackFile::keep`] is called,
/// dropping it removes the file: a script for a cutover that never happened would only
/// mislead.
pub(super) struct RollbackFile {
    path: PathBuf,
    remove_on_drop: bool,
}

impl RollbackFile {
    /// Writes and fsyncs the rollback script to `dir` (logged).
    ///
    /// Errors: the directory or the file cannot be written (exit 1).
    pub(super) fn write(dir: &Path, plan: &Plan, script: &Script) -> Result<RollbackFile> {
        let path = write_rollback(dir, plan, script)?;
        tracing::info!("rollback script written to {}", path.display());
        Ok(RollbackFile {
            path,
            remove_on_drop: true,
        })
    }

    /// No script: a revert writes none. `path` is where one named `doppel-<what>-..` would
    /// be; the record is written next to it.
    pub(super) fn unwritten(dir: &Path, plan: &Plan, what: &str) -> RollbackFile {
        RollbackFile {
            path: dir.join(script_name(plan, what)),
            remove_on_drop: false,
        }
    }

    /// Where the script is.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The COMMIT is about to be sent: the script stays. From here the cutover may have
    /// committed even if COMMIT reports an error.
    pub(super) fn keep(&mut self) {
        self.remove_on_drop = false;
    }
}

impl Drop for RollbackFile {
    fn drop(&mut self) {
        if !self.remove_on_drop {
            return;
        }
        self.remove_on_drop = false;
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::info!(
                "removed the rollback script {}: nothing was cut over",
                self.path.display()
            ),
            Err(e) => tracing::warn!(
                "nothing was cut over, but the rollback script {} could not be removed ({e}): delete it",
                self.path.display()
            ),
        }
    }
}

/// Writes the rollback script to `dir` as `doppel-rollback-<oid>-<name>-<unix time>.sql`,
/// fsynced, and returns its path.
///
/// Errors: the directory or the file cannot be written (exit 1).
pub fn write_rollback(dir: &Path, plan: &Plan, script: &Script) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the rollback directory {}", dir.display()))?;
    let path = dir.join(script_name(plan, "rollback"));
    std::fs::write(&path, &script.rollback)
        .with_context(|| format!("cannot write the rollback script {}", path.display()))?;
    let file = std::fs::File::open(&path)?;
    file.sync_all()?;
    Ok(path)
}

/// `doppel-<what>-<oid>-<name>-<unix time>.sql`.
fn script_name(plan: &Plan, what: &str) -> String {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "doppel-{what}-{}-{}-{stamp}.sql",
        plan.original.oid,
        sanitize(&plan.names.table)
    )
}

/// `name` with every character other than ASCII letters, digits and `_` replaced by `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
