//! Test-only (the `pause-points` feature): the deliberately broken ordering
//! [`crate::testing::Broken::ApplyDuringCopy`], an applier replaying the spool into the shadow
//! while the backfill runs: the races table's lock-free copy and apply (docs/design.md
//! §2.2). Race tests run it to show that their case bites; no normal build contains it.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use tokio_postgres::Client;

use crate::phases::apply::{Applier, ApplyOptions};
use crate::phases::capture::spool::SpoolReader;
use crate::plan::Plan;
use crate::sql::ident;
use crate::testing::{Probe, broken};

/// The applier running during the backfill, and the key index it needs.
pub(crate) struct DuringCopy {
    applier: Applier,
    index: String,
}

impl DuringCopy {
    /// A second reader of the run's spool, kept in `probe`'s run for [`DuringCopy::start`]
    /// when the variant is in scope.
    pub(crate) fn keep_reader(probe: &Probe, reader: &SpoolReader) -> Result<()> {
        if broken!(probe, ApplyDuringCopy) {
            probe.keep_during_copy_reader(reader.reopen()?);
        }
        Ok(())
    }

    /// Starts the applier when the variant is in scope: a unique index on the shadow's key
    /// (the applier's upserts need one), a session of its own, the spool's second reader.
    pub(crate) async fn start(
        probe: &Probe,
        client: &Client,
        plan: &Plan,
    ) -> Result<Option<DuringCopy>> {
        if !broken!(probe, ApplyDuringCopy) {
            return Ok(None);
        }
        let index = format!("_doppel_{}_during_copy", plan.original.oid);
        client
            .batch_execute(&format!(
                "CREATE UNIQUE INDEX {} ON {} {}",
                ident(&index),
                plan.names.shadow_qualified(),
                plan.projection.target_key_tuple()
            ))
            .await
            .context("creating the key index for the applier during the copy")?;
        let reader = probe
            .take_during_copy_reader()
            .ok_or_else(|| anyhow!("no second spool reader for the applier during the copy"))?;
        let config = probe
            .broken_config()
            .ok_or_else(|| anyhow!("no connection settings for the applier during the copy"))?;
        let session = crate::conninfo::connect(config).await?;
        session
            .batch_execute("SET application_name = 'doppel applier (during copy)'")
            .await?;
        let options = ApplyOptions {
            probe: probe.clone(),
            ..ApplyOptions::default()
        };
        let applier = Applier::spawn(session, Arc::new(plan.clone()), reader, options).await?;
        applier.resume();
        Ok(Some(DuringCopy { applier, index }))
    }

    /// Stops the applier at a transaction boundary, records how far it got (the applier
    /// after the backfill resumes there) and drops the index.
    pub(crate) async fn finish(self, probe: &Probe, client: &Client, plan: &Plan) -> Result<()> {
        self.applier.pause().await?;
        probe.set_applied_during_copy(self.applier.status().applied);
        self.applier.stop().await?;
        client
            .batch_execute(&format!(
                "DROP INDEX {}.{}",
                ident(&plan.names.schema),
                ident(&self.index)
            ))
            .await
            .context("dropping the key index of the applier during the copy")
    }
}
