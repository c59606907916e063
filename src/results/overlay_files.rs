//! Where overlay PNGs are kept: appended to one pack file per study beside the event log, not inside
//! the log; the log keeps only where each one is (study, SOP, frame → offset, length).
//!
//! Why not rows: an overlay is 100–200 kB (a third of a CT series is positive), the events of a slice
//! under 1 kB. Inside SQLite's WAL every overlay byte was written twice (the WAL frame, then the
//! checkpoint) and made ~98 % of the log's bytes (`radstream bench load`: the log thread 0.26 ms per
//! slice with them, 0.13 ms without). Why not a file per overlay: creating an inode per picture cost
//! more than the SQLite rows did (ext4's inode allocation was 13 % of the server's CPU under load, perf).
//! A pack is created once per study and appended to: each picture is written once, the event log
//! stays small enough to replay, to copy, and later to move onto a distributed log whose messages
//! should not carry images, and retention removes a study's pictures with one unlink.
//!
//! An overlay is derived data: written without fsync (a power loss may lose the last ones, as it may
//! the last log transactions), and a failed write loses only that picture, never an event. Bytes
//! whose index row was never committed (a crash in between) are unreferenced, never misread. Pack
//! names come from the registry (valid UIDs or their stand-ins) and, for reads, from the web view's
//! URL: anything but a plain name of letters, digits, `.`, `-`, `_` is refused before it reaches the
//! file system.

use std::{
    io::{ErrorKind, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

/// Longest overlay read back: an index row claiming more is not trusted with an allocation.
const MAX_OVERLAY_BYTES: u64 = 64 << 20;

/// The overlay packs of one event log.
#[derive(Debug, Clone)]
pub struct OverlayFiles {
    root: PathBuf,
}

/// A name usable as one path component: what UIDs (and the tests' short names) are made of.
fn plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn not_plain() -> std::io::Error {
    std::io::Error::new(
        ErrorKind::InvalidInput,
        "an overlay's Study Instance UID is not a plain name",
    )
}

impl OverlayFiles {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn pack(&self, study: &str) -> Option<PathBuf> {
        plain(study).then(|| self.root.join(format!("{study}.pack")))
    }

    /// Appends `png` to `study`'s pack; returns its offset there. One writer at a time (the log's).
    pub fn append(&self, study: &str, png: &[u8]) -> std::io::Result<u64> {
        let path = self.pack(study).ok_or_else(not_plain)?;
        std::fs::create_dir_all(&self.root)?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let offset = file.seek(SeekFrom::End(0))?;
        file.write_all(png)?;
        Ok(offset)
    }

    /// The `len` bytes at `offset` of `study`'s pack; `None` when the pack (or that much of it) is not
    /// there, or the name is not plain.
    pub fn read(&self, study: &str, offset: u64, len: u64) -> std::io::Result<Option<Vec<u8>>> {
        let Some(path) = self.pack(study) else {
            return Ok(None);
        };
        if len > MAX_OVERLAY_BYTES {
            return Ok(None);
        }
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if file.metadata()?.len() < offset.saturating_add(len) {
            return Ok(None);
        }
        file.seek(SeekFrom::Start(offset))?;
        let mut png = vec![0; len as usize];
        file.read_exact(&mut png)?;
        Ok(Some(png))
    }

    /// Removes every overlay of `study`.
    pub fn remove_study(&self, study: &str) -> std::io::Result<()> {
        let Some(path) = self.pack(study) else {
            return Ok(());
        };
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_read_back_at_their_offsets_and_removed_per_study() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = OverlayFiles::new(dir.path().join("overlays"));
        let one = files.append("1.2.3", b"one").expect("append");
        let two = files.append("1.2.3", b"second").expect("append");
        let other = files.append("1.2.9", b"other").expect("append");
        assert_eq!((one, two, other), (0, 3, 0));
        let read = |study, offset, len| files.read(study, offset, len).expect("read");
        assert_eq!(read("1.2.3", two, 6), Some(b"second".to_vec()));
        assert_eq!(read("1.2.3", one, 3), Some(b"one".to_vec()));
        assert_eq!(read("1.2.3", two, 7), None, "past the end of the pack");
        assert_eq!(
            read("1.2.3", 0, MAX_OVERLAY_BYTES + 1),
            None,
            "too long to trust"
        );
        files.remove_study("1.2.3").expect("remove");
        assert_eq!(read("1.2.3", one, 3), None);
        assert_eq!(read("1.2.9", other, 5), Some(b"other".to_vec()));
        files.remove_study("1.2.3").expect("removing twice is fine");
    }

    #[test]
    fn names_that_are_not_plain_never_reach_the_file_system() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("overlays");
        let files = OverlayFiles::new(root.clone());
        std::fs::write(dir.path().join("secret.pack"), b"outside").expect("write");
        for study in ["..", "../secret", "a/b", "", ".hidden", "1.2\0"] {
            assert!(files.append(study, b"x").is_err(), "{study:?}");
            assert_eq!(files.read(study, 0, 1).expect("read"), None, "{study:?}");
            files.remove_study(study).expect("refused quietly");
        }
        assert!(!root.exists(), "nothing was written");
        assert!(dir.path().join("secret.pack").exists());
    }
}
