//! Model administration against the real server over loopback (`radstream.v1.Models`): versions that
//! must not serve — broken manifests and graphs that do not fit them, dropped into the repository as
//! new versions of the serving model — are refused by `Load` each with its own message, listed as
//! failed with that reason, and the version that served keeps serving (same version, same sha256).
//! Then the repository watcher: a version renamed into place (as a deployment does) is loaded and
//! activated without a restart and new studies get it; a broken one is listed as failed and changes
//! nothing.
//!
//! The ill-fitting graphs are the `bad_*` cases of `tests/oracle/make_models.py` (as
//! `tests/model_manifest.rs` uses them), re-labelled as versions of `lesion-demo`.

mod common;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use common::*;
use radstream::{
    config::Config,
    proto::v1::{self as pb, models_client::ModelsClient},
    server::RunningServer,
};
use sha2::Digest;

const MODEL: &str = "lesion-demo";

/// The generated models, once per test process.
fn generated() -> &'static Path {
    generated_models()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Sets `[model] name` and `version` of the manifest in `dir` (the rest as it was).
fn relabel(dir: &Path, name: &str, version: &str) {
    edit_manifest(dir, |line| {
        if line.starts_with("name = ") {
            Some(format!("name = \"{name}\""))
        } else if line.starts_with("version = ") {
            Some(format!("version = \"{version}\""))
        } else {
            None
        }
    });
}

/// Rewrites the lines of `dir/model.toml` in its `[model]` table that `f` replaces.
fn edit_manifest(dir: &Path, f: impl Fn(&str) -> Option<String>) {
    let path = dir.join("model.toml");
    let text = std::fs::read_to_string(&path).expect("read model.toml");
    let mut table = String::new();
    let out: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with('[') {
                table = line.to_string();
            }
            match (table == "[model]", f(line)) {
                (true, Some(replaced)) => replaced,
                _ => line.to_string(),
            }
        })
        .collect();
    std::fs::write(&path, out.join("\n") + "\n").expect("write model.toml");
}

/// A repository holding only the bundled `lesion-demo/1.0.0`.
fn repository() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    copy_dir(
        &repo().join("models/lesion-demo/1.0.0"),
        &root.path().join(MODEL).join("1.0.0"),
    );
    root
}

fn config(root: &Path, watch: bool) -> Config {
    let mut config = test_config();
    config.models.repository = Some(root.to_path_buf());
    config.models.watch = watch;
    config.models.activate_new = true;
    config.models.settle_ms = 200;
    config
}

async fn admin(server: &RunningServer) -> ModelsClient<tonic::transport::Channel> {
    ModelsClient::connect(server.endpoint())
        .await
        .expect("connect")
}

async fn list(client: &mut ModelsClient<tonic::transport::Channel>) -> Vec<pb::ModelVersion> {
    client
        .list(pb::ListModelsRequest {})
        .await
        .expect("list")
        .into_inner()
        .versions
}

fn find<'a>(versions: &'a [pb::ModelVersion], version: &str) -> &'a pb::ModelVersion {
    versions
        .iter()
        .find(|v| v.name == MODEL && v.version == version)
        .unwrap_or_else(|| panic!("{MODEL} {version} not listed: {versions:?}"))
}

fn active(versions: &[pb::ModelVersion]) -> Vec<&str> {
    versions
        .iter()
        .filter(|v| v.active)
        .map(|v| v.version.as_str())
        .collect()
}

fn sha256_of(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(read(path)))
}

/// Pushes the sample study; returns the (version, sha256) of the model of each finding.
async fn findings_models(server: &RunningServer) -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(sample_study_dir())
        .expect("sample study")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    files.sort();
    let events = push_files(server, &files).await;
    let found = findings(&events);
    assert_eq!(found.len(), files.len(), "one finding per slice");
    found
        .iter()
        .map(|f| {
            let m = f.model.as_ref().expect("a finding names its model");
            assert_eq!(m.name, MODEL);
            (m.version.clone(), m.onnx_sha256.clone())
        })
        .collect()
}

/// Drops a broken version in: the `bad_*` case (or the bundled model, for manifest contract cases)
/// copied to `lesion-demo/<version>/`, edited by `edit`.
fn drop_in(root: &Path, source: &Path, version: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let dir = root.join(MODEL).join(version);
    copy_dir(source, &dir);
    relabel(&dir, MODEL, version);
    edit(&dir);
    dir
}

/// How a case changes the copied version before it is loaded.
type Edit = Box<dyn FnOnce(&Path)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_versions_are_refused_each_with_its_reason_and_the_old_version_keeps_serving() {
    let root = repository();
    let server = start(config(root.path(), false)).await;
    let mut client = admin(&server).await;
    let before = list(&mut client).await;
    let old = find(&before, "1.0.0").clone();
    assert!(old.active, "{old:?}");
    assert_eq!(
        old.onnx_sha256,
        sha256_of(&repo().join("models/lesion-demo/1.0.0/model.onnx"))
    );

    let bad = |case: &str| generated().join(case);
    let bundled = repo().join("models/lesion-demo/1.0.0");
    let unchanged = |_: &Path| {};
    let cases: Vec<(&str, PathBuf, Edit, &[&str])> = vec![
        (
            "1.1.0",
            bad("bad_layout"),
            Box::new(unchanged),
            &[
                "which is NHWC",
                "declare layout = \"NHWC\" in [input]",
            ],
        ),
        (
            "1.2.0",
            bad("bad_logits"),
            Box::new(unchanged),
            &[
                "looks like logits",
                "declare kind = \"sigmoid\" or \"softmax\" in [outputs]",
            ],
        ),
        (
            "1.3.0",
            bad("bad_batch"),
            Box::new(unchanged),
            &["fixed batch dimension of 1", "declare batch = 1 in [input]"],
        ),
        (
            // float16 in, float16 out, but the manifest only declares the input
            "1.4.0",
            generated().join("f16"),
            Box::new(|dir: &Path| {
                let path = dir.join("model.toml");
                let text = std::fs::read_to_string(&path).expect("read");
                let (head, outputs) = text.split_once("[outputs]").expect("[outputs]");
                let outputs = outputs.replacen("dtype = \"float16\"\n", "", 1);
                std::fs::write(&path, format!("{head}[outputs]{outputs}")).expect("write");
            }),
            &["float16", "declare dtype = \"float16\" in [outputs]"],
        ),
        (
            "1.4.1",
            bad("bad_dtype"),
            Box::new(unchanged),
            &["element type float16", "declare dtype = \"float16\" in [input]"],
        ),
        (
            "1.5.0",
            bad("bad_external"),
            Box::new(unchanged),
            &["\"../outside.bin\"", "inside the model directory"],
        ),
        (
            "1.6.0",
            bad("bad_file"),
            Box::new(unchanged),
            &["[model] file = \"../sigmoid/model.onnx\"", "`..`"],
        ),
        (
            "1.7.0",
            bundled.clone(),
            Box::new(|dir: &Path| {
                edit_manifest(dir, |l| {
                    l.starts_with("version = ")
                        .then(|| "version = \"v2\"".to_string())
                })
            }),
            &["[model] version = \"v2\"", "is not a semantic version"],
        ),
        (
            "1.8.0",
            bundled.clone(),
            Box::new(|dir: &Path| {
                edit_manifest(dir, |l| {
                    l.starts_with("version = ")
                        .then(|| "version = \"1.0.0\"".to_string())
                })
            }),
            &[
                "the manifest declares model lesion-demo 1.0.0 but the directory is lesion-demo/1.8.0",
                "move it there or fix [model] name/version",
            ],
        ),
    ];
    for (version, source, edit, words) in cases {
        drop_in(root.path(), &source, version, edit);
        let refused = client
            .load(pb::ModelVersionRequest {
                name: MODEL.into(),
                version: version.into(),
                activate: true,
            })
            .await
            .expect_err(version);
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "{version}: {refused:?}"
        );
        for w in words {
            assert!(
                refused.message().contains(w),
                "{version}: {w:?} not in the Load refusal: {}",
                refused.message()
            );
        }
        let versions = list(&mut client).await;
        let listed = find(&versions, version);
        assert_eq!(
            listed.state,
            pb::ModelState::Failed as i32,
            "{version}: {listed:?}"
        );
        for w in words {
            assert!(
                listed.reason.contains(w),
                "{version}: {w:?} not in the listed reason: {}",
                listed.reason
            );
        }
        assert!(listed.onnx_sha256.is_empty() && !listed.active);
        assert_eq!(active(&versions), ["1.0.0"], "{version}");

        // A failed version can be neither activated nor shadowed.
        let not_ready = client
            .activate(pb::ModelVersionRequest {
                name: MODEL.into(),
                version: version.into(),
                activate: false,
            })
            .await
            .expect_err("activate a failed version");
        assert_eq!(not_ready.code(), tonic::Code::FailedPrecondition);
        assert!(
            not_ready
                .message()
                .contains("only a ready version can be activated"),
            "{}",
            not_ready.message()
        );
    }

    // A version that is not a semantic version is refused before the repository is even read.
    for (version, words) in [
        ("v2", "is not a semantic version"),
        ("../1.0.0", "plain directory names"),
        (
            "9.9.9",
            "the repository has no lesion-demo/9.9.9/model.toml",
        ),
    ] {
        let refused = client
            .load(pb::ModelVersionRequest {
                name: MODEL.into(),
                version: version.into(),
                activate: false,
            })
            .await
            .expect_err(version);
        assert!(
            refused.message().contains(words),
            "{version}: {}",
            refused.message()
        );
    }

    // The old version still serves: the findings come from it, the same file.
    let served = findings_models(&server).await;
    assert!(
        served
            .iter()
            .all(|(v, sha)| v == "1.0.0" && *sha == old.onnx_sha256),
        "{served:?}"
    );
    let after = list(&mut client).await;
    let now = find(&after, "1.0.0");
    assert!(now.active && now.state == pb::ModelState::Ready as i32);
    assert_eq!(now.onnx_sha256, old.onnx_sha256);
    assert_eq!(now.loaded_unix_us, old.loaded_unix_us, "not reloaded");
    assert_eq!(
        now.counters.as_ref().map(|c| c.slices_scored),
        Some(served.len() as u64)
    );
    server.stop().await.expect("stops");
}

/// Everything this test binary logs (installed once, shared by the tests running in parallel).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured log lines containing every one of `words`.
fn logged(logs: &Mutex<Vec<u8>>, words: &[&str]) -> Vec<String> {
    String::from_utf8_lossy(&logs.lock().expect("lock"))
        .lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .map(str::to_string)
        .collect()
}

/// Copies `source` into the repository as `lesion-demo/<version>/` the way a deployment does: into a
/// staging name first, then renamed into place in one step.
fn deploy(root: &Path, source: &Path, version: &str) {
    let staging = root.join(MODEL).join(format!(".incoming-{version}"));
    copy_dir(source, &staging);
    relabel(&staging, MODEL, version);
    std::fs::rename(&staging, root.join(MODEL).join(version)).expect("rename into place");
}

/// Polls `List` until `done` holds for the versions, failing after 30 s.
async fn until_listed(
    client: &mut ModelsClient<tonic::transport::Channel>,
    what: &str,
    done: impl Fn(&[pb::ModelVersion]) -> bool,
) -> Vec<pb::ModelVersion> {
    let start = Instant::now();
    loop {
        let versions = list(client).await;
        if done(&versions) {
            return versions;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: not within 30 s; listed: {versions:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_activates_a_version_renamed_into_place_and_lists_a_broken_one_as_failed() {
    let logs = captured_logs();
    let root = repository();
    let server = start(config(root.path(), true)).await;
    let mut client = admin(&server).await;
    assert_eq!(active(&list(&mut client).await), ["1.0.0"]);

    deploy(
        root.path(),
        &repo().join("models/lesion-demo/1.0.0"),
        "1.1.0",
    );
    let versions = until_listed(&mut client, "1.1.0 active", |v| active(v) == ["1.1.0"]).await;
    let new = find(&versions, "1.1.0");
    assert_eq!(new.state, pb::ModelState::Ready as i32);
    assert_eq!(
        find(&versions, "1.0.0").state,
        pb::ModelState::Ready as i32,
        "the old version stays loaded (a rollback target)"
    );
    assert!(
        !versions.iter().any(|v| v.version.contains("incoming")),
        "the staging directory is not a version: {versions:?}"
    );
    let served = findings_models(&server).await;
    assert!(
        served
            .iter()
            .all(|(v, sha)| v == "1.1.0" && *sha == new.onnx_sha256),
        "{served:?}"
    );
    // Nothing changed on disk since: loading a version (which reads its files) is not a change.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let changed = logged(&logs, &["files of a loaded model version changed on disk"]);
    assert!(changed.is_empty(), "spurious change warnings: {changed:#?}");

    // A loaded version's file written over: said in the log (a version is immutable), not reloaded,
    // and the version serves what it loaded.
    let onnx = root.path().join(MODEL).join("1.1.0").join("model.onnx");
    let bytes = std::fs::read(&onnx).expect("read model");
    std::fs::write(&onnx, bytes).expect("write model over");
    let start = Instant::now();
    while logged(&logs, &["files of a loaded model version changed on disk"]).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "an overwritten version's files were ignored silently"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let versions = list(&mut client).await;
    assert_eq!(find(&versions, "1.1.0").onnx_sha256, new.onnx_sha256);
    assert_eq!(active(&versions), ["1.1.0"]);

    // A broken version dropped in: listed as failed with its reason; the active one unchanged.
    deploy(root.path(), &generated().join("bad_layout"), "1.2.0");
    let versions = until_listed(&mut client, "1.2.0 failed", |v| {
        v.iter()
            .any(|v| v.version == "1.2.0" && v.state == pb::ModelState::Failed as i32)
    })
    .await;
    let failed = find(&versions, "1.2.0");
    assert!(
        failed
            .reason
            .contains("declare layout = \"NHWC\" in [input]"),
        "{}",
        failed.reason
    );
    assert_eq!(active(&versions), ["1.1.0"]);
    let served = findings_models(&server).await;
    assert!(served.iter().all(|(v, _)| v == "1.1.0"), "{served:?}");
    // Tried once: a failed version is retried when its files change, not over and over (200 ms settle).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let tries = logged(
        &logs,
        &["new model version in the repository not loaded", "1.2.0"],
    );
    assert_eq!(tries.len(), 1, "{tries:#?}");
    server.stop().await.expect("stops");
}
