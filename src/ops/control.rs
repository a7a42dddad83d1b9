//! The operator's control socket, in gh-ost's manner: a Unix socket (mode 0600) on which an
//! operator changes a running migration — throttle it, change the chunk time or the lag and
//! lock budgets, postpone or trigger the cutover, abort — and reads its status.
//!
//! Protocol: one command per line, any number of lines per connection; each command gets one
//! reply line (`help` several, ended by an empty line). Errors start with `error:` and say what
//! is accepted.
//!
//! | command | effect |
//! |---|---|
//! | `status` | the status line |
//! | `status --json` | the status and the live settings as one JSON line |
//! | `throttle` / `no-throttle` | set / release the operator's throttle |
//! | `chunk-time=MS` | target duration of a backfill chunk |
//! | `max-replica-lag=MS` | replica lag above which doppel throttles, 0 = off (gh-ost: `max-lag-millis`) |
//! | `lock-timeout=MS` | `lock_timeout` of each cutover attempt |
//! | `postpone` | do not cut over until `cut-over` |
//! | `cut-over` | lift a postponement (gh-ost: `unpostpone`) |
//! | `abort` | stop and remove everything doppel created (gh-ost: `panic`) |
//! | `revert`, `revert --force` | during the revert window: swap the tables back (`--force`: even when changes written after the cutover could not be written back) |
//! | `finalize` | end the revert window now |
//! | `KEY=?` | read `chunk-time`, `max-replica-lag`, `lock-timeout`, `throttle`, `postpone` |
//! | `help` | the list of commands |
//!
//! [`Controls`] holds the live values; the run reads them, and waits on them with
//! [`Controls::wait_until`]. `doppel ctl` uses [`send`].

use std::ops::RangeInclusive;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::ops::progress::Progress;

/// Accepted values of `chunk-time=MS`.
pub const CHUNK_TIME_MS: RangeInclusive<u64> = 1..=600_000;
/// Accepted values of `max-replica-lag=MS` (0 turns the replica lag check off, as in
/// `throttle::LiveThrottle`).
pub const MAX_REPLICA_LAG_MS: RangeInclusive<u64> = 0..=86_400_000;
/// Accepted values of `lock-timeout=MS` (every query on the table queues behind a waiting
/// cutover lock, so more than a minute is refused).
pub const LOCK_TIMEOUT_MS: RangeInclusive<u64> = 1..=60_000;

/// Accepted values of `max-retained-wal=BYTES` (0 turns the retained-WAL throttle off).
pub const MAX_RETAINED_WAL: RangeInclusive<u64> = 0..=(1 << 50);

/// Longest command line the server reads.
const MAX_LINE: usize = 4096;
/// How long `send` waits for a connection and for the reply.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest path of a Unix socket on Linux (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Live settings an operator can change at runtime. Every value is an atomic; every change
/// bumps a generation that [`Controls::subscribe`] and [`Controls::wait_until`] observe.
#[derive(Debug)]
pub struct Controls {
    throttle_forced: AtomicBool,
    chunk_time_ms: AtomicU64,
    max_replica_lag_ms: AtomicU64,
    max_retained_wal: AtomicU64,
    lock_timeout_ms: AtomicU64,
    postponed: AtomicBool,
    /// The postponement comes from a failed `before-cutover` hook (not from `postpone`).
    postponed_by_hook: AtomicBool,
    cut_over_requested: AtomicBool,
    abort_requested: AtomicBool,
    window_open: AtomicBool,
    /// 0: no revert asked; 1: `revert`; 2: `revert --force`.
    revert_requested: AtomicU8,
    finalize_requested: AtomicBool,
    /// Keys the revert window could not write back (a revert without `--force` refuses).
    window_rejected: AtomicU64,
    /// Revert requests so far; the latest request's number.
    revert_ids: AtomicU64,
    /// The outcome of the latest finished revert request: (its number, the reply line).
    revert_results: watch::Sender<(u64, String)>,
    generation: watch::Sender<u64>,
}

/// A copy of the [`Controls`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlsSnapshot {
    /// The operator's `throttle` is in force.
    pub throttle_forced: bool,
    /// Target duration of a backfill chunk, ms.
    pub chunk_time_ms: u64,
    /// Replica lag above which doppel throttles, ms (0 = off).
    pub max_replica_lag_ms: u64,
    /// WAL retained by doppel's slot above which doppel throttles, bytes (0 = off).
    pub max_retained_wal: u64,
    /// `lock_timeout` of each cutover attempt, ms.
    pub lock_timeout_ms: u64,
    /// The cutover is postponed.
    pub postponed: bool,
    /// The operator sent `cut-over`.
    pub cut_over_requested: bool,
    /// The operator sent `abort`.
    pub abort_requested: bool,
}

impl ControlsSnapshot {
    /// The settings as JSON (the `controls` member of `status --json`).
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "throttle_forced": self.throttle_forced,
            "chunk_time_ms": self.chunk_time_ms,
            "max_replica_lag_ms": self.max_replica_lag_ms,
            "max_retained_wal": self.max_retained_wal,
            "lock_timeout_ms": self.lock_timeout_ms,
            "postponed": self.postponed,
            "cut_over_requested": self.cut_over_requested,
            "abort_requested": self.abort_requested,
        })
    }
}

impl Controls {
    /// The run's starting values (from its flags); no throttle, cutover not requested, no abort.
    /// `postponed` is true when the run starts postponed (e.g. its postpone flag file exists).
    pub fn new(
        chunk_time_ms: u64,
        max_replica_lag_ms: u64,
        lock_timeout_ms: u64,
        postponed: bool,
    ) -> Arc<Controls> {
        Arc::new(Controls {
            throttle_forced: AtomicBool::new(false),
            chunk_time_ms: AtomicU64::new(chunk_time_ms),
            max_replica_lag_ms: AtomicU64::new(max_replica_lag_ms),
            max_retained_wal: AtomicU64::new(0),
            lock_timeout_ms: AtomicU64::new(lock_timeout_ms),
            postponed: AtomicBool::new(postponed),
            postponed_by_hook: AtomicBool::new(false),
            cut_over_requested: AtomicBool::new(false),
            abort_requested: AtomicBool::new(false),
            window_open: AtomicBool::new(false),
            revert_requested: AtomicU8::new(0),
            finalize_requested: AtomicBool::new(false),
            window_rejected: AtomicU64::new(0),
            revert_ids: AtomicU64::new(0),
            revert_results: watch::Sender::new((0, String::new())),
            generation: watch::Sender::new(0),
        })
    }

    fn changed(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Whether the operator's `throttle` is in force.
    pub fn throttle_forced(&self) -> bool {
        self.throttle_forced.load(Ordering::SeqCst)
    }

    /// Sets (`throttle`) or releases (`no-throttle`) the operator's throttle.
    pub fn set_throttle_forced(&self, on: bool) {
        self.throttle_forced.store(on, Ordering::SeqCst);
        self.changed();
    }

    /// Target duration of a backfill chunk, ms.
    pub fn chunk_time_ms(&self) -> u64 {
        self.chunk_time_ms.load(Ordering::SeqCst)
    }

    /// Target duration of a backfill chunk.
    pub fn chunk_time(&self) -> Duration {
        Duration::from_millis(self.chunk_time_ms())
    }

    /// Sets the target chunk duration, ms (the socket accepts [`CHUNK_TIME_MS`]).
    pub fn set_chunk_time_ms(&self, ms: u64) {
        self.chunk_time_ms.store(ms, Ordering::SeqCst);
        self.changed();
    }

    /// Replica lag above which doppel throttles, ms (0 = off).
    pub fn max_replica_lag_ms(&self) -> u64 {
        self.max_replica_lag_ms.load(Ordering::SeqCst)
    }

    /// Replica lag above which doppel throttles.
    pub fn max_replica_lag(&self) -> Duration {
        Duration::from_millis(self.max_replica_lag_ms())
    }

    /// Sets the replica lag threshold, ms (the socket accepts [`MAX_REPLICA_LAG_MS`]).
    pub fn set_max_replica_lag_ms(&self, ms: u64) {
        self.max_replica_lag_ms.store(ms, Ordering::SeqCst);
        self.changed();
    }

    /// WAL retained by doppel's slot above which doppel throttles, bytes (0 = off).
    pub fn max_retained_wal(&self) -> u64 {
        self.max_retained_wal.load(Ordering::SeqCst)
    }

    /// Sets the retained-WAL throttle threshold (bytes, 0 = off).
    pub fn set_max_retained_wal(&self, bytes: u64) {
        self.max_retained_wal.store(bytes, Ordering::SeqCst);
        self.changed();
    }

    /// `lock_timeout` of each cutover attempt, ms.
    pub fn lock_timeout_ms(&self) -> u64 {
        self.lock_timeout_ms.load(Ordering::SeqCst)
    }

    /// `lock_timeout` of each cutover attempt.
    pub fn lock_timeout(&self) -> Duration {
        Duration::from_millis(self.lock_timeout_ms())
    }

    /// Sets the cutover `lock_timeout`, ms (the socket accepts [`LOCK_TIMEOUT_MS`]).
    pub fn set_lock_timeout_ms(&self, ms: u64) {
        self.lock_timeout_ms.store(ms, Ordering::SeqCst);
        self.changed();
    }

    /// Whether the cutover is postponed (by `postpone` or the starting value).
    pub fn postponed(&self) -> bool {
        self.postponed.load(Ordering::SeqCst)
    }

    /// `postpone`: the cutover waits; an earlier `cut-over` request is withdrawn.
    pub fn postpone(&self) {
        self.postponed_by_hook.store(false, Ordering::SeqCst);
        self.cut_over_requested.store(false, Ordering::SeqCst);
        self.postponed.store(true, Ordering::SeqCst);
        self.changed();
    }

    /// The `before-cutover` hook failed: the cutover waits as after `postpone`, and the status
    /// says why.
    pub fn postpone_after_failed_hook(&self) {
        self.postpone();
        self.postponed_by_hook.store(true, Ordering::SeqCst);
        self.changed();
    }

    /// Whether the postponement in force comes from a failed `before-cutover` hook.
    pub fn postponed_by_hook(&self) -> bool {
        self.postponed() && self.postponed_by_hook.load(Ordering::SeqCst)
    }

    /// Whether the operator sent `cut-over` (and no `postpone` since).
    pub fn cut_over_requested(&self) -> bool {
        self.cut_over_requested.load(Ordering::SeqCst)
    }

    /// `cut-over`: lifts the postponement and records the request.
    pub fn request_cut_over(&self) {
        self.postponed.store(false, Ordering::SeqCst);
        self.cut_over_requested.store(true, Ordering::SeqCst);
        self.changed();
    }

    /// Whether the operator sent `abort`.
    pub fn abort_requested(&self) -> bool {
        self.abort_requested.load(Ordering::SeqCst)
    }

    /// `abort`: the run should stop and clean up.
    pub fn request_abort(&self) {
        self.abort_requested.store(true, Ordering::SeqCst);
        self.changed();
    }

    /// Whether a revert window is open (`revert` and `finalize` are accepted).
    pub fn window_open(&self) -> bool {
        self.window_open.load(Ordering::SeqCst)
    }

    /// The revert window opened or closed; `rejected` keys it could not write back so far.
    pub fn set_window(&self, open: bool, rejected: u64) {
        let changed = self.window_open.swap(open, Ordering::SeqCst) != open
            || self.window_rejected.swap(rejected, Ordering::SeqCst) != rejected;
        if changed {
            self.changed();
        }
    }

    /// Keys the revert window could not write back so far.
    pub fn window_rejected(&self) -> u64 {
        self.window_rejected.load(Ordering::SeqCst)
    }

    /// `revert` (`force`: `revert --force`) was asked and not yet taken: `Some(force)`.
    pub fn revert_requested(&self) -> Option<bool> {
        match self.revert_requested.load(Ordering::SeqCst) {
            0 => None,
            1 => Some(false),
            _ => Some(true),
        }
    }

    /// `revert` / `revert --force`; returns the request's number (see
    /// [`Controls::revert_outcome`]).
    pub fn request_revert(&self, force: bool) -> u64 {
        let id = self.revert_ids.fetch_add(1, Ordering::SeqCst) + 1;
        self.revert_requested
            .store(if force { 2 } else { 1 }, Ordering::SeqCst);
        self.changed();
        id
    }

    /// The revert window finished acting on the latest revert request: `reply` (`ok: ..` or
    /// `error: ..`) answers every request up to it.
    pub fn finish_revert(&self, reply: String) {
        let id = self.revert_ids.load(Ordering::SeqCst);
        self.revert_results.send_replace((id, reply));
    }

    /// Resolves with the reply to revert request `id` once the window has acted on it.
    pub async fn revert_outcome(&self, id: u64) -> String {
        let mut rx = self.revert_results.subscribe();
        loop {
            {
                let (done, reply) = &*rx.borrow_and_update();
                if *done >= id {
                    return reply.clone();
                }
            }
            if rx.changed().await.is_err() {
                return "error: the run ended before the revert finished".to_string();
            }
        }
    }

    /// Takes the pending revert request (the window acts on it once).
    pub fn take_revert_request(&self) -> Option<bool> {
        match self.revert_requested.swap(0, Ordering::SeqCst) {
            0 => None,
            1 => Some(false),
            _ => Some(true),
        }
    }

    /// Whether `finalize` was sent.
    pub fn finalize_requested(&self) -> bool {
        self.finalize_requested.load(Ordering::SeqCst)
    }

    /// `finalize`: end the revert window now.
    pub fn request_finalize(&self) {
        self.finalize_requested.store(true, Ordering::SeqCst);
        self.changed();
    }

    /// All values at once.
    pub fn snapshot(&self) -> ControlsSnapshot {
        ControlsSnapshot {
            throttle_forced: self.throttle_forced(),
            chunk_time_ms: self.chunk_time_ms(),
            max_replica_lag_ms: self.max_replica_lag_ms(),
            max_retained_wal: self.max_retained_wal(),
            lock_timeout_ms: self.lock_timeout_ms(),
            postponed: self.postponed(),
            cut_over_requested: self.cut_over_requested(),
            abort_requested: self.abort_requested(),
        }
    }

    /// A receiver whose value changes (a generation counter) after every change of a setting.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Resolves once `condition` holds (checked now and after every change).
    pub async fn wait_until(&self, condition: impl Fn(&Controls) -> bool) {
        let mut rx = self.generation.subscribe();
        loop {
            if condition(self) {
                return;
            }
            // The sender lives in `self`, so this cannot fail while we borrow it.
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves once the operator sends `abort`.
    pub async fn aborted(&self) {
        self.wait_until(|c| c.abort_requested()).await
    }
}

/// What `status` reports; the run implements it from its progress counters (and its throttle
/// state). Called from the socket's tasks, so it must not block.
pub trait StatusSource: Send + Sync + 'static {
    /// The one-line status (gh-ost's fields). Newlines are replaced by spaces.
    fn status_line(&self) -> String;
    /// The status as JSON. If it is an object, `status --json` adds a `controls` member.
    fn status_json(&self) -> serde_json::Value;
}

/// The progress counters as a status source (no throttle reason: wrap it to add one).
impl StatusSource for Progress {
    fn status_line(&self) -> String {
        Progress::status_line(self)
    }

    fn status_json(&self) -> serde_json::Value {
        Progress::status_json(self)
    }
}

/// Default socket path for a table OID: `<dir>/doppel-<oid>.sock`.
pub fn default_path(dir: &Path, table_oid: u32) -> PathBuf {
    dir.join(format!("doppel-{table_oid}.sock"))
}

/// The control socket server. It listens until dropped; dropping it stops the listener and
/// every connection and removes the socket file (if it is still the one this server created).
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    /// Device and inode of the socket file this server bound.
    identity: (u64, u64),
    task: tokio::task::JoinHandle<()>,
}

impl ControlServer {
    /// Binds the socket at `path` (mode 0600) and serves it. Refuses when a server answers on
    /// `path` already (another run) or when `path` is something other than a socket; a stale
    /// socket file (nothing listening) is replaced. Must be called inside a Tokio runtime.
    pub async fn start(
        path: &Path,
        controls: Arc<Controls>,
        status: Arc<dyn StatusSource>,
    ) -> Result<ControlServer> {
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            bail!(
                "control socket path {} is {len} bytes; Unix sockets allow at most {MAX_SOCKET_PATH}: choose a shorter path",
                path.display()
            );
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                if !meta.file_type().is_socket() {
                    bail!(
                        "{} exists and is not a socket: refusing to replace it (remove it or choose another control socket path)",
                        path.display()
                    );
                }
                match tokio::time::timeout(Duration::from_secs(1), UnixStream::connect(path)).await
                {
                    Ok(Ok(_)) => bail!(
                        "another doppel run answers on the control socket {}: refusing to take it over (one run per socket; is this table being migrated already?)",
                        path.display()
                    ),
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        tracing::info!(
                            "replacing the stale control socket {} (nothing listens on it)",
                            path.display()
                        );
                        match std::fs::remove_file(path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => {
                                return Err(e).with_context(|| {
                                    format!("removing the stale control socket {}", path.display())
                                });
                            }
                        }
                    }
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Ok(Err(e)) => {
                        return Err(e).with_context(|| {
                            format!(
                                "{} exists and cannot be checked for a live doppel run",
                                path.display()
                            )
                        });
                    }
                    Err(_) => bail!(
                        "{} exists and its listener does not accept connections within 1 s: refusing to replace it",
                        path.display()
                    ),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("checking the control socket path {}", path.display())
                });
            }
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("creating the control socket {}", path.display()))?;
        // The mode is set right after bind; connections are also checked for the owner's uid,
        // so one made before the chmod by another user is refused anyway.
        let meta = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::metadata(path));
        let meta = match meta {
            Ok(m) => m,
            Err(e) => {
                drop(listener);
                std::fs::remove_file(path).ok();
                return Err(e).with_context(|| {
                    format!("setting mode 0600 on the control socket {}", path.display())
                });
            }
        };
        let owner = meta.uid();
        let task = tokio::spawn(serve(listener, controls, status, owner));
        tracing::info!("control socket: {}", path.display());
        Ok(ControlServer {
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
            task,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
        {
            std::fs::remove_file(&self.path).ok();
        }
    }
}

async fn serve(
    listener: UnixListener,
    controls: Arc<Controls>,
    status: Arc<dyn StatusSource>,
    owner: u32,
) {
    // Connections live in the set, so aborting this task ends them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, controls.clone(), status.clone(), owner));
                }
                Err(e) => {
                    tracing::warn!("control socket: accept failed: {e}");
                    // E.g. out of file descriptors: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(
    mut stream: UnixStream,
    controls: Arc<Controls>,
    status: Arc<dyn StatusSource>,
    owner: u32,
) {
    if let Ok(cred) = stream.peer_cred()
        && cred.uid() != owner
        && cred.uid() != 0
    {
        tracing::warn!(
            "control socket: refused a connection from uid {} (the run's owner is uid {owner})",
            cred.uid()
        );
        stream
            .write_all(
                b"error: permission denied: only the owner of this doppel run may control it\n",
            )
            .await
            .ok();
        return;
    }
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if n > MAX_LINE && buf.last() != Some(&b'\n') {
            write
                .write_all(
                    format!("error: command longer than {MAX_LINE} bytes; closing\n").as_bytes(),
                )
                .await
                .ok();
            return;
        }
        let line = String::from_utf8_lossy(&buf);
        let command = line.trim();
        if command.is_empty() {
            continue;
        }
        let (reply, changed) = match revert_asked(command) {
            Some(force) => (revert_command(&controls, force).await, false),
            None => execute(command, &controls, status.as_ref()),
        };
        if changed {
            tracing::info!("control socket: {command}: {reply}");
        }
        let mut out = reply.into_bytes();
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

const COMMANDS: &str = "status, status --json, throttle, no-throttle, chunk-time=MS, max-replica-lag=MS, max-retained-wal=BYTES, lock-timeout=MS, postpone, cut-over, abort, revert, revert --force, finalize, help; KEY=? reads chunk-time, max-replica-lag, max-retained-wal, lock-timeout, throttle or postpone";

/// The list of commands and keys, as `help` answers it and `doppel ctl --help` shows it.
pub fn help() -> String {
    format!(
        "doppel control socket: one command per line, one reply line per command (this help ends with an empty line)\n\
status               the status line\n\
status --json        the status and the live settings as one JSON line\n\
throttle             pause the copy and the apply until no-throttle\n\
no-throttle          release the operator's throttle (other throttle reasons still apply)\n\
chunk-time=MS        target duration of one backfill chunk ({}..={})\n\
max-replica-lag=MS   throttle while a standby lags more than this ({}..={}, 0 = off; gh-ost: max-lag-millis)\n\
max-retained-wal=BYTES  throttle while doppel's slot retains more WAL ({}..={}, 0 = off)\n\
lock-timeout=MS      lock budget of each cutover attempt, all its lock waits together ({}..={})\n\
postpone             do not cut over until cut-over\n\
cut-over             lift a postponement: cut over once ready (gh-ost: unpostpone)\n\
abort                stop now and remove everything doppel created (gh-ost: panic)\n\
revert               in the revert window: swap the tables back, losing no write\n\
revert --force       the same even when changes made after the cutover could not be written back\n\
finalize             end the revert window now (drops its slot and publication)\n\
KEY=?                read a value: chunk-time, max-replica-lag, max-retained-wal, lock-timeout, throttle, postpone\n\
help                 this text\n",
        CHUNK_TIME_MS.start(),
        CHUNK_TIME_MS.end(),
        MAX_REPLICA_LAG_MS.start(),
        MAX_REPLICA_LAG_MS.end(),
        MAX_RETAINED_WAL.start(),
        MAX_RETAINED_WAL.end(),
        LOCK_TIMEOUT_MS.start(),
        LOCK_TIMEOUT_MS.end(),
    )
}

/// Which numeric setting a `key=` command names.
#[derive(Clone, Copy)]
enum Setting {
    ChunkTime,
    MaxReplicaLag,
    MaxRetainedWal,
    LockTimeout,
}

impl Setting {
    fn parse(key: &str) -> Option<Setting> {
        match key {
            "chunk-time" => Some(Setting::ChunkTime),
            "max-replica-lag" | "max-lag-millis" => Some(Setting::MaxReplicaLag),
            "lock-timeout" => Some(Setting::LockTimeout),
            "max-retained-wal" => Some(Setting::MaxRetainedWal),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Setting::ChunkTime => "chunk-time",
            Setting::MaxReplicaLag => "max-replica-lag",
            Setting::LockTimeout => "lock-timeout",
            Setting::MaxRetainedWal => "max-retained-wal",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Setting::MaxRetainedWal => "bytes",
            _ => "milliseconds",
        }
    }

    fn range(self) -> RangeInclusive<u64> {
        match self {
            Setting::ChunkTime => CHUNK_TIME_MS,
            Setting::MaxReplicaLag => MAX_REPLICA_LAG_MS,
            Setting::LockTimeout => LOCK_TIMEOUT_MS,
            Setting::MaxRetainedWal => MAX_RETAINED_WAL,
        }
    }

    fn get(self, c: &Controls) -> u64 {
        match self {
            Setting::ChunkTime => c.chunk_time_ms(),
            Setting::MaxReplicaLag => c.max_replica_lag_ms(),
            Setting::LockTimeout => c.lock_timeout_ms(),
            Setting::MaxRetainedWal => c.max_retained_wal(),
        }
    }

    fn set(self, c: &Controls, ms: u64) {
        match self {
            Setting::ChunkTime => c.set_chunk_time_ms(ms),
            Setting::MaxReplicaLag => c.set_max_replica_lag_ms(ms),
            Setting::LockTimeout => c.set_lock_timeout_ms(ms),
            Setting::MaxRetainedWal => c.set_max_retained_wal(ms),
        }
    }
}

/// The reply to `revert` or `finalize` when no revert window is open.
const NO_WINDOW: &str = "error: no revert window is open: start doppel run with --revert-window DURATION to keep one open after the cutover (the rollback script works without one)";

/// `revert` / `revert --force`: refused when no window is open, or when changes could not be
/// written back and it is not forced; otherwise requested, and answered once the window has
/// reverted (or failed to): `ok: reverted ..` or `error: ..`.
async fn revert_command(controls: &Controls, force: bool) -> String {
    if !controls.window_open() {
        return NO_WINDOW.to_string();
    }
    let rejected = controls.window_rejected();
    if rejected > 0 && !force {
        return format!(
            "error: revert is no longer lossless: {rejected} key(s) written after the cutover cannot be written back to the old table (see status --json, window.rejected); `revert --force` reverts anyway, losing those changes"
        );
    }
    let id = controls.request_revert(force);
    tracing::info!(
        "control socket: revert{} requested",
        if force { " --force" } else { "" }
    );
    controls.revert_outcome(id).await
}

/// Whether `command` is `revert` (`Some(force)`).
fn revert_asked(command: &str) -> Option<bool> {
    let lower = command.to_ascii_lowercase();
    match lower.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["revert"] => Some(false),
        ["revert", "--force" | "force"] => Some(true),
        _ => None,
    }
}

/// Runs one command (trimmed, non-empty); returns its reply, without the final newline, and
/// whether it changed a setting (for the audit log).
fn execute(command: &str, controls: &Controls, status: &dyn StatusSource) -> (String, bool) {
    let mut lower = command.to_ascii_lowercase();
    if lower.contains('=') {
        // `chunk-time = 500` is `chunk-time=500`.
        lower.retain(|c| !c.is_whitespace());
    }
    let unknown = || format!("error: unknown command {command:?}; accepted: {COMMANDS}");
    let words: Vec<&str> = lower.split_whitespace().collect();
    let done = |reply: &str| (reply.to_string(), true);
    match words.as_slice() {
        ["status"] | ["info"] => {
            return (status.status_line().replace(['\n', '\r'], " "), false);
        }
        ["status", "--json"] | ["status", "json"] => {
            let mut value = status.status_json();
            let settings = controls.snapshot().to_json();
            match value.as_object_mut() {
                Some(object) => {
                    object.insert("controls".into(), settings);
                }
                None => value = json!({ "status": value, "controls": settings }),
            }
            return (value.to_string(), false);
        }
        ["help"] | ["?"] => return (help(), false),
        ["throttle"] => {
            controls.set_throttle_forced(true);
            return done(
                "ok: throttled by the operator: the copy and the apply pause until no-throttle",
            );
        }
        ["no-throttle"] | ["unthrottle"] => {
            let was = controls.throttle_forced();
            controls.set_throttle_forced(false);
            return done(if was {
                "ok: the operator's throttle is released (other throttle reasons still apply)"
            } else {
                "ok: the operator's throttle was not set (other throttle reasons still apply)"
            });
        }
        ["postpone"] => {
            controls.postpone();
            return done("ok: cutover postponed: the shadow is kept caught up until cut-over");
        }
        ["cut-over"] | ["cutover"] | ["unpostpone"] => {
            let was = controls.postponed();
            controls.request_cut_over();
            return done(if was {
                "ok: postponement lifted: cutting over once ready"
            } else {
                "ok: cut-over requested (it was not postponed: doppel cuts over once ready)"
            });
        }
        ["abort"] | ["panic"] => {
            controls.request_abort();
            return done("ok: aborting: doppel stops and removes what it created");
        }
        ["finalize"] => {
            if !controls.window_open() {
                return (NO_WINDOW.to_string(), false);
            }
            controls.request_finalize();
            return done(
                "ok: finalizing: the revert window closes, its slot and publication are dropped; the old table stays for you to drop",
            );
        }
        [_] => {}
        _ => return (unknown(), false),
    }
    let Some((key, value)) = lower.split_once('=') else {
        return (unknown(), false);
    };
    if let Some(setting) = Setting::parse(key) {
        let name = setting.name();
        let range = setting.range();
        if value == "?" {
            return (format!("{name}={}", setting.get(controls)), false);
        }
        return match value.parse::<u64>() {
            Ok(ms) if range.contains(&ms) => {
                let was = setting.get(controls);
                setting.set(controls, ms);
                (format!("ok: {name}={ms} (was {was})"), true)
            }
            _ => (
                format!(
                    "error: {name} takes whole {} from {} to {}, or ? to read it; got {value:?}",
                    setting.unit(),
                    range.start(),
                    range.end()
                ),
                false,
            ),
        };
    }
    let reply = match (key, value) {
        ("throttle", "?") => format!("throttle={}", controls.throttle_forced()),
        ("postpone" | "postponed", "?") => format!("postpone={}", controls.postponed()),
        ("throttle", _) => "error: throttle takes no value: send `throttle` to set it, `no-throttle` to release it, `throttle=?` to read it".to_string(),
        ("postpone" | "postponed", _) => "error: postpone takes no value: send `postpone` to set it, `cut-over` to lift it, `postpone=?` to read it".to_string(),
        ("chunk-size", _) => {
            "error: doppel sizes chunks by time, not rows: use chunk-time=MS".to_string()
        }
        _ => format!("error: unknown setting {key:?}; accepted: {COMMANDS}"),
    };
    (reply, false)
}

/// Sends one command to the control socket at `path` and returns the reply (several lines for
/// `help`), without the final newline. A reply starting with `error:` is still `Ok`: the server
/// answered. Fails when nothing answers on `path`.
pub async fn send(path: &Path, command: &str) -> Result<String> {
    send_waiting(path, command, REPLY_TIMEOUT).await
}

/// [`send`], waiting up to `reply_timeout` for the reply (a revert answers once it is done).
///
/// Errors: as [`send`].
pub async fn send_waiting(path: &Path, command: &str, reply_timeout: Duration) -> Result<String> {
    let command = command.trim();
    if command.is_empty() || command.contains(['\n', '\r']) {
        bail!("send one command, on one line (try help)");
    }
    let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(e).with_context(|| {
                format!(
                    "no doppel run answers on {} (doppel prints its control socket's path when it starts)",
                    path.display()
                )
            });
        }
        Err(_) => bail!(
            "the control socket {} did not accept a connection within {} s",
            path.display(),
            CONNECT_TIMEOUT.as_secs()
        ),
    };
    let exchange = async {
        stream.write_all(format!("{command}\n").as_bytes()).await?;
        // Half-close: the server answers, sees the end of input and closes.
        stream.shutdown().await?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = tokio::time::timeout(reply_timeout, exchange)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no reply from the control socket {} within {} s",
                path.display(),
                reply_timeout.as_secs()
            )
        })?
        .with_context(|| format!("talking to the control socket {}", path.display()))?;
    Ok(reply.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl StatusSource for Fixed {
        fn status_line(&self) -> String {
            "Copy: 1/2 50.0%;\nState: copying".into()
        }
        fn status_json(&self) -> serde_json::Value {
            json!({ "phase": "copying" })
        }
    }

    fn run(c: &Controls, command: &str) -> String {
        execute(command, c, &Fixed).0
    }

    #[test]
    fn settings_parse_validate_and_read() {
        let c = Controls::new(500, 1000, 200, false);
        assert_eq!(run(&c, "chunk-time=250"), "ok: chunk-time=250 (was 500)");
        assert_eq!(c.chunk_time(), Duration::from_millis(250));
        assert_eq!(run(&c, "chunk-time=?"), "chunk-time=250");
        assert_eq!(
            run(&c, "MAX-LAG-MILLIS=1500"),
            "ok: max-replica-lag=1500 (was 1000)"
        );
        assert_eq!(run(&c, "max-replica-lag=?"), "max-replica-lag=1500");
        assert_eq!(
            run(&c, "max-replica-lag=0"),
            "ok: max-replica-lag=0 (was 1500)"
        );
        assert_eq!(
            run(&c, "max-replica-lag=1500"),
            "ok: max-replica-lag=1500 (was 0)"
        );
        for bad in [
            "chunk-time=0",
            "chunk-time=-1",
            "chunk-time=abc",
            "chunk-time=",
            "lock-timeout=60001",
            "max-replica-lag=1.5",
        ] {
            let reply = run(&c, bad);
            assert!(reply.starts_with("error: "), "{bad}: {reply}");
            assert!(reply.contains("milliseconds from"), "{bad}: {reply}");
        }
        assert_eq!(c.chunk_time_ms(), 250);
        assert_eq!(c.lock_timeout_ms(), 200);
        assert!(run(&c, "chunk-size=1000").contains("chunk-time=MS"));
        assert!(run(&c, "throttle=1").starts_with("error: throttle takes no value"));
        let unknown = run(&c, "frobnicate");
        assert!(unknown.starts_with("error: unknown command"), "{unknown}");
        assert!(unknown.contains("chunk-time=MS"), "{unknown}");
        assert!(run(&c, "status now please").starts_with("error: unknown command"));
    }

    #[test]
    fn state_commands_and_aliases() {
        let c = Controls::new(500, 1000, 200, true);
        assert_eq!(run(&c, "postpone=?"), "postpone=true");
        run(&c, "unpostpone");
        assert!(!c.postponed() && c.cut_over_requested());
        run(&c, "postpone");
        assert!(c.postponed() && !c.cut_over_requested());
        run(&c, "throttle");
        assert_eq!(run(&c, "throttle=?"), "throttle=true");
        run(&c, "no-throttle");
        assert!(!c.throttle_forced());
        run(&c, "panic");
        assert!(c.abort_requested());
    }

    #[test]
    fn status_is_one_line_and_json_carries_controls() {
        let c = Controls::new(500, 1000, 200, false);
        assert_eq!(run(&c, "status"), "Copy: 1/2 50.0%; State: copying");
        let v: serde_json::Value = serde_json::from_str(&run(&c, "status --json")).unwrap();
        assert_eq!(v["phase"], "copying");
        assert_eq!(v["controls"]["chunk_time_ms"], 500);
        assert_eq!(v["controls"]["postponed"], false);
        assert!(help().ends_with("this text\n"));
        assert!(!execute("status --json", &c, &Fixed).1);
        assert!(!execute("chunk-time=?", &c, &Fixed).1);
        assert!(!execute("chunk-time=0", &c, &Fixed).1);
        assert!(execute("chunk-time = 400", &c, &Fixed).1);
        assert_eq!(c.chunk_time_ms(), 400);
    }

    #[tokio::test]
    async fn wait_until_sees_changes() {
        let c = Controls::new(500, 1000, 200, false);
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.aborted().await }
        });
        let mut rx = c.subscribe();
        c.set_chunk_time_ms(100);
        rx.changed().await.unwrap();
        assert!(!waiter.is_finished());
        c.request_abort();
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("aborted() resolves after request_abort")
            .unwrap();
    }

    #[test]
    fn help_lists_every_command_and_each_is_accepted() {
        let c = Controls::new(500, 1000, 200, false);
        let text = help();
        let commands: Vec<String> = text
            .lines()
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(|l| l.split("  ").next().unwrap().trim().to_string())
            .collect();
        for word in [
            "status",
            "status --json",
            "throttle",
            "no-throttle",
            "chunk-time=MS",
            "max-replica-lag=MS",
            "max-retained-wal=BYTES",
            "lock-timeout=MS",
            "postpone",
            "cut-over",
            "abort",
            "revert",
            "revert --force",
            "finalize",
            "KEY=?",
            "help",
        ] {
            assert!(
                commands.iter().any(|c| c == word),
                "help lacks {word}: {text}"
            );
            assert!(COMMANDS.contains(word.split('=').next().unwrap()), "{word}");
        }
        for command in &commands {
            let command = command
                .replace("=MS", "=100")
                .replace("=BYTES", "=0")
                .replace("KEY=?", "chunk-time=?");
            if revert_asked(&command).is_some() {
                continue;
            }
            let reply = execute(&command, &c, &Fixed).0;
            assert!(!reply.starts_with("error: unknown"), "{command}: {reply}");
        }
        assert_eq!(run(&c, "max-retained-wal=?"), "max-retained-wal=0");
    }

    #[test]
    fn default_path_names_the_oid() {
        assert_eq!(
            default_path(Path::new("/run/doppel"), 16384),
            PathBuf::from("/run/doppel/doppel-16384.sock")
        );
    }
}
