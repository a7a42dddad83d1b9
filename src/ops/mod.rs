//! The operator's side of a run, gh-ost's conventions: progress (status line and bars),
//! throttling (replica lag, retained WAL, load, queries, flag files), the control socket and
//! hooks.

pub mod control;
pub mod hooks;
pub mod pacing;
pub mod progress;
pub mod throttle;
