//! Durable checkpoints of a resumable run (`--resumable`, docs/design.md §2.13): what a run
//! has done, committed in the database in the same transactions as the work itself, so a
//! run interrupted in any phase resumes exactly.
//!
//! Two tables in the schema `doppel` (created on first use; the connecting role needs CREATE
//! on the database):
//!
//! - `doppel.checkpoints`, one row per table being migrated (keyed by the original's OID):
//!   the format and doppel versions, the plan's identity (the `--alter` clauses, the
//!   original's catalog fingerprint, the shadow's OID, the slot), the slot's exported
//!   snapshot, the spool's path and host, the phase, the applier's position (the end of the
//!   last applied source transaction and the spool offset after it, updated in the same
//!   transaction as each applied batch), and when the run was last alive;
//! - `doppel.checkpoint_chunks`: each backfill chunk as the planner queued it (sequence
//!   number, key range), marked done in the same transaction as its `INSERT .. SELECT`.
//!
//! A table in the database survives the loss of doppel's host; the spool, local, does not:
//! resuming needs the host's spool (or a new run).

use anyhow::{Context, Result, bail};
use pglogrepl::lsn::Lsn;
use tokio_postgres::{Client, GenericClient};

use crate::model::phase::Phase;

/// Version of the checkpoint format; a checkpoint of another format is refused for resume.
pub const FORMAT: i32 = 2;

/// The statements creating the checkpoint tables (idempotent).
const SCHEMA_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS doppel;
CREATE TABLE IF NOT EXISTS doppel.checkpoints (
  table_oid oid PRIMARY KEY,
  table_name text NOT NULL,
  format integer NOT NULL,
  doppel_version text NOT NULL,
  alters text[] NOT NULL,
  fingerprint text NOT NULL,
  shadow_oid oid NOT NULL,
  slot text NOT NULL,
  exported_snapshot text NOT NULL,
  spool_path text NOT NULL,
  host text NOT NULL,
  phase text NOT NULL,
  applied_lsn pg_lsn,
  spool_offset bigint,
  started_at timestamptz NOT NULL DEFAULT now(),
  alive_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS doppel.checkpoint_chunks (
  table_oid oid NOT NULL,
  seq bigint NOT NULL,
  part text,
  lower_key text[],
  upper_key text[],
  rows bigint,
  started boolean NOT NULL DEFAULT false,
  done boolean NOT NULL DEFAULT false,
  PRIMARY KEY (table_oid, seq));
ALTER TABLE doppel.checkpoint_chunks ADD COLUMN IF NOT EXISTS part text;";

/// A resumable run's checkpoint, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The original table's OID (the key).
    pub table_oid: u32,
    /// The table as the run named it.
    pub table_name: String,
    /// [`FORMAT`] of the doppel that wrote it.
    pub format: i32,
    /// The version of the doppel that wrote it.
    pub doppel_version: String,
    /// The run's `--alter` clauses.
    pub alters: Vec<String>,
    /// The original's catalog fingerprint when the shadow was built.
    pub fingerprint: String,
    /// The shadow table's OID.
    pub shadow_oid: u32,
    /// The permanent replication slot.
    pub slot: String,
    /// The slot's exported snapshot (`pg_snapshot` text).
    pub exported_snapshot: String,
    /// The change spool's path, on `host`.
    pub spool_path: String,
    /// The host the spool is on.
    pub host: String,
    /// The phase reached ([`Phase::key`]).
    pub phase: String,
    /// End of the last source transaction applied to the shadow, with the spool offset after
    /// it; `None` before the applier started.
    pub applied: Option<(Lsn, u64)>,
    /// Seconds since the run was last alive (its heartbeat).
    pub idle_secs: i64,
}

/// A chunk the planner queued but no worker committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingChunk {
    /// The planner's sequence number.
    pub seq: i64,
    /// The leaf partition it reads, as SQL names it (`"schema"."name"`), for a partitioned
    /// table.
    pub partition: Option<String>,
    /// The range `(lower, upper]` as key text values; `None` bounds are open.
    pub lower: Option<Vec<Option<String>>>,
    /// Upper bound.
    pub upper: Option<Vec<Option<String>>>,
    /// A worker had started copying it (its transaction rolled back with the interruption):
    /// its rows are copied a second time.
    pub started: bool,
}

/// The last chunk the planner queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTo {
    /// The leaf partition it reads, as SQL names it (`"schema"."name"`), for a partitioned
    /// table.
    pub partition: Option<String>,
    /// Its upper bound; `None` when it was the partition's (or the table's) last chunk,
    /// open above.
    pub upper: Option<Vec<Option<String>>>,
}

/// Where the backfill stood when the run stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyProgress {
    /// Chunks queued and not committed, in planning order: copied again on resume.
    pub pending: Vec<PendingChunk>,
    /// The partition and upper bound of the last chunk queued: planning continues after it;
    /// `None` when nothing was queued.
    pub planned_to: Option<PlannedTo>,
    /// The next sequence number.
    pub next_seq: i64,
    /// Rows committed so far.
    pub rows: u64,
}

/// The checkpoint of the run on one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The original table's OID.
    pub table_oid: u32,
}

impl Checkpoint {
    /// Creates the checkpoint tables if needed and writes the run's first checkpoint
    /// (replacing nothing: a leftover row of the same table is refused by preflight first).
    ///
    /// Errors: the role cannot create the schema or the tables (it needs CREATE on the
    /// database), or a statement failed.
    pub async fn create(client: &Client, saved: &Saved) -> Result<Checkpoint> {
        ensure_tables(client).await?;
        client
            .execute(
                "INSERT INTO doppel.checkpoints (table_oid, table_name, format, doppel_version,
                   alters, fingerprint, shadow_oid, slot, exported_snapshot, spool_path, host, phase)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    &saved.table_oid,
                    &saved.table_name,
                    &saved.format,
                    &saved.doppel_version,
                    &saved.alters,
                    &saved.fingerprint,
                    &saved.shadow_oid,
                    &saved.slot,
                    &saved.exported_snapshot,
                    &saved.spool_path,
                    &saved.host,
                    &saved.phase,
                ],
            )
            .await
            .context("writing the run's first checkpoint")?;
        Ok(Checkpoint {
            table_oid: saved.table_oid,
        })
    }

    /// The checkpoint stored for the table with OID `table_oid`, if the tables exist and hold
    /// one.
    ///
    /// Errors: a query failed.
    pub async fn load(client: &Client, table_oid: u32) -> Result<Option<Saved>> {
        // From the catalog, not to_regclass: naming a table in a schema the role may not use
        // is an error, and the schema may be another role's (the history table's, say).
        let row = client
            .query_opt(
                "SELECT has_schema_privilege(n.oid, 'USAGE')
                        AND has_table_privilege(c.oid, 'SELECT')
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'doppel' AND c.relname = 'checkpoints'",
                &[],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        if !row.get::<_, bool>(0) {
            tracing::warn!(
                "doppel.checkpoints exists but this role may not read it (USAGE on schema doppel and SELECT on the table): a resumable run of another role is not seen"
            );
            return Ok(None);
        }
        let row = client
            .query_opt(
                "SELECT table_oid, table_name, format, doppel_version, alters, fingerprint,
                        shadow_oid, slot, exported_snapshot, spool_path, host, phase,
                        applied_lsn::text, spool_offset,
                        extract(epoch FROM now() - alive_at)::bigint
                 FROM doppel.checkpoints WHERE table_oid = $1",
                &[&table_oid],
            )
            .await
            .context("reading the checkpoint")?;
        row.map(|r| saved_of(&r)).transpose()
    }

    /// Records what the setup created: the shadow's OID, the original's catalog fingerprint
    /// and the slot's exported snapshot; the run enters the backfill.
    ///
    /// Errors: the update failed.
    pub async fn started(
        &self,
        client: &Client,
        shadow_oid: u32,
        fingerprint: &str,
        exported_snapshot: &str,
    ) -> Result<()> {
        client
            .execute(
                "UPDATE doppel.checkpoints SET shadow_oid = $2, fingerprint = $3,
                   exported_snapshot = $4, phase = $5, alive_at = now()
                 WHERE table_oid = $1",
                &[
                    &self.table_oid,
                    &shadow_oid,
                    &fingerprint,
                    &exported_snapshot,
                    &Phase::Copy.key(),
                ],
            )
            .await
            .context("recording the setup in the checkpoint")?;
        Ok(())
    }

    /// The checkpoint whose shadow is now the table `oid`: the cutover of that run committed
    /// (the shadow took the original's name). `None` if there is none.
    ///
    /// Errors: a query failed.
    pub async fn of_shadow(client: &Client, oid: u32) -> Result<Option<Saved>> {
        // From the catalog, not to_regclass: naming a table in a schema the role may not use
        // is an error, and the schema may be another role's (the history table's, say).
        let row = client
            .query_opt(
                "SELECT has_schema_privilege(n.oid, 'USAGE')
                        AND has_table_privilege(c.oid, 'SELECT')
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'doppel' AND c.relname = 'checkpoints'",
                &[],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        if !row.get::<_, bool>(0) {
            tracing::warn!(
                "doppel.checkpoints exists but this role may not read it (USAGE on schema doppel and SELECT on the table): a resumable run of another role is not seen"
            );
            return Ok(None);
        }
        let table_oid: Option<u32> = client
            .query_opt(
                "SELECT table_oid FROM doppel.checkpoints WHERE shadow_oid = $1",
                &[&oid],
            )
            .await?
            .map(|r| r.get(0));
        match table_oid {
            Some(t) => Checkpoint::load(client, t).await,
            None => Ok(None),
        }
    }

    /// Records that the run entered `phase`, and that it is alive.
    ///
    /// Errors: the update failed.
    pub async fn phase(&self, client: &impl GenericClient, phase: Phase) -> Result<()> {
        client
            .execute(
                "UPDATE doppel.checkpoints SET phase = $2, alive_at = now() WHERE table_oid = $1",
                &[&self.table_oid, &phase.key()],
            )
            .await
            .context("recording the phase in the checkpoint")?;
        Ok(())
    }

    /// The run's heartbeat: it is alive now (a resume is refused after `--resume-within`).
    ///
    /// Errors: the update failed.
    pub async fn alive(&self, client: &Client) -> Result<()> {
        client
            .execute(
                "UPDATE doppel.checkpoints SET alive_at = now() WHERE table_oid = $1",
                &[&self.table_oid],
            )
            .await?;
        Ok(())
    }

    /// Records, in the applier's transaction `tx`, that every source transaction up to the
    /// one ending at `applied` is in the shadow, and that the spool's next record is at
    /// `spool_offset`.
    ///
    /// Errors: the update failed (the batch then rolls back with it).
    pub async fn applied(
        &self,
        tx: &impl GenericClient,
        applied: Lsn,
        spool_offset: u64,
    ) -> Result<()> {
        tx.execute(
            "UPDATE doppel.checkpoints SET applied_lsn = $2::text::pg_lsn, spool_offset = $3
             WHERE table_oid = $1",
            &[
                &self.table_oid,
                &applied.to_string(),
                &(spool_offset as i64),
            ],
        )
        .await
        .context("recording the applier's position in the checkpoint")?;
        Ok(())
    }

    /// Records that the planner queued chunk `seq` over `(lower, upper]` of `partition`
    /// (the leaf partition of a partitioned table, as SQL names it), before any worker can
    /// copy it.
    ///
    /// Errors: the insert failed.
    pub async fn chunk_planned(
        &self,
        client: &impl GenericClient,
        seq: i64,
        partition: Option<&str>,
        lower: &Option<Vec<Option<String>>>,
        upper: &Option<Vec<Option<String>>>,
    ) -> Result<()> {
        client
            .execute(
                "INSERT INTO doppel.checkpoint_chunks (table_oid, seq, part, lower_key, upper_key)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&self.table_oid, &seq, &partition, lower, upper],
            )
            .await
            .context("recording a planned chunk in the checkpoint")?;
        Ok(())
    }

    /// Records that a worker starts copying chunk `seq` (outside the chunk's transaction, so
    /// it survives the chunk's rollback: a resume reports the rows it copies again).
    ///
    /// Errors: the update failed.
    pub async fn chunk_started(&self, client: &impl GenericClient, seq: i64) -> Result<()> {
        client
            .execute(
                "UPDATE doppel.checkpoint_chunks SET started = true WHERE table_oid = $1 AND seq = $2",
                &[&self.table_oid, &seq],
            )
            .await
            .context("recording a started chunk in the checkpoint")?;
        Ok(())
    }

    /// Marks chunk `seq` copied (`rows` rows), in the chunk's own transaction `tx`.
    ///
    /// Errors: the update failed (the chunk then rolls back with it).
    pub async fn chunk_done(&self, tx: &impl GenericClient, seq: i64, rows: u64) -> Result<()> {
        let marked = tx
            .execute(
                "UPDATE doppel.checkpoint_chunks SET done = true, rows = $3
                 WHERE table_oid = $1 AND seq = $2",
                &[&self.table_oid, &seq, &(rows as i64)],
            )
            .await
            .context("recording a copied chunk in the checkpoint")?;
        if marked != 1 {
            bail!("chunk {seq} is missing from the checkpoint: it was not recorded as planned");
        }
        Ok(())
    }

    /// Where the backfill stood: the chunks queued but not copied, where planning stopped.
    ///
    /// Errors: a query failed.
    pub async fn copy_progress(&self, client: &Client) -> Result<CopyProgress> {
        let rows = client
            .query(
                "SELECT seq, lower_key, upper_key, done, coalesce(rows, 0), started, part
                 FROM doppel.checkpoint_chunks WHERE table_oid = $1 ORDER BY seq",
                &[&self.table_oid],
            )
            .await
            .context("reading the checkpoint's chunks")?;
        let mut progress = CopyProgress::default();
        for row in rows {
            let seq: i64 = row.get(0);
            let chunk = PendingChunk {
                seq,
                partition: row.get(6),
                lower: row.get(1),
                upper: row.get(2),
                started: row.get(5),
            };
            progress.planned_to = Some(PlannedTo {
                partition: chunk.partition.clone(),
                upper: chunk.upper.clone(),
            });
            progress.next_seq = seq + 1;
            if row.get::<_, bool>(3) {
                progress.rows += row.get::<_, i64>(4) as u64;
            } else {
                progress.pending.push(chunk);
            }
        }
        Ok(progress)
    }

    /// Removes the checkpoint (the run finished, or `doppel cleanup`).
    ///
    /// Errors: a statement failed.
    pub async fn remove(client: &Client, table_oid: u32) -> Result<bool> {
        let exists: bool = client
            .query_one("SELECT to_regclass('doppel.checkpoints') IS NOT NULL", &[])
            .await?
            .get(0);
        if !exists {
            return Ok(false);
        }
        client
            .execute(
                "DELETE FROM doppel.checkpoint_chunks WHERE table_oid = $1",
                &[&table_oid],
            )
            .await?;
        let removed = client
            .execute(
                "DELETE FROM doppel.checkpoints WHERE table_oid = $1",
                &[&table_oid],
            )
            .await?;
        Ok(removed > 0)
    }
}

/// The name of the host doppel runs on (where the spool is), as the checkpoint records it.
pub fn this_host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Creates the schema and tables, retrying once when a concurrent run created them first.
async fn ensure_tables(client: &Client) -> Result<()> {
    for attempt in 0..2 {
        match client.batch_execute(SCHEMA_SQL).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt == 0 && e.code().is_some_and(|c| c.code() == "23505") => continue,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(
                    "creating doppel's checkpoint tables (schema doppel; the role needs CREATE on the database)",
                ));
            }
        }
    }
    bail!("creating doppel's checkpoint tables failed twice")
}

fn saved_of(r: &tokio_postgres::Row) -> Result<Saved> {
    let applied_lsn: Option<String> = r.get(12);
    let offset: Option<i64> = r.get(13);
    let applied = match (applied_lsn, offset) {
        (Some(lsn), Some(offset)) => Some((
            lsn.parse::<Lsn>()
                .map_err(|e| anyhow::anyhow!("checkpoint LSN {lsn:?}: {e:?}"))?,
            offset as u64,
        )),
        _ => None,
    };
    Ok(Saved {
        table_oid: r.get(0),
        table_name: r.get(1),
        format: r.get(2),
        doppel_version: r.get(3),
        alters: r.get(4),
        fingerprint: r.get(5),
        shadow_oid: r.get(6),
        slot: r.get(7),
        exported_snapshot: r.get(8),
        spool_path: r.get(9),
        host: r.get(10),
        phase: r.get(11),
        applied,
        idle_secs: r.get(14),
    })
}
