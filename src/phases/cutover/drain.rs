//! Catch-up before each attempt (docs/design.md §4.1, step 1: attempt only when the drain
//! fits): fences are emitted and awaited outside the lock, so the drain inside it is only the
//! last moments, and the lock is requested only once that drain is predicted to fit. When
//! the writes outpace the applier, no round can predict a fit: after `--cutover-retries`
//! such rounds in a row the cutover gives up (exit 5), naming both rates.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::Cutover;
use crate::failure::{FailureKind, fail};
use crate::model::phase::Wait;

/// Shortest and longest wait for one catch-up round's fence (1 s, 300 s); in between, ten
/// times the drain budget. A round that reaches neither its fence nor a fit is still
/// measured.
const ROUND_MIN: Duration = Duration::from_secs(1);
const ROUND_MAX: Duration = Duration::from_secs(300);
/// How often a round's progress (changes behind) is shown.
const SHOW_EVERY: Duration = Duration::from_millis(250);

/// One catch-up round's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    /// Emitting the fence to seeing it applied (or to the round's limit).
    took: Duration,
    /// Row changes received from the stream during the round.
    written: u64,
    /// Row changes applied during the round.
    applied: u64,
}

impl Round {
    /// The backlog did not shrink during the round: the writes kept up with the applier.
    fn backlog_held(&self) -> bool {
        self.written >= self.applied
    }
}

/// Rounds in a row that could not predict a fit, with their sums (for the rates).
#[derive(Debug, Default)]
struct Unfit {
    rounds: u32,
    time: Duration,
    written: u64,
    applied: u64,
}

impl Unfit {
    /// Counts `round` (its backlog did not shrink) or starts over (it did).
    fn add(&mut self, round: &Round) {
        if round.backlog_held() {
            self.rounds += 1;
            self.time += round.took;
            self.written += round.written;
            self.applied += round.applied;
        } else {
            *self = Unfit::default();
        }
    }

    /// (write rate, apply rate) over the counted rounds, in changes per second.
    fn rates(&self) -> (u64, u64) {
        let secs = self.time.as_secs_f64().max(0.001);
        (
            (self.written as f64 / secs) as u64,
            (self.applied as f64 / secs) as u64,
        )
    }
}

impl Cutover<'_> {
    /// Catches up before an attempt ([`Cutover::drain_until_it_fits`]). Returns the
    /// predicted drain under the lock (the last round trip).
    ///
    /// Errors: Ctrl-C / SIGTERM / `abort` (exit 3, also while catching up), a critical
    /// throttle condition (exit 7, or 3 for the panic flag file), the applier failed (its
    /// class), the writes outpaced the applier for `--cutover-retries` rounds (exit 5).
    pub(super) async fn drain_before_attempt(&self) -> Result<Duration> {
        let options = &self.options;
        options.cancel.check()?;
        self.critical()?;
        let predicted = tokio::select! {
            r = self.drain_until_it_fits() => r?,
            _ = options.cancel.cancelled() => options.cancel.check().map(|_| Duration::ZERO)?,
        };
        Ok(predicted)
    }

    /// The drain budget: `--fence-timeout`, or `--max-lock-hold` when shorter (the drain
    /// runs while the locks are held).
    fn drain_budget(&self) -> Duration {
        self.options
            .fence_timeout
            .min(self.options.max_lock_hold)
            .max(Duration::from_millis(1))
    }

    /// Catch-up rounds before a lock attempt (docs/design.md §4.1): a fence is emitted and
    /// awaited; the round trip is the drain the lock would have to wait for (it drains what
    /// arrived during the previous round). Repeats until one round trip takes at most half
    /// of the drain budget (the other half absorbs what arrives while the locks are
    /// requested). Returns the last round trip, the predicted drain under the lock.
    ///
    /// A round whose backlog did not shrink (no more changes applied than received during
    /// it) cannot predict a fit; after `--cutover-retries` of them in a row the cutover gives
    /// up.
    ///
    /// Errors: the applier failed (its class), or the rounds could not predict a fit (exit
    /// 5, with the write and apply rates).
    async fn drain_until_it_fits(&self) -> Result<Duration> {
        let budget = self.drain_budget();
        let limit = (budget * 10).clamp(ROUND_MIN, ROUND_MAX);
        let mut unfit = Unfit::default();
        let mut rounds = 0u32;
        loop {
            let round = self.round(limit).await?;
            rounds += 1;
            if let Some(took) = round {
                if took.took <= budget / 2 {
                    return Ok(took.took);
                }
                // A throttled applier is the operator's pause, not the write rate.
                if !self.throttled() {
                    unfit.add(&took);
                }
                if rounds == 1 || rounds.is_multiple_of(20) || unfit.rounds > 0 {
                    tracing::info!(
                        drain_ms = took.took.as_millis() as u64,
                        budget_ms = budget.as_millis() as u64,
                        written = took.written,
                        applied = took.applied,
                        rounds,
                        "backlog drain predicted not to fit half the drain budget (--fence-timeout, --max-lock-hold); catching up before locking"
                    );
                }
                if unfit.rounds >= self.options.retries && self.changes_received.is_some() {
                    return Err(self.outpaced(&unfit, budget));
                }
            }
        }
    }

    /// One round: emits a fence and waits for it up to `limit`. `None` when no write rate is
    /// known and the fence was not reached (the round is repeated).
    ///
    /// Errors: emitting the fence failed (exit 1), the applier failed (its class).
    async fn round(&self, limit: Duration) -> Result<Option<Round>> {
        let written = || self.changes_received.map(|f| f()).unwrap_or(0);
        let started = Instant::now();
        let (written_before, applied_before) = (written(), self.applier.status().changes);
        let n = self.fencer.emit().await?;
        // Wait for the fence in short slices, showing how far behind the applier is.
        let reached = loop {
            let behind = written().saturating_sub(self.applier.status().changes);
            self.show_wait(Some(Wait::Draining { behind }));
            let left = limit.saturating_sub(started.elapsed());
            match self.applier.wait_fence(n, left.min(SHOW_EVERY)).await {
                Ok(()) => break true,
                Err(_) if left > SHOW_EVERY => self.applier.check()?,
                Err(_) => break false,
            }
        };
        self.show_wait(None);
        self.applier.check()?;
        if !reached && self.changes_received.is_none() {
            return Ok(None);
        }
        Ok(Some(Round {
            took: started.elapsed(),
            written: written().saturating_sub(written_before),
            applied: self.applier.status().changes.saturating_sub(applied_before),
        }))
    }

    /// Whether the throttle checker reports a reason now (the applier then waits).
    fn throttled(&self) -> bool {
        self.options
            .throttle
            .as_ref()
            .is_some_and(|rx| !rx.borrow().reasons.is_empty())
    }

    /// The cutover gives up: the writes outpace the applier (exit 5).
    fn outpaced(&self, unfit: &Unfit, budget: Duration) -> anyhow::Error {
        let (write_rate, apply_rate) = unfit.rates();
        fail(
            FailureKind::LockBudget,
            format!(
                "cutover failed: the write rate on {} ({write_rate} changes/s) exceeds the apply rate ({apply_rate} changes/s): in {} catch-up rounds in a row the backlog did not shrink, so the drain under the lock cannot be predicted to fit half of {} ms (--fence-timeout, --max-lock-hold); no lock was taken and the original table is untouched. Run again when the writes are lighter",
                self.plan.original.qualified(),
                unfit.rounds,
                budget.as_millis()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfit_rounds_count_in_a_row_and_give_both_rates() {
        let mut unfit = Unfit::default();
        let slow = Round {
            took: Duration::from_secs(2),
            written: 2000,
            applied: 1000,
        };
        unfit.add(&slow);
        unfit.add(&slow);
        assert_eq!(unfit.rounds, 2);
        assert_eq!(unfit.rates(), (1000, 500));
        // A round that shrank the backlog starts the count over.
        unfit.add(&Round {
            took: Duration::from_secs(1),
            written: 10,
            applied: 900,
        });
        assert_eq!(unfit.rounds, 0);
        // No writes and nothing applied: the fence's round trip alone is too slow.
        unfit.add(&Round::default());
        assert_eq!(unfit.rounds, 1);
    }
}
