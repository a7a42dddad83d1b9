//! Throttling (gh-ost's model): a checker samples every reason to slow down
//! every [`CHECK_INTERVAL`] and publishes the active ones; the backfill and the applier stop
//! at their next chunk or batch boundary while any is active, and resume when all clear. The
//! replication stream is consumed regardless, so throttling never moves the backlog onto the
//! primary's WAL.
//!
//! Reasons: the operator (`throttle` on the control socket, or `--throttle-flag-file`
//! existing); physical standbys' replay lag from `pg_stat_replication` (`--max-replica-lag`,
//! time, and `--max-replica-lag-bytes`); named standbys' lag measured from a heartbeat
//! (`--throttle-replica DSN`: `now() - pg_last_xact_replay_timestamp()` on the standby while
//! doppel commits a tiny heartbeat transaction on the primary every 100 ms, gh-ost's
//! heartbeat made native); the WAL retained by doppel's slot (`--max-retained-wal`); and a
//! `--throttle-query` that returns a positive number. A source that cannot be read throttles
//! and says so (fail safe): an unreadable replica lag or retained WAL, a failing
//! `--throttle-query`, and a failing `--critical-query` (which then cannot tell whether to
//! abort). Critical conditions abort the run:
//! `--panic-flag-file` existing, `--critical-retained-wal` exceeded, `--critical-query`
//! returning a positive number. A run notices them between chunks and batches, and also
//! while a long statement runs (an index build: [`Throttler::critical`] cancels it) and while
//! the cutover is postponed. Waiting while throttled ([`Throttler::wait_clear`]) also ends
//! on the run's cancel signal (Ctrl-C, SIGTERM, `abort`), so a throttled run can be aborted.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::conninfo;

/// How often the throttle reasons are sampled.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Throttle settings (all optional).
#[derive(Debug, Clone, Default)]
pub struct ThrottleOptions {
    /// Throttle while a standby's `replay_lag` exceeds this.
    pub max_replica_lag: Option<Duration>,
    /// Throttle while a standby's replay position trails the primary by more bytes.
    pub max_replica_lag_bytes: Option<u64>,
    /// Standbys to measure heartbeat lag on (time, compared with `max_replica_lag`).
    pub replicas: Vec<conninfo::ConnInfo>,
    /// Throttle while doppel's slot retains more WAL (bytes).
    pub max_retained_wal: Option<u64>,
    /// Abort when doppel's slot retains more WAL (bytes), before the disk fills.
    pub critical_retained_wal: Option<u64>,
    /// Throttle while more client sessions than this are running a statement (gh-ost's
    /// `--max-load Threads_running`).
    pub max_active_backends: Option<i64>,
    /// Throttle while this query returns a positive number (or true).
    pub throttle_query: Option<String>,
    /// Abort when this query returns a positive number.
    pub critical_query: Option<String>,
    /// Abort when a replication origin other than doppel's exists: set while the stream runs
    /// with `origin 'none'` (the copy under origins, [`crate::phases::origin`]), which would leave
    /// out every change applied under such an origin (a subscription created during the run).
    pub origin_guard: bool,
    /// Throttle while this file exists.
    pub throttle_flag_file: Option<PathBuf>,
    /// Abort (and clean up) as soon as this file exists.
    pub panic_flag_file: Option<PathBuf>,
}

/// The kinds of throttle reasons, as the metrics label them (`doppel_throttled{reason=..}`):
/// the operator (`throttle` on the control socket), the throttle flag file, replica lag (time
/// or bytes, from `pg_stat_replication` or a heartbeat), the WAL retained by doppel's slot,
/// active sessions, the throttle query, and the critical query when it cannot be run.
pub const REASON_KINDS: [&str; 7] = [
    "operator",
    "flag_file",
    "replica_lag",
    "retained_wal",
    "active_backends",
    "throttle_query",
    "critical_query",
];

/// One reason to throttle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// Its kind, one of [`REASON_KINDS`].
    pub kind: &'static str,
    /// What holds, human-readable (`standby s1 replay lag 1200 ms > 1000 ms`).
    pub text: String,
}

impl Reason {
    fn new(kind: &'static str, text: String) -> Reason {
        Reason { kind, text }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// What the checker found at its last sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThrottleState {
    /// Active reasons to throttle (empty = not throttled).
    pub reasons: Vec<Reason>,
    /// A reason to abort the run.
    pub critical: Option<String>,
    /// The worst replica lag measured (ms), when any standby is watched.
    pub replica_lag_ms: Option<u64>,
    /// The checker lost its session to the primary (a server restart, a terminated
    /// backend): the run's other sessions are gone too, and waiting for the throttle to clear
    /// would wait forever. [`Throttler::wait_clear`] and [`Throttler::check_critical`] end
    /// with a transient fault ([`crate::failure::Disconnected`]).
    pub disconnected: bool,
    /// The most bytes of WAL a streaming standby's replay trails by, when standbys are
    /// watched.
    pub replica_lag_bytes: Option<u64>,
    /// Bytes of WAL doppel's slot retains (`pg_current_wal_lsn() - restart_lsn`), when read.
    pub retained_wal: Option<u64>,
    /// Client sessions running a statement, with `--max-active-backends`.
    pub active_backends: Option<i64>,
    /// The value `--throttle-query` returned (the greatest of its rows' first columns; true
    /// is 1), when it ran.
    pub throttle_query_value: Option<f64>,
    /// The value `--critical-query` returned, when it ran.
    pub critical_query_value: Option<f64>,
}

impl ThrottleState {
    /// The active reasons, joined by `; ` (empty when not throttled).
    pub fn describe(&self) -> String {
        self.reasons
            .iter()
            .map(|r| r.text.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The abort error of the critical condition seen at this sample, if any (exit 3 for the
    /// panic flag file, 7 for a critical threshold).
    pub fn critical_error(&self) -> Option<anyhow::Error> {
        self.critical.as_deref().map(critical)
    }
}

/// Settings an operator may change while the run goes on.
#[derive(Debug, Default)]
pub struct LiveThrottle {
    /// Throttle forced by the operator.
    pub forced: AtomicBool,
    /// `--max-replica-lag` in ms (0 = off).
    pub max_replica_lag_ms: AtomicU64,
    /// `--max-retained-wal` in bytes (0 = off).
    pub max_retained_wal: AtomicU64,
}

/// The running checker.
pub struct Throttler {
    state: watch::Receiver<ThrottleState>,
    live: Arc<LiveThrottle>,
    handle: JoinHandle<()>,
    heartbeat: Option<JoinHandle<()>>,
    /// The run's cancel signal: ends [`Throttler::wait_clear`] with an abort.
    cancel: Option<crate::cancel::Cancel>,
}

impl Throttler {
    /// Starts the checker (own sessions to the primary and to each named standby) for the slot
    /// `slot`. Errors: a session cannot be opened, or a query does not prepare.
    pub async fn spawn(
        config: &conninfo::ConnInfo,
        options: ThrottleOptions,
        slot: &str,
        message_prefix: &str,
    ) -> Result<Throttler> {
        let primary = conninfo::connect(config).await?;
        primary
            .batch_execute("SET application_name = 'doppel throttle'")
            .await?;
        let mut replicas = Vec::new();
        for r in &options.replicas {
            let c = conninfo::connect(r)
                .await
                .with_context(|| format!("connecting to the throttle replica {}", r.describe()))?;
            replicas.push((r.describe(), c));
        }
        let heartbeat = if replicas.is_empty() {
            None
        } else {
            // A commit on the primary every 100 ms, so the standby's last replayed commit time
            // measures its lag.
            let hb = conninfo::connect(config).await?;
            hb.batch_execute(
                "SET application_name = 'doppel heartbeat'; SET synchronous_commit = local",
            )
            .await?;
            let prefix = message_prefix.to_string();
            Some(tokio::spawn(async move {
                loop {
                    if hb
                        .execute(
                            "SELECT pg_logical_emit_message(true, $1, 'heartbeat')",
                            &[&prefix],
                        )
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }))
        };
        let live = Arc::new(LiveThrottle::default());
        live.max_replica_lag_ms.store(
            options
                .max_replica_lag
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            Ordering::SeqCst,
        );
        live.max_retained_wal
            .store(options.max_retained_wal.unwrap_or(0), Ordering::SeqCst);
        // The first sample is taken before returning, so a reason present at the start (a flag
        // file that exists) holds the first step instead of being seen a sample later.
        let first = sample(&primary, &replicas, &options, &live, slot).await;
        if !first.reasons.is_empty() {
            tracing::warn!("throttled: {}", first.describe());
        }
        let (tx, rx) = watch::channel(first);
        let slot = slot.to_string();
        let checker_live = live.clone();
        let handle = tokio::spawn(async move {
            loop {
                let mut state = sample(&primary, &replicas, &options, &checker_live, &slot).await;
                state.disconnected = primary.is_closed();
                tx.send_if_modified(|old| {
                    if *old != state {
                        if state.reasons.is_empty() && !old.reasons.is_empty() {
                            tracing::info!("throttle cleared");
                        } else if !state.reasons.is_empty() && old.reasons != state.reasons {
                            tracing::warn!("throttled: {}", state.describe());
                        }
                        *old = state;
                        true
                    } else {
                        false
                    }
                });
                tokio::time::sleep(CHECK_INTERVAL).await;
            }
        });
        Ok(Throttler {
            state: rx,
            live,
            handle,
            heartbeat,
            cancel: None,
        })
    }

    /// Makes [`Throttler::wait_clear`] end with the abort error once `cancel` fires.
    pub fn abort_on(&mut self, cancel: crate::cancel::Cancel) {
        self.cancel = Some(cancel);
    }

    /// Resolves with the abort error once a critical condition is seen (never, if the checker
    /// stops first). For `tokio::select!` beside a long statement.
    pub async fn critical(&self) -> anyhow::Error {
        let mut rx = self.state.clone();
        loop {
            if let Some(why) = &rx.borrow_and_update().critical {
                return critical(why);
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Settings an operator may change at runtime.
    pub fn live(&self) -> Arc<LiveThrottle> {
        self.live.clone()
    }

    /// The latest sample.
    pub fn state(&self) -> ThrottleState {
        self.state.borrow().clone()
    }

    /// A receiver of samples.
    pub fn watch(&self) -> watch::Receiver<ThrottleState> {
        self.state.clone()
    }

    /// Error if a critical condition was seen, or if the checker lost its session.
    pub fn check_critical(&self) -> Result<()> {
        let state = self.state.borrow();
        if let Some(why) = &state.critical {
            return Err(critical(why));
        }
        if state.disconnected {
            return Err(disconnected());
        }
        Ok(())
    }

    /// Waits while throttled. Errors on a critical condition, and on the run's cancel signal
    /// (see [`Throttler::abort_on`]).
    pub async fn wait_clear(&self) -> Result<()> {
        let mut rx = self.state.clone();
        loop {
            if let Some(cancel) = &self.cancel {
                cancel.check()?;
            }
            {
                let s = rx.borrow_and_update();
                if let Some(why) = &s.critical {
                    return Err(critical(why));
                }
                if s.disconnected {
                    return Err(disconnected());
                }
                if s.reasons.is_empty() {
                    return Ok(());
                }
            }
            let cancelled = async {
                match &self.cancel {
                    Some(cancel) => cancel.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                c = rx.changed() => if c.is_err() { return Ok(()) },
                _ = cancelled => {}
            }
        }
    }
}

impl Drop for Throttler {
    fn drop(&mut self) {
        self.handle.abort();
        if let Some(h) = &self.heartbeat {
            h.abort();
        }
    }
}

/// The checker's session to the primary is gone: a transient fault.
fn disconnected() -> anyhow::Error {
    crate::failure::Disconnected(
        "the throttle checker lost its connection to the server".to_string(),
    )
    .into()
}

/// The classified error for a critical condition: the panic flag is the operator's abort.
fn critical(why: &str) -> anyhow::Error {
    let kind = if why.starts_with("panic flag file") {
        crate::failure::FailureKind::Aborted
    } else {
        crate::failure::FailureKind::Critical
    };
    crate::failure::fail(
        kind,
        format!("aborting: {why}; the original table is untouched"),
    )
}

/// One sample of every configured source. A source that cannot be read throttles (it says
/// so), rather than letting the run go on unwatched: the replica lag, the retained WAL, the
/// active sessions, the throttle query, and the critical query (which cannot tell whether to
/// abort while it fails).
async fn sample(
    primary: &tokio_postgres::Client,
    replicas: &[(String, tokio_postgres::Client)],
    options: &ThrottleOptions,
    live: &LiveThrottle,
    slot: &str,
) -> ThrottleState {
    let mut state = ThrottleState::default();
    if let Some(flag) = &options.panic_flag_file
        && flag.exists()
    {
        state.critical = Some(format!("panic flag file {} exists", flag.display()));
        return state;
    }
    if live.forced.load(Ordering::SeqCst) {
        state
            .reasons
            .push(Reason::new("operator", "throttled by the operator".into()));
    }
    if let Some(flag) = &options.throttle_flag_file
        && flag.exists()
    {
        state.reasons.push(Reason::new(
            "flag_file",
            format!("throttle flag file {} exists", flag.display()),
        ));
    }
    sample_standbys(primary, options, live, &mut state).await;
    sample_replicas(replicas, live, &mut state).await;
    sample_retained_wal(primary, options, live, slot, &mut state).await;
    sample_active_backends(primary, options, &mut state).await;
    sample_queries(primary, options, &mut state).await;
    if options.origin_guard {
        sample_origins(primary, &mut state).await;
    }
    state
}

/// The guard of a stream with `origin 'none'` ([`ThrottleOptions::origin_guard`]): a
/// replication origin other than doppel's is critical. A failing check throttles.
async fn sample_origins(primary: &tokio_postgres::Client, state: &mut ThrottleState) {
    match foreign_origin(primary).await {
        Ok(None) => {}
        Ok(Some(name)) => {
            state.critical = Some(format!(
                "replication origin {name} appeared during the run (a subscription?): the stream skips changes that carry an origin (the copy runs under replication origins), so changes applied under it would be missing from the shadow; run again with --no-copy-origin"
            ));
        }
        Err(e) => state.reasons.push(Reason::new(
            "critical_query",
            format!("the replication-origin check failed, throttling until it runs ({e})"),
        )),
    }
}

/// The name of a replication origin on the server that is not doppel's (`doppel_…`), if any:
/// a subscription's, or another replication tool's, whose changes `origin 'none'` drops
/// (checked before the copy takes origins, [`crate::phases::origin`], and while it streams).
/// The origins of the subscriptions of other databases (`pg_<subscription oid>` and
/// `pg_<subscription oid>_<relation oid>`, PostgreSQL's names for them) do not count: what
/// they apply is written in another database, which doppel's slot does not decode. Any other
/// origin counts, as doppel cannot tell where its changes go.
///
/// Errors: the catalog query fails.
pub async fn foreign_origin(client: &tokio_postgres::Client) -> Result<Option<String>> {
    let row = client
        .query_opt(
            "SELECT o.roname FROM pg_replication_origin o
             WHERE o.roname NOT LIKE 'doppel\\_%'
               AND NOT EXISTS (
                   SELECT FROM pg_subscription s
                   WHERE s.subdbid <> (SELECT oid FROM pg_database WHERE datname = current_database())
                     AND (o.roname = 'pg_' || s.oid OR o.roname LIKE 'pg\\_' || s.oid || '\\_%'))
             LIMIT 1",
            &[],
        )
        .await
        .context("looking for replication origins")?;
    Ok(row.map(|r| r.get(0)))
}

/// Physical standbys' replay lag from `pg_stat_replication` (time and bytes).
async fn sample_standbys(
    primary: &tokio_postgres::Client,
    options: &ThrottleOptions,
    live: &LiveThrottle,
    state: &mut ThrottleState,
) {
    let max_lag_ms = live.max_replica_lag_ms.load(Ordering::SeqCst);
    if max_lag_ms == 0 && options.max_replica_lag_bytes.is_none() {
        return;
    }
    let rows = match primary
        .query(
            "SELECT coalesce(application_name, client_addr::text, pid::text),
                    coalesce((extract(epoch FROM replay_lag) * 1000)::bigint, 0),
                    coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint
             FROM pg_stat_replication WHERE state = 'streaming' AND replay_lsn IS NOT NULL",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            state.reasons.push(Reason::new(
                "replica_lag",
                format!("cannot read pg_stat_replication: {e}"),
            ));
            return;
        }
    };
    for r in rows {
        let (name, lag_ms, lag_bytes): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
        state.replica_lag_ms = state.replica_lag_ms.max(Some(lag_ms.max(0) as u64));
        state.replica_lag_bytes = state.replica_lag_bytes.max(Some(lag_bytes.max(0) as u64));
        if max_lag_ms > 0 && lag_ms as u64 > max_lag_ms {
            state.reasons.push(Reason::new(
                "replica_lag",
                format!("standby {name} replay lag {lag_ms} ms > {max_lag_ms} ms"),
            ));
        }
        if let Some(max) = options.max_replica_lag_bytes
            && lag_bytes as u64 > max
        {
            state.reasons.push(Reason::new(
                "replica_lag",
                format!("standby {name} trails by {lag_bytes} bytes of WAL > {max}"),
            ));
        }
    }
}

/// Named standbys' lag measured from the heartbeat (`--throttle-replica`).
async fn sample_replicas(
    replicas: &[(String, tokio_postgres::Client)],
    live: &LiveThrottle,
    state: &mut ThrottleState,
) {
    let max_lag_ms = live.max_replica_lag_ms.load(Ordering::SeqCst);
    for (name, replica) in replicas {
        match replica
            .query_one(
                "SELECT coalesce((extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::bigint, 0)",
                &[],
            )
            .await
        {
            Ok(row) => {
                let lag_ms: i64 = row.get(0);
                state.replica_lag_ms = state.replica_lag_ms.max(Some(lag_ms.max(0) as u64));
                if max_lag_ms > 0 && lag_ms as u64 > max_lag_ms {
                    state.reasons.push(Reason::new(
                        "replica_lag",
                        format!("replica {name} heartbeat lag {lag_ms} ms > {max_lag_ms} ms"),
                    ));
                }
            }
            Err(e) => state.reasons.push(Reason::new(
                "replica_lag",
                format!("cannot measure lag on replica {name}: {e}"),
            )),
        }
    }
}

/// The WAL doppel's slot retains: always read (the metrics show it); compared with
/// `--max-retained-wal` (throttle) and `--critical-retained-wal` (abort). Unreadable while
/// either is set: throttles.
async fn sample_retained_wal(
    primary: &tokio_postgres::Client,
    options: &ThrottleOptions,
    live: &LiveThrottle,
    slot: &str,
    state: &mut ThrottleState,
) {
    let max_retained = live.max_retained_wal.load(Ordering::SeqCst);
    let watched = max_retained > 0 || options.critical_retained_wal.is_some();
    let row = match primary
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
    {
        Ok(Some(row)) => row,
        Ok(None) => return,
        Err(e) => {
            if watched {
                state.reasons.push(Reason::new(
                    "retained_wal",
                    format!("cannot read the WAL retained by slot {slot}: {e}"),
                ));
            }
            return;
        }
    };
    let retained: Option<i64> = row.get(0);
    let retained = retained.unwrap_or(0).max(0) as u64;
    state.retained_wal = Some(retained);
    if let Some(max) = options.critical_retained_wal
        && retained > max
    {
        state.critical = Some(format!(
            "replication slot {slot} retains {retained} bytes of WAL > --critical-retained-wal {max}"
        ));
    }
    if max_retained > 0 && retained > max_retained {
        state.reasons.push(Reason::new(
            "retained_wal",
            format!("slot {slot} retains {retained} bytes of WAL > {max_retained}"),
        ));
    }
}

/// Client sessions running a statement (`--max-active-backends`).
async fn sample_active_backends(
    primary: &tokio_postgres::Client,
    options: &ThrottleOptions,
    state: &mut ThrottleState,
) {
    let Some(max) = options.max_active_backends else {
        return;
    };
    match primary
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE state = 'active' AND backend_type = 'client backend'
               AND pid <> pg_backend_pid() AND application_name NOT LIKE 'doppel%'",
            &[],
        )
        .await
    {
        Ok(row) => {
            let active: i64 = row.get(0);
            state.active_backends = Some(active);
            if active > max {
                state.reasons.push(Reason::new(
                    "active_backends",
                    format!("{active} active sessions > --max-active-backends {max}"),
                ));
            }
        }
        Err(e) => state.reasons.push(Reason::new(
            "active_backends",
            format!("cannot count the active sessions: {e}"),
        )),
    }
}

/// `--critical-query` (abort when positive) and `--throttle-query` (throttle when positive).
/// Either failing throttles and says so.
async fn sample_queries(
    primary: &tokio_postgres::Client,
    options: &ThrottleOptions,
    state: &mut ThrottleState,
) {
    if let Some(q) = &options.critical_query {
        match query_value(primary, q).await {
            Ok(value) => {
                state.critical_query_value = Some(value);
                if value > 0.0 {
                    state.critical =
                        Some(format!("--critical-query returned a positive value ({q})"));
                }
            }
            Err(e) => state.reasons.push(Reason::new(
                "critical_query",
                format!("--critical-query failed, throttling until it runs ({e})"),
            )),
        }
    }
    if let Some(q) = &options.throttle_query {
        match query_value(primary, q).await {
            Ok(value) => {
                state.throttle_query_value = Some(value);
                if value > 0.0 {
                    state.reasons.push(Reason::new(
                        "throttle_query",
                        format!("--throttle-query returned a positive value ({q})"),
                    ));
                }
            }
            Err(e) => state.reasons.push(Reason::new(
                "throttle_query",
                format!("--throttle-query failed, throttling until it runs ({e})"),
            )),
        }
    }
}

/// The greatest value of the first column of `query`'s rows: a number, or a boolean (true
/// is 1, false 0); 0 for no row or NULL. The query runs as a simple query.
///
/// Errors: the query failed, or a value is neither a number nor a boolean.
async fn query_value(client: &tokio_postgres::Client, query: &str) -> Result<f64> {
    let messages = client.simple_query(query).await?;
    let mut value = 0.0f64;
    for m in &messages {
        let tokio_postgres::SimpleQueryMessage::Row(row) = m else {
            continue;
        };
        let Some(text) = row.get(0) else { continue };
        let text = text.trim();
        let v = match text {
            "t" | "true" | "TRUE" => 1.0,
            "f" | "false" | "FALSE" => 0.0,
            _ => text.parse::<f64>().map_err(|_| {
                anyhow::anyhow!("it returned {text:?}, neither a number nor a boolean")
            })?,
        };
        value = value.max(v);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_kinds_are_distinct_label_values() {
        let mut kinds = REASON_KINDS.to_vec();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), REASON_KINDS.len());
        assert!(
            kinds
                .iter()
                .all(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
    }
}
