//! Waiting for a condition: poll it until it holds or a timeout passes. Tests wait for what
//! they need (a row copied, a process gone) instead of sleeping for a guessed time.

use std::future::Future;
use std::time::{Duration, Instant};

/// Interval between two checks of a condition.
const INTERVAL: Duration = Duration::from_millis(20);

/// Checks `condition` every 20 ms until it holds: true as soon as it does, false if it
/// still does not after `timeout`. Blocks the thread; use [`wait_until_async`] in async code
/// that must not.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(INTERVAL);
    }
}

/// Awaits the async `condition` every 20 ms until it holds: true as soon as it does, false
/// if it still does not after `timeout`.
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_as_soon_as_the_condition_holds_and_false_after_the_timeout() {
        let mut calls = 0;
        assert!(wait_until(Duration::from_secs(10), || {
            calls += 1;
            calls == 3
        }));
        assert_eq!(calls, 3);
        let started = Instant::now();
        assert!(!wait_until(Duration::from_millis(50), || false));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn async_variant_awaits_the_condition() {
        let mut calls = 0;
        assert!(
            wait_until_async(Duration::from_secs(10), || {
                calls += 1;
                let done = calls == 2;
                async move { done }
            })
            .await
        );
        assert!(!wait_until_async(Duration::from_millis(30), || async { false }).await);
    }
}
