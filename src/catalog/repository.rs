//! The model repository on disk: `ROOT/<name>/<version>/{model.toml, model.onnx, ...}`. The path is
//! part of the contract: a version directory must hold the manifest of that model and version, so what
//! `models list` shows, what a finding names and what lies on disk never disagree. Versions are
//! semantic versions (`1.0.0`, `2.1.0-rc.1`): rollback and "the newest version" need an order that
//! free text does not give. Other entries under a model's directory (training code, sample data) are
//! not versions and are ignored.

use std::path::{Path, PathBuf};

use semver::Version;

use super::{Catalog, CatalogError};
use crate::model::Manifest;

/// Parses a version as the repository spells it.
pub fn parse_version(text: &str) -> Result<Version, String> {
    Version::parse(text.trim()).map_err(|e| {
        format!(
            "is not a semantic version ({e}); write MAJOR.MINOR.PATCH, e.g. \"1.0.0\" or \"2.1.0-rc.1\""
        )
    })
}

/// The model name and version a version directory's path spells (`.../<name>/<version>`), if the
/// last component is a version.
pub fn spelled_by_path(dir: &Path) -> Option<(String, Version)> {
    let version = parse_version(dir.file_name()?.to_str()?).ok()?;
    let name = dir.parent()?.file_name()?.to_str()?.to_string();
    Some((name, version))
}

/// A directory named like a version must hold that version of the model its parent names.
pub fn check_placement(dir: &Path, manifest: &Manifest) -> Result<(), CatalogError> {
    let declared = parse_version(&manifest.model.version).map_err(|problem| {
        CatalogError::Repository(format!(
            "{}: [model] version = {:?} {problem}",
            dir.join("model.toml").display(),
            manifest.model.version
        ))
    })?;
    let Some((name, version)) = spelled_by_path(dir) else {
        // a lone model directory (`--model DIR`), not inside a repository
        return Ok(());
    };
    if name != manifest.model.name || version != declared {
        return Err(CatalogError::Repository(format!(
            "{}: the manifest declares model {} {} but the directory is {name}/{version}; a version \
             lives in models/<name>/<version>/: move it there or fix [model] name/version",
            dir.join("model.toml").display(),
            manifest.model.name,
            declared
        )));
    }
    Ok(())
}

/// Every version directory under `root`: `root/<name>/<version>/` holding a `model.toml`, sorted.
pub fn version_dirs(root: &Path) -> Result<Vec<PathBuf>, CatalogError> {
    let read = |dir: &Path| {
        std::fs::read_dir(dir).map_err(|e| {
            CatalogError::Repository(format!(
                "cannot read the model repository {}: {e}",
                dir.display()
            ))
        })
    };
    let mut found = Vec::new();
    for model in read(root)?.flatten() {
        let model = model.path();
        if !model.is_dir() {
            continue;
        }
        for version in read(&model)?.flatten() {
            let version = version.path();
            if !version.join("model.toml").is_file() {
                continue;
            }
            if spelled_by_path(&version).is_some() {
                found.push(version);
            } else {
                tracing::warn!(
                    "{}: holds a model.toml but its name is not a semantic version (models/<name>/\
                     <version>/, e.g. 1.0.0): not loaded",
                    version.display()
                );
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Loads every version under `root` (each failure is listed with its reason, the others load) and
/// activates, per model, the version chosen before the last stop (activation, rollback) when it still
/// loads, else the newest ready version; a saved shadow choice is restored too. Returns how many
/// versions loaded.
pub fn load_all(catalog: &Catalog, root: &Path) -> Result<usize, CatalogError> {
    let saved = catalog.saved_choices();
    let mut loaded = 0;
    for dir in version_dirs(root)? {
        match catalog.load_dir(&dir) {
            Ok(_) => loaded += 1,
            Err(e) => tracing::warn!("{}: not loaded: {e}", dir.display()),
        }
    }
    let mut newest: std::collections::BTreeMap<String, Version> = Default::default();
    for status in catalog.list() {
        if status.state != "ready" {
            continue;
        }
        let Ok(v) = parse_version(&status.version) else {
            continue;
        };
        let entry = newest.entry(status.name).or_insert_with(|| v.clone());
        if v > *entry {
            *entry = v;
        }
    }
    for (name, version) in newest {
        let choice = saved.get(&name).cloned().unwrap_or_default();
        let chosen = choice
            .active
            .as_deref()
            .and_then(|v| catalog.ready_version(&name, v))
            .map(|s| s.info.version.clone());
        match (&choice.active, &chosen) {
            (Some(wanted), None) => tracing::warn!(
                model = %name,
                "the version chosen before the restart ({wanted}) did not load; the newest serves"
            ),
            (Some(_), Some(v)) => {
                tracing::info!(model = %name, version = %v, "restoring the chosen version")
            }
            _ => {}
        }
        catalog.activate(&name, &chosen.unwrap_or_else(|| version.to_string()))?;
        catalog.forget_history(&name);
        if let Some(shadow) = choice.shadow {
            if let Err(e) = catalog.shadow(&name, Some(&shadow)) {
                tracing::warn!(model = %name, "the shadow chosen before the restart is not restored: {e}");
            }
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_directory_spells_its_model_and_version() {
        let (name, version) =
            spelled_by_path(Path::new("/srv/models/lesion-demo/1.2.0")).expect("spelled");
        assert_eq!(
            (name.as_str(), version.to_string().as_str()),
            ("lesion-demo", "1.2.0")
        );
        assert!(spelled_by_path(Path::new("/srv/models/lesion-demo/sample-study")).is_none());
        assert!(parse_version("v2").is_err());
        assert!(
            parse_version("2.0.0-rc.1").expect("pre-release")
                < parse_version("2.0.0").expect("release")
        );
    }

    #[test]
    fn the_bundled_repository_holds_the_demo_model() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let dirs = version_dirs(&root).expect("readable");
        assert_eq!(dirs, vec![root.join("lesion-demo").join("1.0.0")]);
    }
}
