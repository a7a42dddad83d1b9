//! Surviving transient faults (docs/design.md §2.13): a resumable run that loses a
//! connection (a server restart, `pg_terminate_backend` of one of its sessions or of its WAL
//! sender, a network fault, a failover to a standby that has its slot) stops its stream and
//! applier, reconnects with backoff for up to `--reconnect-timeout` (state `reconnecting`),
//! and resumes from its checkpoint in the same process, exactly as `--resume` would. A fault
//! during the cutover is resolved from the catalog first: if the cutover committed, the run
//! only finishes.

use std::time::{Duration, Instant};

use anyhow::Result;
use tokio_postgres::Client;

use super::resume::{self, Finished};
use super::setup::Capture;
use super::steps::Done;
use super::{ADVISORY_LOCK_CLASS, Run};
use crate::conninfo;
use crate::failure::{self, Check, FailureKind, Refusal, Refused, fail};
use crate::model::phase::Phase;
use crate::ops::progress::format_duration;
use crate::phases::checkpoint::Checkpoint;

/// How the phases ended.
pub(super) enum Reached {
    /// The cutover committed in this process.
    CutOver(Box<(Done, Capture)>),
    /// After a fault, the catalog showed the cutover committed: the run was finished.
    FoundCommitted(Box<Finished>),
}

/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Faults one run survives at most: a fault that comes back after every reconnect is not
/// transient, and the run stops (keeping its checkpoint) rather than loop.
const MAX_FAULTS: u32 = 50;

impl Run<'_> {
    /// Runs [`Run::attempt`] until the cutover commits; after a transient fault of a
    /// resumable run ([`Run::reconnectable`]) reconnects and attempts again from the
    /// checkpoint.
    ///
    /// Errors: a fault that is not transient, or one the run could not reconnect after
    /// within `--reconnect-timeout` (exit 4, the checkpoint kept).
    pub(super) async fn until_cutover(&mut self) -> Result<Reached> {
        let mut faults = 0;
        loop {
            match self.attempt().await {
                Ok(reached) => return Ok(Reached::CutOver(Box::new(reached))),
                Err(e) if self.reconnectable(&e) && faults < MAX_FAULTS => {
                    faults += 1;
                    if let Some(finished) = self.reconnect(e).await? {
                        return Ok(Reached::FoundCommitted(Box::new(finished)));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A resumable run (its checkpoint written past the setup) survives a transient fault.
    fn reconnectable(&self, e: &anyhow::Error) -> bool {
        self.checkpoint.is_some() && !self.created.cut_over && failure::is_transient(e)
    }

    /// Reconnects after `cause`, with exponential backoff (200 ms doubling up to 5 s) until
    /// `--reconnect-timeout`; then, from the catalog, either finishes a cutover that
    /// committed (returned) or loads the checkpoint to resume from.
    ///
    /// Errors: cancelled (exit 3), a resume refusal (exit 2), or the timeout (exit 4).
    async fn reconnect(&mut self, cause: anyhow::Error) -> Result<Option<Finished>> {
        let timeout = self.options.reconnect_timeout;
        tracing::warn!(
            "fault: {cause:#}; reconnecting for up to {} to resume from the checkpoint",
            format_duration(timeout)
        );
        self.enter(Phase::Reconnecting);
        let started = Instant::now();
        let mut delay = Duration::from_millis(200);
        for attempt in 1.. {
            match self.reopen().await {
                Ok(finished) => {
                    tracing::info!(
                        attempts = attempt,
                        secs = started.elapsed().as_secs_f64(),
                        "reconnected"
                    );
                    return Ok(finished);
                }
                Err(e) if !failure::is_transient(&e) => return Err(e),
                Err(e) if started.elapsed() + delay > timeout => {
                    return Err(fail(
                        FailureKind::StreamLost,
                        format!(
                            "lost the connection to the server ({cause:#}) and could not reconnect within --reconnect-timeout {}: {e:#}. The original table is untouched and the checkpoint is kept: run the same command with --resume once the server is reachable",
                            format_duration(timeout)
                        ),
                    ));
                }
                Err(e) => {
                    tracing::info!("reconnect attempt {attempt} failed: {e:#}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.cancel.cancelled() => return Err(self.aborted("reconnecting")),
                    }
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            }
        }
        unreachable!("the reconnect loop returns")
    }

    /// One reconnect: a new control session; the cutover's outcome from the catalog (a
    /// committed one is finished); the table's advisory lock (the old session's, if the
    /// server still has it, is terminated); the checkpoint, checked as `--resume` checks it.
    async fn reopen(&mut self) -> Result<Option<Finished>> {
        if let Some(finished) = resume::finish_committed(self.config, self.options).await? {
            return Ok(Some(finished));
        }
        let control = conninfo::connect(self.config).await?;
        control
            .batch_execute(&format!(
                "SET application_name = 'doppel'; SET lock_timeout = '5s'; {}",
                crate::sql::WORKING_SESSION
            ))
            .await?;
        self.take_lock(&control).await?;
        self.control_pid = control
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        let oid = self.plan.original.oid;
        let Some(saved) = Checkpoint::load(&control, oid).await? else {
            anyhow::bail!("the run's checkpoint disappeared (was doppel cleanup run?)");
        };
        let refusals = resume::check(&control, &self.plan, self.options, &saved).await?;
        if !refusals.is_empty() {
            return Err(Refused(refusals).into());
        }
        self.control = control;
        self.resume = Some(saved);
        Ok(None)
    }

    /// Takes the table's advisory lock on `control`. The lost control session may still hold
    /// it if the server has not noticed the fault yet: that session (its backend pid was
    /// recorded) is terminated and the lock taken again.
    ///
    /// Errors: another doppel process holds it ([`Check::ConcurrentRun`]), or a query failed.
    async fn take_lock(&self, control: &Client) -> Result<()> {
        let oid = self.plan.original.oid;
        for _ in 0..50 {
            let locked: bool = control
                .query_one(
                    "SELECT pg_try_advisory_lock($1, $2::oid::int)",
                    &[&ADVISORY_LOCK_CLASS, &oid],
                )
                .await?
                .get(0);
            if locked {
                return Ok(());
            }
            let old_alive: bool = control
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
                    &[&self.control_pid],
                )
                .await?
                .get(0);
            if old_alive {
                tracing::warn!(
                    "terminating pid {}, the lost control session still holding the run's lock",
                    self.control_pid
                );
                control
                    .execute("SELECT pg_terminate_backend($1)", &[&self.control_pid])
                    .await?;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Refused::from(Refusal::without_fix(
            Check::ConcurrentRun,
            format!(
                "after reconnecting, another session holds the lock on {}: another doppel run may have started",
                self.plan.original.qualified()
            ),
        ))
        .into())
    }
}
