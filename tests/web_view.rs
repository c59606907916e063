//! The live web view (issue 11), over loopback: its JSON API and event stream over plain HTTP, and the
//! page itself in a real headless Chromium driven through the DevTools protocol — the page is opened
//! first, then events arrive, and what a radiologist would see is read from the page without reloading.
//!
//! Two servers: `web::router` over a hub and log of our own (so the tests can publish exact events,
//! including hostile strings, and check the stream's resume/filters precisely), and the real
//! `radstream serve --http` binary fed the bundled sample study over gRPC (the whole path).
//!
//! Browser tests skip (saying so) when Chromium is missing, unless `CI` is set: then they fail.

#[path = "web_view/cdp.rs"]
mod cdp;
mod common;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc},
    time::Duration,
};

use radstream::{
    proto::v1::{self as pb, analyze_response::Event as Resp, study_event::Event as E},
    results::{
        hub::{Hub, Outgoing},
        log::{Overlay, SqliteLog},
    },
    shutdown::Shutdown,
};
use serde_json::Value;

// ---- an in-process web view over a hub of our own ------------------------------------------------

struct Local {
    hub: Hub,
    addr: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Local {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = SqliteLog::in_data_dir(dir.path()).expect("open log");
        let hub = Hub::start(Arc::new(log), 1024).expect("hub");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = Shutdown::new();
        let app = radstream::web::router_with_shutdown(hub.clone(), shutdown.clone());
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { shutdown.draining().await })
                    .await
                    .expect("serve");
            }
        });
        Self {
            hub,
            addr,
            shutdown,
            task,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Publishes `events` (and overlays) and waits until they are logged and delivered.
    async fn publish(&self, events: Vec<pb::StudyEvent>, overlays: Vec<Overlay>) {
        let out = events
            .into_iter()
            .map(|event| Outgoing {
                event,
                targets: vec![],
            })
            .collect();
        self.hub.publish(out, overlays).await;
        self.hub.flush().await;
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A synthetic study: events in study order, plus one overlay PNG (`OVERLAY_SIZE`).
struct Synthetic {
    uid: String,
    events: Vec<pb::StudyEvent>,
    overlays: Vec<Overlay>,
}

const OVERLAY_SIZE: (u32, u32) = (48, 32);
/// A label that is markup: the page must show it as text and never run it.
const HOSTILE_LABEL: &str = "<img src=x onerror=\"window.__xss=1\">lesion";

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 5) as u8, (y * 7) as u8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

fn synthetic(uid: &str, slices: i32, positive: &[i32], label: &str, critical: bool) -> Synthetic {
    let sop = |n: i32| format!("{uid}.1.{n}");
    let slice = |n: i32| pb::SliceRef {
        study_instance_uid: uid.into(),
        series_instance_uid: format!("{uid}.1"),
        sop_instance_uid: sop(n),
        frame: 0,
        instance_number: Some(n),
        slice_position_mm: Some(-100.0 + 5.0 * n as f64),
        modality: "CT".into(),
    };
    let mut bodies = Vec::new();
    for n in 1..=slices {
        bodies.push(E::Accepted(pb::InstanceAccepted {
            client_ref: format!("/home/Doe^Jane/slice-{n}.dcm"),
            slice: Some(slice(n)),
            frames: 1,
            duplicate: false,
            models: Vec::new(),
        }));
    }
    bodies.push(E::Rejected(pb::InstanceRejected {
        client_ref: "bad.dcm".into(),
        study_instance_uid: uid.into(),
        reason: pb::RejectReason::MissingPixelData as i32,
        message: "no Pixel Data <b>(7FE0,0010)</b>".into(),
        ..Default::default()
    }));
    let mut overlays = Vec::new();
    for n in 1..=slices {
        let pos = positive.contains(&n);
        let score = if pos { 0.8 + 0.02 * n as f32 } else { 0.1 };
        bodies.push(E::Finding(pb::SliceFinding {
            slice: Some(slice(n)),
            client_ref: format!("/home/Doe^Jane/slice-{n}.dcm"),
            scores: vec![pb::LabelScore {
                label: label.into(),
                score,
                positive: pos,
                threshold: 0.573,
                peak: pos.then_some(pb::Location {
                    row: 10.0,
                    col: 20.0,
                    patient: None,
                }),
                bounding_box: pos.then_some(pb::BoundingBox {
                    row_min: 5.0,
                    col_min: 15.0,
                    row_max: 15.0,
                    col_max: 25.0,
                }),
            }],
            overlay: pos,
            ..Default::default()
        }));
        if pos {
            overlays.push(Overlay {
                study: uid.into(),
                sop: sop(n),
                frame: 0,
                png: png(OVERLAY_SIZE.0, OVERLAY_SIZE.1),
            });
        }
        if pos && critical && n == positive[0] {
            bodies.push(E::Critical(pb::CriticalFinding {
                study_instance_uid: uid.into(),
                label: label.into(),
                score,
                critical_threshold: 0.8,
                slice: Some(slice(n)),
                revision: 1,
                ..Default::default()
            }));
        }
    }
    bodies.push(E::Summary(pb::StudySummary {
        study_instance_uid: uid.into(),
        labels: vec![pb::LabelSummary {
            label: label.into(),
            max_score: 0.9,
            positive: !positive.is_empty(),
            positive_slices: positive.len() as u32,
            critical_threshold: critical.then_some(0.8),
            critical,
            ..Default::default()
        }],
        slices_scored: slices as u32,
        instances_accepted: slices as u32,
        instances_rejected: 1,
        reason: pb::CompletionReason::EndOfStudy as i32,
        revision: 1,
        modality: "CT".into(),
        series: 1,
        outside_model_rules: format!("the study has {slices} slices; model m 1 is for 100..=400"),
        ..Default::default()
    }));
    let events = bodies
        .into_iter()
        .enumerate()
        .map(|(i, event)| pb::StudyEvent {
            study_instance_uid: uid.into(),
            study_sequence: i as u64 + 1,
            modality: "CT".into(),
            event: Some(event),
            ..Default::default()
        })
        .collect();
    Synthetic {
        uid: uid.into(),
        events,
        overlays,
    }
}

// ---- Server-Sent Events over plain HTTP --------------------------------------------------------

#[derive(Debug)]
struct SseEvent {
    kind: String,
    id: Option<String>,
    data: String,
}

struct SseReader {
    response: reqwest::Response,
    buf: String,
}

impl SseReader {
    async fn open(url: &str, last_event_id: Option<&str>) -> Self {
        let mut req = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let response = req.send().await.expect("GET events");
        assert_eq!(response.status(), 200, "{url}");
        assert!(response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream")));
        Self {
            response,
            buf: String::new(),
        }
    }

    /// The next event (comments skipped), failing the test after `timeout`.
    async fn next(&mut self, timeout: Duration) -> SseEvent {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent {
                    kind: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.kind = v.trim().into();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().into());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !ev.data.is_empty() {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        any = true;
                    }
                }
                if any {
                    return ev;
                }
                continue;
            }
            let chunk = tokio::time::timeout(timeout, self.response.chunk())
                .await
                .expect("timed out waiting for an SSE event")
                .expect("read SSE")
                .expect("SSE stream ended");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn json(&mut self) -> (SseEvent, Value) {
        let ev = self.next(Duration::from_secs(10)).await;
        let v = serde_json::from_str(&ev.data).expect("SSE data is JSON");
        (ev, v)
    }
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url).await.expect("GET")
}

// ---- JSON API and event stream (in-process router) -------------------------------------------------

#[tokio::test]
async fn api_lists_studies_serves_a_study_and_its_overlays() {
    let local = Local::start().await;
    assert_eq!(
        get(&local.url("/api/studies"))
            .await
            .json::<Value>()
            .await
            .expect("json"),
        Value::Array(vec![])
    );
    let study = synthetic("1.2.826.0.1.3680043.10.543.99", 6, &[3, 4], "lesion", true);
    local
        .publish(study.events.clone(), study.overlays.clone())
        .await;

    let list: Value = get(&local.url("/api/studies"))
        .await
        .json()
        .await
        .expect("json");
    let row = &list[0];
    assert_eq!(row["study_instance_uid"], study.uid.as_str());
    assert_eq!(row["slices_scored"], 6);
    assert_eq!(row["critical"], true);
    assert_eq!(row["summary"]["reason"], "COMPLETION_REASON_END_OF_STUDY");

    let one = get(&local.url(&format!("/api/studies/{}", study.uid))).await;
    assert_eq!(one.status(), 200);
    let one: Value = one.json().await.expect("json");
    assert_eq!(one["study"]["study_instance_uid"], study.uid.as_str());
    let events = one["events"].as_array().expect("events");
    assert_eq!(events.len(), study.events.len());
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["study_sequence"].as_u64().expect("study_sequence"))
        .collect();
    assert_eq!(seqs, (1..=study.events.len() as u64).collect::<Vec<_>>());
    let finding = events
        .iter()
        .find(|e| e["finding"]["overlay"] == true)
        .expect("a finding with an overlay");
    assert_eq!(finding["finding"]["scores"][0]["positive"], true);
    assert!(events
        .iter()
        .any(|e| e["rejected"]["reason"] == "REJECT_REASON_MISSING_PIXEL_DATA"));

    // The overlay the finding points at, as the page asks for it.
    let slice = &finding["finding"]["slice"];
    let url = local.url(&format!(
        "/api/studies/{}/overlays/{}/{}.png",
        study.uid,
        slice["sop_instance_uid"].as_str().expect("sop"),
        slice["frame"]
    ));
    let r = get(&url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    let img = image::load_from_memory(&r.bytes().await.expect("body")).expect("decodes as PNG");
    assert_eq!((img.width(), img.height()), OVERLAY_SIZE);

    // 404s: unknown study, a slice without an overlay, a frame not stored, a name that is not FRAME.png.
    for path in [
        "/api/studies/9.9.9".to_string(),
        format!(
            "/api/studies/{}/overlays/{}.1.1/0.png",
            study.uid, study.uid
        ),
        format!(
            "/api/studies/{}/overlays/{}.1.3/1.png",
            study.uid, study.uid
        ),
        format!(
            "/api/studies/{}/overlays/{}.1.3/zero.png",
            study.uid, study.uid
        ),
        format!("/api/studies/9.9.9/overlays/{}.1.3/0.png", study.uid),
    ] {
        assert_eq!(get(&local.url(&path)).await.status(), 404, "{path}");
    }

    // The page and its assets, with a policy that forbids inline and foreign scripts.
    let page = get(&local.url("/")).await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/html"));
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .contains("script-src 'self'"));
    assert!(page.text().await.expect("body").contains("/page.js"));
    for (path, ty) in [("/page.js", "text/javascript"), ("/page.css", "text/css")] {
        let r = get(&local.url(path)).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with(ty));
    }
}

#[tokio::test]
async fn events_stream_replays_resumes_after_last_event_id_and_filters() {
    let local = Local::start().await;
    let a = synthetic("1.2.826.0.1.3680043.10.543.1", 2, &[2], "lesion", true);
    local.publish(a.events.clone(), a.overlays.clone()).await;
    let n = a.events.len() as u64;

    // Replay from the start: every entry with id = its sequence, then caught_up at the end of the log.
    let mut sse = SseReader::open(&local.url("/api/events?from=1"), None).await;
    for seq in 1..=n {
        let (ev, v) = sse.json().await;
        assert_eq!(ev.kind, "message");
        assert_eq!(ev.id.as_deref(), Some(seq.to_string().as_str()));
        assert_eq!(v["sequence"], seq);
        assert_eq!(v["study_instance_uid"], a.uid.as_str());
    }
    let (ev, v) = sse.json().await;
    assert_eq!(ev.kind, "caught_up");
    assert_eq!(v["sequence"], n);
    assert_eq!(ev.id.as_deref(), Some(n.to_string().as_str()));

    // Then live: a new study's events arrive on the open stream, in order.
    let b = synthetic("1.2.826.0.1.3680043.10.543.2", 1, &[], "lesion", false);
    local.publish(b.events.clone(), vec![]).await;
    for (i, _) in b.events.iter().enumerate() {
        let (ev, v) = sse.json().await;
        assert_eq!(ev.id, Some((n + 1 + i as u64).to_string()));
        assert_eq!(v["study_instance_uid"], b.uid.as_str());
    }

    // A browser's reconnect: Last-Event-ID wins over `from` and resumes right after it.
    let mut resumed = SseReader::open(&local.url("/api/events?from=1"), Some("3")).await;
    let (ev, v) = resumed.json().await;
    assert_eq!(ev.id.as_deref(), Some("4"));
    assert_eq!(v["sequence"], 4);

    // Filters: one study; only critical findings.
    let mut only_b = SseReader::open(
        &local.url(&format!("/api/events?from=1&study={}", b.uid)),
        None,
    )
    .await;
    for _ in &b.events {
        let (_, v) = only_b.json().await;
        assert_eq!(v["study_instance_uid"], b.uid.as_str());
    }
    assert_eq!(only_b.json().await.0.kind, "caught_up");
    let mut critical =
        SseReader::open(&local.url("/api/events?from=1&only_critical=true"), None).await;
    let (_, v) = critical.json().await;
    assert_eq!(v["critical"]["label"], "lesion");
    assert_eq!(critical.json().await.0.kind, "caught_up");

    // Without `from`: live only (caught_up at the current end first).
    let mut live = SseReader::open(&local.url("/api/events"), None).await;
    let (ev, v) = live.json().await;
    assert_eq!(ev.kind, "caught_up");
    assert_eq!(v["sequence"], n + b.events.len() as u64);

    // What cannot be read is refused, not guessed.
    for q in ["from=abc", "only_critical=maybe", "bogus=1"] {
        assert_eq!(
            get(&local.url(&format!("/api/events?{q}"))).await.status(),
            400,
            "{q}"
        );
    }
}

#[tokio::test]
async fn event_streams_end_when_the_server_drains() {
    let mut local = Local::start().await;
    let mut sse = SseReader::open(&local.url("/api/events"), None).await;
    assert_eq!(sse.json().await.0.kind, "caught_up");
    local.shutdown.begin_drain();
    // The open stream ends (the browser will reconnect elsewhere) instead of holding the server up.
    let end = tokio::time::timeout(Duration::from_secs(5), sse.response.chunk())
        .await
        .expect("the stream ends at the drain");
    assert!(matches!(end, Ok(None) | Err(_)), "no more events: {end:?}");
    tokio::time::timeout(Duration::from_secs(5), &mut local.task)
        .await
        .expect("the graceful shutdown completes with a watcher connected")
        .expect("serve task");
}

// ---- the page in a real browser --------------------------------------------------------------------

/// JS: the card of study `uid` as plain data, or null while it is not on the page.
fn card_js(uid: &str) -> String {
    format!(
        r#"(() => {{
  const card = [...document.querySelectorAll('section.study')].find(s => s.dataset.uid === {uid:?});
  if (!card) return null;
  const findings = [...card.querySelectorAll('figure.finding.positive')];
  return {{
    slices: Number(card.dataset.slicesScored),
    accepted: Number(card.dataset.accepted),
    rejected: Number(card.dataset.rejected),
    complete: card.dataset.complete === 'true',
    critical: card.dataset.critical === 'true',
    positives: findings.map(f => Number(f.dataset.instanceNumber)),
    overlays: findings.map(f => f.querySelector('img.overlay')).filter(Boolean)
      .map(i => ({{src: i.getAttribute('src'), loaded: i.complete && i.naturalWidth > 0, w: i.naturalWidth, h: i.naturalHeight}})),
    plotPoints: card.querySelectorAll('.plot circle.point').length,
    plotPositives: card.querySelectorAll('.plot circle.point.positive').length,
    thresholdLines: card.querySelectorAll('.plot line.threshold').length,
    text: card.textContent,
    banner: [...document.querySelectorAll('#critical li.critical-item')].filter(li => li.dataset.uid === {uid:?}).map(li => li.textContent),
    bannerVisible: !document.getElementById('critical').hidden,
  }};
}})()"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_follows_published_events_live_and_shows_text_as_text() {
    let Some(chromium) =
        cdp::chromium_or_skip("page_follows_published_events_live_and_shows_text_as_text")
    else {
        return;
    };
    let local = Local::start().await;
    // One study logged before the page opens: it comes from the JSON API snapshot.
    let before = synthetic("1.2.826.0.1.3680043.10.543.10", 3, &[], "lesion", false);
    local.publish(before.events.clone(), vec![]).await;

    let mut browser = cdp::Browser::launch(&chromium);
    browser.navigate(&local.url("/"));
    browser.wait_for(
        &format!("{}?.complete", card_js(&before.uid)),
        Duration::from_secs(20),
    );
    browser.wait_for(
        "window.radstream && window.radstream.caughtUp",
        Duration::from_secs(20),
    );
    // Marks this document: if the page reloaded, the mark would be gone.
    browser.eval("window.__notReloaded = 42");
    assert_eq!(
        browser.eval("document.getElementById('critical').hidden"),
        true
    );

    // Now the study arrives, in two parts, while the page is open.
    let live = synthetic(
        "1.2.826.0.1.3680043.10.543.11",
        8,
        &[5, 6, 7],
        HOSTILE_LABEL,
        true,
    );
    let cut = live
        .events
        .iter()
        .position(|e| matches!(e.event, Some(E::Finding(_))))
        .expect("a finding")
        + 2;
    local.publish(live.events[..cut].to_vec(), vec![]).await;
    let first = browser.wait_for(
        &format!(
            "(() => {{ const c = {}; return c && c.slices === 2 ? c : null; }})()",
            card_js(&live.uid)
        ),
        Duration::from_secs(20),
    );
    assert_eq!(first["accepted"], 8);
    assert_eq!(first["complete"], false);
    local
        .publish(live.events[cut..].to_vec(), live.overlays.clone())
        .await;
    let card = browser.wait_for(
        &format!(
            "(() => {{ const c = {}; return c && c.complete ? c : null; }})()",
            card_js(&live.uid)
        ),
        Duration::from_secs(20),
    );
    assert_eq!(card["slices"], 8, "{card}");
    assert_eq!(card["accepted"], 8);
    assert_eq!(card["rejected"], 1);
    assert_eq!(card["critical"], true);
    assert_eq!(card["positives"], serde_json::json!([5, 6, 7]));
    assert_eq!(card["plotPoints"], 8);
    assert_eq!(card["plotPositives"], 3);
    assert_eq!(card["thresholdLines"], 1);
    assert_eq!(card["bannerVisible"], true);
    assert_eq!(card["banner"].as_array().map(Vec::len), Some(1), "{card}");
    // Critical studies' alert is at the top of the page, above every study.
    assert_eq!(
        browser.eval(
            "document.getElementById('critical').compareDocumentPosition(document.querySelector('section.study')) & Node.DOCUMENT_POSITION_FOLLOWING"
        ),
        4
    );
    // The newest study is listed first.
    assert_eq!(
        browser.eval("document.querySelector('section.study').dataset.uid"),
        live.uid.as_str()
    );

    // Overlays: one per positive slice, loaded from the API.
    let overlays = browser.wait_for(
        &format!("(() => {{ const c = {}; return c.overlays.length === 3 && c.overlays.every(o => o.loaded) ? c.overlays : null; }})()", card_js(&live.uid)),
        Duration::from_secs(20),
    );
    for o in overlays.as_array().expect("overlays") {
        assert_eq!(
            (o["w"].as_u64(), o["h"].as_u64()),
            (Some(OVERLAY_SIZE.0 as u64), Some(OVERLAY_SIZE.1 as u64))
        );
        assert!(o["src"].as_str().expect("src").starts_with(&format!(
            "/api/studies/{}/overlays/{}.1.",
            live.uid, live.uid
        )));
    }

    // Markup in data is shown as text and never becomes elements or runs.
    let text = card["text"].as_str().expect("text");
    assert!(
        text.contains(HOSTILE_LABEL),
        "the label shows literally: {text}"
    );
    assert!(text.contains("no Pixel Data <b>(7FE0,0010)</b>"));
    assert!(card["banner"][0]
        .as_str()
        .expect("banner")
        .contains(HOSTILE_LABEL));
    assert_eq!(browser.eval("typeof window.__xss"), "undefined");
    assert_eq!(
        browser.eval("document.querySelectorAll('main img:not(.overlay), main b b').length"),
        0
    );
    // A study outside the model's slice range says so on its card.
    assert_eq!(
        browser.eval("document.querySelectorAll('.outside-rules').length > 0 && document.querySelector('.outside-rules').textContent.includes('is for 100..=400')"),
        true
    );
    // The client's own references (file names, which may carry names) are never shown.
    assert_eq!(
        browser.eval("document.body.textContent.includes('Doe^Jane')"),
        false
    );
    assert_eq!(
        browser.eval("window.__notReloaded"),
        42,
        "the page was not reloaded"
    );
    assert_eq!(browser.eval("window.radstream.missed"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshot_of_the_live_page_is_a_real_rendering() {
    let Some(chromium) = cdp::chromium_or_skip("screenshot_of_the_live_page_is_a_real_rendering")
    else {
        return;
    };
    let local = Local::start().await;
    let mut browser = cdp::Browser::launch(&chromium);
    browser.navigate(&local.url("/"));
    browser.wait_for(
        "window.radstream && window.radstream.caughtUp",
        Duration::from_secs(20),
    );
    let study = synthetic("1.2.826.0.1.3680043.10.543.20", 6, &[3, 4], "lesion", true);
    local
        .publish(study.events.clone(), study.overlays.clone())
        .await;
    browser.wait_for(
        &format!("(() => {{ const c = {}; return c && c.complete && c.overlays.every(o => o.loaded); }})()", card_js(&study.uid)),
        Duration::from_secs(20),
    );
    let png = browser.screenshot();
    assert!(!png.is_empty());
    let img = image::load_from_memory_with_format(&png, image::ImageFormat::Png)
        .expect("the screenshot is a PNG")
        .to_rgb8();
    assert_eq!((img.width(), img.height()), cdp::VIEWPORT);
    let first = *img.get_pixel(0, 0);
    let differing = img.pixels().filter(|p| **p != first).count();
    assert!(
        differing > (img.width() * img.height() / 50) as usize,
        "the screenshot is (nearly) one flat colour: {differing} pixels differ from the corner"
    );
    // The critical banner's red is on screen.
    assert!(
        img.pixels()
            .any(|p| p.0[0] > 150 && p.0[1] < 60 && p.0[2] < 60),
        "no critical red on the screenshot"
    );
}

// ---- the real binary: push the sample study while the page is open ----------------------------------

/// `radstream serve --http 127.0.0.1:0 --data-dir DIR` on free loopback ports, killed when dropped.
struct Served {
    child: Child,
    grpc: String,
    http: String,
    _data: tempfile::TempDir,
}

impl Served {
    fn start() -> Self {
        let data = tempfile::tempdir().expect("data dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_radstream"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--http", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .env("RADSTREAM_LOG", "info")
            .env_remove("RADSTREAM_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start radstream serve");
        // The HTTP address is printed once bound (stdout or the log); both are read to the end so the
        // server never blocks on a full pipe.
        let (tx, rx) = mpsc::channel::<String>();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for pipe in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        let (mut http, mut serving) = (None, false);
        let mut seen = Vec::new();
        while http.is_none() || !serving {
            let line = rx
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| {
                    panic!(
                        "server did not report its HTTP address; output:\n{}",
                        seen.join("\n")
                    )
                });
            if let Some(i) = line.find("http listening on http://") {
                let rest = &line[i + "http listening on ".len()..];
                http = Some(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or(rest)
                        .trim_end_matches('/')
                        .to_string(),
                );
            }
            serving |= line.contains("radstream serving");
            seen.push(line);
        }
        std::thread::spawn(move || for _ in rx {});
        Self {
            child,
            grpc: format!("http://127.0.0.1:{port}"),
            http: http.expect("http address"),
            _data: data,
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes the bundled sample study on one stream, closes it and returns every response.
async fn push_sample(endpoint: String) -> Vec<Resp> {
    let mut stream = common::Stream::try_open_at(endpoint)
        .await
        .expect("open Analyze");
    for (name, bytes) in common::sample_study() {
        stream.send(common::instance(&name, bytes)).await;
    }
    stream.close();
    stream.drain().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_shows_a_pushed_sample_study_live() {
    let Some(chromium) = cdp::chromium_or_skip("page_shows_a_pushed_sample_study_live") else {
        return;
    };
    let served = Served::start();
    let mut browser = cdp::Browser::launch(&chromium);
    browser.navigate(&format!("{}/", served.http));
    browser.wait_for(
        "window.radstream && window.radstream.caughtUp",
        Duration::from_secs(20),
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('section.study').length"),
        0
    );
    browser.eval("window.__notReloaded = 7");

    // Push while the page is open.
    let responses = tokio::spawn(push_sample(served.grpc.clone()))
        .await
        .expect("push task");
    let findings = common::findings(&responses);
    assert_eq!(findings.len(), 12, "the sample study has 12 slices");
    let uid = findings[0]
        .slice
        .as_ref()
        .expect("slice")
        .study_instance_uid
        .clone();
    let mut positives: Vec<i64> = findings
        .iter()
        .filter(|f| f.scores.iter().any(|s| s.positive))
        .map(|f| {
            f.slice
                .as_ref()
                .and_then(|s| s.instance_number)
                .expect("instance number") as i64
        })
        .collect();
    positives.sort();
    assert!(!positives.is_empty(), "the sample study's lesion is found");
    assert!(positives
        .iter()
        .all(|n| common::LESION_SLICES.contains(&(*n as i32))));
    let summary = *common::summaries(&responses).last().expect("a summary");
    let critical = summary.labels.iter().any(|l| l.critical);

    let card = browser.wait_for(
        &format!(
            "(() => {{ const c = {}; return c && c.complete && c.slices === 12 ? c : null; }})()",
            card_js(&uid)
        ),
        Duration::from_secs(60),
    );
    assert_eq!(card["accepted"], 12, "{card}");
    assert_eq!(card["rejected"], 0);
    assert_eq!(card["plotPoints"], 12);
    let mut shown: Vec<i64> = card["positives"]
        .as_array()
        .expect("positives")
        .iter()
        .map(|v| v.as_i64().expect("number"))
        .collect();
    shown.sort();
    assert_eq!(
        shown, positives,
        "the page shows exactly the positive slices"
    );
    assert_eq!(
        card["critical"], critical,
        "critical per the summary: {critical}"
    );
    assert_eq!(card["bannerVisible"], critical);
    // Each overlay the service stored is shown and loads (the DICOM's 512x512 slice).
    let with_overlay = findings.iter().filter(|f| f.overlay).count();
    let overlays = browser.wait_for(
        &format!("(() => {{ const c = {}; return c.overlays.length === {with_overlay} && c.overlays.every(o => o.loaded) ? c.overlays : null; }})()", card_js(&uid)),
        // The page retries an overlay stored a moment after its finding (for up to ~18 s).
        Duration::from_secs(30),
    );
    for o in overlays.as_array().into_iter().flatten() {
        assert!(
            o["w"].as_u64() > Some(0) && o["h"].as_u64() > Some(0),
            "{o}"
        );
    }
    assert_eq!(
        browser.eval("window.__notReloaded"),
        7,
        "the page was not reloaded"
    );

    // The same state over the JSON API.
    let list: Value = get(&format!("{}/api/studies", served.http))
        .await
        .json()
        .await
        .expect("json");
    let row = list
        .as_array()
        .expect("list")
        .iter()
        .find(|r| r["study_instance_uid"] == uid.as_str())
        .expect("the study is listed");
    assert_eq!(row["slices_scored"], 12);
    assert_eq!(row["critical"], critical);
    let study: Value = get(&format!("{}/api/studies/{uid}", served.http))
        .await
        .json()
        .await
        .expect("json");
    let overlay_findings: Vec<&Value> = study["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["finding"]["overlay"] == true)
        .collect();
    assert_eq!(overlay_findings.len(), with_overlay);
    for f in overlay_findings {
        let s = &f["finding"]["slice"];
        let r = get(&format!(
            "{}/api/studies/{uid}/overlays/{}/{}.png",
            served.http,
            s["sop_instance_uid"].as_str().expect("sop"),
            s["frame"]
        ))
        .await;
        assert_eq!(r.status(), 200);
        let img = image::load_from_memory(&r.bytes().await.expect("png")).expect("decodes");
        assert!(img.width() > 0 && img.height() > 0);
    }
    assert_eq!(
        get(&format!("{}/api/studies/1.2.3.4.5.6", served.http))
            .await
            .status(),
        404
    );
}
