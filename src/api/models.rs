//! `radstream.v1.Models`: model administration over gRPC, a thin adapter over the [`Catalog`]. Loading
//! reads only from the configured repository (`repository/<name>/<version>/`), never from a path a
//! caller names: an admin credential must not become a way to make the service read arbitrary files.
//! Loads run on the blocking pool; a version being loaded is listed as loading meanwhile.

use std::path::PathBuf;

use tonic::{Request, Response, Status};

use crate::{
    catalog::{repository, Catalog, CatalogError, ShadowReport, VersionStatus},
    proto::v1::{self as pb, models_server::Models},
    security::{audit::Subject, Caller},
};

/// Records who changed which model (after the change succeeded).
fn audit(caller: &Option<Caller>, action: &str, name: &str, version: Option<&str>) {
    if let Some(c) = caller {
        c.audit(action, Subject::Model { name, version });
    }
}

/// The `radstream.v1.Models` service.
#[derive(Debug, Clone)]
pub struct ModelsService {
    catalog: Catalog,
    repository: Option<PathBuf>,
}

impl ModelsService {
    pub fn new(catalog: Catalog, repository: Option<PathBuf>) -> Self {
        Self {
            catalog,
            repository,
        }
    }

    fn version(&self, name: &str, version: &str) -> Result<pb::ModelVersion, Status> {
        self.catalog
            .list()
            .into_iter()
            .find(|v| v.name == name && v.version == version)
            .map(|v| model_version(&v))
            .ok_or_else(|| Status::not_found(format!("no model {name} version {version}")))
    }
}

/// The wire status of a catalog error: what the caller got wrong, or what state forbids it.
fn status(error: CatalogError) -> Status {
    let message = error.to_string();
    match error {
        CatalogError::NotLoaded { .. } | CatalogError::UnknownModel { .. } => {
            Status::not_found(message)
        }
        CatalogError::NotReady { .. }
        | CatalogError::UnloadActive { .. }
        | CatalogError::NoRollback { .. }
        | CatalogError::ShadowIsActive { .. }
        | CatalogError::ShadowOfContextModel { .. }
        | CatalogError::AlreadyLoaded { .. } => Status::failed_precondition(message),
        CatalogError::Manifest(_) | CatalogError::Engine { .. } | CatalogError::Repository(_) => {
            Status::invalid_argument(message)
        }
        CatalogError::Crashed(_) => Status::internal(message),
    }
}

pub fn model_version(v: &VersionStatus) -> pb::ModelVersion {
    let state = match v.state {
        "loading" => pb::ModelState::Loading,
        "ready" => pb::ModelState::Ready,
        _ => pb::ModelState::Failed,
    };
    let mut out = pb::ModelVersion {
        name: v.name.clone(),
        version: v.version.clone(),
        state: state as i32,
        reason: v.reason.clone(),
        active: v.active,
        shadow: v.shadow,
        ..Default::default()
    };
    if let Some(served) = &v.served {
        let m = &served.manifest;
        out.onnx_sha256 = served.info.onnx_sha256.clone();
        out.counters = Some(pb::ModelCounters {
            instances: served
                .counters
                .instances
                .load(std::sync::atomic::Ordering::Relaxed),
            slices_scored: served
                .counters
                .slices_scored
                .load(std::sync::atomic::Ordering::Relaxed),
            slices_failed: served
                .counters
                .slices_failed
                .load(std::sync::atomic::Ordering::Relaxed),
        });
        out.labels = m.labels.iter().map(|l| l.name.clone()).collect();
        out.applies_to = m.rules.describe().unwrap_or_default();
        out.preprocess_path = served.engine().preprocess_path().to_string();
        out.provider = served.engine().provider().to_string();
        out.card = Some(pb::ModelCard {
            description: m.model.description.clone(),
            detects: m.card.detects.clone(),
            training_data: m.card.training_data.clone(),
            training: m.card.training.clone(),
            metrics: m.card.metrics.clone(),
            limitations: m.card.limitations.clone(),
        });
        out.loaded_unix_us = served
            .loaded_at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or_default();
    }
    out
}

pub fn shadow_agreement(r: ShadowReport) -> pb::ShadowAgreement {
    pb::ShadowAgreement {
        model: r.model,
        candidate: r.candidate,
        active: r.active,
        labels: r
            .labels
            .into_iter()
            .map(|l| pb::LabelAgreement {
                label: l.label,
                slices: l.slices,
                agreeing: l.agreeing,
                agreement: l.agreement,
                mean_abs_diff: l.mean_abs_diff,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Models for ModelsService {
    async fn list(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let versions: Vec<VersionStatus> = self.catalog.list();
        let mut names: Vec<&String> = versions.iter().map(|v| &v.name).collect();
        names.dedup();
        let shadows = names
            .into_iter()
            .filter_map(|n| self.catalog.shadow_report(n))
            .map(shadow_agreement)
            .collect();
        Ok(Response::new(pb::ListModelsResponse {
            versions: versions.iter().map(model_version).collect(),
            shadows,
        }))
    }

    async fn load(
        &self,
        request: Request<pb::ModelVersionRequest>,
    ) -> Result<Response<pb::ModelVersion>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let root = self.repository.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "no model repository is configured ([models] repository / --models): versions \
                 are loaded from the repository only",
            )
        })?;
        // Only plain names: nothing a caller sends may step outside the repository.
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
                && s != "."
                && s != ".."
        };
        if !plain(&r.name) || !plain(&r.version) {
            return Err(Status::invalid_argument(
                "name and version must be plain directory names (letters, digits, - _ . +)",
            ));
        }
        repository::parse_version(&r.version)
            .map_err(|p| Status::invalid_argument(format!("version {:?} {p}", r.version)))?;
        let dir = root.join(&r.name).join(&r.version);
        if !dir.join("model.toml").is_file() {
            return Err(Status::not_found(format!(
                "the repository has no {}/{}/model.toml",
                r.name, r.version
            )));
        }
        let catalog = self.catalog.clone();
        let loaded = tokio::task::spawn_blocking(move || catalog.load_dir(&dir))
            .await
            .map_err(|e| status(CatalogError::Crashed(e.to_string())))?;
        loaded.map_err(status)?;
        audit(&caller, "load", &r.name, Some(&r.version));
        if r.activate {
            self.catalog.activate(&r.name, &r.version).map_err(status)?;
            audit(&caller, "activate", &r.name, Some(&r.version));
        }
        self.version(&r.name, &r.version).map(Response::new)
    }

    async fn activate(
        &self,
        request: Request<pb::ModelVersionRequest>,
    ) -> Result<Response<pb::ModelVersion>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        self.catalog.activate(&r.name, &r.version).map_err(status)?;
        audit(&caller, "activate", &r.name, Some(&r.version));
        self.version(&r.name, &r.version).map(Response::new)
    }

    async fn unload(
        &self,
        request: Request<pb::ModelVersionRequest>,
    ) -> Result<Response<pb::ModelVersion>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let before = self.version(&r.name, &r.version)?;
        self.catalog.unload(&r.name, &r.version).map_err(status)?;
        audit(&caller, "unload", &r.name, Some(&r.version));
        Ok(Response::new(pb::ModelVersion {
            active: false,
            shadow: false,
            ..before
        }))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::ModelVersion>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let served = self.catalog.rollback(&r.name).map_err(status)?;
        audit(&caller, "rollback", &r.name, Some(&served.info.version));
        self.version(&r.name, &served.info.version)
            .map(Response::new)
    }

    async fn shadow(
        &self,
        request: Request<pb::ModelVersionRequest>,
    ) -> Result<Response<pb::ShadowAgreement>, Status> {
        let caller = Caller::of(&request);
        let r = request.into_inner();
        let version = (!r.version.is_empty()).then_some(r.version.as_str());
        self.catalog.shadow(&r.name, version).map_err(status)?;
        audit(
            &caller,
            if version.is_some() {
                "shadow"
            } else {
                "shadow_stop"
            },
            &r.name,
            version,
        );
        let report = self
            .catalog
            .shadow_report(&r.name)
            .map(shadow_agreement)
            .unwrap_or(pb::ShadowAgreement {
                model: r.name,
                ..Default::default()
            });
        Ok(Response::new(report))
    }
}
