//! doppel — online `ALTER TABLE` for PostgreSQL.
//!
//! See README.md for the phases and the runbook, and the module docs for each phase.

pub mod cluster;
pub mod lsn;
pub mod pgoutput;
pub mod replication;
