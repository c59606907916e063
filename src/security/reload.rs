//! A value built from files, rebuilt when they change: certificates, keys, the tokens file.
//!
//! Why polling and not inotify: the files are small and few, the period is seconds, and a poll of
//! `(mtime, size, inode)` also sees what inotify misses (a Kubernetes secret's symlink swap, a file
//! replaced by rename, an NFS mount). A rebuild that fails (a half-written file, a key that does not
//! match) keeps the value in use and is logged; the next change is tried again. The poll ends by itself
//! when the last [`Reloading`] handle is dropped.

use std::{
    path::PathBuf,
    sync::{Arc, Weak},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;

use super::SecurityError;

type Build<T> = dyn Fn() -> Result<T, SecurityError> + Send + Sync;

/// The current value; cheap to clone (shared).
pub struct Reloading<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Reloading<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.inner.what)
            .field("paths", &self.inner.paths)
            .finish()
    }
}

struct Inner<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    current: ArcSwap<T>,
    build: Box<Build<T>>,
}

/// What identifies a file's version without reading it.
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

fn stamp(paths: &[PathBuf]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            #[cfg(unix)]
            let ino = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let ino = 0;
            Some((m.modified().ok()?, m.len(), ino))
        })
        .collect()
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the value now (an error stops the start) and, inside a tokio runtime, checks `paths`
    /// every `every` from then on. `what` names it in the log.
    pub fn start(
        what: &'static str,
        paths: Vec<PathBuf>,
        every: Duration,
        build: impl Fn() -> Result<T, SecurityError> + Send + Sync + 'static,
    ) -> Result<Self, SecurityError> {
        let seen = stamp(&paths);
        let first = build()?;
        let inner = Arc::new(Inner {
            what,
            paths,
            current: ArcSwap::from_pointee(first),
            build: Box::new(build),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(poll(Arc::downgrade(&inner), seen, every));
        }
        Ok(Self { inner })
    }

    /// The value in use now.
    pub fn current(&self) -> Arc<T> {
        self.inner.current.load_full()
    }
}

async fn poll<T: Send + Sync + 'static>(inner: Weak<Inner<T>>, mut seen: Stamp, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let now = stamp(&inner.paths);
        if now == seen {
            continue;
        }
        seen = now;
        match (inner.build)() {
            Ok(value) => {
                inner.current.store(Arc::new(value));
                tracing::info!(what = inner.what, "reloaded after its files changed");
            }
            Err(e) => tracing::warn!(
                what = inner.what,
                "files changed but cannot be loaded; keeping the previous one: {e}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_changed_file_is_reloaded_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("n");
        std::fs::write(&path, "1").expect("write");
        let p = path.clone();
        let value = Reloading::start(
            "n",
            vec![path.clone()],
            Duration::from_millis(20),
            move || {
                let text = std::fs::read_to_string(&p).map_err(|source| SecurityError::Read {
                    path: p.clone(),
                    source,
                })?;
                text.trim()
                    .parse::<u32>()
                    .map_err(|e| SecurityError::Tls(e.to_string()))
            },
        )
        .expect("start");
        assert_eq!(*value.current(), 1);
        std::fs::write(&path, "22").expect("write");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while *value.current() != 22 {
            assert!(tokio::time::Instant::now() < deadline, "not reloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::write(&path, "not a number").expect("write");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            *value.current(),
            22,
            "a broken file keeps the previous value"
        );
    }
}
