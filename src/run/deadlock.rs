//! Who gives way in a deadlock with the application (docs/design.md §4.2). PostgreSQL looks
//! for a lock cycle only in a session that has waited `deadlock_timeout` (1 s by default),
//! and aborts that session's transaction. A cutover attempt waits at most `--lock-timeout`
//! per attempt and holds its locks at most `--max-lock-hold`, so when both are below
//! `deadlock_timeout` an application session caught in a cycle with the attempt never waits
//! long enough to run the check: the attempt times out first, rolls back and is retried, and
//! the application's transaction goes on. With a larger budget the application's
//! transaction may be the one aborted (SQLSTATE 40P01); the run warns.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio_postgres::Client;

use super::RunOptions;

/// The warning for `options`' lock budget when `--lock-timeout` or `--max-lock-hold` is not
/// below the server's `deadlock_timeout` (as `control`'s session sees it, in ms), or `None`.
///
/// Errors: the setting cannot be read (connection lost).
pub(super) async fn warning(control: &Client, options: &RunOptions) -> Result<Option<String>> {
    let ms: i64 = control
        .query_one(
            "SELECT setting::bigint FROM pg_settings WHERE name = 'deadlock_timeout'",
            &[],
        )
        .await
        .context("reading deadlock_timeout")?
        .get(0);
    Ok(message(
        Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
        options.lock_timeout,
        options.max_lock_hold,
    ))
}

/// The warning text, when `lock_timeout` or `max_lock_hold` reaches `deadlock_timeout`.
fn message(
    deadlock_timeout: Duration,
    lock_timeout: Duration,
    max_lock_hold: Duration,
) -> Option<String> {
    let longest = lock_timeout.max(max_lock_hold);
    (longest >= deadlock_timeout).then(|| {
        format!(
            "the cutover may wait up to {} ms (--lock-timeout) and hold its locks up to {} ms (--max-lock-hold), not below deadlock_timeout = {} ms: in a lock cycle with the cutover, PostgreSQL may abort the application's transaction (40P01) instead of the cutover attempt; keep both below deadlock_timeout so that the cutover is the one that gives way",
            lock_timeout.as_millis(),
            max_lock_hold.as_millis(),
            deadlock_timeout.as_millis()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_defaults_stay_below_the_default_deadlock_timeout() {
        assert_eq!(message(MS(1000), MS(200), MS(500)), None);
    }

    #[test]
    fn a_wait_or_a_hold_reaching_deadlock_timeout_is_warned_about() {
        let hold = message(MS(1000), MS(200), MS(1000)).unwrap();
        assert!(hold.contains("1000 ms (--max-lock-hold)"), "{hold}");
        assert!(message(MS(1000), MS(1500), MS(500)).is_some());
        assert!(message(MS(100), MS(200), MS(50)).is_some());
    }
}
