//! Watches the model repository so a version dropped into `models/<name>/<version>/` serves without a
//! restart. File events arrive in bursts while a version is copied in, so a version directory is only
//! loaded once its files have been quiet for `settle` (the copy is done); a load that fails is listed
//! with its reason, and retried when its files change again (the engineer fixed the manifest).
//!
//! A loaded version is immutable: its files changing on disk are not reloaded into it (findings name
//! the sha256 of what was loaded), but they are not ignored silently either: the change is logged with
//! what to do (publish a new version directory).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{repository, Catalog, CatalogError};
use crate::shutdown::Shutdown;

/// Starts watching `root`; the returned watcher must be kept alive for as long as it should watch.
pub fn spawn(
    catalog: Catalog,
    root: PathBuf,
    activate_new: bool,
    settle: Duration,
    shutdown: Shutdown,
) -> Result<notify::RecommendedWatcher, CatalogError> {
    let (tx, rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if changes_files(&event.kind) => {
                for path in event.paths {
                    let _ = tx.send(path);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("model repository watch error: {e}"),
        })
        .map_err(|e| CatalogError::Repository(format!("cannot watch {}: {e}", root.display())))?;
    watcher
        .watch(&root, RecursiveMode::Recursive)
        .map_err(|e| CatalogError::Repository(format!("cannot watch {}: {e}", root.display())))?;
    tracing::info!(repository = %root.display(), "watching the model repository for new versions");
    tokio::spawn(follow(catalog, root, activate_new, settle, rx, shutdown));
    Ok(watcher)
}

/// Whether an event changes what the repository holds. Opening a file or directory does not, and
/// the watch sees its own process's opens: the loader reads every file of the version it loads (and
/// the recursive watch opens each new directory), so counting opens would reload a failed version
/// every `settle` forever and warn that a loaded version changed when nothing did.
fn changes_files(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        // a file written and closed: a copy finished
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// The version directory a changed path lies in: `root/<name>/<version>`.
fn version_dir(root: &Path, path: &Path) -> Option<PathBuf> {
    let relative = path.strip_prefix(root).ok()?;
    let mut parts = relative.components();
    let name = parts.next()?;
    let version = parts.next()?;
    let dir = root.join(name).join(version);
    repository::spelled_by_path(&dir).map(|_| dir)
}

async fn follow(
    catalog: Catalog,
    root: PathBuf,
    activate_new: bool,
    settle: Duration,
    mut rx: mpsc::UnboundedReceiver<PathBuf>,
    shutdown: Shutdown,
) {
    // version directory -> when its files last changed
    let mut quiet_since: HashMap<PathBuf, tokio::time::Instant> = HashMap::new();
    loop {
        let next_due = quiet_since.values().min().map(|t| *t + settle);
        tokio::select! {
            path = rx.recv() => match path {
                Some(path) => {
                    if let Some(dir) = version_dir(&root, &path) {
                        quiet_since.insert(dir, tokio::time::Instant::now());
                    }
                }
                None => return,
            },
            () = async {
                match next_due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = tokio::time::Instant::now();
                let due: Vec<PathBuf> = quiet_since
                    .iter()
                    .filter(|(_, t)| **t + settle <= now)
                    .map(|(d, _)| d.clone())
                    .collect();
                for dir in due {
                    quiet_since.remove(&dir);
                    settled(&catalog, &dir, activate_new).await;
                }
            }
            () = shutdown.draining() => return,
        }
    }
}

/// A version directory's files stopped changing: load it if it is new (or failed before).
async fn settled(catalog: &Catalog, dir: &Path, activate_new: bool) {
    if !dir.join("model.toml").is_file() {
        return;
    }
    let Some((name, version)) = repository::spelled_by_path(dir) else {
        return;
    };
    let version = version.to_string();
    let state = catalog
        .list()
        .into_iter()
        .find(|s| s.name == name && s.version == version)
        .map(|s| s.state);
    match state {
        Some("ready") | Some("loading") => {
            tracing::warn!(
                model = %name,
                version = %version,
                "files of a loaded model version changed on disk; a version is immutable and keeps \
                 serving what it loaded: publish the change as a new version directory"
            );
            return;
        }
        _ => {}
    }
    let loader = catalog.clone();
    let path = dir.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || loader.load_dir(&path)).await;
    match loaded {
        Ok(Ok(served)) => {
            // only forward: an older version dropped in (a rollback target) waits to be asked for
            let newer = catalog
                .active(&name)
                .is_none_or(|active| served.version > active.active.version);
            if activate_new && newer {
                match catalog.activate(&name, &version) {
                    Ok(_) => tracing::info!(
                        model = %name,
                        version = %version,
                        sha256 = %served.info.onnx_sha256,
                        "new model version found in the repository and activated"
                    ),
                    Err(e) => tracing::warn!("new model version not activated: {e}"),
                }
            }
        }
        Ok(Err(e)) => tracing::warn!("new model version in the repository not loaded: {e}"),
        Err(e) => tracing::error!("the model loader crashed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_attributed_to_their_version_directory() {
        let root = Path::new("/srv/models");
        assert_eq!(
            version_dir(root, Path::new("/srv/models/brain/2.0.0/model.onnx")),
            Some(PathBuf::from("/srv/models/brain/2.0.0"))
        );
        assert_eq!(
            version_dir(root, Path::new("/srv/models/brain/2.0.0")),
            Some(PathBuf::from("/srv/models/brain/2.0.0"))
        );
        assert_eq!(
            version_dir(root, Path::new("/srv/models/brain/train.py")),
            None
        );
        assert_eq!(
            version_dir(root, Path::new("/elsewhere/brain/2.0.0/model.toml")),
            None
        );
    }
}
