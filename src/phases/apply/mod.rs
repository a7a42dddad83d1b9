//! The applier: replays spooled pgoutput transactions into the shadow table, in commit order,
//! through the copy's own projection (docs/design.md §2, ordering (a)).
//!
//! It starts only after the backfill and the shadow's primary key exist, so every event is
//! applied after every copied chunk: each key ends at its last write, either the copy (latest
//! at copy time) or a later event. The rules that make replay idempotent and never trust a
//! partial image:
//!
//! - INSERT, and UPDATE with a complete new row → upsert of the full row.
//! - UPDATE whose new row lacks unchanged TOASTed values (pgoutput `u`) → set the sent
//!   columns on the key; if the key is absent, re-read the row from the original (under a
//!   snapshot in which the event's transaction is visible) and upsert it, or skip it if the
//!   original no longer has it (a later event removes or moves it). With a `USING`
//!   expression in play the sent columns may not suffice, so such rows are always re-read.
//! - Primary-key change k1→k2 → delete k1, then the rules above for k2.
//! - DELETE → delete by key if present.
//! - TRUNCATE, or a Relation message whose columns differ from the original's → abort: DDL
//!   ran on the original during the migration.
//!
//! Many source transactions go into one shadow transaction. While only the primary key
//! constrains the shadow (the whole backlog, and afterwards when the new schema has no other
//! unique or exclusion index), changes are collapsed to the last write per key and applied as
//! one multi-row statement per kind (`unnest` of `text[]` parameters); otherwise consecutive
//! changes of one kind on distinct keys share a statement, in source order, so a unique index
//! never sees a state the original did not pass through. Statements are pipelined. Progress
//! (applied LSN, fences) is published only after the shadow transaction commits.
//!
//! With more sessions ([`ApplyOptions::sessions`]), a collapsed batch is split by a hash of
//! the primary key across them, one transaction each; progress is published only after all of
//! them committed (the `shares` module; docs/design.md §2.5).
//!
//! Test hooks (the `pause-points` feature, see [`crate::testing`]): the race points `applied`
//! and `visibility-wait`, and the deliberately broken orderings that concern the apply, from
//! the probe the applier is spawned with.

mod changed_keys;
mod changes;
mod exec;
mod relation;
mod session;
mod shares;
mod visibility;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::phases::capture::spool::SpoolReader;
use crate::plan::Plan;
use crate::testing::Probe;
use pglogrepl::lsn::Lsn;

pub use changed_keys::ChangedKeys;
pub use changes::Key;
pub use visibility::wait_visible;
use worker::Worker;

/// Source changes per shadow transaction (a soft limit: transactions are never split).
pub const BATCH_CHANGES: usize = 20_000;
/// Rows per multi-row statement.
pub const RUN_ROWS: usize = 2_000;
/// Apply sessions by default (`--apply-workers`; BENCHMARKS.md, "Parallel apply").
pub const DEFAULT_WORKERS: usize = 2;

/// What the applier has durably done.
#[derive(Debug, Clone, Default)]
pub struct ApplyStatus {
    /// End LSN of the last source transaction whose changes are committed in the shadow.
    pub applied: Lsn,
    /// Row changes applied.
    pub changes: u64,
    /// Source transactions applied.
    pub transactions: u64,
    /// Commit time of the last source transaction applied (for the lag in time).
    pub commit_time: Option<std::time::SystemTime>,
    /// Highest fence number seen (see [`crate::fence`]); everything before it is applied.
    pub fence: u64,
    /// True while paused at a transaction boundary.
    pub paused: bool,
    /// True when the last batch drained the spool.
    pub idle: bool,
    /// Why the applier stopped, when it failed.
    pub error: Option<String>,
    /// The failure's class, when it had one.
    pub error_kind: Option<crate::failure::FailureKind>,
    /// The failure was a lost connection (see [`crate::failure::is_transient`]).
    pub error_transient: bool,
    /// With [`ApplyOptions::after_marker`]: whether the marked transaction has been seen (the
    /// changes after it are being applied).
    pub past_marker: bool,
    /// With [`ApplyOptions::tolerant`]: keys whose latest change the target rejected (a value
    /// out of the old type's range, a failing cast, a constraint), with the server's reason;
    /// a key leaves the list when a later change of it is applied.
    pub rejected: Vec<(Vec<Option<String>>, String)>,
}

/// How an applier runs.
#[derive(Debug, Default)]
pub struct ApplyOptions {
    /// While this reports throttle reasons, no new batch starts (the spool absorbs the stream
    /// meanwhile). `None`: never held.
    pub hold: Option<watch::Receiver<crate::ops::throttle::ThrottleState>>,
    /// `--max-write-latency`: the pause after each batch ([`crate::ops::pacing`]). `None`:
    /// never paced.
    pub pace: Option<crate::ops::pacing::PaceHandle>,
    /// The run's test hooks (`Probe::default()`: none).
    pub probe: Probe,
    /// Apply only what commits after the transaction that carries the logical message with
    /// the plan's message prefix and this content: every transaction up to and including it is
    /// skipped (a revert window's stream begins before the cutover commits and carries the
    /// applier's own writes to the shadow until then).
    pub after_marker: Option<String>,
    /// A change the target rejects (SQLSTATE classes 22 and 23) does not stop the applier: it
    /// is skipped and its key reported in [`ApplyStatus::rejected`] (a revert window keeps
    /// streaming and says the revert is no longer lossless).
    pub tolerant: bool,
    /// A resumable run's checkpoint: each batch records, in its own transaction, the end of
    /// its last source transaction and the spool offset after it.
    pub checkpoint: Option<crate::phases::checkpoint::Checkpoint>,
    /// A resumed run: the end of the last source transaction the checkpoint says is in the
    /// shadow. Transactions that committed before it are skipped (a spool read again from an
    /// earlier position, or a stream the server sends again after a crash), and the
    /// original's Relation message is taken as already checked (the resume compared the
    /// catalog fingerprint; the interrupted stream sent the message before the spool position).
    pub resume_after: Option<Lsn>,
    /// More sessions for the parallel apply (`--apply-workers N`: N − 1 of them, each
    /// connected like the applier's own). While changes are collapsed per key and the applier
    /// is not tolerant, each flush is split by a hash of the primary key across the applier's
    /// session and these, each applying its share in its own transaction; the batch's
    /// transactions all commit before its progress is published (docs/design.md §2.5).
    /// Empty: one session, as always.
    pub sessions: Vec<Client>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Run,
    Pause,
    Stop,
}

/// A running applier task.
pub struct Applier {
    collapse: Arc<std::sync::atomic::AtomicBool>,
    control: watch::Sender<Control>,
    status: watch::Receiver<ApplyStatus>,
    handle: JoinHandle<Result<()>>,
}

impl Applier {
    /// Prepares the apply statements on `client` (a session of its own) and starts the task,
    /// paused. Errors: a statement does not prepare (the shadow lacks its primary key).
    ///
    /// See [`ApplyOptions`] for how it runs.
    pub async fn spawn(
        client: Client,
        plan: Arc<Plan>,
        reader: SpoolReader,
        options: ApplyOptions,
    ) -> Result<Applier> {
        let collapse = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let worker = Worker::new(client, plan, reader, collapse.clone(), options).await?;
        let (control_tx, control_rx) = watch::channel(Control::Pause);
        let (status_tx, status_rx) = watch::channel(ApplyStatus {
            paused: true,
            ..ApplyStatus::default()
        });
        let handle = tokio::spawn(async move {
            let result = worker.run(control_rx, &status_tx).await;
            if let Err(e) = &result {
                let kind = crate::failure::kind_of(e);
                let transient = crate::failure::is_transient(e);
                status_tx.send_modify(|s| {
                    s.error = Some(format!("{e:#}"));
                    s.error_kind = kind;
                    s.error_transient = transient;
                });
            }
            result
        });
        Ok(Applier {
            collapse,
            control: control_tx,
            status: status_rx,
            handle,
        })
    }

    /// Whether changes to the same key within a batch may be collapsed to the last write and
    /// applied in any key order (true by default). Only sound while nothing but the primary
    /// key constrains the shadow: turn it off before unique or exclusion indexes are built.
    /// Takes effect at the next batch.
    pub fn set_collapse(&self, collapse: bool) {
        self.collapse
            .store(collapse, std::sync::atomic::Ordering::SeqCst);
    }

    /// Lets the applier run.
    pub fn resume(&self) {
        self.control.send_replace(Control::Run);
    }

    /// Asks the applier to stop at the next transaction boundary and waits until it has.
    pub async fn pause(&self) -> Result<()> {
        self.control.send_replace(Control::Pause);
        let mut status = self.status.clone();
        loop {
            self.check()?;
            if status.borrow_and_update().paused {
                return Ok(());
            }
            tokio::select! {
                changed = status.changed() => { if changed.is_err() { self.check()?; bail!("applier stopped"); } }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Latest status.
    pub fn status(&self) -> ApplyStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status updates.
    pub fn watch(&self) -> watch::Receiver<ApplyStatus> {
        self.status.clone()
    }

    /// Fails with the applier's error if its task has ended.
    pub fn check(&self) -> Result<()> {
        if self.handle.is_finished() {
            let (why, kind, transient) = {
                let s = self.status.borrow();
                (s.error.clone(), s.error_kind, s.error_transient)
            };
            let message = format!(
                "applying streamed changes failed: {}",
                why.unwrap_or_else(|| "the applier stopped".into())
            );
            return Err(match kind {
                Some(kind) => crate::failure::fail(kind, message),
                None if transient => crate::failure::Disconnected(message).into(),
                None => anyhow!(message),
            });
        }
        Ok(())
    }

    /// Waits until fence `n` is applied, or `timeout` passes (error).
    pub async fn wait_fence(&self, n: u64, timeout: Duration) -> Result<()> {
        let mut status = self.status.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.check()?;
            if status.borrow_and_update().fence >= n {
                return Ok(());
            }
            tokio::select! {
                changed = status.changed() => { if changed.is_err() { self.check()?; bail!("applier stopped"); } }
                _ = tokio::time::sleep_until(deadline) => bail!("fence {n} not applied within {} ms", timeout.as_millis()),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Stops the task at the next boundary and returns its result.
    pub async fn stop(self) -> Result<()> {
        self.control.send_replace(Control::Stop);
        match tokio::time::timeout(Duration::from_secs(30), self.handle).await {
            Ok(joined) => joined.context("applier task panicked")?,
            Err(_) => bail!("the applier did not stop within 30 s"),
        }
    }
}
