//! The operator's side of a run, gh-ost's conventions: progress (status line and bars),
//! throttling (replica lag, retained WAL, load, queries, flag files), the control socket,
//! hooks, the Prometheus metrics and the migration history table.

pub mod control;
pub mod history;
pub mod hooks;
pub mod metrics;
pub mod pacing;
pub mod progress;
pub mod registry;
pub mod throttle;
