//! What a run created, so that a failure before the cutover commits removes exactly that and
//! leaves the original untouched.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio_postgres::Client;

use crate::phases::shadow;
use crate::plan::Plan;
use crate::sql::ident;

/// The objects and files of one run that exist so far.
#[derive(Default)]
pub(crate) struct Created {
    /// The publication `doppel_<oid>`.
    pub(crate) publication: bool,
    /// The revert window's publication `doppel_<oid>_rev` (its slot is TEMPORARY).
    pub(crate) revert_publication: bool,
    /// The shadow table.
    pub(crate) shadow: bool,
    /// The cutover committed: from here nothing is removed.
    pub(crate) cut_over: bool,
    /// The change spool file.
    pub(crate) spool: Option<PathBuf>,
    /// The run's slot is permanent (a resumable run): it is dropped explicitly once its
    /// stream has stopped.
    pub(crate) permanent_slot: bool,
    /// The run's checkpoint rows (a resumable run).
    pub(crate) checkpoint: bool,
    /// The copy sessions mark their writes with replication origins and the stream asks for
    /// `origin 'none'` (PostgreSQL 16+, [`crate::phases::origin`]): the origins are dropped.
    pub(crate) copy_origins: bool,
}

impl Created {
    /// What a resumed run finds: everything of the interrupted run, its spool at `spool`.
    pub(crate) fn resumed(&mut self, spool: PathBuf) {
        *self = Created {
            publication: true,
            revert_publication: false,
            shadow: true,
            cut_over: false,
            spool: Some(spool),
            permanent_slot: true,
            checkpoint: true,
            copy_origins: false,
        };
    }

    /// Removes what it lists (waiting up to 10 s for a TEMPORARY slot to go with its
    /// connection, or for a permanent one to be released and then dropping it) and returns
    /// what it removed, described.
    ///
    /// Errors: a catalog query or a DROP failed.
    pub(crate) async fn remove(&self, control: &Client, plan: &Plan) -> Result<Vec<String>> {
        let created = self;
        let mut removed = Vec::new();
        // The TEMPORARY slot is dropped by the server once its connection is gone; wait for it so
        // that a failed run returns only when nothing of it is left.
        let deadline = Instant::now() + Duration::from_secs(10);
        for slot in [&plan.names.slot, &plan.names.revert_slot] {
            loop {
                let active: Option<bool> = control
                    .query_opt(
                        "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                        &[slot],
                    )
                    .await?
                    .map(|r| r.get(0));
                let Some(active) = active else {
                    break;
                };
                if created.permanent_slot && slot == &plan.names.slot && !active {
                    removed.extend(super::resume::drop_slot(control, slot).await?);
                    break;
                }
                if Instant::now() > deadline {
                    removed.push(format!(
                        "(replication slot {slot} still present: run doppel cleanup)"
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if created.revert_publication {
            control
                .batch_execute(&format!(
                    "DROP PUBLICATION IF EXISTS {}",
                    ident(&plan.names.revert_publication)
                ))
                .await?;
            removed.push(format!("publication {}", plan.names.revert_publication));
        }
        if created.publication {
            control
                .batch_execute(&format!(
                    "DROP PUBLICATION IF EXISTS {}",
                    ident(&plan.names.publication)
                ))
                .await?;
            removed.push(format!("publication {}", plan.names.publication));
        }
        if created.shadow {
            control
                .batch_execute(&shadow::drop_sql(&plan.names.schema, &plan.names.shadow))
                .await?;
            removed.push(format!("shadow table {}", plan.names.shadow_qualified()));
        }
        if let Some(path) = &created.spool {
            std::fs::remove_file(path).ok();
        }
        if created.copy_origins
            && crate::phases::origin::drop_all(control, plan.original.oid).await? > 0
        {
            removed.push("replication origins of the copy sessions".into());
        }
        if created.checkpoint
            && crate::phases::checkpoint::Checkpoint::remove(control, plan.original.oid).await?
        {
            removed.push("checkpoint".into());
        }
        Ok(removed)
    }
}
