//! Where overlay PNGs are kept: one file per slice beside the event log, not inside it.
//!
//! Why files: an overlay is 100–200 kB (a third of a CT series is positive), the events of a slice
//! under 1 kB. Inside SQLite's WAL every overlay byte was written twice (the WAL frame, then the
//! checkpoint) and made ~98 % of the log's bytes: the log thread spent 0.26 ms per slice instead of
//! 0.13 ms without them (`radstream bench load`, 240-slice pushes). A file is written once, and the
//! event log stays small enough to replay, to copy, and later to move onto a distributed log whose
//! messages should not carry images. An overlay is derived data: written without fsync (a power loss
//! may lose the last ones, as it may the last log transactions), and a failed write loses only that
//! picture, never an event.
//!
//! Layout: `<root>/<study uid>/<sop uid>-<frame>.png`, written to a temporary name and renamed, so a
//! reader never sees half a file. The names come from the registry (valid UIDs or their stand-ins)
//! and from the web view's URL: anything but a plain name of letters, digits, `.`, `-`, `_` is
//! refused before it reaches the file system.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
};

use super::log::Overlay;

/// The overlay files of one event log.
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

impl OverlayFiles {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn file(&self, study: &str, sop: &str, frame: u32) -> Option<PathBuf> {
        (plain(study) && plain(sop))
            .then(|| self.root.join(study).join(format!("{sop}-{frame}.png")))
    }

    /// Stores `overlay` (replacing an earlier one of the same slice).
    pub fn put(&self, overlay: &Overlay) -> std::io::Result<()> {
        let Some(path) = self.file(&overlay.study, &overlay.sop, overlay.frame) else {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                "an overlay's study or SOP Instance UID is not a plain name",
            ));
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("png.tmp");
        std::fs::write(&tmp, &overlay.png)?;
        std::fs::rename(&tmp, &path)
    }

    /// The stored PNG of one slice; `None` when there is none (or the names are not plain).
    pub fn get(&self, study: &str, sop: &str, frame: u32) -> std::io::Result<Option<Vec<u8>>> {
        let Some(path) = self.file(study, sop, frame) else {
            return Ok(None);
        };
        match std::fs::read(&path) {
            Ok(png) => Ok(Some(png)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes every overlay of `study`.
    pub fn remove_study(&self, study: &str) -> std::io::Result<()> {
        if !plain(study) {
            return Ok(());
        }
        match std::fs::remove_dir_all(self.root.join(study)) {
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

    fn overlay(study: &str, sop: &str, frame: u32, png: &[u8]) -> Overlay {
        Overlay {
            study: study.into(),
            sop: sop.into(),
            frame,
            png: png.to_vec(),
        }
    }

    #[test]
    fn stored_read_back_replaced_and_removed_per_study() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = OverlayFiles::new(dir.path().join("overlays"));
        files
            .put(&overlay("1.2.3", "1.2.3.4", 0, b"one"))
            .expect("put");
        files
            .put(&overlay("1.2.3", "1.2.3.4", 1, b"two"))
            .expect("put");
        files
            .put(&overlay("1.2.9", "1.2.9.4", 0, b"other"))
            .expect("put");
        assert_eq!(
            files.get("1.2.3", "1.2.3.4", 1).expect("get"),
            Some(b"two".to_vec())
        );
        files
            .put(&overlay("1.2.3", "1.2.3.4", 1, b"again"))
            .expect("replace");
        assert_eq!(
            files.get("1.2.3", "1.2.3.4", 1).expect("get"),
            Some(b"again".to_vec())
        );
        assert_eq!(files.get("1.2.3", "1.2.3.4", 2).expect("get"), None);
        files.remove_study("1.2.3").expect("remove");
        assert_eq!(files.get("1.2.3", "1.2.3.4", 0).expect("get"), None);
        assert_eq!(
            files.get("1.2.9", "1.2.9.4", 0).expect("get"),
            Some(b"other".to_vec())
        );
        files.remove_study("1.2.3").expect("removing twice is fine");
    }

    #[test]
    fn names_that_are_not_plain_never_reach_the_file_system() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("overlays");
        let files = OverlayFiles::new(root.clone());
        std::fs::write(dir.path().join("secret-0.png"), b"outside").expect("write");
        for (study, sop) in [
            ("..", "secret"),
            ("1.2", "../../secret"),
            ("a/b", "c"),
            ("", "c"),
            (".hidden", "c"),
        ] {
            assert!(
                files.put(&overlay(study, sop, 0, b"x")).is_err(),
                "{study} {sop}"
            );
            assert_eq!(
                files.get(study, sop, 0).expect("get"),
                None,
                "{study} {sop}"
            );
            files.remove_study(study).expect("refused quietly");
        }
        assert!(!root.exists(), "nothing was written");
        assert!(dir.path().join("secret-0.png").exists());
    }
}
