//! Capture: the replication stream consumed without pause into a durable local spool, so the
//! slot does not retain WAL while the backfill runs (docs/design.md §2, ordering (a)).

pub mod spool;
pub mod stream;
