//! The phases of a migration, in the order a run takes them (docs/design.md §1): the
//! [`shadow`] table, [`capture`] of the change stream into a local spool, the [`backfill`]
//! in chunks, [`apply`] of the spooled and live changes, the [`fence`] that proves a catch-up,
//! [`verify`], and the [`cutover`].

pub mod apply;
pub mod backfill;
pub mod backfill_update;
#[cfg(feature = "pause-points")]
pub(crate) mod broken;
pub mod capture;
pub mod checkpoint;
pub mod cutover;
pub mod direct;
pub mod fence;
pub mod origin;
pub mod revert;
pub mod shadow;
pub mod tid_chunks;
pub mod verify;
pub mod violations;
