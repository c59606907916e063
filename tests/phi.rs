//! Finding 11 of issue 10 and issue 13, end to end: whatever a sender put into an instance — a
//! patient's name and ID in their own attributes, or free text smuggled into a UID, the Photometric
//! Interpretation, the Modality or any attribute the decoder must read — never comes back in a response,
//! and never reaches the log (text or JSON), a metric, the JSON API or the audit log, even at the most
//! verbose level. The instances are real slices (the sample study) rewritten with pydicom; the server is
//! the real binary at `RADSTREAM_LOG=trace`, the client the real `radstream push --json`.
//!
//! The JSON log is also checked for what it is for: one object per line, and every line about an
//! instance carries the span of the stream that brought it (and of its study, once its header is read).

mod common;

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_radstream");
/// Every planted value starts with this; nothing radstream writes may contain it.
const MARK: &str = "ZZPHI";
/// The bearer token of the secured run (roles push and watch).
const TOKEN: &str = "phi-test-token-0123456789abcdef";

/// The five planted instances: a (PHI only where PHI belongs), b (free text in the Study and Series
/// UIDs: accepted under stand-ins), c (free text in the Photometric Interpretation: rejected), d (free
/// text in the SOP Instance UID and pixel data cut short: rejected), e (free text in the Modality and
/// the window: accepted).
fn plant(out: &Path) -> Vec<PathBuf> {
    python_eval(&format!(
        r#"
import glob, os, warnings, pydicom
from pydicom import config
warnings.simplefilter("ignore")  # pydicom warns about the planted values: they are the point
config.settings.writing_validation_mode = config.IGNORE
src = sorted(glob.glob(os.path.join({src:?}, "*.dcm")))
def slice(i):
    ds = pydicom.dcmread(src[i])
    ds.PatientName = "{MARK}NAME^SECRET"
    ds.PatientID = "{MARK}ID0042"
    ds.PatientBirthDate = "19010101"
    ds.OtherPatientIDs = "{MARK}OTHER"
    return ds
# accepted, with PHI only where PHI belongs
slice(0).save_as(os.path.join({out:?}, "a.dcm"))
# free text in the Study and Series UIDs: accepted under stand-ins
ds = slice(1); ds.StudyInstanceUID = "{MARK}.STUDY.1"; ds.SeriesInstanceUID = "1.2.{MARK}"
ds.save_as(os.path.join({out:?}, "b.dcm"))
# free text in the Photometric Interpretation: rejected
ds = slice(2); ds.PhotometricInterpretation = "{MARK}PI"
ds.save_as(os.path.join({out:?}, "c.dcm"))
# free text in the SOP Instance UID (file meta too) and a pixel data element cut short: rejected
ds = slice(3); ds.SOPInstanceUID = "{MARK}.SOP"; ds.file_meta.MediaStorageSOPInstanceUID = "{MARK}.SOP"
ds.save_as(os.path.join({out:?}, "d.dcm"))
raw = open(os.path.join({out:?}, "d.dcm"), "rb").read()
open(os.path.join({out:?}, "d.dcm"), "wb").write(raw[:-500])
# free text in the Modality and in the window
ds = slice(4); ds.Modality = "{MARK}MOD"; ds.WindowWidth = "400"
del ds.WindowCenter; ds.add_new(0x00281050, "LO", "{MARK}")
ds.save_as(os.path.join({out:?}, "e.dcm"))
"#,
        src = sample_study_dir().display().to_string(),
        out = out.display().to_string(),
    ));
    let files: Vec<_> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| out.join(format!("{n}.dcm")))
        .collect();
    for f in &files {
        assert_planted(f);
    }
    files
}

fn assert_planted(f: &Path) {
    let bytes = std::fs::read(f).expect("planted file");
    assert!(
        bytes.windows(MARK.len()).any(|w| w == MARK.as_bytes()),
        "{} carries the planted values",
        f.display()
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port()
}

/// How the server of one run is set up.
#[derive(Default)]
struct Setup {
    /// `RADSTREAM_LOG_FORMAT=json`.
    json: bool,
    /// The web view on (`/metrics`, the JSON API), a tokens file and an audit log.
    secured: bool,
}

/// Everything one run wrote that a person or a program could read.
struct Run {
    push: std::process::Output,
    responses: Vec<Value>,
    log: String,
    /// (what, body) of every HTTP resource read while serving (secured runs).
    http: Vec<(String, String)>,
    audit: String,
}

impl Run {
    /// Every output, named, to search for planted values.
    fn outputs(&self) -> Vec<(String, String)> {
        let mut all = vec![
            (
                "the responses".to_string(),
                String::from_utf8_lossy(&self.push.stdout).into_owned(),
            ),
            (
                "push's stderr".to_string(),
                String::from_utf8_lossy(&self.push.stderr).into_owned(),
            ),
            ("the server's trace log".to_string(), self.log.clone()),
            ("the audit log".to_string(), self.audit.clone()),
        ];
        all.extend(self.http.iter().cloned());
        all
    }

    fn assert_no_leak(&self) {
        for (what, text) in self.outputs() {
            let leak: Vec<&str> = text.lines().filter(|l| l.contains(MARK)).collect();
            assert!(leak.is_empty(), "{what} repeat a planted value: {leak:#?}");
        }
    }

    fn count(&self, t: &str) -> usize {
        members(&self.responses, t).len()
    }
}

/// Serves at `RADSTREAM_LOG=trace` as `setup` says, pushes `files` on one stream, reads what the web
/// side serves (secured runs) and stops the server.
fn serve_and_push(dir: &Path, files: &[PathBuf], setup: &Setup) -> Run {
    let port = free_port();
    let log_path = dir.join("server.log");
    let audit_path = dir.join("audit.jsonl");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--preprocess", "cpu", "--data-dir"])
        .arg(dir.join("data"))
        .env("RADSTREAM_LOG", "trace")
        .env_remove("RADSTREAM_CONFIG")
        .env_remove("RADSTREAM_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(log);
    if setup.json {
        command.env("RADSTREAM_LOG_FORMAT", "json");
    }
    let http = setup.secured.then(|| {
        let http = format!("127.0.0.1:{}", free_port());
        let tokens = dir.join("tokens");
        std::fs::write(
            &tokens,
            format!(
                "push,watch pacs-phi {}\n",
                radstream::security::auth::hash_token(TOKEN)
            ),
        )
        .expect("tokens file");
        let config = dir.join("radstream.toml");
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = {http:?}\n[auth]\ntokens_file = {tokens:?}\n\
                 [audit]\nfile = {audit:?}\n",
                tokens = tokens.display().to_string(),
                audit = audit_path.display().to_string(),
            ),
        )
        .expect("config file");
        command.arg("--config").arg(&config);
        http
    });
    let mut server = command.spawn().expect("start radstream serve");
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            server.try_wait().expect("server status").is_none(),
            "the server exited: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut push = Command::new(BIN);
    push.args([
        "push",
        "--json",
        "--endpoint",
        &format!("http://127.0.0.1:{port}"),
    ])
    .args(files)
    .env("RADSTREAM_LOG", "trace")
    .env_remove("RADSTREAM_TOKEN");
    if setup.json {
        push.env("RADSTREAM_LOG_FORMAT", "json");
    }
    if setup.secured {
        push.args(["--token", TOKEN]);
    }
    let push = push.output().expect("run push");
    let http = http.map(|http| read_web(&http)).unwrap_or_default();
    let _ = server.kill();
    let _ = server.wait();
    let responses = push_json_lines(&push);
    Run {
        push,
        responses,
        log: std::fs::read_to_string(&log_path).expect("server log"),
        http,
        audit: std::fs::read_to_string(&audit_path).unwrap_or_default(),
    }
}

/// `/metrics`, `/readyz`, the study list and every study of the JSON API, as bodies.
fn read_web(http: &str) -> Vec<(String, String)> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let get = |path: String| {
            let client = client.clone();
            async move {
                let response = client
                    .get(format!("http://{http}{path}"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("GET {path}: {e}"));
                let status = response.status();
                let body = response.text().await.expect("body");
                assert!(status.is_success(), "GET {path}: {status} {body}");
                (format!("GET {path}"), body)
            }
        };
        let mut read = vec![get("/metrics".into()).await, get("/readyz".into()).await];
        let studies = get("/api/studies".into()).await;
        let list: Vec<Value> = serde_json::from_str(&studies.1).expect("study list");
        assert!(list.len() >= 2, "the planted studies are listed: {list:?}");
        read.push(studies);
        for study in &list {
            let uid = study["study_instance_uid"].as_str().expect("study uid");
            read.push(get(format!("/api/studies/{uid}")).await);
        }
        read
    })
}

#[test]
fn planted_identifiers_never_reach_a_response_or_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = plant(dir.path());
    let run = serve_and_push(dir.path(), &files, &Setup::default());
    // the planted instances took the paths meant for them: a, b, e accepted and scored; c, d rejected
    assert_eq!(run.count("accepted"), 3, "{:?}", run.responses);
    assert_eq!(run.count("finding"), 3, "{:?}", run.responses);
    assert_eq!(run.count("rejected"), 2, "{:?}", run.responses);
    assert!(
        run.log.contains("rejected") && run.log.len() > 1000,
        "the log is verbose: {}",
        run.log
    );
    run.assert_no_leak();
}

/// The span named `name` among a JSON log line's `spans`.
fn span<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line["spans"].as_array()?.iter().find(|s| s["name"] == name)
}

#[test]
fn json_logs_metrics_the_api_and_the_audit_log_never_carry_planted_identifiers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = plant(dir.path());
    let run = serve_and_push(
        dir.path(),
        &files,
        &Setup {
            json: true,
            secured: true,
        },
    );
    assert_eq!(run.count("accepted"), 3, "{:?}", run.responses);
    assert_eq!(run.count("rejected"), 2, "{:?}", run.responses);
    run.assert_no_leak();

    // the audit log was written (the push of each study), so searching it meant something
    let audit: Vec<Value> = run
        .audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per audit line"))
        .collect();
    assert!(
        audit
            .iter()
            .any(|a| a["action"] == "push" && a["who"] == "pacs-phi"),
        "{audit:?}"
    );
    let metrics = &run.http[0].1;
    assert!(
        metrics.contains("radstream_instances_rejected_total"),
        "{metrics}"
    );

    // one JSON object per line, every one of them
    let lines: Vec<Value> = run
        .log
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l}"))
        })
        .collect();
    assert!(lines.len() > 100, "the log is verbose");
    let message = |l: &Value| l["fields"]["message"].as_str().unwrap_or("").to_string();
    // the message begins with what happened ("instance rejected: why")
    let about = |m: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| message(l).split(':').next() == Some(m))
            .collect()
    };
    // every line about an instance names the stream that brought it; once its header is read, its
    // study too
    let mut streams = std::collections::HashSet::new();
    for (m, count, with_study) in [
        ("instance received", 5, false),
        ("instance decoded", 3, true),
        ("instance accepted", 3, true),
        ("instance rejected", 2, false),
        ("slice scored", 3, true),
    ] {
        let found = about(m);
        assert_eq!(found.len(), count, "{m}: {found:#?}");
        for line in found {
            let stream = span(line, "stream").unwrap_or_else(|| panic!("{m} in a stream: {line}"));
            assert!(stream["stream"].is_u64(), "{line}");
            assert!(
                stream["peer"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("127.0.0.1:")),
                "{line}"
            );
            streams.insert(stream["stream"].as_u64());
            if with_study {
                let study = span(line, "study").unwrap_or_else(|| panic!("{m} in a study: {line}"));
                for field in ["study_instance_uid", "sop_instance_uid"] {
                    assert!(
                        study[field].as_str().is_some_and(|u| !u.is_empty()),
                        "{m}: {field} in {line}"
                    );
                }
                // the current span is the study's, and what the line is about is in it
                assert_eq!(line["span"]["name"], "study", "{line}");
            }
        }
    }
    assert_eq!(streams.len(), 1, "one push, one stream: {streams:?}");
    // the slice-level lines name the very instances that were accepted
    let accepted: std::collections::HashSet<&str> = members(&run.responses, "accepted")
        .iter()
        .filter_map(|r| r["slice"]["sop_instance_uid"].as_str())
        .collect();
    let scored: std::collections::HashSet<&str> = about("slice scored")
        .iter()
        .filter_map(|l| span(l, "study")?["sop_instance_uid"].as_str())
        .collect();
    assert_eq!(scored, accepted);
    // the stream's own end is in its span
    let ended: Vec<&Value> = lines
        .iter()
        .filter(|l| message(l).starts_with("analyze stream ended"))
        .collect();
    assert_eq!(ended.len(), 1, "{ended:#?}");
    assert!(span(ended[0], "stream").is_some(), "{}", ended[0]);
}

#[test]
fn decoder_errors_never_quote_a_planted_value() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().display().to_string();
    // Each instance carries a planted value where the decoder must read a number, a UID or a code, so
    // the error it is rejected with (or the note it is accepted with) is about that very value.
    let names = python_eval(&format!(
        r#"
import glob, os, warnings, pydicom
from pydicom import config
from pydicom.uid import UID
warnings.simplefilter("ignore")
config.settings.writing_validation_mode = config.IGNORE
src = sorted(glob.glob(os.path.join({src:?}, "*.dcm")))
def slice(i):
    ds = pydicom.dcmread(src[i])
    ds.PatientName = "{MARK}NAME"
    return ds
made = []
def save(name, ds):
    ds.save_as(os.path.join({out:?}, name + ".dcm"))
    made.append(name)
def text_in(ds, tag, vr="LO"):
    if tag in ds: del ds[tag]
    ds.add_new(tag, vr, "{MARK}")
    return ds
# numbers the decoder needs, as text
save("rows", text_in(slice(0), 0x00280010))
save("columns", text_in(slice(1), 0x00280011))
save("bits_allocated", text_in(slice(2), 0x00280100))
save("samples", text_in(slice(4), 0x00280002))
save("pixel_representation", text_in(slice(5), 0x00280103))
# an IS and a DS with their own VR (pydicom will not write them: the bytes are patched after)
def patched(name, ds, keyword):
    setattr(ds, keyword, "77777")
    save(name, ds)
    path = os.path.join({out:?}, name + ".dcm")
    raw = open(path, "rb").read()
    assert raw.count(b"77777 ") == 1, name
    open(path, "wb").write(raw.replace(b"77777 ", b"{MARK} "))
patched("frames", slice(3), "NumberOfFrames")
patched("rescale_slope", slice(6), "RescaleSlope")
# a transfer syntax and a SOP class that are free text
ds = slice(7); ds.file_meta.TransferSyntaxUID = UID("{MARK}.TS"); save("transfer_syntax", ds)
ds = slice(8); ds.SOPClassUID = "{MARK}.CLASS"; ds.file_meta.MediaStorageSOPClassUID = "{MARK}.CLASS"
save("sop_class", ds)
# a character set nobody knows, and the name in it
ds = slice(9); ds.SpecificCharacterSet = "{MARK}CHARSET"; save("charset", ds)
# pixel data of the wrong length
ds = slice(0); ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"; ds.PixelData = ds.PixelData[:-10] + b"{MARK}"
save("short_pixels", ds)
print(" ".join(made))
"#,
        src = sample_study_dir().display().to_string(),
    ));
    let files: Vec<PathBuf> = names
        .split_whitespace()
        .map(|n| dir.path().join(format!("{n}.dcm")))
        .collect();
    assert_eq!(files.len(), 11, "{names}");
    for f in &files {
        assert_planted(f);
    }
    let run = serve_and_push(
        dir.path(),
        &files,
        &Setup {
            json: true,
            secured: false,
        },
    );
    // every instance was answered, and most of them are rejections whose messages are about the
    // planted values
    let rejected: Vec<&Value> = members(&run.responses, "rejected");
    assert_eq!(
        run.count("accepted") + rejected.len(),
        files.len(),
        "{:#?}",
        run.responses
    );
    assert!(rejected.len() >= 8, "{rejected:#?}");
    for r in &rejected {
        assert!(
            r["message"].as_str().is_some_and(|m| !m.is_empty()),
            "a rejection says why: {r}"
        );
    }
    run.assert_no_leak();
}
