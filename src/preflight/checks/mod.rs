//! One module per preflight check (docs/design.md §1.1), each returning typed
//! [`Refusal`](crate::failure::Refusal)s (and warnings where it warns). The order they run in
//! is [`super::run`]'s.

pub mod alter;
pub mod clauses;
pub mod compat;
pub mod cost;
pub mod dependents;
pub mod key;
pub mod leftovers;
pub mod partition_maintenance;
pub mod partitions;
pub mod privileges;
pub mod projection;
pub mod publications;
pub mod server;
pub mod table;
pub mod transactions;
