//! Watching a table's locks from outside: how long a lock that blocks writes was held.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Watches `pg_locks` every 2 ms and measures the longest continuous hold of a lock on the
/// table `oid` that blocks writes (SHARE ROW EXCLUSIVE or stronger) by a session other than
/// the watcher's.
pub struct LockWatch {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<Duration>,
}

impl LockWatch {
    /// Starts watching the table `oid` on a session of its own.
    pub async fn start(config: &tokio_postgres::Config, oid: u32) -> LockWatch {
        let client = doppel_testkit::connect(config).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = tokio::spawn(async move {
            let mut longest = Duration::ZERO;
            let mut since: Option<Instant> = None;
            while !s.load(Ordering::SeqCst) {
                let held: bool = client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = $1 AND granted
                           AND mode IN ('ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'))",
                        &[&oid],
                    )
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(false);
                match (held, since) {
                    (true, None) => since = Some(Instant::now()),
                    (false, Some(t)) => {
                        longest = longest.max(t.elapsed());
                        since = None;
                    }
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            longest.max(since.map(|t| t.elapsed()).unwrap_or_default())
        });
        LockWatch { stop, handle }
    }

    /// Stops watching; the longest hold seen.
    pub async fn stop(self) -> Duration {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.unwrap()
    }
}
