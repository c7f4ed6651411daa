//! The server's own log file on the logs volume, rotated by size: `parley.log` is renamed
//! `parley.log.1` (and so on, the oldest dropped) once it would pass its limit, so the volume
//! never fills with logs.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    /// Files kept besides the current one.
    keep: u32,
    file: File,
    written: u64,
}

impl RotatingFile {
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<RotatingFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(RotatingFile { path: path.to_path_buf(), max_bytes, keep, file, written })
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
        } else {
            for n in (1..self.keep).rev() {
                let from = self.numbered(n);
                if from.exists() {
                    std::fs::rename(&from, self.numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.numbered(1))?;
        }
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written > 0 && self.written + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parley.log");
        let mut log = RotatingFile::open(&path, 100, 2).unwrap();
        for i in 0..20 {
            writeln!(log, "line {i:02} {}", "x".repeat(30)).unwrap();
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) <= 100 && size(&path) > 0);
        assert!(size(&dir.path().join("parley.log.1")) > 0 && size(&dir.path().join("parley.log.2")) > 0);
        assert!(!dir.path().join("parley.log.3").exists(), "only two old files are kept");
        let newest = std::fs::read_to_string(&path).unwrap();
        assert!(newest.contains("line 19"), "{newest}");
        // A restart appends to the current file and counts what is in it.
        let log = RotatingFile::open(&path, 100, 2).unwrap();
        assert_eq!(log.written, size(&path));
    }
}
