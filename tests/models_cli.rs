//! `radstream models list|load|activate|unload|rollback|shadow` as an ML engineer runs them: the real
//! binary against the real `radstream serve` of a temporary model repository (a copy of the bundled
//! `lesion-demo/1.0.0`, the watcher off so every change is the command's), with the real `radstream
//! push` of the sample study in between to see which version serves. A refusal prints the service's
//! message and exits 1.

mod common;

use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;
use sha2::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_radstream");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RADSTREAM_ENDPOINT")
        .output()
        .expect("run radstream")
}

/// `radstream models ARGS --endpoint E`; returns (exit code, stdout, stderr).
fn models(endpoint: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["models"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--endpoint", endpoint]);
    let out = run(&all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a command that must succeed; returns its stdout.
fn ok(endpoint: &str, args: &[&str]) -> String {
    let (code, out, err) = models(endpoint, args);
    assert_eq!(code, 0, "models {args:?}: {err}");
    out
}

/// Runs a command the service must refuse; returns its stderr.
fn refused(endpoint: &str, args: &[&str]) -> String {
    let (code, out, err) = models(endpoint, args);
    assert_eq!(code, 1, "models {args:?} should fail: {out}");
    assert!(out.is_empty(), "nothing on stdout when refused: {out}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

fn list_json(endpoint: &str) -> Value {
    serde_json::from_str(&ok(endpoint, &["list", "--json"]))
        .expect("list --json is one JSON object")
}

fn version<'a>(list: &'a Value, v: &str) -> &'a Value {
    list["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .find(|x| x["name"] == "lesion-demo" && x["version"] == v)
        .unwrap_or_else(|| panic!("lesion-demo {v} not listed: {list}"))
}

fn active_versions(list: &Value) -> Vec<String> {
    list["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter(|x| x["active"] == true)
        .map(|x| x["version"].as_str().expect("version").to_string())
        .collect()
}

/// The sample study as study number `k`: its files with another Study Instance UID. A study is
/// pinned to the versions it started on (a re-sent study keeps them), so each step that must see the
/// version now active pushes a study of its own.
fn sample_study_copy(k: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("study dir");
    for (name, bytes) in sample_study() {
        // every UID of the study (study, series, instances) gets another root of the same length
        let copy = replace_uid(&bytes, "3680043.8.498.", &format!("3680043.8.{}.", 500 + k));
        std::fs::write(dir.path().join(name), copy).expect("write");
    }
    dir
}

/// The model version of each finding of a `radstream push --json` of study `k`.
fn push_versions(endpoint: &str, k: u32) -> Vec<String> {
    let study = sample_study_copy(k);
    let out = Command::new(BIN)
        .args(["push", "--json", "--endpoint", endpoint])
        .arg(study.path())
        .output()
        .expect("run push");
    members(&push_json_lines(&out), "finding")
        .iter()
        .map(|e| e["model"]["version"].as_str().expect("version").to_string())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[test]
fn models_commands_list_load_activate_roll_back_shadow_and_refuse_with_the_services_message() {
    let root = tempfile::tempdir().expect("repository");
    let bundled = repo().join("models/lesion-demo/1.0.0");
    copy_dir(&bundled, &root.path().join("lesion-demo/1.0.0"));
    let config = root.path().join("radstream.toml");
    std::fs::write(
        &config,
        format!(
            "[models]\nrepository = {:?}\nwatch = false\n",
            root.path().display().to_string()
        ),
    )
    .expect("config");
    let server = ServedProcess::start(&[("RADSTREAM_CONFIG", config.to_str().expect("utf-8"))]);
    let endpoint = server.endpoint();
    let e = endpoint.as_str();
    let sha = hex::encode(sha2::Sha256::digest(read(&bundled.join("model.onnx"))));
    let n = sample_study().len();

    // The table: the bundled version, ready and active, its sha256 (short), counters, card.
    let table = ok(e, &["list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("MODEL") && lines[0].contains("SHA256"),
        "{table}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row,
        [
            "lesion-demo",
            "1.0.0",
            "ready",
            "active",
            &sha[..12],
            "0",
            "0",
            "0",
            "every",
            "instance"
        ],
        "{table}"
    );
    assert!(
        lines[2].contains("Demo detector for synthetic round hyperdense lesions"),
        "{table}"
    );

    // JSON: canonical proto3 JSON with proto field names: the full sha256, the card, enums by name,
    // 64-bit integers as strings, defaults (false, 0, empty lists) left out.
    let list = list_json(e);
    let v = version(&list, "1.0.0");
    assert_eq!(v["state"], "MODEL_STATE_READY");
    assert_eq!(v["active"], true);
    assert!(v.get("shadow").is_none(), "false is a default: {v}");
    assert_eq!(v["onnx_sha256"], sha.as_str());
    assert_eq!(v["labels"], serde_json::json!(["lesion"]));
    assert!(
        v["counters"].get("instances").is_none(),
        "0 is a default: {v}"
    );
    assert!(v["card"]["detects"]
        .as_str()
        .is_some_and(|d| d.contains("Synthetic")));
    assert!(v["card"]["metrics"]
        .as_str()
        .is_some_and(|m| m.contains("AUC")));
    assert!(
        v["loaded_unix_us"]
            .as_str()
            .and_then(|t| t.parse::<i64>().ok())
            .is_some_and(|t| t > 0),
        "int64 as a string: {v}"
    );
    assert!(list.get("shadows").is_none(), "no shadow: {list}");

    // A second version: the same model file, [model] version 1.1.0. Loaded, it waits; activated, it serves.
    let next = root.path().join("lesion-demo/1.1.0");
    copy_dir(&bundled, &next);
    let toml = std::fs::read_to_string(next.join("model.toml")).expect("manifest");
    std::fs::write(
        next.join("model.toml"),
        toml.replacen("version = \"1.0.0\"", "version = \"1.1.0\"", 1),
    )
    .expect("manifest");
    let out = ok(e, &["load", "lesion-demo", "1.1.0"]);
    assert_eq!(
        out.trim(),
        format!("loaded lesion-demo 1.1.0 (ready, sha256 {})", &sha[..12])
    );
    assert_eq!(active_versions(&list_json(e)), ["1.0.0"]);
    let err = refused(e, &["load", "lesion-demo", "1.1.0"]);
    assert!(err.contains("already loaded"), "{err}");

    let out = ok(e, &["activate", "lesion-demo", "1.1.0"]);
    assert!(
        out.starts_with("activated lesion-demo 1.1.0 (ready, active"),
        "{out}"
    );
    let list = list_json(e);
    assert_eq!(active_versions(&list), ["1.1.0"]);
    assert_eq!(version(&list, "1.0.0")["state"], "MODEL_STATE_READY");
    let served = push_versions(e, 2);
    assert_eq!(served.len(), n);
    assert!(served.iter().all(|v| v == "1.1.0"), "{served:?}");
    let list = list_json(e);
    assert_eq!(
        version(&list, "1.1.0")["counters"]["slices_scored"],
        n.to_string()
    );
    assert!(version(&list, "1.0.0")["counters"]
        .get("slices_scored")
        .is_none());

    // The active version cannot be unloaded: the service says what to do instead.
    let err = refused(e, &["unload", "lesion-demo", "1.1.0"]);
    assert!(
        err.contains(
            "model lesion-demo 1.1.0 is the active version: activate another version (or roll back) \
             before unloading it"
        ),
        "{err}"
    );

    // Rollback: 1.0.0 serves again.
    let out = ok(e, &["rollback", "lesion-demo"]);
    assert!(
        out.starts_with("rolled back to lesion-demo 1.0.0 (ready, active"),
        "{out}"
    );
    assert_eq!(active_versions(&list_json(e)), ["1.0.0"]);
    let served = push_versions(e, 3);
    assert!(served.iter().all(|v| v == "1.0.0"), "{served:?}");

    // Shadow: 1.1.0 scores the same slices beside 1.0.0; the same file agrees everywhere.
    let out = ok(e, &["shadow", "lesion-demo", "1.1.0"]);
    assert!(
        out.starts_with("lesion-demo 1.1.0 runs as the shadow"),
        "{out}"
    );
    let err = refused(e, &["shadow", "lesion-demo", "1.0.0"]);
    assert!(err.contains("a shadow must be another version"), "{err}");
    let served = push_versions(e, 4);
    assert!(
        served.iter().all(|v| v == "1.0.0"),
        "a shadow publishes nothing: {served:?}"
    );
    let start = Instant::now();
    let list = loop {
        let list = list_json(e);
        // uint64: a string in proto3 JSON
        let slices = list["shadows"][0]["labels"][0]["slices"].as_str();
        if slices.and_then(|s| s.parse::<usize>().ok()) == Some(n) {
            break list;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "shadow agreement over {n} slices: {list}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let shadow = &list["shadows"][0];
    assert_eq!(shadow["model"], "lesion-demo");
    assert_eq!(shadow["candidate"], "1.1.0");
    assert_eq!(shadow["active"], serde_json::json!(["1.0.0"]));
    assert_eq!(shadow["labels"][0]["label"], "lesion");
    assert_eq!(shadow["labels"][0]["agreeing"], n.to_string());
    assert_eq!(shadow["labels"][0]["agreement"], 1.0);
    assert!(
        shadow["labels"][0].get("mean_abs_diff").is_none(),
        "0.0 is a default"
    );
    assert_eq!(version(&list, "1.1.0")["shadow"], true);
    let table = ok(e, &["list"]);
    assert!(
        table.contains("shadow lesion-demo 1.1.0 vs active 1.0.0\n")
            && table.contains(&format!(
                "    lesion: {n} slices, agreement 100.0% ({n}/{n}), mean |diff| 0.0000\n"
            )),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("lesion-demo")
            && l.contains(" 1.1.0 ")
            && l.contains(" shadow ")),
        "{table}"
    );
    let out = ok(e, &["shadow", "lesion-demo"]);
    assert_eq!(out.trim(), "shadow of lesion-demo stopped");
    assert!(list_json(e).get("shadows").is_none());
    // A shadow ends with its version: unloaded, it is no longer reported.
    ok(e, &["shadow", "lesion-demo", "1.1.0"]);
    assert_eq!(list_json(e)["shadows"][0]["candidate"], "1.1.0");

    // Unloading a version that is not active; then nothing is left to roll back to.
    let out: Value =
        serde_json::from_str(&ok(e, &["unload", "lesion-demo", "1.1.0", "--json"])).expect("json");
    assert_eq!(out["version"], "1.1.0");
    assert!(out.get("active").is_none(), "false is a default: {out}");
    let list = list_json(e);
    assert_eq!(list["versions"].as_array().map(Vec::len), Some(1), "{list}");
    assert!(list.get("shadows").is_none(), "{list}");
    let err = refused(e, &["rollback", "lesion-demo"]);
    assert!(err.contains("no earlier active version"), "{err}");
    let err = refused(e, &["activate", "nope", "1.0.0"]);
    assert!(err.contains("no model named nope is loaded"), "{err}");
    let err = refused(e, &["load", "lesion-demo", "2.0.0"]);
    assert!(
        err.contains("the repository has no lesion-demo/2.0.0/model.toml"),
        "{err}"
    );
}

#[test]
fn models_list_against_no_service_is_an_error_naming_the_endpoint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    // Nothing listens there once the listener is dropped.
    let endpoint = format!("http://127.0.0.1:{port}");
    let (code, out, err) = models(&endpoint, &["list"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("cannot connect to") && err.contains(&endpoint),
        "{err}"
    );
}
