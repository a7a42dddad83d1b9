//! doppel's integration tests, in one test binary so `cargo test` links them once.
//!
//! One module per area (the README's "Tests" section says what each proves); select one
//! with its path, e.g. `cargo test --test suite races::`. Every test that needs a server
//! starts its own private PostgreSQL cluster (`common::cluster`), so tests run in parallel.
//! Helpers shared by the modules are in [`common`] (doppel-specific) and in the
//! `doppel-testkit` crate (clusters, polling, processes, SQL).
//!
//! Left out of the default run (`#[ignore]`): `e2e_pgbench`,
//! `randomized_oracle::many_seeds` and `reconnect::chaos_long` (see the README).

mod common;

mod abort_anywhere;
mod app_compat;
mod apply_rules;
mod architecture;
mod backfill_command;
mod bulk_path;
mod cluster_harness;
mod connection;
mod control_and_hooks;
mod cutover_budget;
mod decoded_before_visible;
mod dependents;
mod e2e_pgbench;
mod failover;
mod faults;
mod interface;
mod interrupted_run;
mod kill_phases;
mod least_privilege;
mod ledger;
mod lock_budget;
mod metrics;
mod old_snapshots;
mod online_migration;
mod operator;
mod pacing;
mod parallel_apply;
mod partition_dependents;
mod partition_tree;
mod partitioned_fk;
mod partitioned_resume;
mod partitioned_run;
mod partitioned_sequences;
mod pooler;
mod preflight_refusals;
mod races;
mod randomized_oracle;
mod reconnect;
mod resume;
mod revert_window;
mod rollback_guard;
mod rollback_script;
mod run_behaviour;
mod status;
mod strategies;
mod throttle;
mod throttle_sources;
mod tid_chunks;
mod tls;
mod type_matrix;
mod unique_violation;
mod verify_command;
mod version_specific;
