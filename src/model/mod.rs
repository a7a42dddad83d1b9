//! What a migration is about, without I/O beyond catalog reads: the table as the catalog
//! describes it, the `--alter` text (read with the SQL lexer), `column = expression`
//! assignments, doppel's names, the column projection from original rows to shadow rows,
//! the phase a run is in, and a partitioned table's tree.

pub mod alter;
pub mod assignment;
pub mod catalog;
pub mod lexer;
pub mod names;
pub mod partitions;
pub mod phase;
pub mod projection;
pub mod snapshot;
