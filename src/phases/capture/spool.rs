//! The change spool: pgoutput messages received from the replication slot, appended to a
//! local file as they arrive and read back by the applier (docs/design.md §2, ordering (a)).
//!
//! The stream is consumed continuously while the backfill runs, so the primary does not have
//! to retain WAL for the whole copy: the slot's position is confirmed once the messages are
//! synced to the spool. Records are `[u32 length][u64 wal_start][payload]`, big-endian; the
//! payload is one pgoutput message, decoded again by the reader. Memory stays bounded: the
//! writer buffers at most one `BufWriter` (1 MiB), the reader one record.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use tokio::sync::watch;

use pglogrepl::lsn::Lsn;

const HEADER: usize = 12;

/// Appends records; publishes how far readers may read.
pub struct SpoolWriter {
    file: BufWriter<File>,
    path: PathBuf,
    offset: u64,
    visible: watch::Sender<u64>,
}

/// Reads records in order, waiting for the writer at the end.
#[derive(Debug)]
pub struct SpoolReader {
    file: BufReader<File>,
    /// For a second reader (test-only).
    #[cfg(feature = "pause-points")]
    path: PathBuf,
    pos: u64,
    visible: watch::Receiver<u64>,
}

/// Creates (truncating) the spool file at `path`. Returns the writer and a reader starting at
/// the first record.
///
/// Errors: the file cannot be created or opened.
pub fn create(path: &Path) -> Result<(SpoolWriter, SpoolReader)> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot create the change spool {}", path.display()))?;
    let (tx, rx) = watch::channel(0u64);
    let reader = SpoolReader::open(path, rx)?;
    Ok((
        SpoolWriter {
            file: BufWriter::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            offset: 0,
            visible: tx,
        },
        reader,
    ))
}

impl SpoolWriter {
    /// Appends one message (not yet visible to the reader; see [`SpoolWriter::publish`]).
    pub fn append(&mut self, wal_start: Lsn, payload: &[u8]) -> Result<()> {
        let len = u32::try_from(payload.len()).context("message larger than 4 GiB")?;
        self.file.write_all(&len.to_be_bytes())?;
        self.file.write_all(&wal_start.0.to_be_bytes())?;
        self.file.write_all(payload)?;
        self.offset += (HEADER + payload.len()) as u64;
        Ok(())
    }

    /// Hands everything appended so far to the OS and lets the reader see it.
    pub fn publish(&mut self) -> Result<()> {
        self.file.flush().context("writing the change spool")?;
        self.visible.send_replace(self.offset);
        Ok(())
    }

    /// [`SpoolWriter::publish`] plus `fdatasync`: what is synced may be confirmed to the slot.
    pub fn sync(&mut self) -> Result<()> {
        self.publish()?;
        self.file
            .get_ref()
            .sync_data()
            .context("syncing the change spool")
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.offset
    }

    /// True when nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.offset == 0
    }

    /// The spool file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl SpoolReader {
    fn open(path: &Path, visible: watch::Receiver<u64>) -> Result<SpoolReader> {
        let file = File::open(path)
            .with_context(|| format!("cannot open the change spool {}", path.display()))?;
        Ok(SpoolReader {
            file: BufReader::with_capacity(1 << 20, file),
            #[cfg(feature = "pause-points")]
            path: path.to_path_buf(),
            pos: 0,
            visible,
        })
    }

    /// A second reader of the same spool, from its first record (test-only: the broken
    /// ordering that applies changes during the backfill reads the spool twice).
    #[cfg(feature = "pause-points")]
    pub(crate) fn reopen(&self) -> Result<SpoolReader> {
        SpoolReader::open(&self.path, self.visible.clone())
    }

    /// Bytes published by the writer but not yet read.
    pub fn pending(&self) -> u64 {
        self.visible.borrow().saturating_sub(self.pos)
    }

    /// True when a record can be read without waiting.
    pub fn has_more(&self) -> bool {
        self.pending() > 0
    }

    /// The next record, waiting for the writer when all published records were read.
    /// `Ok(None)` once the writer is gone and everything was read.
    ///
    /// Errors: a truncated or unreadable spool.
    pub async fn next(&mut self) -> Result<Option<(Lsn, Bytes)>> {
        loop {
            if self.has_more() {
                return self.read_record().map(Some);
            }
            if self.visible.changed().await.is_err() && !self.has_more() {
                return Ok(None);
            }
        }
    }

    /// The next record if one is published, without waiting.
    pub fn try_next(&mut self) -> Result<Option<(Lsn, Bytes)>> {
        if self.has_more() {
            self.read_record().map(Some)
        } else {
            Ok(None)
        }
    }

    fn read_record(&mut self) -> Result<(Lsn, Bytes)> {
        let mut header = [0u8; HEADER];
        self.file
            .read_exact(&mut header)
            .context("reading the change spool")?;
        let len = u32::from_be_bytes(header[..4].try_into().unwrap_or_default()) as usize;
        let lsn = u64::from_be_bytes(header[4..].try_into().unwrap_or_default());
        let mut payload = vec![0u8; len];
        self.file
            .read_exact(&mut payload)
            .context("reading the change spool")?;
        self.pos += (HEADER + len) as u64;
        if self.pos > *self.visible.borrow() {
            bail!("the change spool is corrupt: a record runs past the written end");
        }
        Ok((Lsn(lsn), Bytes::from(payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_round_trip_and_reader_waits_for_publish() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(&dir.path().join("spool")).unwrap();
        w.append(Lsn(10), b"Bhello").unwrap();
        assert!(
            r.try_next().unwrap().is_none(),
            "unpublished records are invisible"
        );
        w.publish().unwrap();
        assert_eq!(
            r.try_next().unwrap(),
            Some((Lsn(10), Bytes::from_static(b"Bhello")))
        );
        w.append(Lsn(11), b"C").unwrap();
        w.sync().unwrap();
        assert_eq!(
            r.next().await.unwrap(),
            Some((Lsn(11), Bytes::from_static(b"C")))
        );
        drop(w);
        assert_eq!(r.next().await.unwrap(), None);
    }
}
