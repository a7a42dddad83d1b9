//! Catch-up before each attempt (docs/design.md §4.1, step 1: attempt only when the drain
//! fits): fences are emitted and awaited outside the lock, so the drain inside it is only the
//! last moments, and the lock is requested only once that drain is predicted to fit.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::Cutover;
use crate::phases::apply::Applier;
use crate::phases::fence::Fencer;

/// Longest wait for one catch-up round (300 s).
const ROUND_LIMIT: Duration = Duration::from_secs(300);

impl Cutover<'_> {
    /// Catches up before an attempt ([`drain_until_it_fits`] with `--fence-timeout` as the
    /// budget). Returns the predicted drain under the lock (the last round trip).
    ///
    /// Errors: Ctrl-C / SIGTERM / `abort` (exit 3, also while catching up), a critical
    /// throttle condition (exit 7, or 3 for the panic flag file), the applier failed (its
    /// class), or a round did not finish within 300 s (exit 1).
    pub(super) async fn drain_before_attempt(&self) -> Result<Duration> {
        let options = &self.options;
        options.cancel.check()?;
        self.critical()?;
        let predicted = tokio::select! {
            r = drain_until_it_fits(self.fencer, self.applier, options.fence_timeout) => r?,
            _ = options.cancel.cancelled() => options.cancel.check().map(|_| Duration::ZERO)?,
        };
        Ok(predicted)
    }
}

/// Catch-up rounds before a lock attempt (docs/design.md §4.1): a fence is emitted and
/// awaited; the round trip is the drain the lock would have to wait for (it drains what
/// arrived during the previous round). Repeats until one round trip takes at most half of
/// `budget` (`--fence-timeout`, default 1000 ms; the other half absorbs what arrives while the
/// lock is requested). Returns the last round trip, the predicted drain under the lock.
///
/// Errors: the applier failed (its class), or one round did not finish within 300 s (exit 1).
async fn drain_until_it_fits(
    fencer: &Fencer,
    applier: &Applier,
    budget: Duration,
) -> Result<Duration> {
    let mut rounds = 0u32;
    loop {
        let started = Instant::now();
        let n = fencer.emit().await?;
        applier.wait_fence(n, ROUND_LIMIT).await?;
        let took = started.elapsed();
        rounds += 1;
        if took <= budget / 2 {
            return Ok(took);
        }
        if rounds == 1 || rounds.is_multiple_of(20) {
            tracing::info!(
                drain_ms = took.as_millis() as u64,
                budget_ms = budget.as_millis() as u64,
                rounds,
                "backlog drain predicted not to fit half the lock budget (--fence-timeout); catching up before locking"
            );
        }
    }
}
