//! doppel — online `ALTER TABLE` for PostgreSQL.
//!
//! See README.md for the phases and the runbook, and the module docs for each phase.

pub mod alter;
pub mod applier;
pub mod catalog;
pub mod cluster;
pub mod conninfo;
pub mod control;
pub mod copier;
pub mod cutover;
pub mod demo;
pub mod dependents;
pub mod failure;
pub mod fence;
pub mod hooks;
pub mod lsn;
pub mod migration;
pub mod operator;
pub mod pause;
pub mod pgoutput;
pub mod plan;
pub mod preflight;
pub mod progress;
pub mod replication;
pub mod shadow;
pub mod spool;
pub mod sql;
pub mod stream;
pub mod throttle;
pub mod verify;
pub mod workload;
