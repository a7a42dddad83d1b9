//! Waiting while the cutover is postponed (docs/design.md §4, before step 1): the flag file
//! (`--postpone-cutover-flag-file`, gh-ost's), `postpone` on the control socket, or a failing
//! `before-cutover` hook (which sets the same `postpone` state, see
//! `run::operator::Operator::hook`). Meanwhile the shadow is kept caught up with one fence at
//! a time, without time limit.

use std::time::Duration;

use anyhow::Result;

use super::Cutover;
use crate::model::phase::{Postponement, Wait};

/// How often the postponement is re-checked (ms), unless the operator acts sooner.
const RECHECK: Duration = Duration::from_millis(500);

impl Cutover<'_> {
    /// Why the cutover is postponed now, if it is: the flag file exists (and `cut-over` was
    /// not sent on the control socket since), or the control socket says `postpone`, or a
    /// failing `before-cutover` hook postponed it.
    fn postponement(&self) -> Option<Postponement> {
        let options = &self.options;
        let controls = options.controls.as_ref();
        if let Some(flag) = &options.postpone_flag_file
            && flag.exists()
            && !controls.is_some_and(|c| c.cut_over_requested())
        {
            return Some(Postponement::FlagFile(flag.clone()));
        }
        match controls {
            Some(c) if c.postponed_by_hook() => Some(Postponement::HookFailed),
            Some(c) if c.postponed() => Some(Postponement::Operator),
            _ => None,
        }
    }

    /// Returns once the cutover is no longer postponed (at once when it is not). While
    /// waiting: logs the postponement once, keeps one fence at a time in flight, re-checks
    /// every 500 ms or as soon as the operator sends `cut-over` or `abort`.
    ///
    /// Errors: Ctrl-C / SIGTERM / `abort` (exit 3), a critical throttle condition such as the
    /// panic flag file (exit 7 for a critical threshold, 3 for the panic flag file), the
    /// applier failed (its class), the stream stopped (exit 4; 9 for a full spool
    /// filesystem), or emitting a fence failed (exit 1).
    pub(super) async fn wait_while_postponed(&self) -> Result<()> {
        let options = &self.options;
        let mut announced: Option<Postponement> = None;
        let mut fence: Option<u64> = None;
        while let Some(by) = self.postponement() {
            options.cancel.check()?;
            self.critical()?;
            self.applier.check()?;
            if let Some(stream) = self.stream {
                stream.check()?;
            }
            if announced.as_ref() != Some(&by) {
                let lift = match &by {
                    Postponement::FlagFile(_) => "remove the file or send `cut-over`",
                    _ => "send `cut-over` on the control socket",
                };
                tracing::info!("cutover postponed ({by}): {lift}; the shadow is kept caught up");
                self.show_wait(Some(Wait::Postponed(by.clone())));
                announced = Some(by);
            }
            // One fence at a time keeps the slot confirmed and shows the applier keeps up; a
            // throttled applier only makes it wait (the postponement is not bounded).
            if fence.is_none_or(|n| self.applier.status().fence >= n) {
                fence = Some(self.fencer.emit().await?);
            }
            // Re-check every 500 ms, or at once when the operator changes a setting or aborts.
            let tick = async {
                match &options.controls {
                    Some(c) => {
                        let _ = tokio::time::timeout(
                            RECHECK,
                            c.wait_until(|c| c.cut_over_requested() || c.abort_requested()),
                        )
                        .await;
                    }
                    None => tokio::time::sleep(RECHECK).await,
                }
            };
            tokio::select! {
                _ = tick => {}
                _ = options.cancel.cancelled() => {}
            }
        }
        if announced.is_some() {
            self.show_wait(None);
        }
        Ok(())
    }
}
