//! Finding 11 of issue 10, end to end: whatever a sender put into an instance — a patient's name and ID
//! in their own attributes, or free text smuggled into a UID, the Photometric Interpretation or the
//! Modality — never comes back in a response and never reaches the log, even at the most verbose level.
//! The instances are real slices (the sample study) rewritten with pydicom; the server is the real
//! binary at `RADSTREAM_LOG=trace`, the client the real `radstream push --json`.

mod common;

use std::{
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_radstream");
/// Every planted value starts with this; nothing radstream writes may contain it.
const MARK: &str = "ZZPHI";

#[test]
fn planted_identifiers_never_reach_a_response_or_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().display().to_string();
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
    ));
    let files: Vec<_> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| dir.path().join(format!("{n}.dcm")))
        .collect();
    for f in &files {
        let bytes = std::fs::read(f).expect("planted file");
        assert!(
            bytes.windows(MARK.len()).any(|w| w == MARK.as_bytes()),
            "{} carries the planted values",
            f.display()
        );
    }

    let port = TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut server = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--preprocess", "cpu", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("RADSTREAM_LOG", "trace")
        .env_remove("RADSTREAM_CONFIG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start radstream serve");
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let push = Command::new(BIN)
        .args([
            "push",
            "--json",
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
        ])
        .args(&files)
        .env("RADSTREAM_LOG", "trace")
        .output()
        .expect("run push");
    let _ = server.kill();
    let _ = server.wait();

    let responses = String::from_utf8_lossy(&push.stdout);
    assert!(
        push.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&push.stderr)
    );
    let events: Vec<serde_json::Value> = responses
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let count = |t: &str| events.iter().filter(|e| e["type"] == t).count();
    // the planted instances took the paths meant for them: a, b, e accepted and scored; c, d rejected
    assert_eq!(count("accepted"), 3, "{responses}");
    assert_eq!(count("finding"), 3, "{responses}");
    assert_eq!(count("rejected"), 2, "{responses}");
    let server_log = std::fs::read_to_string(&log_path).expect("server log");
    assert!(
        server_log.contains("rejected") && server_log.len() > 1000,
        "the log is verbose: {server_log}"
    );
    for (what, text) in [
        ("the responses", responses.to_string()),
        (
            "push's stderr",
            String::from_utf8_lossy(&push.stderr).into(),
        ),
        ("the server's trace log", server_log),
    ] {
        let leak: Vec<&str> = text.lines().filter(|l| l.contains(MARK)).collect();
        assert!(leak.is_empty(), "{what} repeat a planted value: {leak:#?}");
    }
}
