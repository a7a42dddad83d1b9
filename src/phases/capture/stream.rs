//! The replication stream consumer: reads pgoutput messages from the slot without pause,
//! appends them to the spool, and confirms to the server (standby status update, flush LSN)
//! only what is synced to the spool (docs/design.md §2: "confirm the LSN only after the spool is
//! synced"). While no transaction is open it confirms keepalive positions too, so an idle
//! stream does not pin WAL.
//!
//! It runs as its own task so that throttling or pausing the copy and the applier never
//! stops consumption: the backlog grows on doppel's disk, not in the primary's `pg_wal`.
//!
//! Test-only: the pause point `spooled` (see [`crate::pause`]) stops the consumer once a
//! source transaction's Commit is in the spool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::phases::capture::spool::SpoolWriter;
use crate::testing::{Probe, pause_point};
use pglogrepl::client::{ReplicationMessage, ReplicationStream};
use pglogrepl::lsn::Lsn;

/// How often the spool is synced and the position confirmed.
pub const STATUS_INTERVAL: Duration = Duration::from_millis(500);

/// What the consumer has done so far.
#[derive(Debug, Clone, Default)]
pub struct StreamStatus {
    /// Highest WAL position received in a message.
    pub received: Lsn,
    /// Position confirmed to the server as flushed (synced to the spool).
    pub confirmed: Lsn,
    /// Server's WAL end from the latest keepalive.
    pub server_wal_end: Lsn,
    /// Messages received.
    pub messages: u64,
    /// Transactions received (Commit messages).
    pub transactions: u64,
    /// Row changes received (Insert, Update and Delete messages): the write rate's measure,
    /// comparable with the applier's [`ApplyStatus::changes`](crate::phases::apply::ApplyStatus).
    pub changes: u64,
    /// Bytes in the spool.
    pub spooled_bytes: u64,
    /// Why the consumer stopped, when it failed.
    pub error: Option<String>,
    /// The consumer stopped because the spool's filesystem is full (ENOSPC).
    pub disk_full: bool,
}

/// A running consumer task.
pub struct Streamer {
    stop: Arc<Notify>,
    handle: JoinHandle<Result<()>>,
    status: watch::Receiver<StreamStatus>,
}

impl Streamer {
    /// Starts consuming `stream` into `spool`; `probe` carries the run's test hooks (the
    /// `spooled` pause point).
    pub fn spawn(stream: ReplicationStream, spool: SpoolWriter, probe: Probe) -> Streamer {
        let stop = Arc::new(Notify::new());
        let (tx, rx) = watch::channel(StreamStatus::default());
        let handle = tokio::spawn(consume(stream, spool, stop.clone(), tx, probe));
        Streamer {
            stop,
            handle,
            status: rx,
        }
    }

    /// Latest status.
    pub fn status(&self) -> StreamStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status updates.
    pub fn watch(&self) -> watch::Receiver<StreamStatus> {
        self.status.clone()
    }

    /// Fails if the consumer task has stopped with an error: a lost connection (exit 4,
    /// [`crate::failure::FailureKind::StreamLost`]) or a full spool filesystem (exit 9,
    /// [`crate::failure::FailureKind::DiskFull`]).
    pub fn check(&self) -> Result<()> {
        if self.handle.is_finished() {
            let (why, disk_full) = {
                let s = self.status.borrow();
                (s.error.clone(), s.disk_full)
            };
            if disk_full {
                return Err(crate::failure::fail(
                    crate::failure::FailureKind::DiskFull,
                    format!(
                        "the change spool's filesystem is full: {}; the original table is untouched. Free space there; a resumable run kept its checkpoint and spool: then run it again with --resume",
                        why.unwrap_or_default()
                    ),
                ));
            }
            return Err(crate::failure::fail(
                crate::failure::FailureKind::StreamLost,
                format!(
                    "the replication stream stopped: {}; the original table is untouched",
                    why.unwrap_or_else(|| "unknown reason".into())
                ),
            ));
        }
        Ok(())
    }

    /// Stops the consumer: syncs the spool, confirms, closes the connection (the server then
    /// drops a TEMPORARY slot). Returns the task's error if it had failed.
    pub async fn stop(self) -> Result<()> {
        self.stop.notify_one();
        match tokio::time::timeout(Duration::from_secs(10), self.handle).await {
            Ok(joined) => joined.context("stream task panicked")?,
            Err(_) => bail!("the replication stream did not close within 10 s"),
        }
    }
}

async fn consume(
    stream: ReplicationStream,
    spool: SpoolWriter,
    stop: Arc<Notify>,
    status: watch::Sender<StreamStatus>,
    probe: Probe,
) -> Result<()> {
    let result = consume_inner(stream, spool, stop, &status, &probe).await;
    if let Err(e) = &result {
        let disk_full = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(crate::failure::is_disk_full)
        });
        status.send_modify(|s| {
            s.error = Some(format!("{e:#}"));
            s.disk_full = disk_full;
        });
    }
    result
}

async fn consume_inner(
    mut stream: ReplicationStream,
    mut spool: SpoolWriter,
    stop: Arc<Notify>,
    status: &watch::Sender<StreamStatus>,
    probe: &Probe,
) -> Result<()> {
    let mut tick = tokio::time::interval(STATUS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_transaction = false;
    // The transaction being received (for the test-only `spooled` pause point).
    let mut xid = 0u32;
    let mut last_commit_end = Lsn::INVALID;
    let mut idle_position = Lsn::INVALID;
    let mut st = StreamStatus::default();
    let mut last_publish = Instant::now();
    loop {
        tokio::select! {
            _ = stop.notified() => {
                let confirm = confirmable(in_transaction, last_commit_end, idle_position);
                spool.append_confirm(confirm)?;
                spool.sync()?;
                stream.send_standby_status(st.received, confirm, confirm, false).await.ok();
                stream.close().await.ok();
                return Ok(());
            }
            message = stream.recv() => {
                let message = message.context("replication stream failed")?;
                match message {
                    None => bail!("the server ended the replication stream (was the walsender terminated?)"),
                    Some(ReplicationMessage::XLogData { wal_start, wal_end, data, .. }) => {
                        spool.append(wal_start, &data)?;
                        st.messages += 1;
                        if matches!(data.first(), Some(b'I' | b'U' | b'D')) {
                            st.changes += 1;
                        }
                        st.received = st.received.max(wal_end).max(wal_start);
                        match data.first() {
                            Some(b'B') => {
                                in_transaction = true;
                                xid = begin_xid(&data).unwrap_or(0);
                            }
                            Some(b'C') => {
                                in_transaction = false;
                                if let Some(end) = commit_end_lsn(&data) {
                                    last_commit_end = last_commit_end.max(end);
                                    st.received = st.received.max(end);
                                }
                                st.transactions += 1;
                                spool.publish()?;
                                last_publish = Instant::now();
                                pause_point!(
                                    probe,
                                    "spooled",
                                    format!("xid={xid}"),
                                    |c: &str| crate::testing::names_xid(c, &[xid])
                                );
                            }
                            Some(b'M') if !in_transaction => {
                                spool.publish()?;
                                last_publish = Instant::now();
                            }
                            _ => {
                                if last_publish.elapsed() > Duration::from_millis(50) {
                                    spool.publish()?;
                                    last_publish = Instant::now();
                                }
                            }
                        }
                    }
                    Some(ReplicationMessage::PrimaryKeepalive { wal_end, reply_requested, .. }) => {
                        st.server_wal_end = st.server_wal_end.max(wal_end);
                        if !in_transaction {
                            idle_position = idle_position.max(wal_end);
                        }
                        if reply_requested {
                            let confirm = confirmable(in_transaction, last_commit_end, idle_position);
                            spool.append_confirm(confirm)?;
                            spool.sync()?;
                            st.confirmed = st.confirmed.max(confirm);
                            stream.send_standby_status(st.received, st.confirmed, st.confirmed, false).await?;
                        }
                    }
                }
                st.spooled_bytes = spool.len();
                status.send_replace(st.clone());
            }
            _ = tick.tick() => {
                let confirm = confirmable(in_transaction, last_commit_end, idle_position);
                if confirm > st.confirmed {
                    spool.append_confirm(confirm)?;
                }
                spool.sync()?;
                last_publish = Instant::now();
                st.confirmed = st.confirmed.max(confirm);
                st.spooled_bytes = spool.len();
                stream.send_standby_status(st.received, st.confirmed, st.confirmed, false).await?;
                status.send_replace(st.clone());
            }
        }
    }
}

/// The position that may be confirmed: the end of the last spooled commit, or the latest
/// keepalive position when no transaction is open.
fn confirmable(in_transaction: bool, last_commit_end: Lsn, idle_position: Lsn) -> Lsn {
    if in_transaction {
        last_commit_end
    } else {
        last_commit_end.max(idle_position)
    }
}

/// Transaction id of a pgoutput Begin message (`B`, final LSN u64, commit time i64, xid u32).
fn begin_xid(data: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = data.get(17..21)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// End LSN of a pgoutput Commit message (`C`, flags u8, commit LSN u64, end LSN u64, time).
fn commit_end_lsn(data: &[u8]) -> Option<Lsn> {
    let bytes: [u8; 8] = data.get(10..18)?.try_into().ok()?;
    Some(Lsn(u64::from_be_bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_keepalive_positions_only_between_transactions() {
        assert_eq!(confirmable(true, Lsn(10), Lsn(50)), Lsn(10));
        assert_eq!(confirmable(false, Lsn(10), Lsn(50)), Lsn(50));
        assert_eq!(confirmable(false, Lsn(60), Lsn(50)), Lsn(60));
    }

    #[test]
    fn reads_commit_end_lsn() {
        let mut m = vec![b'C', 0];
        m.extend_from_slice(&100u64.to_be_bytes());
        m.extend_from_slice(&200u64.to_be_bytes());
        m.extend_from_slice(&0i64.to_be_bytes());
        assert_eq!(commit_end_lsn(&m), Some(Lsn(200)));
    }

    #[test]
    fn reads_begin_xid() {
        let mut m = vec![b'B'];
        m.extend_from_slice(&100u64.to_be_bytes());
        m.extend_from_slice(&0i64.to_be_bytes());
        m.extend_from_slice(&742u32.to_be_bytes());
        assert_eq!(begin_xid(&m), Some(742));
        assert_eq!(begin_xid(b"B"), None);
    }
}
