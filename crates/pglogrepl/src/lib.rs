//! pglogrepl — a PostgreSQL logical replication client and `pgoutput` decoder for tokio.
//!
//! PostgreSQL's Rust ecosystem has no maintained crate for the streaming replication
//! protocol; this one carries what an online schema change tool (doppel) needs, and depends
//! on nothing of it:
//!
//! - [`lsn`]: the log sequence number type.
//! - [`client`]: a replication connection (`replication=database`): connect and
//!   authenticate, run replication commands (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`),
//!   and stream WAL in CopyBoth mode with standby status updates.
//! - [`pgoutput`]: the decoder of the `pgoutput` plugin's messages (protocol version 1).

pub mod client;
pub mod lsn;
pub mod pgoutput;

pub use client::{ReplicationClient, ReplicationError, ReplicationMessage, ReplicationStream};
pub use lsn::Lsn;

/// The README's example, compiled (not run) as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
