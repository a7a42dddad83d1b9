//! doppel — online `ALTER TABLE` for PostgreSQL.
//!
//! The library behind the `doppel` command. Its modules are layered; each depends only on
//! the ones listed before it (checked by the test suite):
//!
//! 1. foundations: [`sql`] (quoting), [`failure`] (error classes, exit codes, typed refusals),
//!    [`cancel`], [`conninfo`] (connection settings); the replication protocol and the
//!    `pgoutput` decoder are the separate crate `pglogrepl`;
//! 2. [`testing`]: test-only pause points (empty without the `pause-points` feature);
//! 3. [`model`]: the catalog, the ALTER text, names, the projection, the phase;
//! 4. [`ops`]: what the operator sees and drives: progress, throttling, the control socket,
//!    hooks;
//! 5. [`dependents`]: objects bound to the table's OID, one file per kind;
//! 6. [`plan`] and [`preflight`]: the checks and the plan they produce;
//! 7. [`phases`]: shadow, capture (stream + spool), backfill, apply, verify, cutover;
//! 8. [`run`]: one migration, phase by phase, and `doppel cleanup`;
//! 9. [`demo`]: the embedded demo on a throwaway cluster.
//!
//! The design these modules cite lives in `docs/design.md`.

pub mod cancel;
pub mod conninfo;
pub mod demo;
pub mod dependents;
pub mod failure;
pub mod model;
pub mod ops;
pub mod phases;
pub mod plan;
pub mod preflight;
pub mod run;
pub mod sql;
pub mod testing;
