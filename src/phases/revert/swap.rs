//! A revert: the swap back during the revert window, under the cutover's own protocol
//! (docs/design.md §4: lock budget, retries with backoff, the drain of the reverse applier
//! to a fence under the lock, the re-checks of the new table's definition and dependents),
//! running the rollback's statements, then the foreign keys validated.

use anyhow::Result;
use tokio_postgres::Client;

use super::Window;
use crate::failure::{FailureKind, fail};
use crate::phases::cutover::{Cutover, CutoverOptions, CutoverReport, SWAPPED_OUT_MARK, Script};
use crate::plan::Plan;
use crate::sql::{comment_sql, do_block, literal};

/// What a revert did.
#[derive(Debug, Clone)]
pub struct RevertOutcome {
    /// The swap back, as a cutover report (lock hold, attempts, failed after-commit steps).
    pub swap: CutoverReport,
    /// Keys whose change after the cutover could not be written back (a forced revert lost
    /// them), with the reason.
    pub lost: Vec<(Vec<Option<String>>, String)>,
}

impl Window {
    /// Swaps back: the kept old table takes the table's name again and the new table the
    /// shadow's, with what the cutover moved going back (`script.back`, from the cutover's
    /// [`Script`] of `forward`), once the reverse applier has drained under the lock. Refused
    /// when a change written after the cutover could not be written back, unless `force`.
    /// `client` takes the lock, `monitor` watches who blocks it.
    ///
    /// Errors: exit 8 when the revert would lose writes (without `force`) or the reverse
    /// stream failed; otherwise as [`Cutover::run`] (exit 5 when every attempt timed out,
    /// 8 when the new table's definition or dependents changed during the window).
    pub async fn revert(
        &self,
        client: &mut Client,
        monitor: &Client,
        forward: &Plan,
        script: &Script,
        options: CutoverOptions,
        force: bool,
    ) -> Result<RevertOutcome> {
        self.refuse_unless_lossless(forward, force)?;
        let revert_script = Script {
            locks: script.locks.clone(),
            forward: swap_statements(forward, script),
            validate: script.back_validate.clone(),
            back: Vec::new(),
            back_validate: Vec::new(),
            rollback: String::new(),
        };
        let check = || self.refuse_unless_lossless(forward, force);
        let cutover = Cutover {
            plan: &self.plan,
            script: &revert_script,
            fencer: &self.fencer,
            applier: &self.applier,
            stream: None,
            unsettled: &[],
            unsettled_in: &[],
            fingerprint: &self.fingerprint,
            options,
            revert: true,
            after_drain: Some(&check),
            changes_received: None,
        };
        let swap = cutover.run(client, monitor).await?;
        Ok(RevertOutcome {
            swap,
            lost: self.status().rejected,
        })
    }

    /// Fails (exit 8) when the reverse stream broke, or when changes could not be written
    /// back and the revert is not forced.
    fn refuse_unless_lossless(&self, forward: &Plan, force: bool) -> Result<()> {
        let status = self.status();
        if let Some(why) = &status.broken {
            return Err(fail(
                FailureKind::Conflict,
                format!(
                    "the revert window can no longer revert {}: {why}. The old table {} stopped receiving the writes; use the rollback script (it counts what it would lose) if you must",
                    forward.original.qualified(),
                    forward.names.old_qualified()
                ),
            ));
        }
        if status.rejected.is_empty() || force {
            return Ok(());
        }
        let keys: Vec<String> = status
            .rejected
            .iter()
            .take(10)
            .map(|(key, why)| format!("{key:?}: {why}"))
            .collect();
        Err(fail(
            FailureKind::Conflict,
            format!(
                "revert is no longer lossless: {} key(s) written to {} after the cutover cannot be written back to {} ({}). Nothing was changed; `doppel ctl --table {} revert --force` reverts anyway, losing those changes",
                status.rejected.len(),
                forward.original.qualified(),
                forward.names.old_qualified(),
                keys.join("; "),
                forward.original.qualified()
            ),
        ))
    }
}

/// The statements of the swap back: the rollback's, then the restored table's comment (the
/// original's again) and a mark on the swapped-out migrated table.
fn swap_statements(forward: &Plan, script: &Script) -> Vec<String> {
    let n = &forward.names;
    let mut out = script.back.clone();
    out.push(comment_sql(
        &format!("TABLE {}", n.table_qualified()),
        forward.original.comment.as_deref(),
    ));
    out.push(do_block(&format!(
        "BEGIN
  EXECUTE format('COMMENT ON TABLE %s IS %L', {shadow}, {mark} || {t}
    || ', swapped out by a revert at ' || now()::text || '. Every write made to it after the cutover was streamed back into '
    || {t} || ', except the keys the revert record lists as lost. doppel cleanup keeps it unless given --drop-new-table.');
END",
        shadow = literal(&n.shadow_qualified()),
        mark = literal(SWAPPED_OUT_MARK),
        t = literal(&n.table_qualified()),
    )));
    out
}
