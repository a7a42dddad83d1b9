//! Cancellation of a run: Ctrl-C, SIGTERM, the operator's `abort`, or a test. Every phase
//! that waits watches it, so an abort ends the run wherever it waits.

use anyhow::Result;
use tokio::sync::watch;

/// A cancellation signal (Ctrl-C, SIGTERM, or a test).
#[derive(Debug, Clone)]
pub struct Cancel(watch::Receiver<bool>);

impl Cancel {
    /// A signal and its trigger.
    pub fn new() -> (watch::Sender<bool>, Cancel) {
        let (tx, rx) = watch::channel(false);
        (tx, Cancel(rx))
    }

    /// A signal that never fires.
    pub fn never() -> Cancel {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        Cancel(rx)
    }

    /// Error if cancelled.
    pub fn check(&self) -> Result<()> {
        if *self.0.borrow() {
            return Err(crate::failure::fail(
                crate::failure::FailureKind::Aborted,
                "interrupted: stopping and cleaning up",
            ));
        }
        Ok(())
    }

    /// Resolves when cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.0.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
