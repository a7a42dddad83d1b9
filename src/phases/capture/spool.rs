//! The change spool: pgoutput messages received from the replication slot, appended to a
//! local file as they arrive and read back by the applier (docs/design.md §2, ordering (a)).
//!
//! The stream is consumed continuously while the backfill runs, so the primary does not have
//! to retain WAL for the whole copy: the slot's position is confirmed once the messages are
//! synced to the spool. Memory stays bounded: the writer buffers at most one `BufWriter`
//! (1 MiB), the reader one record.
//!
//! Format (version 2): the 16-byte header [`MAGIC`], then records `[u32 length][u64
//! wal_start][u32 crc32][payload]`, big-endian; the CRC-32 covers `wal_start` and the payload.
//! A payload is one pgoutput message, decoded again by the reader, or a record of doppel's own
//! starting with [`CONFIRM_RECORD`]: the position the stream is about to confirm to the slot,
//! written and synced before the confirmation, so the spool always holds at least what the
//! slot counts as received. After a crash, [`recover`] finds the last intact record (a torn
//! or corrupt tail fails its checksum) and cuts the spool at the end of its last whole
//! transaction; the stream then resumes from that position (never before the slot's
//! confirmed position, which the spool always covers), and nothing is lost or received twice.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use tokio::sync::watch;

use pglogrepl::lsn::Lsn;

/// The file header: format name and version.
pub const MAGIC: &[u8; 16] = b"doppel spool v2\n";
/// First payload byte of doppel's own confirmation record (pgoutput messages start with a
/// letter).
pub const CONFIRM_RECORD: u8 = b'~';
/// Bytes before each payload: length, WAL position, CRC-32.
const HEADER: usize = 16;

/// Whether a spooled payload is a record of doppel's own rather than a pgoutput message.
pub fn is_doppel_record(payload: &[u8]) -> bool {
    payload.first() == Some(&CONFIRM_RECORD)
}

fn checksum(wal_start: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&wal_start.to_be_bytes());
    h.update(payload);
    h.finalize()
}

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
    /// For a second reader ([`SpoolReader::reopen`]).
    path: PathBuf,
    pos: u64,
    visible: watch::Receiver<u64>,
}

/// Creates (truncating) the spool file at `path` with its header. Returns the writer and a
/// reader starting at the first record.
///
/// Errors: the file cannot be created, written or opened.
pub fn create(path: &Path) -> Result<(SpoolWriter, SpoolReader)> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot create the change spool {}", path.display()))?;
    file.write_all(MAGIC)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the change spool {}", path.display()))?;
    writer_and_reader(path, file, MAGIC.len() as u64)
}

/// What [`recover`] found in a spool left by an interrupted run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Where the spool is cut: after its last whole transaction (or doppel record).
    pub end: u64,
    /// The highest position the spool holds: the end of its last whole transaction or its
    /// last confirmation record. The stream resumes here (`START_REPLICATION` skips every
    /// transaction that committed before it), so nothing is spooled twice.
    pub holds: Lsn,
    /// Bytes past `end` that were dropped (a torn tail, or an unfinished transaction).
    pub dropped: u64,
}

/// Checks the spool at `path` against the slot's `confirmed` position and finds what a crash
/// tore: every record is read and its checksum verified up to the first bad or incomplete
/// one; the spool keeps the records up to the end of its last whole transaction. It may hold
/// more than the slot confirmed (a server that crashed forgets a confirmation it had not yet
/// saved): the stream then resumes from [`Recovered::holds`], not from the slot.
///
/// Errors: the file is missing, unreadable or not a doppel spool; or it holds less than the
/// slot confirmed (`holds < confirmed`: the slot counts a transaction as received that the
/// spool lacks, so resuming would lose changes).
pub fn recover(path: &Path, confirmed: Lsn) -> Result<Recovered> {
    let file = File::open(path)
        .with_context(|| format!("cannot open the change spool {}", path.display()))?;
    let size = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 16];
    reader
        .read_exact(&mut magic)
        .ok()
        .filter(|()| &magic == MAGIC)
        .with_context(|| format!("{} is not a doppel spool of format 2", path.display()))?;
    let mut scan = Scan {
        pos: MAGIC.len() as u64,
        end: MAGIC.len() as u64,
        holds: Lsn::INVALID,
        in_transaction: false,
    };
    while let Some((record_end, lsn, payload)) = next_intact(&mut reader, scan.pos, size)? {
        scan.pos = record_end;
        scan.accept(lsn, &payload);
    }
    if scan.holds < confirmed {
        bail!(
            "the change spool {} holds changes up to {} but the slot confirmed {}: part of the stream is missing from it (was it truncated or replaced?); resuming would lose changes",
            path.display(),
            scan.holds,
            confirmed
        );
    }
    Ok(Recovered {
        end: scan.end,
        holds: scan.holds,
        dropped: size - scan.end,
    })
}

/// The state of [`recover`]'s scan.
struct Scan {
    /// Offset after the last record read.
    pos: u64,
    /// Offset after the last record the spool keeps.
    end: u64,
    /// Highest position kept.
    holds: Lsn,
    in_transaction: bool,
}

impl Scan {
    /// Takes one intact record.
    fn accept(&mut self, lsn: Lsn, payload: &[u8]) {
        match payload.first() {
            Some(b'B') => self.in_transaction = true,
            Some(b'C') => {
                self.in_transaction = false;
                self.holds = self.holds.max(commit_end(payload).unwrap_or(lsn));
                self.end = self.pos;
            }
            Some(&CONFIRM_RECORD) if !self.in_transaction => {
                let at = confirm_position(payload).unwrap_or(Lsn::INVALID);
                self.holds = self.holds.max(at);
                self.end = self.pos;
            }
            Some(&CONFIRM_RECORD) => {}
            _ if !self.in_transaction => self.end = self.pos,
            _ => {}
        }
    }
}

/// The next record at `pos` if it is whole and its checksum holds: (its end offset, its WAL
/// position, its payload); `None` at the end or at a torn or corrupt record.
fn next_intact(
    reader: &mut BufReader<File>,
    pos: u64,
    size: u64,
) -> Result<Option<(u64, Lsn, Vec<u8>)>> {
    if pos + HEADER as u64 > size {
        return Ok(None);
    }
    let mut header = [0u8; HEADER];
    reader.read_exact(&mut header)?;
    let (len, lsn, crc) = parse_header(&header);
    let end = pos + (HEADER + len) as u64;
    if end > size {
        return Ok(None);
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload)?;
    if checksum(lsn, &payload) != crc {
        return Ok(None);
    }
    Ok(Some((end, Lsn(lsn), payload)))
}

fn parse_header(header: &[u8; HEADER]) -> (usize, u64, u32) {
    let len = u32::from_be_bytes(header[..4].try_into().unwrap_or_default()) as usize;
    let lsn = u64::from_be_bytes(header[4..12].try_into().unwrap_or_default());
    let crc = u32::from_be_bytes(header[12..].try_into().unwrap_or_default());
    (len, lsn, crc)
}

/// End LSN of a pgoutput Commit message (`C`, flags u8, commit LSN u64, end LSN u64, time).
fn commit_end(payload: &[u8]) -> Option<Lsn> {
    let bytes: [u8; 8] = payload.get(10..18)?.try_into().ok()?;
    Some(Lsn(u64::from_be_bytes(bytes)))
}

/// The position a confirmation record carries.
fn confirm_position(payload: &[u8]) -> Option<Lsn> {
    let bytes: [u8; 8] = payload.get(1..9)?.try_into().ok()?;
    Some(Lsn(u64::from_be_bytes(bytes)))
}

/// Opens the spool at `path` that [`recover`] checked, cut at `recovered.end`, for appending;
/// returns the writer and a reader at `read_from` (an offset on a record boundary: the first
/// record after the header, or where the applier stopped).
///
/// Errors: the file cannot be opened or cut, or `read_from` lies outside it.
pub fn reopen(
    path: &Path,
    recovered: &Recovered,
    read_from: u64,
) -> Result<(SpoolWriter, SpoolReader)> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the change spool {}", path.display()))?;
    file.set_len(recovered.end)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot cut the change spool {}", path.display()))?;
    if read_from < MAGIC.len() as u64 || read_from > recovered.end {
        bail!(
            "the applier's spool position {read_from} lies outside the spool {} (0..{})",
            path.display(),
            recovered.end
        );
    }
    let (mut writer, mut reader) = writer_and_reader(path, file, recovered.end)?;
    writer.file.seek(SeekFrom::Start(recovered.end))?;
    reader.seek(read_from)?;
    Ok((writer, reader))
}

fn writer_and_reader(path: &Path, file: File, end: u64) -> Result<(SpoolWriter, SpoolReader)> {
    let (tx, rx) = watch::channel(end);
    let reader = SpoolReader::open(path, rx)?;
    Ok((
        SpoolWriter {
            file: BufWriter::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            offset: end,
            visible: tx,
        },
        reader,
    ))
}

impl SpoolWriter {
    /// Appends one message (not yet visible to the reader; see [`SpoolWriter::publish`]).
    ///
    /// Errors: writing failed (a full disk: ENOSPC).
    pub fn append(&mut self, wal_start: Lsn, payload: &[u8]) -> Result<()> {
        let len = u32::try_from(payload.len()).context("message larger than 4 GiB")?;
        let crc = checksum(wal_start.0, payload);
        self.file
            .write_all(&len.to_be_bytes())
            .and_then(|()| self.file.write_all(&wal_start.0.to_be_bytes()))
            .and_then(|()| self.file.write_all(&crc.to_be_bytes()))
            .and_then(|()| self.file.write_all(payload))
            .with_context(|| format!("writing the change spool {}", self.path.display()))?;
        self.offset += (HEADER + payload.len()) as u64;
        Ok(())
    }

    /// Appends the record that says the stream is about to confirm `lsn` to the slot (see the
    /// module docs); [`SpoolWriter::sync`] it before confirming.
    ///
    /// Errors: writing failed.
    pub fn append_confirm(&mut self, lsn: Lsn) -> Result<()> {
        let mut payload = [0u8; 9];
        payload[0] = CONFIRM_RECORD;
        payload[1..].copy_from_slice(&lsn.0.to_be_bytes());
        self.append(lsn, &payload)
    }

    /// Hands everything appended so far to the OS and lets the reader see it.
    ///
    /// Errors: writing failed.
    pub fn publish(&mut self) -> Result<()> {
        self.file
            .flush()
            .with_context(|| format!("writing the change spool {}", self.path.display()))?;
        self.visible.send_replace(self.offset);
        Ok(())
    }

    /// [`SpoolWriter::publish`] plus `fdatasync`: what is synced may be confirmed to the slot.
    ///
    /// Errors: writing or syncing failed.
    pub fn sync(&mut self) -> Result<()> {
        self.publish()?;
        self.file
            .get_ref()
            .sync_data()
            .with_context(|| format!("syncing the change spool {}", self.path.display()))
    }

    /// The spool's size in bytes (header included).
    pub fn len(&self) -> u64 {
        self.offset
    }

    /// True when nothing but the header was written.
    pub fn is_empty(&self) -> bool {
        self.offset <= MAGIC.len() as u64
    }

    /// The spool file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl SpoolReader {
    fn open(path: &Path, visible: watch::Receiver<u64>) -> Result<SpoolReader> {
        let mut file = File::open(path)
            .with_context(|| format!("cannot open the change spool {}", path.display()))?;
        file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
        Ok(SpoolReader {
            file: BufReader::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            pos: MAGIC.len() as u64,
            visible,
        })
    }

    fn seek(&mut self, pos: u64) -> Result<()> {
        self.file.seek(SeekFrom::Start(pos))?;
        self.pos = pos;
        Ok(())
    }

    /// A second reader of the same spool, from its first record: the keys changed during a
    /// TID-range backfill are read with it ([`crate::phases::tid_chunks`]), and so is the
    /// spool of the test-only broken ordering that applies changes during the backfill.
    ///
    /// Errors: the spool file cannot be opened.
    pub(crate) fn reopen(&self) -> Result<SpoolReader> {
        SpoolReader::open(&self.path, self.visible.clone())
    }

    /// The offset of the next record to read (a record boundary): where a resumed reader
    /// starts again.
    pub fn position(&self) -> u64 {
        self.pos
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
    /// Errors: a truncated, corrupt (checksum) or unreadable spool.
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
    ///
    /// Errors: as [`SpoolReader::next`].
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
        let (len, lsn, crc) = parse_header(&header);
        let mut payload = vec![0u8; len];
        self.file
            .read_exact(&mut payload)
            .context("reading the change spool")?;
        self.pos += (HEADER + len) as u64;
        if self.pos > *self.visible.borrow() {
            bail!("the change spool is corrupt: a record runs past the written end");
        }
        if checksum(lsn, &payload) != crc {
            bail!(
                "the change spool is corrupt: the record at {} fails its checksum",
                self.pos - (HEADER + len) as u64
            );
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

    /// A pgoutput Commit with end LSN `end`.
    fn commit(end: u64) -> Vec<u8> {
        let mut c = vec![b'C', 0];
        c.extend_from_slice(&(end - 1).to_be_bytes());
        c.extend_from_slice(&end.to_be_bytes());
        c.extend_from_slice(&0i64.to_be_bytes());
        c
    }

    /// Two transactions (ending at 100 and 200) and a third without its commit.
    fn three_transactions(path: &Path) -> (u64, u64) {
        let (mut w, _) = create(path).unwrap();
        w.append(Lsn(90), b"Bone").unwrap();
        w.append(Lsn(95), b"Ione").unwrap();
        w.append(Lsn(99), &commit(100)).unwrap();
        let first = w.len();
        w.append(Lsn(190), b"Btwo").unwrap();
        w.append(Lsn(199), &commit(200)).unwrap();
        let second = w.len();
        w.append(Lsn(290), b"Bthree").unwrap();
        w.append(Lsn(295), b"Ithree").unwrap();
        w.sync().unwrap();
        (first, second)
    }

    #[test]
    fn recovery_cuts_after_the_last_whole_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let (_, second) = three_transactions(&path);
        let r = recover(&path, Lsn(200)).unwrap();
        assert_eq!(
            (r.end, r.holds),
            (second, Lsn(200)),
            "the open transaction is cut"
        );
        let r = recover(&path, Lsn(100)).unwrap();
        assert_eq!(
            (r.end, r.holds),
            (second, Lsn(200)),
            "a slot that forgot a confirmation: the spool keeps what it holds"
        );
        let err = recover(&path, Lsn(250)).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_by_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let (_, second) = three_transactions(&path);
        // A byte of the second commit flipped: the scan stops before it.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = second as usize - 3;
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = recover(&path, Lsn(200)).unwrap_err().to_string();
        assert!(err.contains("holds changes up to 0/64"), "{err}");
        // Torn: the file ends in the middle of a record.
        let (_, second) = three_transactions(&path);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(second + 5).unwrap();
        let r = recover(&path, Lsn(200)).unwrap();
        assert_eq!(r.end, second);
        assert_eq!(r.dropped, 5);
    }

    #[tokio::test]
    async fn a_reopened_spool_appends_after_the_cut_and_reads_from_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let (first, _) = three_transactions(&path);
        let r = recover(&path, Lsn(200)).unwrap();
        let (mut w, mut reader) = reopen(&path, &r, first).unwrap();
        assert_eq!(
            reader.try_next().unwrap().map(|(l, _)| l),
            Some(Lsn(190)),
            "reads from the given position"
        );
        w.append(Lsn(300), b"Bfour").unwrap();
        w.publish().unwrap();
        assert_eq!(reader.try_next().unwrap().map(|(l, _)| l), Some(Lsn(199)));
        assert_eq!(reader.try_next().unwrap().map(|(l, _)| l), Some(Lsn(300)));
        // A confirmation record marks an idle position the spool holds.
        w.append_confirm(Lsn(350)).unwrap();
        w.sync().unwrap();
        drop(w);
        let r = recover(&path, Lsn(350)).unwrap_err();
        assert!(
            r.to_string().contains("missing"),
            "inside an open transaction"
        );
    }
}
