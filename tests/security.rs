//! Security against the real server over loopback (issue #13): TLS and mutual TLS with a grpcio client
//! (`tests/peers/grpcio_secure.py`), tokens with roles on every service and on the web view's data,
//! the audit log, and certificate and token files replaced while the service runs. Certificates are
//! generated per test (rcgen); no key is committed.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::*;
use radstream::{
    client::{self, Access, Source, Target},
    config::Config,
    security::auth::hash_token,
    server::RunningServer,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_radstream");

const PACS: &str = "pacs-token-0123456789";
const WARD: &str = "ward-token-0123456789";
const ALICE: &str = "alice-token-0123456789";

/// A CA, and certificates it signs, written as PEM files into a folder.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write CA");
        Self { ca, dir }
    }

    fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for localhost and 127.0.0.1 (server or client), as (cert, key) files.
    fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }
}

/// Replaces `to` by `from`'s content the way a deployment does: write beside it, then rename over it.
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, to).expect("rename");
}

fn tokens_file(path: &Path, lines: &[(&str, &str, &str)]) {
    let text: String = lines
        .iter()
        .map(|(roles, name, token)| format!("{roles} {name} {}\n", hash_token(token)))
        .collect();
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, format!("# role[,role] name sha256\n{text}")).expect("write tokens");
    std::fs::rename(&tmp, path).expect("rename tokens");
}

/// A server with TLS (mutual when `client_ca`), tokens and an audit log, files in `dir`.
async fn secured(dir: &Path, server_pki: &Pki, client_ca: Option<PathBuf>) -> RunningServer {
    let (cert, key) = server_pki.issue("server");
    let tokens = dir.join("tokens");
    tokens_file(
        &tokens,
        &[
            ("push", "pacs-1", PACS),
            ("watch", "ward-3", WARD),
            ("admin", "alice", ALICE),
        ],
    );
    let mut config: Config = test_config();
    config.http.listen = Some("127.0.0.1:0".parse().expect("addr"));
    config.tls.cert = Some(cert);
    config.tls.key = Some(key);
    config.tls.client_ca = client_ca;
    config.tls.reload_secs = 0.1;
    config.auth.tokens_file = Some(tokens);
    config.auth.reload_secs = 0.1;
    config.audit.file = Some(dir.join("audit.log"));
    start(config).await
}

/// Runs the grpcio peer with `steps` (one JSON object per step) and returns its output lines.
async fn grpcio(server: &RunningServer, tls: &[&str], steps: Value) -> Vec<Value> {
    let mut files: Vec<String> = std::fs::read_dir(sample_study_dir())
        .expect("sample study")
        .map(|e| e.expect("entry").path().display().to_string())
        .collect();
    files.sort();
    let mut command = Command::new(python());
    command
        .arg(repo().join("tests/peers/grpcio_secure.py"))
        .args(["--endpoint", &server.addr.to_string(), "--proto-dir"])
        .arg(repo().join("proto"))
        .args(tls)
        .args(["--steps", &steps.to_string()])
        .args(&files);
    let out = tokio::task::spawn_blocking(move || command.output().expect("run grpcio peer"))
        .await
        .expect("join");
    assert!(
        out.status.success(),
        "grpcio peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

fn step(action: &str, token: Option<&str>) -> Value {
    serde_json::json!({"action": action, "token": token})
}

fn codes(results: &[Value]) -> Vec<String> {
    results
        .iter()
        .map(|r| r["code"].as_str().expect("code").to_string())
        .collect()
}

fn audit_lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.log"))
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per audit line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_over_tls_with_tokens_is_served_only_where_each_role_belongs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "hospital");
    let server = secured(dir.path(), &pki, None).await;
    let ca = pki.ca_pem().display().to_string();
    let results = grpcio(
        &server,
        &["--ca", &ca],
        serde_json::json!([
            step("health", None),
            step("push", None),
            step("push", Some("not-a-token")),
            step("push", Some(WARD)),
            step("push", Some(ALICE)),
            step("push", Some(PACS)),
            step("watch", None),
            step("watch", Some(PACS)),
            step("watch", Some(ALICE)),
            step("watch", Some(WARD)),
            step("models", Some(PACS)),
            step("models", Some(WARD)),
            step("models", Some(ALICE)),
        ]),
    )
    .await;
    assert_eq!(
        codes(&results),
        [
            "OK",
            "UNAUTHENTICATED",
            "UNAUTHENTICATED",
            "PERMISSION_DENIED",
            "PERMISSION_DENIED",
            "OK",
            "UNAUTHENTICATED",
            "PERMISSION_DENIED",
            "PERMISSION_DENIED",
            "OK",
            "PERMISSION_DENIED",
            "PERMISSION_DENIED",
            "OK",
        ],
        "{results:#?}"
    );
    assert_eq!(
        results[5]["count"],
        sample_study().len(),
        "every slice accepted"
    );
    assert!(
        results[9]["count"].as_u64().expect("count") > 0,
        "watch replays the log"
    );
    assert!(
        results[12]["count"].as_u64().expect("count") >= 1,
        "models listed"
    );
    assert!(results[3]["details"]
        .as_str()
        .expect("details")
        .contains("push role"));

    // The audit log: who pushed which study, who watched; names from the tokens file, no patient data.
    let audit = audit_lines(dir.path());
    let study_uid = python_eval(&format!(
        "import pydicom; print(pydicom.dcmread({:?}).StudyInstanceUID)",
        std::fs::read_dir(sample_study_dir())
            .expect("dir")
            .next()
            .expect("a file")
            .expect("entry")
            .path()
            .display()
            .to_string()
    ));
    let pushes: Vec<&Value> = audit.iter().filter(|l| l["action"] == "push").collect();
    assert_eq!(pushes.len(), 1, "one line per study pushed: {audit:#?}");
    assert_eq!(pushes[0]["who"], "pacs-1");
    assert_eq!(pushes[0]["role"], "push");
    assert_eq!(pushes[0]["study_instance_uid"], study_uid.as_str());
    assert!(pushes[0]["peer"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));
    assert!(audit
        .iter()
        .any(|l| l["action"] == "watch" && l["who"] == "ward-3"));
    for line in &audit {
        let keys: Vec<&String> = line.as_object().expect("object").keys().collect();
        for k in keys {
            assert!(
                [
                    "time",
                    "who",
                    "role",
                    "action",
                    "study_instance_uid",
                    "model",
                    "version",
                    "peer"
                ]
                .contains(&k.as_str()),
                "unexpected audit field {k}"
            );
        }
    }
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_takes_only_client_certificates_from_the_configured_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "hospital");
    let clients = Pki::new(dir.path(), "clients");
    let stranger = Pki::new(dir.path(), "stranger");
    let server = secured(dir.path(), &pki, Some(clients.ca_pem())).await;
    let ca = pki.ca_pem().display().to_string();
    let (cert, key) = clients.issue("modality-7");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let with_cert = grpcio(
        &server,
        &["--ca", &ca, "--cert", &cert, "--key", &key],
        serde_json::json!([step("health", None), step("push", Some(PACS))]),
    )
    .await;
    assert_eq!(codes(&with_cert), ["OK", "OK"], "{with_cert:#?}");
    assert_eq!(with_cert[1]["count"], sample_study().len());

    let without = grpcio(
        &server,
        &["--ca", &ca],
        serde_json::json!([step("health", None)]),
    )
    .await;
    assert_eq!(codes(&without), ["UNAVAILABLE"], "{without:#?}");
    let (other_cert, other_key) = stranger.issue("intruder");
    let (other_cert, other_key) = (
        other_cert.display().to_string(),
        other_key.display().to_string(),
    );
    let foreign = grpcio(
        &server,
        &["--ca", &ca, "--cert", &other_cert, "--key", &other_key],
        serde_json::json!([step("health", None)]),
    )
    .await;
    assert_eq!(codes(&foreign), ["UNAVAILABLE"], "{foreign:#?}");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_text_client_is_refused_when_tls_is_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "hospital");
    let server = secured(dir.path(), &pki, None).await;
    let plain = grpcio(
        &server,
        &["--plaintext"],
        serde_json::json!([step("health", None), step("push", Some(PACS))]),
    )
    .await;
    assert_eq!(codes(&plain), ["UNAVAILABLE", "UNAVAILABLE"], "{plain:#?}");
    // radstream's own client, http:// to a TLS listener.
    let target = Target::new(
        format!("http://{}", server.addr),
        Access {
            token: Some(WARD.into()),
            ..Access::default()
        },
    );
    assert!(
        client::models::request(&target, client::models::ModelsRequest::List)
            .await
            .is_err()
    );
    // And the web view's listener speaks only TLS too.
    let http = server.http_addr.expect("http listener");
    let answer = python_eval(&format!(
        "import urllib.request\n\
         try:\n    urllib.request.urlopen('http://{http}/', timeout=5); print('served')\n\
         except Exception as e:\n    print('refused')"
    ));
    assert_eq!(answer, "refused");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_views_data_needs_the_watch_role_and_its_page_does_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "hospital");
    let server = secured(dir.path(), &pki, None).await;
    let http = server.http_addr.expect("http listener");
    let ca = pki.ca_pem();
    // (path, Authorization token) -> HTTP status, over HTTPS with the test CA.
    let status = |path: &str, token: Option<&str>| {
        python_eval(&format!(
            "import ssl, urllib.request, urllib.error\n\
             ctx = ssl.create_default_context(cafile={ca:?})\n\
             ctx.check_hostname = False\n\
             req = urllib.request.Request('https://{http}{path}')\n\
             tok = {token:?}\n\
             if tok != 'None': req.add_header('Authorization', 'Bearer ' + tok)\n\
             try:\n    print(urllib.request.urlopen(req, context=ctx, timeout=10).status)\n\
             except urllib.error.HTTPError as e:\n    print(e.code)",
            ca = ca.display().to_string(),
            token = token.unwrap_or("None"),
        ))
    };
    assert_eq!(status("/", None), "200", "the page itself is public");
    assert_eq!(status("/api/studies", None), "401");
    assert_eq!(status("/api/studies", Some("nope")), "401");
    assert_eq!(status("/api/studies", Some(PACS)), "403");
    assert_eq!(status("/api/studies", Some(WARD)), "200");
    assert_eq!(
        status(&format!("/api/studies?token={WARD}"), None),
        "200",
        "?token= for EventSource and <img>"
    );
    server.stop().await.expect("stop");
}

/// Polls `f` until it returns true (10 s at most).
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: never");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_and_token_files_replaced_while_serving_take_effect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = Pki::new(dir.path(), "old");
    let new = Pki::new(dir.path(), "new");
    let server = secured(dir.path(), &old, None).await;
    let list = |ca: PathBuf, token: &str| {
        let target = Target::new(
            server.endpoint(),
            Access {
                token: Some(token.into()),
                ca: Some(ca),
                ..Access::default()
            },
        );
        async move { client::models::request(&target, client::models::ModelsRequest::List).await }
    };
    assert!(server.endpoint().starts_with("https://"));
    list(old.ca_pem(), ALICE)
        .await
        .expect("old certificate served");
    assert!(
        list(new.ca_pem(), ALICE).await.is_err(),
        "not yet the new one"
    );

    // New certificate and key, swapped in while serving.
    let (cert, key) = new.issue("server-2");
    let (served_cert, served_key) = (
        dir.path().join("old/server.pem"),
        dir.path().join("old/server.key"),
    );
    replace(&key, &served_key);
    replace(&cert, &served_cert);
    eventually("the new certificate is served", async || {
        list(new.ca_pem(), ALICE).await.is_ok()
    })
    .await;
    assert!(
        list(old.ca_pem(), ALICE).await.is_err(),
        "the old one is gone"
    );

    // The tokens file rewritten: alice's token revoked, bob's added.
    let bob = "bob-token-0123456789";
    tokens_file(
        &dir.path().join("tokens"),
        &[("admin,watch", "bob", bob), ("push", "pacs-1", PACS)],
    );
    eventually("bob's token is accepted", async || {
        list(new.ca_pem(), bob).await.is_ok()
    })
    .await;
    match list(new.ca_pem(), ALICE).await {
        Err(client::models::ModelsError::Refused { code, .. }) => {
            assert_eq!(code, tonic::Code::Unauthenticated)
        }
        other => panic!("alice's revoked token: {other:?}"),
    }

    // Who changed which model.
    let admin = Target::new(
        server.endpoint(),
        Access {
            token: Some(bob.into()),
            ca: Some(new.ca_pem()),
            ..Access::default()
        },
    );
    let Ok(client::models::ModelsReply::List(listed)) =
        client::models::request(&admin, client::models::ModelsRequest::List).await
    else {
        panic!("list");
    };
    let model = listed.versions[0].clone();
    client::models::request(
        &admin,
        client::models::ModelsRequest::Activate {
            name: model.name.clone(),
            version: model.version.clone(),
        },
    )
    .await
    .expect("activate");
    assert!(
        audit_lines(dir.path())
            .iter()
            .any(|l| l["action"] == "activate"
                && l["who"] == "bob"
                && l["role"] == "admin"
                && l["model"] == model.name.as_str()
                && l["version"] == model.version.as_str()),
        "{:#?}",
        audit_lines(dir.path())
    );

    // A broken tokens file keeps the tokens in use.
    std::fs::write(dir.path().join("tokens"), "superuser eve 1234\n").expect("write");
    tokio::time::sleep(Duration::from_millis(500)).await;
    list(new.ca_pem(), bob).await.expect("still bob's");

    // A push over the new certificate is recorded under the name the new file gives.
    let target = Target::new(
        server.endpoint(),
        Access {
            token: Some(PACS.into()),
            ca: Some(new.ca_pem()),
            ..Access::default()
        },
    );
    let report = client::push(&target, Source::Memory(sample_study()), 64 << 20, |_| {})
        .await
        .expect("push");
    assert_eq!(report.accepted, sample_study().len());
    let audit = audit_lines(dir.path());
    assert!(
        audit
            .iter()
            .any(|l| l["action"] == "push" && l["who"] == "pacs-1"),
        "{audit:#?}"
    );
    server.stop().await.expect("stop");
}

#[test]
fn the_cli_hashes_tokens_and_refuses_plain_text_on_a_public_address() {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["token", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"secret\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        hash_token("secret")
    );

    let out = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove("RADSTREAM_CONFIG")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("allow_plaintext"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_pushes_and_watches_over_tls_with_a_token_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "hospital");
    let server = secured(dir.path(), &pki, None).await;
    let token_file = dir.path().join("pacs.token");
    std::fs::write(&token_file, format!("{PACS}\n")).expect("write");
    let endpoint = server.endpoint();
    let ca = pki.ca_pem();
    let run = move |args: Vec<String>, env: Vec<(&'static str, String)>| {
        let mut c = Command::new(BIN);
        c.args(&args)
            .env_remove("RADSTREAM_TOKEN")
            .env_remove("RADSTREAM_ENDPOINT");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run")
    };
    let push = {
        let (endpoint, ca, token_file) = (endpoint.clone(), ca.clone(), token_file.clone());
        let study = sample_study_dir();
        tokio::task::spawn_blocking(move || {
            run(
                vec![
                    "push".into(),
                    "--json".into(),
                    "--endpoint".into(),
                    endpoint,
                    "--ca".into(),
                    ca.display().to_string(),
                    "--token-file".into(),
                    token_file.display().to_string(),
                    study.display().to_string(),
                ],
                vec![],
            )
        })
        .await
        .expect("join")
    };
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    let accepted = members(&push_json_lines(&push), "accepted").len();
    assert_eq!(accepted, sample_study().len());
    let watch = |token: &'static str| {
        let (endpoint, ca) = (endpoint.clone(), ca.clone());
        tokio::task::spawn_blocking(move || {
            run(
                vec![
                    "watch".into(),
                    "--replay-only".into(),
                    "--json".into(),
                    "--endpoint".into(),
                    endpoint,
                    "--ca".into(),
                    ca.display().to_string(),
                ],
                vec![("RADSTREAM_TOKEN", token.to_string())],
            )
        })
    };
    let ok = watch(WARD).await.expect("join");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(!ok.stdout.is_empty());
    let denied = watch(PACS).await.expect("join");
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("watch role"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    server.stop().await.expect("stop");
}
