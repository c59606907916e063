//! `radstream config` and the layering behind every command that serves (defaults, `--config` file,
//! `RADSTREAM_*` environment, flags), run through the real binary.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_radstream");

/// The binary with no `RADSTREAM_*` setting inherited from the shell that runs the tests.
fn radstream(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RADSTREAM_") {
            command.env_remove(name);
        }
    }
    command
        .env("RADSTREAM_LOG", "warn")
        .envs(env.iter().copied());
    command
}

fn run(env: &[(&str, &str)], args: &[&str]) -> Output {
    radstream(env).args(args).output().expect("run radstream")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `radstream config --json`, which must succeed.
fn config_json(env: &[(&str, &str)], args: &[&str]) -> Value {
    let out = run(env, &[&["config", "--json"], args].concat());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "config failed: {stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn at<'a>(json: &'a Value, key: &str) -> &'a Value {
    key.split('.')
        .try_fold(&json["config"], |v, k| v.get(k))
        .unwrap_or_else(|| panic!("no {key} in {json}"))
}

fn source(json: &Value, key: &str) -> String {
    json["sources"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no source for {key} in {json}"))
        .to_string()
}

fn write_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("radstream.toml");
    std::fs::write(&path, text).expect("write config file");
    path
}

#[test]
fn each_layer_overrides_the_one_below_default_file_env_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_file(
        dir.path(),
        "[batching]\nmax_batch = 2\nmax_wait_ms = 7\nqueue_depth = 9\n",
    );
    let file_origin = format!("file {}", file.display());
    let file = file.to_str().expect("utf-8 path");
    let env = [
        ("RADSTREAM_BATCHING__MAX_BATCH", "5"),
        ("RADSTREAM_BATCHING__QUEUE_DEPTH", "10"),
        // the short name a flag had, below the nested name of the same setting
        ("RADSTREAM_IDLE_TIMEOUT_SECS", "3"),
        ("RADSTREAM_STUDY__IDLE_TIMEOUT_SECS", "4.5"),
    ];
    let json = config_json(&env, &["--config", file, "--max-batch", "6"]);
    let want = [
        (
            "batching.max_batch",
            serde_json::json!(6),
            "flag --max-batch",
        ),
        (
            "batching.queue_depth",
            serde_json::json!(10),
            "env RADSTREAM_BATCHING__QUEUE_DEPTH",
        ),
        (
            "batching.max_wait_ms",
            serde_json::json!(7),
            file_origin.as_str(),
        ),
        (
            "study.idle_timeout_secs",
            serde_json::json!(4.5),
            "env RADSTREAM_STUDY__IDLE_TIMEOUT_SECS",
        ),
        (
            "limits.max_frames",
            at(&config_json(&[], &[]), "limits.max_frames").clone(),
            "default",
        ),
    ];
    for (key, value, origin) in want {
        assert_eq!(at(&json, key), &value, "{key}: {json}");
        assert_eq!(source(&json, key), origin, "{key}");
    }
    // RADSTREAM_CONFIG names the file as --config does; a flag still wins over it.
    let json = config_json(&[("RADSTREAM_CONFIG", file)], &[]);
    assert_eq!(at(&json, "batching.max_batch"), 2);
    assert_eq!(source(&json, "batching.max_wait_ms"), file_origin);
}

#[test]
fn the_short_environment_names_of_the_flags_still_set_their_settings() {
    let aliases = [
        (
            "RADSTREAM_LISTEN",
            "listen",
            "127.0.0.1:50999",
            serde_json::json!("127.0.0.1:50999"),
        ),
        (
            "RADSTREAM_MODEL_DIR",
            "model_dir",
            "/tmp/m",
            serde_json::json!("/tmp/m"),
        ),
        (
            "RADSTREAM_MODELS",
            "models.repository",
            "/tmp/r",
            serde_json::json!("/tmp/r"),
        ),
        (
            "RADSTREAM_PREPROCESS",
            "preprocess",
            "cpu",
            serde_json::json!("cpu"),
        ),
        (
            "RADSTREAM_PROVIDER",
            "inference.provider",
            "auto",
            serde_json::json!("auto"),
        ),
        (
            "RADSTREAM_IDLE_TIMEOUT_SECS",
            "study.idle_timeout_secs",
            "2.5",
            serde_json::json!(2.5),
        ),
        (
            "RADSTREAM_MAX_BATCH",
            "batching.max_batch",
            "3",
            serde_json::json!(3),
        ),
        (
            "RADSTREAM_MAX_INSTANCE_BYTES",
            "limits.max_instance_bytes",
            "4096",
            serde_json::json!(4096),
        ),
        (
            "RADSTREAM_DRAIN_DEADLINE_SECS",
            "shutdown.drain_deadline_secs",
            "1.5",
            serde_json::json!(1.5),
        ),
        (
            "RADSTREAM_DATA_DIR",
            "store.data_dir",
            "/tmp/d",
            serde_json::json!("/tmp/d"),
        ),
        (
            "RADSTREAM_HTTP",
            "http.listen",
            "127.0.0.1:8089",
            serde_json::json!("127.0.0.1:8089"),
        ),
        (
            "RADSTREAM_WEBHOOK_URL",
            "webhook.url",
            "http://127.0.0.1:9/h",
            serde_json::json!("http://127.0.0.1:9/h"),
        ),
    ];
    // Variables that are not settings are left alone (not refused as unknown).
    let mut env: Vec<(&str, &str)> = vec![
        ("RADSTREAM_ORT_LIB", "/nonexistent/libonnxruntime.so"),
        ("RADSTREAM_PYTHON", "/nonexistent/python"),
        ("RADSTREAM_ENDPOINT", "http://127.0.0.1:1"),
        ("RADSTREAM_TOKEN", "secret"),
        ("RADSTREAM_CACHE", "/nonexistent"),
    ];
    env.extend(aliases.iter().map(|(name, _, value, _)| (*name, *value)));
    let json = config_json(&env, &[]);
    for (name, key, _, want) in &aliases {
        assert_eq!(at(&json, key), want, "{name} -> {key}");
        assert_eq!(source(&json, key), format!("env {name}"), "{key}");
    }
}

#[test]
fn unknown_keys_in_the_file_or_the_environment_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_file(dir.path(), "[limits]\nmax_frames = 3\nmax_framez = 4\n");
    let file = file.to_str().expect("utf-8 path");
    for command in ["config", "serve"] {
        let out = run(&[], &[command, "--config", file]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{command}: {stderr}");
        assert!(
            stderr.contains("`limits.max_framez`") && stderr.contains(file),
            "{command}: {stderr}"
        );

        let out = run(&[("RADSTREAM_LIMITS__MAX_FRAMEZ", "4")], &[command]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{command}: {stderr}");
        assert!(
            stderr.contains("`limits.max_framez`")
                && stderr.contains("RADSTREAM_LIMITS__MAX_FRAMEZ"),
            "{command}: {stderr}"
        );
    }
    // A value of the wrong type names the setting and the variable.
    let out = run(&[("RADSTREAM_MAX_BATCH", "many")], &["config"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("`batching.max_batch`") && stderr.contains("env RADSTREAM_MAX_BATCH"),
        "{stderr}"
    );
    // A value every layer accepts but validation refuses: printed, then refused (exit 1).
    let out = run(&[("RADSTREAM_BATCHING__MAX_BATCH", "0")], &["config"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stdout.contains("max_batch = 0"), "{stdout}");
    assert!(
        stderr.contains("batching.max_batch must be at least 1"),
        "{stderr}"
    );
}

#[test]
fn config_prints_valid_toml_with_each_values_origin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_file(dir.path(), "[limits]\nmax_frames = 3\n");
    let file_str = file.to_str().expect("utf-8 path");
    let args = ["--config", file_str, "--listen", "127.0.0.1:50098"];
    let env = [("RADSTREAM_LIMITS__MAX_ROWS", "7")];
    let out = run(&env, &[&["config"][..], &args].concat());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        format!("max_frames = 3  # file {}", file.display()),
        "max_rows = 7  # env RADSTREAM_LIMITS__MAX_ROWS".to_string(),
        "listen = \"127.0.0.1:50098\"  # flag --listen".to_string(),
        "max_batch = 16  # default".to_string(),
        "# url unset  # default".to_string(),
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no line {line:?} in\n{stdout}"
        );
    }
    // The printout is a configuration file: read back, it is the effective configuration.
    let reread: radstream::config::Config =
        toml::from_str(&stdout).unwrap_or_else(|e| panic!("not valid TOML: {e}\n{stdout}"));
    let json = config_json(&env, &args);
    assert_eq!(serde_json::to_value(&reread).expect("json"), json["config"]);
}

/// A value other than the default, valid for the setting; for a setting that is text or unset by
/// default there is no safe generic choice, so it is listed here (a new one fails the test until added).
fn other_value(key: &str, default: &Value) -> String {
    match default {
        Value::Bool(b) => (!b).to_string(),
        Value::Number(n) if n.is_u64() => (n.as_u64().unwrap_or(0) + 1).to_string(),
        Value::Number(n) => (n.as_f64().unwrap_or(0.0) + 1.5).to_string(),
        _ => match key {
            "listen" => "127.0.0.1:50052",
            "model_dir" => "/tmp/rs-model",
            "ort_library" => "/tmp/rs-libonnxruntime.so",
            "preprocess" => "cpu",
            "inference.provider" => "auto",
            "store.data_dir" => "/tmp/rs-data",
            "http.listen" => "127.0.0.1:8081",
            "webhook.url" => "http://127.0.0.1:9/hook",
            "models.repository" => "/tmp/rs-models",
            "tls.cert" => "/tmp/rs-cert.pem",
            "tls.key" => "/tmp/rs-key.pem",
            "tls.client_ca" => "/tmp/rs-ca.pem",
            "auth.tokens_file" => "/tmp/rs-tokens",
            "audit.file" => "/tmp/rs-audit.jsonl",
            _ => panic!("no test value for the setting {key} (default {default}): add one here"),
        }
        .to_string(),
    }
}

fn leaves(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    match value.as_object() {
        Some(table) => {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&key, v, out);
            }
        }
        None => out.push((prefix.to_string(), value.clone())),
    }
}

#[test]
fn every_setting_can_be_set_from_its_environment_twin() {
    let defaults = config_json(&[], &[]);
    let mut settings = Vec::new();
    leaves("", &defaults["config"], &mut settings);
    assert!(settings.len() > 40, "{settings:?}");
    let env: Vec<(String, String, String)> = settings
        .iter()
        .map(|(key, default)| {
            let name = format!("RADSTREAM_{}", key.to_ascii_uppercase().replace('.', "__"));
            (key.clone(), name, other_value(key, default))
        })
        .collect();
    let pairs: Vec<(&str, &str)> = env
        .iter()
        .map(|(_, name, value)| (name.as_str(), value.as_str()))
        .collect();
    let json = config_json(&pairs, &[]);
    for (key, name, value) in &env {
        let got = at(&json, key);
        let shown = match got {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        let same = shown == *value
            || matches!((got.as_f64(), value.parse::<f64>()), (Some(a), Ok(b)) if a == b);
        assert!(same, "{name}={value}: {key} is {got}");
        assert_eq!(source(&json, key), format!("env {name}"), "{key}");
    }
}
