//! The direct and online strategies (docs/design.md §1.10): the steps preflight planned, run on
//! the table itself, in order.
//!
//! - A brief step (`brief.rs`) takes `LOCK TABLE .. IN <mode> MODE` under `lock_timeout` (the
//!   `--lock-timeout`, or the control socket's live value) and runs its statements in the same
//!   short transaction; a lock timeout rolls back, and the next attempt follows the cutover's
//!   backoff with jitter, at most `--cutover-retries` attempts (then exit 5). The lock hold,
//!   from grant to commit, is measured.
//! - A scan (`scan.rs`) is a `VALIDATE CONSTRAINT` or a `CREATE UNIQUE INDEX CONCURRENTLY`,
//!   under SHARE UPDATE EXCLUSIVE (reads and writes go on). PostgreSQL cannot pause it: the
//!   throttles are waited for before it starts, and an abort cancels it. When it fails
//!   because rows violate the constraint, the rows are named (`phases::violations`) and the
//!   run ends with exit 8.
//!
//! What an online recipe created (a `NOT VALID` constraint, a helper check, an index) is
//! removed when the recipe does not complete, whatever ends it: a violation, an abort, a lock
//! budget exhausted. Steps of completed clauses stay.

mod brief;
mod scan;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio_postgres::Client;

use crate::cancel::Cancel;
use crate::model::catalog::Table;
use crate::model::phase::Phase;
use crate::ops::control::Controls;
use crate::ops::progress::Progress;
use crate::ops::throttle::Throttler;
use crate::plan::{Action, DirectPlan, LockMode, Step};

/// How the direct steps run.
pub struct DirectOptions<'a> {
    /// `lock_timeout` of each brief step's attempt (the control socket's `lock-timeout=MS`
    /// takes precedence).
    pub lock_timeout: Duration,
    /// Attempts of each brief step before giving up (exit 5).
    pub retries: u32,
    /// Live settings from the control socket.
    pub controls: Option<&'a Arc<Controls>>,
    /// Waited for before each step; its critical conditions abort.
    pub throttle: Option<&'a Throttler>,
    /// Ctrl-C, SIGTERM, `abort`: checked between attempts, cancels a scan.
    pub cancel: Cancel,
    /// The status line's counters.
    pub progress: Option<&'a Progress>,
}

/// What one step did.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// The step, as the plan describes it.
    pub what: String,
    /// The lock it took on the table.
    pub lock: LockMode,
    /// Attempts made (brief steps; 1 for scans).
    pub attempts: u32,
    /// Time spent waiting for the lock in the attempt that got it.
    pub lock_wait: Duration,
    /// Lock held: from grant to commit for a brief step, the whole statement for a scan.
    pub held: Duration,
    /// Wall time of the step, retries included.
    pub elapsed: Duration,
}

/// What the direct steps did.
#[derive(Debug, Clone, Default)]
pub struct DirectReport {
    /// Each step, in order.
    pub steps: Vec<StepReport>,
    /// Wall time of all steps.
    pub elapsed: Duration,
}

impl DirectReport {
    /// The longest hold of a lock that blocks writes (SHARE ROW EXCLUSIVE or stronger).
    pub fn longest_blocking_hold(&self) -> Duration {
        self.steps
            .iter()
            .filter(|s| s.lock >= LockMode::ShareRowExclusive)
            .map(|s| s.held)
            .max()
            .unwrap_or_default()
    }
}

/// One run of a direct plan on one table.
pub struct Direct<'a> {
    /// The steps.
    pub plan: &'a DirectPlan,
    /// The table they run on.
    pub table: &'a Table,
    /// Settings.
    pub options: DirectOptions<'a>,
}

impl Direct<'_> {
    /// Runs the steps on `client` (a session of its own), in order.
    ///
    /// Errors: exit 5 when a brief step's attempts all time out on the lock; exit 8 when a
    /// scan finds rows violating the constraint (named in the message) or a statement fails
    /// on the rows; exit 3 on abort; exit 7 on a critical threshold; otherwise the server's
    /// error (exit 1). Before returning an error, what the unfinished recipes created is
    /// removed (and the message says what could not be).
    pub async fn run(&self, client: &mut Client) -> Result<DirectReport> {
        let started = Instant::now();
        let mut pending: Vec<(usize, String)> = Vec::new();
        let mut steps = Vec::new();
        for (n, step) in self.plan.steps.iter().enumerate() {
            if let Some(p) = self.options.progress {
                p.update(|s| {
                    s.phase = Some(Phase::Direct);
                    s.step = Some(format!(
                        "step {}/{}: {}",
                        n + 1,
                        self.plan.steps.len(),
                        step.what
                    ));
                });
            }
            let result = match self.check() {
                Ok(()) => self.step(client, step).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(report) => {
                    tracing::info!(
                        step = %report.what,
                        lock = report.lock.sql(),
                        attempts = report.attempts,
                        held_ms = report.held.as_secs_f64() * 1000.0,
                        "direct step done"
                    );
                    pending.extend(step.creates.iter().cloned());
                    pending.retain(|(recipe, _)| !step.finishes.contains(recipe));
                    steps.push(report);
                }
                Err(e) => {
                    if matches!(step.action, Action::BuildIndex { .. }) {
                        pending.extend(step.creates.iter().cloned());
                    }
                    let (removed, left) = self.undo(client, &pending).await;
                    return Err(with_undo(e, &steps, &removed, &left));
                }
            }
        }
        Ok(DirectReport {
            steps,
            elapsed: started.elapsed(),
        })
    }

    /// Runs one step (after the throttles clear).
    async fn step(&self, client: &mut Client, step: &Step) -> Result<StepReport> {
        if let Some(t) = self.options.throttle {
            t.wait_clear().await?;
        }
        match &step.action {
            Action::Brief(sql) => self.brief(client, sql, step.lock, &step.what).await,
            Action::Validate {
                constraint,
                violation,
            } => self.validate(client, step, constraint, violation).await,
            Action::BuildIndex { sql, violation, .. } => {
                self.build_index(client, step, sql, violation).await
            }
        }
    }

    /// Fails on the cancel signal or a critical throttle condition.
    fn check(&self) -> Result<()> {
        self.options.cancel.check()?;
        if let Some(t) = self.options.throttle {
            t.check_critical()?;
        }
        Ok(())
    }

    /// The live `lock_timeout`.
    fn lock_timeout(&self) -> Duration {
        self.options
            .controls
            .map(|c| c.lock_timeout())
            .unwrap_or(self.options.lock_timeout)
    }

    /// Removes what unfinished recipes created, newest first; returns the statements that
    /// ran, and those that failed with why.
    async fn undo(
        &self,
        client: &mut Client,
        pending: &[(usize, String)],
    ) -> (Vec<String>, Vec<String>) {
        let mut removed = Vec::new();
        let mut left = Vec::new();
        for (_, sql) in pending.iter().rev() {
            let result = if sql.starts_with("DROP INDEX CONCURRENTLY") {
                client.batch_execute(sql).await.map_err(anyhow::Error::new)
            } else {
                let what = format!("undo: {sql}");
                self.brief(
                    client,
                    std::slice::from_ref(sql),
                    LockMode::AccessExclusive,
                    &what,
                )
                .await
                .map(|_| ())
            };
            match result {
                Ok(()) => {
                    tracing::info!("removed what an unfinished online recipe created: {sql}");
                    removed.push(sql.clone());
                }
                Err(e) => left.push(format!("{sql} ({e:#})")),
            }
        }
        (removed, left)
    }
}

/// `e` with what the completed steps did, what was removed and what could not be.
fn with_undo(
    e: anyhow::Error,
    done: &[StepReport],
    removed: &[String],
    left: &[String],
) -> anyhow::Error {
    let mut note = String::new();
    if !done.is_empty() {
        note.push_str(&format!(
            "; completed before it: {}",
            done.iter()
                .map(|s| s.what.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !removed.is_empty() {
        note.push_str(&format!("; removed: {}", removed.join("; ")));
    }
    if left.is_empty() {
        note.push_str("; nothing of the unfinished clauses is left on the table");
    } else {
        note.push_str(&format!(
            "; could not remove, run yourself: {}",
            left.join("; ")
        ));
    }
    match crate::failure::kind_of(&e) {
        Some(kind) => crate::failure::fail(kind, format!("{e:#}{note}")),
        None => anyhow::anyhow!("{e:#}{note}"),
    }
}
