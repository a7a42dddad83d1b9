//! The operator's side of a run, gh-ost's conventions: progress (status line and bars),
//! throttling (replica lag, retained WAL, load, queries, flag files), the control socket,
//! hooks, and the migration history table.

pub mod control;
pub mod history;
pub mod hooks;
pub mod progress;
pub mod throttle;
