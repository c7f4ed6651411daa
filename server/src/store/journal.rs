//! The store's journal (`<data_dir>/parley.journal`): every batch of writes appended as one
//! checksummed frame, made durable by one `fdatasync` for all the batches queued together, before
//! their callers are answered. redb then takes them without syncing; a periodic durable redb
//! commit (a checkpoint) makes the journal's content redundant and empties it. At start, what the
//! journal holds is replayed into redb.
//!
//! A frame: payload length (u32 LE), CRC-32 of the payload (u32 LE), payload. A payload: the
//! number of writes (u32), then per write: the table (u8, index into `Table::ALL`), the key
//! (u32 length, bytes), 1 and the value (u32 length, bytes) or 0 for a delete. One frame per batch
//! keeps a request's writes all or nothing: a frame cut short by a crash (never acknowledged) is
//! dropped whole.

use super::{Table, Write};
use anyhow::{Context, bail};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

const HEADER: usize = 8;

pub struct Journal {
    file: File,
    path: PathBuf,
    len: u64,
    /// Whether `append` syncs (`storage.sync = "each-change"`); if not, the changes reach the disk
    /// with the next checkpoint (redb's durable commit).
    sync_each_append: bool,
}

impl Journal {
    /// Creates the journal empty (durably: the directory is synced too), replacing what the file
    /// held: `read` and replay it first.
    pub fn create(path: &Path, sync_each_append: bool) -> anyhow::Result<Journal> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the journal {}", path.display()))?;
        file.set_len(0)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("emptying the journal {}", path.display()))?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(Journal { file, path: path.to_path_buf(), len: 0, sync_each_append })
    }

    /// Appends one frame per batch and makes them durable (or, without `sync_each_append`, safe
    /// from the process dying).
    pub fn append<'a>(&mut self, batches: impl Iterator<Item = &'a [Write]>) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        for writes in batches {
            encode(writes, &mut buf);
        }
        self.file
            .write_all(&buf)
            .and_then(|()| if self.sync_each_append { self.file.sync_data() } else { Ok(()) })
            .with_context(|| format!("appending to the journal {}", self.path.display()))?;
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Empties the journal (once redb holds its content durably).
    pub fn clear(&mut self) -> anyhow::Result<()> {
        if self.len > 0 {
            self.file
                .set_len(0)
                .and_then(|()| self.file.sync_all())
                .with_context(|| format!("emptying the journal {}", self.path.display()))?;
            self.len = 0;
        }
        Ok(())
    }
}

/// The batches a journal holds, in order. A frame cut short or failing its checksum ends the
/// journal (the tail of a crash: it was never acknowledged); a frame whose checksum holds but
/// whose content does not parse is corruption and an error.
pub fn read(path: &Path) -> anyhow::Result<Vec<Vec<Write>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading the journal {}", path.display())),
    };
    let mut batches = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let word = |from: usize| bytes.get(from..from + 4).map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")));
        let len = word(at).map(|len| len as usize);
        if len == Some(0) {
            break; // a tail never written (a crash after the file grew, before its data)
        }
        let frame = len.zip(word(at + 4)).and_then(|(len, crc)| {
            let payload = bytes.get(at + HEADER..at + HEADER + len)?;
            (crc32fast::hash(payload) == crc).then_some(payload)
        });
        let Some(payload) = frame else {
            tracing::warn!(
                journal = %path.display(),
                offset = at,
                dropped_bytes = bytes.len() - at,
                "the journal ends in a frame cut short (a crash while writing it): dropping that batch, never acknowledged"
            );
            break;
        };
        let writes = decode(payload)
            .with_context(|| format!("journal {} is corrupt: the frame at byte {at} does not parse", path.display()))?;
        batches.push(writes);
        at += HEADER + payload.len();
    }
    Ok(batches)
}

fn encode(writes: &[Write], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(&(writes.len() as u32).to_le_bytes());
    for w in writes {
        let table = Table::ALL.iter().position(|t| *t == w.table).expect("every table is in ALL") as u8;
        out.push(table);
        out.extend_from_slice(&(w.key.len() as u32).to_le_bytes());
        out.extend_from_slice(w.key.as_bytes());
        match &w.value {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
    }
    let payload = &out[start + HEADER..];
    let (len, crc) = (payload.len() as u32, crc32fast::hash(payload));
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

fn decode(mut p: &[u8]) -> anyhow::Result<Vec<Write>> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> anyhow::Result<&'a [u8]> {
        if p.len() < n {
            bail!("{n} bytes wanted, {} left", p.len());
        }
        let (head, rest) = p.split_at(n);
        *p = rest;
        Ok(head)
    }
    fn number(p: &mut &[u8]) -> anyhow::Result<usize> {
        Ok(u32::from_le_bytes(take(p, 4)?.try_into().expect("4 bytes")) as usize)
    }
    let count = number(&mut p)?;
    let mut writes = Vec::with_capacity(count.min(p.len()));
    for _ in 0..count {
        let table = *Table::ALL.get(take(&mut p, 1)?[0] as usize).context("unknown table")?;
        let len = number(&mut p)?;
        let key = String::from_utf8(take(&mut p, len)?.to_vec()).context("key is not UTF-8")?;
        let value = match take(&mut p, 1)?[0] {
            0 => None,
            1 => {
                let len = number(&mut p)?;
                Some(take(&mut p, len)?.to_vec())
            }
            other => bail!("unknown write kind {other}"),
        };
        writes.push(Write { table, key, value });
    }
    if !p.is_empty() {
        bail!("{} bytes after the last write", p.len());
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: u8) -> Vec<Write> {
        vec![Write::put(Table::Rules, format!("user{n}@x"), &vec![n]), Write::delete(Table::Offline, "gone@x\u{0}01")]
    }

    #[test]
    fn frames_come_back_in_order_and_a_cut_tail_drops_only_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = Journal::create(&path, true).unwrap();
        j.append([batch(1), batch(2)].iter().map(Vec::as_slice)).unwrap();
        j.append(std::iter::once(batch(3).as_slice())).unwrap();
        assert_eq!(read(&path).unwrap(), [batch(1), batch(2), batch(3)]);
        let full = std::fs::read(&path).unwrap();
        let end = full.len();
        assert_eq!(end as u64, j.len);
        // A crash after the file grew, before its data was written: the zeros end the journal.
        let mut grown = full.clone();
        grown.extend([0; 100]);
        std::fs::write(&path, &grown).unwrap();
        assert_eq!(read(&path).unwrap(), [batch(1), batch(2), batch(3)]);
        // A crash in the middle of the last frame, its end never written (zeros) or the file cut
        // there: it is dropped, the others stay.
        let mut torn = full.clone();
        torn[end - 3..end].fill(0);
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(read(&path).unwrap(), [batch(1), batch(2)]);
        std::fs::write(&path, &full[..end - 3]).unwrap();
        assert_eq!(read(&path).unwrap(), [batch(1), batch(2)]);
        // A frame whose bytes changed fails its checksum: the journal ends there.
        let mut flipped = full.clone();
        flipped[end - 1] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(read(&path).unwrap().len(), 2);
        assert!(read(&dir.path().join("absent")).unwrap().is_empty());
    }

    #[test]
    fn a_cleared_journal_holds_only_what_came_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = Journal::create(&path, true).unwrap();
        j.append(std::iter::once(batch(1).as_slice())).unwrap();
        j.clear().unwrap();
        assert!(read(&path).unwrap().is_empty());
        j.append([batch(2), batch(3)].iter().map(Vec::as_slice)).unwrap();
        assert_eq!(read(&path).unwrap(), [batch(2), batch(3)]);
        // Creating it again (after a replay) empties it.
        Journal::create(&path, true).unwrap();
        assert!(read(&path).unwrap().is_empty());
    }

    #[test]
    fn a_frame_with_a_good_checksum_and_bad_content_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let payload = [1, 0, 0, 0, 99];
        let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        std::fs::write(&path, bytes).unwrap();
        let e = read(&path).unwrap_err();
        assert!(format!("{e:#}").contains("corrupt"), "{e:#}");
    }
}
