//! The run's setup (docs/design.md §1.2, §1.3): the publication, the shadow table, the
//! replication slot with its exported snapshot, and the stream consumed into the spool.
//! Publication first, then the shadow, then the slot.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use pglogrepl::client::{CreatedSlot, ReplicationStream};
use pglogrepl::lsn::Lsn;
use tokio_postgres::Client;

use super::Run;
use super::tasks::Tasks;
use crate::conninfo;
use crate::model::catalog;
use crate::model::phase::Phase;
use crate::model::snapshot::Snapshot;
use crate::phases::capture::spool::{self, SpoolReader};
use crate::phases::capture::stream::Streamer;
use crate::phases::checkpoint::{self, Checkpoint, Saved};
use crate::phases::shadow;
use crate::sql::literal;
use crate::testing::{broken, pause_point};

/// What the setup leaves for the phases: the stream and its spool, the slot's snapshot and
/// position, the original's catalog fingerprint.
pub(crate) struct Capture {
    /// The stream consumer, and the applier once the catch-up starts it.
    pub(crate) tasks: Tasks,
    /// The spool's reader, until the applier takes it.
    pub(crate) reader: Option<SpoolReader>,
    /// The snapshot the slot exported: the backfill must see every commit it counts.
    pub(crate) exported: Snapshot,
    /// The slot's consistent point: where the stream starts.
    pub(crate) start_lsn: Lsn,
    /// The original's catalog fingerprint, re-checked under the cutover lock.
    pub(crate) fingerprint: String,
    /// With `--revert-window`: the reverse stream, set up just before the cutover.
    pub(crate) reverse: Option<crate::phases::revert::ReverseStream>,
    /// Where the phases start: a new run at the backfill, a resumed one where its checkpoint
    /// stood.
    pub(crate) resumed: Option<Continue>,
}

/// Where the phases of a resumed run start, and what they continue from.
pub(crate) struct Continue {
    /// The phase the interrupted run had reached.
    pub(crate) from: Phase,
    /// Where the backfill stood (chunks committed, pending, where planning stopped).
    pub(crate) copy: crate::phases::checkpoint::CopyProgress,
    /// The end of the last source transaction the checkpoint says is in the shadow.
    pub(crate) applied: Option<Lsn>,
}

impl Run<'_> {
    /// Creates the publication, the shadow and the slot, and starts consuming the stream.
    ///
    /// Errors: a statement failed (creating nothing more; what was created is removed by
    /// the caller), the slot exported no snapshot, the work directory or spool cannot be
    /// created.
    pub(super) async fn set_up(&mut self) -> Result<Capture> {
        let spool_path = self.options.work_dir.join(format!(
            "doppel-{}-{}.spool",
            self.plan.original.oid,
            std::process::id()
        ));
        if self.options.resumable {
            self.create_checkpoint(&spool_path).await?;
        }
        self.create_publication_and_shadow().await?;
        pause_point!(self.probe, "shadow-built", self.plan.names.shadow.clone());
        let fingerprint = catalog::fingerprint(&self.control, self.plan.original.oid).await?;
        let mut replication = self.replication_connection().await?;
        let slot = self.create_slot(&mut replication).await?;
        let exported = self.import_snapshot(&slot).await?;
        if let Some(checkpoint) = &self.checkpoint {
            let shadow_oid = catalog::resolve(&self.control, &self.plan.names.shadow_qualified())
                .await
                .context("reading the shadow's OID")?;
            checkpoint
                .started(
                    &self.control,
                    shadow_oid,
                    &fingerprint,
                    &exported.to_string(),
                )
                .await?;
        }
        let options = self.stream_options().await?;
        let stream = replication
            .start_logical_replication_with(
                &self.plan.names.slot,
                slot.consistent_point,
                &self.plan.names.publication,
                options,
            )
            .await
            .context("starting replication")?;
        let (tasks, reader) = self.spool_stream(stream, &spool_path)?;
        Ok(Capture {
            tasks,
            reader: Some(reader),
            exported,
            start_lsn: slot.consistent_point,
            fingerprint,
            reverse: None,
            resumed: None,
        })
    }

    /// The stream's pgoutput options: logical messages (fences), and `origin 'none'` when the
    /// copy sessions can mark their writes with origins (the default, PostgreSQL 16+,
    /// [`crate::phases::origin`]); records the choice for the backfill.
    pub(super) async fn stream_options(&mut self) -> Result<pglogrepl::client::StartOptions> {
        self.created.copy_origins = self.options.copy_origin
            && crate::phases::origin::usable(&self.control, &self.plan).await?;
        if self.created.copy_origins {
            tracing::info!(
                "the copy sessions write under replication origins: the WAL sender skips the copied rows (origin 'none')"
            );
        }
        Ok(pglogrepl::client::StartOptions {
            messages: true,
            origin_none: self.created.copy_origins,
        })
    }

    /// Opens the replication connection (its security is logged and shown in the status).
    pub(super) async fn replication_connection(
        &self,
    ) -> Result<pglogrepl::client::ReplicationClient> {
        let walsender = walsender_config(self.config, &self.options.logical_decoding_work_mem);
        let mut replication = conninfo::connect_replication(&walsender)
            .await
            .context("opening the replication connection")?;
        let security = conninfo::security_of_replication(&mut replication, &walsender).await?;
        tracing::info!("replication connection: {security}");
        self.progress
            .update(|s| s.replication_security = Some(security.to_string()));
        Ok(replication)
    }

    /// The run's slot: TEMPORARY (gone with its connection), or permanent for a resumable
    /// run — with `FAILOVER` on PostgreSQL 17+, so standbys with `sync_replication_slots`
    /// keep a copy a promoted standby resumes from.
    async fn create_slot(
        &mut self,
        replication: &mut pglogrepl::client::ReplicationClient,
    ) -> Result<CreatedSlot> {
        let name = &self.plan.names.slot;
        let slot = if !self.options.resumable {
            replication.create_logical_slot(name, true).await
        } else if self.plan.server_version >= 170_000 {
            replication.create_failover_slot(name).await
        } else {
            replication.create_logical_slot(name, false).await
        }
        .context("creating the logical replication slot")?;
        self.created.permanent_slot = self.options.resumable;
        Ok(slot)
    }

    /// `CREATE PUBLICATION .. FOR TABLE` the original (a partitioned one with
    /// `publish_via_partition_root`, docs/design.md §1.14), then the shadow in one transaction.
    async fn create_publication_and_shadow(&mut self) -> Result<()> {
        self.control
            .batch_execute(&self.plan.create_publication_sql(
                &self.plan.names.publication,
                &self.plan.original.qualified(),
            ))
            .await
            .context("creating the publication")?;
        self.created.publication = true;
        let tx = self.control.transaction().await?;
        for statement in shadow::create_sql(&self.plan) {
            tx.batch_execute(&statement)
                .await
                .with_context(|| format!("creating the shadow table: {statement}"))?;
        }
        tx.commit().await?;
        self.created.shadow = true;
        Ok(())
    }

    /// Reads the slot's exported snapshot (it is valid only until the next command on the
    /// replication connection, so this comes first).
    async fn import_snapshot(&mut self, slot: &CreatedSlot) -> Result<Snapshot> {
        let snapshot_name = slot
            .snapshot_name
            .clone()
            .ok_or_else(|| anyhow!("the server exported no snapshot with the slot"))?;
        let tx = self
            .control
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await?;
        tx.batch_execute(&format!(
            "SET TRANSACTION SNAPSHOT {}",
            literal(&snapshot_name)
        ))
        .await
        .context("importing the slot's exported snapshot")?;
        let text: String = tx
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await?
            .get(0);
        tx.commit().await?;
        Snapshot::parse(&text)
    }

    /// Creates the spool at `path` and starts consuming `stream` into it.
    fn spool_stream(
        &mut self,
        stream: ReplicationStream,
        path: &std::path::Path,
    ) -> Result<(Tasks, SpoolReader)> {
        let (writer, reader) = spool::create(path)
            .map_err(|e| crate::failure::classify_disk_full(e, "creating the change spool"))?;
        self.created.spool = Some(path.to_path_buf());
        #[cfg(feature = "pause-points")]
        crate::phases::broken::DuringCopy::keep_reader(&self.probe, &reader)?;
        let streamer = Streamer::spawn(stream, writer, self.probe.clone());
        let tasks = Tasks {
            streamer: Some(streamer),
            applier: None,
        };
        Ok((tasks, reader))
    }

    /// A resumable run's first checkpoint, written before anything else is created (phase
    /// `setup`: a resume from it removes what exists and starts again). Creates the work
    /// directory, whose path the checkpoint records with the spool's.
    async fn create_checkpoint(&mut self, spool_path: &std::path::Path) -> Result<()> {
        let work_dir = &self.options.work_dir;
        std::fs::create_dir_all(work_dir)
            .with_context(|| format!("cannot create the work directory {}", work_dir.display()))?;
        let saved = Saved {
            table_oid: self.plan.original.oid,
            table_name: self.plan.original.qualified(),
            format: checkpoint::FORMAT,
            doppel_version: env!("CARGO_PKG_VERSION").to_string(),
            alters: self.options.alters.clone(),
            fingerprint: String::new(),
            shadow_oid: 0,
            slot: self.plan.names.slot.clone(),
            exported_snapshot: String::new(),
            spool_path: std::path::absolute(spool_path)?.display().to_string(),
            host: checkpoint::this_host(),
            phase: Phase::Setup.key().to_string(),
            applied: None,
            idle_secs: 0,
        };
        self.checkpoint = Some(Checkpoint::create(&self.control, &saved).await?);
        self.created.checkpoint = true;
        Ok(())
    }

    /// Waits until every transaction the exported snapshot sees as committed is visible to
    /// new snapshots of the control session (its commit can be flushed before it leaves the
    /// ProcArray). Such a transaction can be in the new snapshot's in-progress list or at or
    /// above its `xmax` ([`Snapshot::committed_but_not_visible`]); PostgreSQL 15 waits for it
    /// before exporting the snapshot, 14 and 18 do not (docs/design.md §2.6, F3).
    ///
    /// Errors: a transaction still invisible after 60 s (a synchronous standby not
    /// acknowledging), or a failed query.
    pub(super) async fn wait_exported_visible(&self, exported: &Snapshot) -> Result<()> {
        if broken!(self.probe, NoVisibilityWait) {
            return Ok(());
        }
        wait_until_visible(&self.control, exported).await
    }
}

async fn wait_until_visible(client: &Client, exported: &Snapshot) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text: String = client
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await?
            .get(0);
        let pending = exported.committed_but_not_visible(&Snapshot::parse(&text)?);
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "transactions {pending:?} committed before the slot was created but are still not visible after 60 s (a synchronous standby not acknowledging?)"
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The replication connection's configuration: `config` plus the exact-output settings
/// ([`conninfo::EXACT_OUTPUT_OPTIONS`]: the WAL sender formats streamed values with them) and
/// `-c logical_decoding_work_mem=<work_mem>` in the startup options, so the WAL sender decodes
/// the backfill's chunk transactions in memory instead of spilling them to disk.
pub(super) fn walsender_config(config: &conninfo::ConnInfo, work_mem: &str) -> conninfo::ConnInfo {
    let setting = format!("-c logical_decoding_work_mem={}", work_mem.replace(' ', ""));
    config.with_exact_output().with_option(&setting)
}
