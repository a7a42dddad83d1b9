//! doppel — online `ALTER TABLE` for PostgreSQL.
//!
//! See README.md for the phases and the runbook, and the module docs for each phase.

pub mod alter;
pub mod catalog;
pub mod cluster;
pub mod conninfo;
pub mod lsn;
pub mod pgoutput;
pub mod plan;
pub mod preflight;
pub mod replication;
pub mod sql;
pub mod applier;
pub mod shadow;
pub mod spool;
pub mod stream;
pub mod copier;
pub mod fence;
pub mod progress;
pub mod verify;
pub mod cutover;
pub mod migration;
