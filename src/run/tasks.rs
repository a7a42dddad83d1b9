//! The background tasks a run owns: the stream consumer and the applier (stopped on every
//! exit path), and the small tasks that feed the progress counters from them and from the
//! throttle checker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow};
use pglogrepl::lsn::Lsn;
use tokio::sync::watch;

use crate::ops::progress::{IndexBuild, Progress};
use crate::ops::throttle::ThrottleState;
use crate::phases::apply::{Applier, ApplyStatus};
use crate::phases::capture::stream::{StreamStatus, Streamer};

/// A spawned task aborted when this is dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Owns the stream consumer and the applier; stops both on every exit path.
pub(crate) struct Tasks {
    pub(crate) streamer: Option<Streamer>,
    pub(crate) applier: Option<Applier>,
}

impl Tasks {
    /// Fails if the stream consumer or the applier stopped with an error.
    pub(crate) fn check(&self) -> Result<()> {
        if let Some(s) = &self.streamer {
            s.check()?;
        }
        if let Some(a) = &self.applier {
            a.check()?;
        }
        Ok(())
    }

    /// The applier (once the catch-up started it).
    pub(crate) fn applier(&self) -> Result<&Applier> {
        self.applier.as_ref().ok_or_else(|| anyhow!("no applier"))
    }

    /// When a phase fails because the applier stopped, the cause is often the stream that
    /// fed it (a terminated WAL sender): report that error (exit code 4) rather than its
    /// consequence.
    pub(crate) fn stream_error_first(&self, e: anyhow::Error) -> anyhow::Error {
        match self.streamer.as_ref().map(|s| s.check()) {
            Some(Err(stream)) => stream.context(format!("{e:#}")),
            _ => e,
        }
    }

    /// Stops the applier, then the stream; the first error of either.
    pub(crate) async fn shutdown(&mut self) -> Result<()> {
        let mut first_error = None;
        if let Some(a) = self.applier.take()
            && let Err(e) = a.stop().await
        {
            first_error.get_or_insert(e);
        }
        if let Some(s) = self.streamer.take()
            && let Err(e) = s.stop().await
        {
            first_error.get_or_insert(e);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The applier's status, once there is an applier, for [`feed_stream_progress`].
pub(crate) type ApplyWatch = Arc<Mutex<Option<watch::Receiver<ApplyStatus>>>>;

/// Every 250 ms, copies the stream's position and the applier's progress into `progress`:
/// stream LSN, lag and backlog (bytes, from `start_lsn` until something is applied), changes
/// applied.
pub(crate) fn feed_stream_progress(
    progress: Arc<Progress>,
    stream: watch::Receiver<StreamStatus>,
    apply: ApplyWatch,
    start_lsn: Lsn,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        loop {
            let applied = apply
                .lock()
                .ok()
                .and_then(|w| w.as_ref().map(|r| r.borrow().clone()));
            let stream = stream.borrow().clone();
            progress.update(|s| {
                s.stream_lsn = stream.received.to_string();
                let head = stream.received.max(stream.server_wal_end);
                let done = applied
                    .as_ref()
                    .map(|a| a.applied)
                    .unwrap_or(start_lsn)
                    .max(start_lsn);
                s.lag_bytes = head.bytes_since(done);
                s.backlog_bytes = stream.received.bytes_since(done);
                s.received = stream.changes;
                s.spool_bytes = stream.spooled_bytes;
                if let Some(a) = &applied {
                    s.applied = a.changes;
                    s.lag_ms = lag_ms(a, s.received);
                }
            });
            progress.sample();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }))
}

/// The stream's lag in time: how long ago the last applied transaction committed, while
/// changes (of the `received`) wait to be applied; 0 when none wait.
fn lag_ms(applied: &ApplyStatus, received: u64) -> Option<u64> {
    if received <= applied.changes {
        return Some(0);
    }
    let committed = applied.commit_time?;
    Some(
        std::time::SystemTime::now()
            .duration_since(committed)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// Copies each throttle sample (reasons, replica lag, retained WAL, ...) into `progress` as
/// it arrives.
pub(crate) fn feed_throttle_progress(
    progress: Arc<Progress>,
    mut rx: watch::Receiver<ThrottleState>,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        loop {
            let sample = rx.borrow_and_update().clone();
            progress.update(|s| s.throttle = sample);
            if rx.changed().await.is_err() {
                return;
            }
        }
    }))
}

/// Copies each pacing state (`--max-write-latency`) into `progress` as it arrives;
/// `copy_workers` and `chunk_time` are the configured values the pacing scales.
pub(crate) fn feed_pacing_progress(
    progress: Arc<Progress>,
    mut rx: watch::Receiver<crate::ops::pacing::PaceState>,
    copy_workers: usize,
    chunk_time: std::time::Duration,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        loop {
            let state = rx.borrow_and_update().clone();
            progress.update(|s| {
                s.pacing = Some(crate::ops::progress::PacingView {
                    state,
                    copy_workers,
                    chunk_time,
                });
            });
            if rx.changed().await.is_err() {
                return;
            }
        }
    }))
}

/// A resumable run's heartbeat, on a session of its own, every 10 s: marks the checkpoint
/// alive (`--resume-within` counts from the last beat) and samples the WAL the slot retains
/// into `progress`. A failed beat is logged and retried at the next one.
pub(crate) fn heartbeat(
    config: crate::conninfo::ConnInfo,
    checkpoint: crate::phases::checkpoint::Checkpoint,
    slot: String,
    progress: Arc<Progress>,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut client = None;
        loop {
            if client.is_none() {
                client = crate::conninfo::connect(&config).await.ok();
            }
            if let Some(c) = &client {
                match beat(c, &checkpoint, &slot).await {
                    Ok(retained) => progress.update(|s| s.retained_wal_bytes = retained),
                    Err(e) => {
                        tracing::debug!("checkpoint heartbeat failed: {e:#}");
                        client = None;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    }))
}

/// One beat: the checkpoint is alive; returns the slot's retained WAL (bytes).
async fn beat(
    client: &tokio_postgres::Client,
    checkpoint: &crate::phases::checkpoint::Checkpoint,
    slot: &str,
) -> Result<Option<u64>> {
    checkpoint.alive(client).await?;
    let retained: Option<i64> = client
        .query_opt(
            "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots
             WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .and_then(|r| r.get(0));
    Ok(retained.map(|b| b.max(0) as u64))
}

/// Every 500 ms, copies the index build of backend `pid` (the control session) from
/// `pg_stat_progress_create_index` into `progress` (blocks while the table is scanned, tuples
/// while they are sorted and loaded), on a session of its own; clears it when dropped.
///
/// Errors: the session cannot be opened (exit 1).
pub(crate) async fn feed_index_progress(
    config: &crate::conninfo::ConnInfo,
    pid: i32,
    progress: Arc<Progress>,
) -> Result<IndexFeed> {
    let client = crate::conninfo::connect(config).await?;
    client
        .batch_execute("SET application_name = 'doppel progress'")
        .await?;
    let feed = progress.clone();
    let task = tokio::spawn(async move {
        loop {
            let row = client
                .query_opt(
                    "SELECT coalesce(i.relname::text, ''), p.phase,
                            CASE WHEN p.blocks_total > 0 THEN p.blocks_done ELSE p.tuples_done END,
                            CASE WHEN p.blocks_total > 0 THEN p.blocks_total ELSE p.tuples_total END,
                            p.blocks_total > 0
                     FROM pg_stat_progress_create_index p
                     LEFT JOIN pg_class i ON i.oid = p.index_relid
                     WHERE p.pid = $1",
                    &[&pid],
                )
                .await;
            let build = match row {
                Ok(Some(r)) => Some(IndexBuild {
                    name: r.get(0),
                    phase: r.get(1),
                    done: r.get::<_, i64>(2).max(0) as u64,
                    total: r.get::<_, i64>(3).max(0) as u64,
                    unit: if r.get(4) { "blocks" } else { "tuples" },
                }),
                _ => None,
            };
            feed.update(|s| s.index = build);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    Ok(IndexFeed {
        _task: AbortOnDrop(task),
        progress,
    })
}

/// The index build feed of [`feed_index_progress`]; dropping it stops it and clears the
/// build from the progress.
pub(crate) struct IndexFeed {
    _task: AbortOnDrop,
    progress: Arc<Progress>,
}

impl Drop for IndexFeed {
    fn drop(&mut self) {
        self.progress.update(|s| s.index = None);
    }
}
