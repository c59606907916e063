//! The live web view: a page a radiologist leaves open to watch studies arrive and fill in, and the JSON
//! API it is built on, served by the binary itself on the `--http` listener.
//!
//! Why it looks like this:
//! - **No build step.** The page is three small files (`page.html`, `page.js`, `page.css`) compiled in
//!   with `include_str!`, so the binary is the whole deployment and nothing is fetched from elsewhere.
//! - **One source of truth: the hub.** The page first reads the current state from the JSON API (the
//!   durable log), then follows `/api/events` (Server-Sent Events) from the next sequence number. Every
//!   SSE event carries `id: <log sequence>`, so the browser's automatic reconnect sends `Last-Event-ID`
//!   and resumes at the next sequence with no gap; the page drops anything it has already applied, so a
//!   replay overlap never counts twice.
//! - **A slow browser never slows the service.** The hub never waits for a subscriber; one that falls
//!   behind gets a `missed` SSE event naming the dropped range, and the page re-reads it from the log.
//! - **SQLite off the async workers.** Every log read runs on the blocking pool.
//! - **No patient identifiers, no markup injection.** Events carry no patient identifiers and the page
//!   shows none of the client's own references (file names may carry them); the page inserts every
//!   string with `textContent`, never as markup, and the responses forbid other origins' scripts.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::get,
    Json, Router,
};
use futures::Stream;
use serde_json::{json, Value};

use crate::{
    proto::v1 as pb,
    results::{
        hub::{Hub, Subscription, WatchFilter, Watched},
        log::{EventLog, LogError, StudyRow},
    },
    shutdown::Shutdown,
};

const PAGE_HTML: &str = include_str!("page.html");
const PAGE_JS: &str = include_str!("page.js");
const PAGE_CSS: &str = include_str!("page.css");

/// Studies listed by `/api/studies` when the request names no limit, and the most it may ask for.
const DEFAULT_STUDIES: usize = 50;
const MAX_STUDIES: usize = 1000;
/// An idle SSE connection gets a comment this often, so proxies and browsers do not time it out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// What the browser waits before reconnecting a dropped event stream.
const RETRY: Duration = Duration::from_secs(2);

/// The web view and its JSON API over `hub` (see the module docs). Its event streams never end by
/// themselves: serve it with [`router_with_shutdown`] where a graceful shutdown must not wait for them.
pub fn router(hub: Hub) -> Router {
    router_with_shutdown(hub, Shutdown::new())
}

/// [`router`], whose open event streams end when `shutdown` starts draining, so a graceful HTTP
/// shutdown is not held open by browsers that are only watching (they reconnect, with
/// `Last-Event-ID`, to whichever server answers next).
pub fn router_with_shutdown(hub: Hub, shutdown: Shutdown) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/page.js", get(script))
        .route("/page.css", get(style))
        .route("/api/events", get(events))
        .route("/api/studies", get(studies))
        .route("/api/studies/{uid}", get(study))
        .route("/api/studies/{uid}/overlays/{sop}/{file}", get(overlay))
        .with_state(Web { hub, shutdown })
}

/// What every handler shares.
#[derive(Clone)]
struct Web {
    hub: Hub,
    shutdown: Shutdown,
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; \
                     connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
                ),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", PAGE_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", PAGE_CSS)
}

/// A log read on the blocking pool; a failed read is a 500 with the error (which names no patient data).
async fn read_log<T, F>(hub: &Hub, f: F) -> Result<T, Response>
where
    T: Send + 'static,
    F: FnOnce(&dyn EventLog) -> Result<T, LogError> + Send + 'static,
{
    let log: Arc<dyn EventLog> = hub.log().clone();
    match tokio::task::spawn_blocking(move || f(log.as_ref())).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "web view: log read failed");
            Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))
        }
        Err(e) => {
            tracing::warn!(error = %e, "web view: log read task failed");
            Err(error(StatusCode::INTERNAL_SERVER_ERROR, "log read failed"))
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

#[derive(serde::Deserialize)]
struct StudiesQuery {
    limit: Option<usize>,
}

async fn studies(State(Web { hub, .. }): State<Web>, Query(q): Query<StudiesQuery>) -> Response {
    let limit = q.limit.unwrap_or(DEFAULT_STUDIES).clamp(1, MAX_STUDIES);
    match read_log(&hub, move |log| log.studies(limit)).await {
        Ok(rows) => Json(Value::Array(rows.iter().map(study_row_json).collect())).into_response(),
        Err(r) => r,
    }
}

async fn study(State(Web { hub, .. }): State<Web>, Path(uid): Path<String>) -> Response {
    let read = read_log(&hub, move |log| {
        let Some(row) = log.study(&uid)? else {
            return Ok(None);
        };
        Ok(Some((row, log.read_study(&uid)?)))
    })
    .await;
    match read {
        Ok(Some((row, events))) => Json(json!({
            "study": study_row_json(&row),
            "events": events.iter().map(event_json).collect::<Vec<_>>(),
        }))
        .into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such study"),
        Err(r) => r,
    }
}

async fn overlay(
    State(Web { hub, .. }): State<Web>,
    Path((uid, sop, file)): Path<(String, String, String)>,
) -> Response {
    let Some(frame) = file
        .strip_suffix(".png")
        .and_then(|f| f.parse::<u32>().ok())
    else {
        return error(StatusCode::NOT_FOUND, "overlays are named FRAME.png");
    };
    match read_log(&hub, move |log| log.overlay(&uid, &sop, frame)).await {
        Ok(Some(png)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("image/png")),
                // An overlay never changes once stored (a re-sent instance is not scored again).
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("private, max-age=3600"),
                ),
            ],
            png,
        )
            .into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such overlay"),
        Err(r) => r,
    }
}

/// What `/api/events` was asked for.
#[derive(Debug, Clone, Default, PartialEq)]
struct EventsRequest {
    from: Option<u64>,
    filter: WatchFilterSpec,
}

/// The filter as requested (kept separate from [`WatchFilter`] so it can be compared in tests).
#[derive(Debug, Clone, Default, PartialEq)]
struct WatchFilterSpec {
    studies: Vec<String>,
    modalities: Vec<String>,
    labels: Vec<String>,
    only_critical: bool,
}

impl From<WatchFilterSpec> for WatchFilter {
    fn from(s: WatchFilterSpec) -> Self {
        WatchFilter {
            studies: s.studies,
            modalities: s.modalities,
            labels: s.labels,
            only_critical: s.only_critical,
        }
    }
}

/// Parses `from`, repeated `study`/`modality`/`label` and `only_critical`; a `Last-Event-ID` (what the
/// browser sends when it reconnects) wins over `from`: the stream resumes right after it.
fn events_request(
    pairs: &[(String, String)],
    last_event_id: Option<&str>,
) -> Result<EventsRequest, String> {
    let mut r = EventsRequest::default();
    for (k, v) in pairs {
        match k.as_str() {
            "from" => {
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("from={v:?} is not a number"))?;
                r.from = Some(n.max(1));
            }
            "study" => r.filter.studies.push(v.clone()),
            "modality" => r.filter.modalities.push(v.clone()),
            "label" => r.filter.labels.push(v.clone()),
            "only_critical" => {
                r.filter.only_critical = match v.as_str() {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("only_critical={v:?} is not true/false")),
                }
            }
            _ => return Err(format!("unknown parameter {k:?}")),
        }
    }
    if let Some(id) = last_event_id.map(str::trim).filter(|s| !s.is_empty()) {
        let n: u64 = id
            .parse()
            .map_err(|_| format!("Last-Event-ID {id:?} is not a number"))?;
        r.from = Some(n.saturating_add(1));
    }
    Ok(r)
}

async fn events(
    State(Web { hub, shutdown }): State<Web>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let request = match events_request(&pairs, last_event_id) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let subscription = hub.subscribe(request.filter.into(), request.from);
    Sse::new(sse_stream(subscription, shutdown))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// The subscription as SSE events: each log event as a default (`message`) event with `id:` = its
/// sequence; `caught_up` once the replay is delivered (also with an `id:`, so a reconnect after it
/// resumes there); `missed` with the dropped range. A log error ends the stream: the browser reconnects
/// with `Last-Event-ID` and the replay fills in from the log. So does the start of the drain.
fn sse_stream(
    subscription: Subscription,
    shutdown: Shutdown,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(subscription, move |mut subscription| {
        let shutdown = shutdown.clone();
        async move {
            let next = tokio::select! {
                next = subscription.next() => next?,
                () = shutdown.draining() => return None,
            };
            let item = match next {
                Ok(watched) => watched,
                Err(e) => {
                    tracing::warn!(error = %e, "web view: event stream ended by a log error");
                    return None;
                }
            };
            let event = match item {
                Watched::Event(e) => Event::default()
                    .id(e.sequence.to_string())
                    .data(event_json(&e).to_string()),
                Watched::CaughtUp(sequence) => Event::default()
                    .event("caught_up")
                    .id(sequence.to_string())
                    .retry(RETRY)
                    .data(json!({ "sequence": sequence }).to_string()),
                Watched::Missed { count, first, last } => Event::default().event("missed").data(
                    json!({ "count": count, "first_sequence": first, "last_sequence": last })
                        .to_string(),
                ),
            };
            Some((Ok(event), subscription))
        }
    })
}

fn study_row_json(r: &StudyRow) -> Value {
    json!({
        "study_instance_uid": r.study_instance_uid,
        "modality": r.modality,
        "first_unix_us": r.first_unix_us,
        "last_unix_us": r.last_unix_us,
        "complete": r.complete,
        "revision": r.revision,
        "last_sequence": r.last_sequence,
        "events": r.events,
        "slices_scored": r.slices_scored,
        "instances": r.instances,
        "critical": r.critical,
        "summary": r.summary.as_ref().map(crate::results::json::summary),
    })
}

/// One log entry as JSON (see [`crate::results::json`]: proto field names, the `event` oneof under the
/// key of its member plus a `type` tag, enums by name, absent optional fields as `null`): the same
/// rendering `watch --json` prints.
pub fn event_json(e: &pb::StudyEvent) -> Value {
    crate::results::json::study_event_json(e)
}

#[cfg(test)]
mod tests;
