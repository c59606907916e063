//! The critical-finding webhook: every `CriticalFinding` the service logs is POSTed, as JSON, to one
//! configured HTTP endpoint (`[webhook] url`) — the "early warning" a radiology desk or paging system can
//! act on before the study is complete.
//!
//! Why it is built this way:
//! - **A subscriber of the hub, reading from the log.** The deliverer follows the hub like any viewer,
//!   with `only_critical`, from its own durable cursor. The hub never waits for a subscriber, so a
//!   receiver that is down or slow delays only its own alerts, never ingest or scoring; when the
//!   deliverer falls behind (`Missed`) it re-reads from the log, and after a restart it continues where
//!   it stopped. Alerts therefore arrive **at least once, in log order**.
//! - **A delivery log of its own** (`DATA_DIR/webhook.db`, SQLite): every attempt (sequence, study,
//!   label, revision, attempt, time, outcome) and the cursor (the last sequence finished: delivered or
//!   given up). It is separate from the event log so the event log stays the service's record of what
//!   it found, written by one writer, and the webhook's bookkeeping can be deleted to start afresh.
//!   The first start with a webhook (no cursor yet) starts at the end of the event log: enabling the
//!   webhook does not replay the history of alerts nobody asked to receive.
//! - **Idempotency.** At-least-once means a receiver may see an alert twice (the service stopped after
//!   the receiver answered and before the cursor was written). Each POST carries
//!   `Idempotency-Key: <study uid>/<label>/<revision>`, the same on every retry and after a restart.
//! - **Retries, bounded.** A connection error, a timeout or a non-2xx answer is retried after an
//!   exponential backoff (`initial_backoff_ms` doubling up to `max_backoff_ms`, jittered to half–full so
//!   several services do not retry in step) up to `max_attempts` per run; then the alert is recorded as
//!   given up and the next one is sent. A restart gives a pending alert a fresh budget (attempt numbers
//!   continue). Redirects are not followed: a 3xx is a failed attempt (the body must not follow a
//!   redirect to another host).
//! - **What is logged.** The endpoint only as scheme, host, port and path (userinfo and query may hold
//!   a token); an attempt's outcome as an HTTP status or the transport error without its URL, never the
//!   response body. The alert carries UIDs, scores and the model, no patient identifier.
//! - **Shutdown.** It delivers through the drain (findings of slices finished during the drain still
//!   alert), ends once the drain has begun and it has nothing left to send, and at once on abort (an
//!   interrupted delivery is repeated at the next start).

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use reqwest::{header, redirect, Url};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::hub::{Hub, WatchFilter, Watched};
use crate::{proto::v1 as pb, shutdown::Shutdown, telemetry::events};

/// File name of the delivery log inside the data directory.
pub const DB_FILE: &str = "webhook.db";

/// `[webhook]`: where critical findings are POSTed and how hard to try.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://host[:port]/path`; unset: no webhook. Userinfo and query are sent but never logged.
    pub url: Option<String>,
    /// Per attempt: connecting, sending and receiving the answer's head.
    pub timeout_secs: f64,
    /// Attempts per alert (per run of the service) before it is recorded as given up.
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubles per attempt (jittered to 50–100 %).
    pub initial_backoff_ms: u64,
    /// Upper bound of the wait between attempts.
    pub max_backoff_ms: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: None,
            timeout_secs: 5.0,
            max_attempts: 8,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL is not a usable `http://` URL (the URL itself is not echoed: it may hold a token).
    #[error("[webhook] url: {0}")]
    InvalidUrl(String),
    #[error("[webhook] {0}")]
    InvalidConfig(String),
    #[error("webhook HTTP client: {0}")]
    Client(String),
    #[error("webhook delivery log {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("webhook: reading the event log: {0}")]
    Log(#[from] super::log::LogError),
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The receiver answered 2xx.
    Delivered { status: u16 },
    /// The receiver answered with another status (the body is not read).
    HttpStatus { status: u16 },
    /// No answer: connection refused or closed, timeout, … (without the URL).
    Error { message: String },
}

/// One row of the delivery log: one attempt to deliver one alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryRecord {
    /// The alert's sequence in the event log.
    pub sequence: u64,
    pub study_instance_uid: String,
    pub label: String,
    pub revision: u32,
    /// 1 for the first attempt; continues across restarts.
    pub attempt: u32,
    /// When the attempt ended (microseconds since the Unix epoch).
    pub unix_us: i64,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// This failed attempt was the last: the alert was given up.
    pub gave_up: bool,
}

/// Every attempt in the delivery log of `data_dir`, in the order they were made (empty when there is
/// no delivery log).
pub fn deliveries(data_dir: &Path) -> Result<Vec<DeliveryRecord>, WebhookError> {
    let path = data_dir.join(DB_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let store_err = |source| WebhookError::Store {
        path: path.clone(),
        source,
    };
    let conn =
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(store_err)?;
    let mut stmt = conn
        .prepare(
            "SELECT sequence, study_instance_uid, label, revision, attempt, unix_us, outcome, \
             http_status, error, gave_up FROM attempts ORDER BY id",
        )
        .map_err(store_err)?;
    let rows = stmt
        .query_map([], |r| {
            let kind: String = r.get(6)?;
            let status: Option<u16> = r.get(7)?;
            let message: Option<String> = r.get(8)?;
            let outcome = match (kind.as_str(), status) {
                ("delivered", Some(status)) => Outcome::Delivered { status },
                ("http_status", Some(status)) => Outcome::HttpStatus { status },
                _ => Outcome::Error {
                    message: message.unwrap_or_default(),
                },
            };
            Ok(DeliveryRecord {
                sequence: r.get(0)?,
                study_instance_uid: r.get(1)?,
                label: r.get(2)?,
                revision: r.get(3)?,
                attempt: r.get(4)?,
                unix_us: r.get(5)?,
                outcome,
                gave_up: r.get(9)?,
            })
        })
        .map_err(store_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(store_err)
}

/// The delivery log's cursor: the last event-log sequence finished (0: none; `None`: no delivery log).
pub fn cursor(data_dir: &Path) -> Result<Option<u64>, WebhookError> {
    let path = data_dir.join(DB_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let store_err = |source| WebhookError::Store {
        path: path.clone(),
        source,
    };
    let conn =
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(store_err)?;
    conn.query_row("SELECT last_finished FROM cursor WHERE id = 1", [], |r| {
        r.get(0)
    })
    .optional()
    .map_err(store_err)
}

/// Starts the deliverer when `config.url` is set (`Ok(None)` otherwise). Checks the configuration and
/// opens `data_dir/webhook.db` before returning, so a bad URL or an unwritable data directory fails the
/// start-up instead of silently dropping alerts.
pub fn spawn(
    hub: Hub,
    config: WebhookConfig,
    data_dir: &Path,
    shutdown: Shutdown,
) -> Result<Option<JoinHandle<()>>, WebhookError> {
    let Some(raw_url) = config.url.as_deref() else {
        return Ok(None);
    };
    let url = parse_url(raw_url)?;
    let policy = RetryPolicy::from_config(&config)?;
    let client = reqwest::Client::builder()
        .timeout(policy.timeout)
        .redirect(redirect::Policy::none())
        .user_agent(concat!("radstream/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| WebhookError::Client(e.without_url().to_string()))?;
    let store = Store::open(&data_dir.join(DB_FILE))?;
    // The first start with a webhook begins at the end of the log (see the module docs); an event log
    // that was reset (shorter than the cursor) is followed from its end too.
    let last_logged = hub.log().last_sequence()?;
    let cursor = match store.cursor()? {
        Some(c) if c <= last_logged => c,
        Some(c) => {
            tracing::warn!(
                cursor = c,
                last_logged,
                "webhook: the event log is shorter than the delivery cursor (was it reset?); \
                 following it from its end"
            );
            store.set_cursor(last_logged)?;
            last_logged
        }
        None => {
            store.set_cursor(last_logged)?;
            last_logged
        }
    };
    let endpoint = redacted(&url);
    tracing::info!(%endpoint, cursor, "webhook: delivering critical findings");
    let deliverer = Deliverer {
        client,
        url,
        endpoint,
        policy,
        store: Arc::new(Mutex::new(store)),
        jitter: RandomState::new(),
    };
    Ok(Some(tokio::spawn(deliverer.run(hub, cursor, shutdown))))
}

fn parse_url(raw: &str) -> Result<Url, WebhookError> {
    let url = Url::parse(raw).map_err(|e| WebhookError::InvalidUrl(e.to_string()))?;
    if url.scheme() != "http" {
        return Err(WebhookError::InvalidUrl(format!(
            "scheme {:?} is not supported (plain http only)",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(WebhookError::InvalidUrl("no host".into()));
    }
    Ok(url)
}

/// The URL as it may be logged: scheme, host, port and path (no userinfo, no query, no fragment).
pub fn redacted(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
        None => format!("{}://{host}{}", url.scheme(), url.path()),
    }
}

/// `<study uid>/<label>/<revision>`, with bytes a header value cannot carry percent-encoded.
pub fn idempotency_key(c: &pb::CriticalFinding) -> String {
    let raw = format!("{}/{}/{}", c.study_instance_uid, c.label, c.revision);
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Serialize)]
struct SliceJson<'a> {
    study_instance_uid: &'a str,
    series_instance_uid: &'a str,
    sop_instance_uid: &'a str,
    frame: u32,
    instance_number: Option<i32>,
    slice_position_mm: Option<f64>,
    modality: &'a str,
}

#[derive(Serialize)]
struct ModelJson<'a> {
    name: &'a str,
    version: &'a str,
    onnx_sha256: &'a str,
}

#[derive(Serialize)]
struct PointJson {
    x_mm: f64,
    y_mm: f64,
    z_mm: f64,
}

#[derive(Serialize)]
struct LocationJson {
    row: f64,
    col: f64,
    patient: Option<PointJson>,
}

#[derive(Serialize)]
struct AlertJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence: u64,
    study_instance_uid: &'a str,
    label: &'a str,
    score: f32,
    critical_threshold: f32,
    revision: u32,
    slice: Option<SliceJson<'a>>,
    model: Option<ModelJson<'a>>,
    peak: Option<LocationJson>,
    slice_received_unix_us: i64,
    logged_unix_us: i64,
}

/// The JSON body POSTed for a logged critical finding; `None` for any other event.
pub fn alert_json(event: &pb::StudyEvent) -> Option<serde_json::Value> {
    let Some(pb::study_event::Event::Critical(c)) = &event.event else {
        return None;
    };
    serde_json::to_value(alert(event, c)).ok()
}

fn alert<'a>(event: &pb::StudyEvent, c: &'a pb::CriticalFinding) -> AlertJson<'a> {
    AlertJson {
        kind: "critical_finding",
        sequence: event.sequence,
        study_instance_uid: &c.study_instance_uid,
        label: &c.label,
        score: c.score,
        critical_threshold: c.critical_threshold,
        revision: c.revision,
        slice: c.slice.as_ref().map(|s| SliceJson {
            study_instance_uid: &s.study_instance_uid,
            series_instance_uid: &s.series_instance_uid,
            sop_instance_uid: &s.sop_instance_uid,
            frame: s.frame,
            instance_number: s.instance_number,
            slice_position_mm: s.slice_position_mm,
            modality: &s.modality,
        }),
        model: c.model.as_ref().map(|m| ModelJson {
            name: &m.name,
            version: &m.version,
            onnx_sha256: &m.onnx_sha256,
        }),
        peak: c.peak.as_ref().map(|p| LocationJson {
            row: p.row,
            col: p.col,
            patient: p.patient.as_ref().map(|q| PointJson {
                x_mm: q.x_mm,
                y_mm: q.y_mm,
                z_mm: q.z_mm,
            }),
        }),
        slice_received_unix_us: c.slice_received_unix_us,
        logged_unix_us: event.logged_unix_us,
    }
}

/// Timeout, attempts and backoff, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RetryPolicy {
    timeout: Duration,
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl RetryPolicy {
    fn from_config(c: &WebhookConfig) -> Result<Self, WebhookError> {
        if !(c.timeout_secs.is_finite() && c.timeout_secs > 0.0 && c.timeout_secs <= 3600.0) {
            return Err(WebhookError::InvalidConfig(format!(
                "timeout_secs = {} (must be > 0 and at most 3600)",
                c.timeout_secs
            )));
        }
        if c.max_attempts == 0 {
            return Err(WebhookError::InvalidConfig(
                "max_attempts = 0 (must be at least 1)".into(),
            ));
        }
        if c.initial_backoff_ms > c.max_backoff_ms {
            return Err(WebhookError::InvalidConfig(format!(
                "initial_backoff_ms = {} is more than max_backoff_ms = {}",
                c.initial_backoff_ms, c.max_backoff_ms
            )));
        }
        Ok(Self {
            timeout: Duration::from_secs_f64(c.timeout_secs),
            max_attempts: c.max_attempts,
            initial_backoff: Duration::from_millis(c.initial_backoff_ms),
            max_backoff: Duration::from_millis(c.max_backoff_ms),
        })
    }

    /// The un-jittered wait after failed attempt `n` (1-based): initial · 2^(n−1), at most max.
    fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .map_or(self.max_backoff, |d| d.min(self.max_backoff))
    }

    /// `backoff(n)` scaled by a fraction in [0.5, 1.0] drawn from `random`.
    fn jittered(&self, n: u32, random: u64) -> Duration {
        let fraction = 0.5 + 0.5 * (random >> 11) as f64 / (1u64 << 53) as f64;
        self.backoff(n).mul_f64(fraction)
    }
}

/// The delivery log (see the module docs). Calls are short SQLite writes, made off the async threads.
struct Store {
    conn: Connection,
    path: PathBuf,
}

/// One finished attempt to write.
struct AttemptRow<'a> {
    sequence: u64,
    critical: &'a pb::CriticalFinding,
    attempt: u32,
    outcome: &'a Outcome,
    gave_up: bool,
    /// Also move the cursor to `sequence` (the alert is finished), in the same transaction.
    finished: bool,
}

impl Store {
    fn open(path: &Path) -> Result<Self, WebhookError> {
        let store_err = |source| WebhookError::Store {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| WebhookError::DataDir {
                path: dir.to_path_buf(),
                source: e,
            })?;
        }
        let conn = Connection::open(path).map_err(store_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(store_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS attempts (
                 id INTEGER PRIMARY KEY,
                 sequence INTEGER NOT NULL,
                 study_instance_uid TEXT NOT NULL,
                 label TEXT NOT NULL,
                 revision INTEGER NOT NULL,
                 attempt INTEGER NOT NULL,
                 unix_us INTEGER NOT NULL,
                 outcome TEXT NOT NULL CHECK (outcome IN ('delivered', 'http_status', 'error')),
                 http_status INTEGER,
                 error TEXT,
                 gave_up INTEGER NOT NULL DEFAULT 0
             );
             CREATE INDEX IF NOT EXISTS attempts_by_sequence ON attempts (sequence);
             CREATE TABLE IF NOT EXISTS cursor (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 last_finished INTEGER NOT NULL
             );",
        )
        .map_err(store_err)?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, source: rusqlite::Error) -> WebhookError {
        WebhookError::Store {
            path: self.path.clone(),
            source,
        }
    }

    fn cursor(&self) -> Result<Option<u64>, WebhookError> {
        self.conn
            .query_row("SELECT last_finished FROM cursor WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    fn set_cursor(&self, sequence: u64) -> Result<(), WebhookError> {
        self.conn
            .execute(
                "INSERT INTO cursor (id, last_finished) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET last_finished = excluded.last_finished",
                params![sequence],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// The highest attempt number recorded for `sequence` (0: none), so numbers continue after a restart.
    fn attempts_made(&self, sequence: u64) -> Result<u32, WebhookError> {
        self.conn
            .query_row(
                "SELECT COALESCE(MAX(attempt), 0) FROM attempts WHERE sequence = ?1",
                params![sequence],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    fn record(&mut self, row: &AttemptRow<'_>) -> Result<(), WebhookError> {
        let (kind, status, message) = match row.outcome {
            Outcome::Delivered { status } => ("delivered", Some(*status), None),
            Outcome::HttpStatus { status } => ("http_status", Some(*status), None),
            Outcome::Error { message } => ("error", None, Some(message.as_str())),
        };
        let tx = self.conn.transaction().map_err(|e| WebhookError::Store {
            path: self.path.clone(),
            source: e,
        })?;
        tx.execute(
            "INSERT INTO attempts (sequence, study_instance_uid, label, revision, attempt, unix_us, \
             outcome, http_status, error, gave_up) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                row.sequence,
                row.critical.study_instance_uid,
                row.critical.label,
                row.critical.revision,
                row.attempt,
                now_unix_us(),
                kind,
                status,
                message,
                row.gave_up,
            ],
        )
        .and_then(|_| {
            if row.finished {
                tx.execute(
                    "INSERT INTO cursor (id, last_finished) VALUES (1, ?1)
                     ON CONFLICT (id) DO UPDATE SET last_finished = MAX(last_finished, excluded.last_finished)",
                    params![row.sequence],
                )
                .map(drop)
            } else {
                Ok(())
            }
        })
        .and_then(|()| tx.commit())
        .map_err(|e| WebhookError::Store {
            path: self.path.clone(),
            source: e,
        })
    }
}

fn now_unix_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Why a delivery or a wait stopped early.
struct Aborted;

struct Deliverer {
    client: reqwest::Client,
    url: Url,
    /// `redacted(url)`, for logs.
    endpoint: String,
    policy: RetryPolicy,
    store: Arc<Mutex<Store>>,
    jitter: RandomState,
}

impl Deliverer {
    async fn run(self, hub: Hub, mut cursor: u64, shutdown: Shutdown) {
        let filter = WatchFilter {
            only_critical: true,
            ..WatchFilter::default()
        };
        let mut from = cursor + 1;
        let mut log_failures = 0u32;
        'subscribe: loop {
            let mut subscription = hub.subscribe(filter.clone(), Some(from));
            let mut caught_up = false;
            loop {
                let item = tokio::select! {
                    biased;
                    () = shutdown.aborted() => return,
                    item = subscription.next() => item,
                    // Draining and nothing left to send: done (what is logged later alerts at the next start).
                    () = shutdown.draining(), if caught_up => return,
                };
                match item {
                    None => {
                        tracing::debug!("webhook: the hub is gone; stopping");
                        return;
                    }
                    Some(Err(e)) => {
                        log_failures += 1;
                        let wait = self.policy.jittered(log_failures, self.random(cursor));
                        tracing::warn!(
                            error = %e,
                            retry_in_ms = wait.as_millis() as u64,
                            "webhook: reading the event log failed"
                        );
                        if self.sleep(wait, &shutdown).await.is_err() {
                            return;
                        }
                        from = cursor + 1;
                        continue 'subscribe;
                    }
                    Some(Ok(Watched::CaughtUp(sequence))) => {
                        log_failures = 0;
                        caught_up = true;
                        // Every alert up to `sequence` is finished: later starts need not re-read them.
                        if sequence > cursor {
                            cursor = sequence;
                            self.write(move |s| s.set_cursor(sequence)).await;
                        }
                    }
                    Some(Ok(Watched::Missed { count, first, last })) => {
                        tracing::warn!(
                            count,
                            first,
                            last,
                            endpoint = %self.endpoint,
                            "webhook: fell behind the live events; re-reading them from the log"
                        );
                        from = first.max(cursor + 1);
                        continue 'subscribe;
                    }
                    Some(Ok(Watched::Event(event))) => {
                        // Sequence 0: the log could not keep it and the hub delivered it live only;
                        // it is sent all the same (once, from this subscription).
                        if event.sequence != 0 && event.sequence <= cursor {
                            continue;
                        }
                        let Some(pb::study_event::Event::Critical(critical)) = &event.event else {
                            continue;
                        };
                        if self.deliver(&event, critical, &shutdown).await.is_err() {
                            return;
                        }
                        cursor = cursor.max(event.sequence);
                    }
                }
            }
        }
    }

    /// All attempts for one alert; `Err` only when shutdown aborted it (it stays pending).
    async fn deliver(
        &self,
        event: &pb::StudyEvent,
        critical: &pb::CriticalFinding,
        shutdown: &Shutdown,
    ) -> Result<(), Aborted> {
        let body = match serde_json::to_vec(&alert(event, critical)) {
            Ok(body) => body,
            Err(e) => {
                // Not expected (plain data); recorded as given up rather than blocking the queue.
                let outcome = Outcome::Error {
                    message: format!("encoding the alert: {e}"),
                };
                self.record_attempt(event.sequence, critical, 1, outcome, true)
                    .await;
                return Ok(());
            }
        };
        let key = idempotency_key(critical);
        let sequence = event.sequence;
        let before = if sequence == 0 {
            0
        } else {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || match store.lock() {
                Ok(s) => s.attempts_made(sequence).ok(),
                Err(_) => None,
            })
            .await
            .ok()
            .flatten()
            .unwrap_or(0)
        };
        for n in 1..=self.policy.max_attempts {
            let attempt = before.saturating_add(n);
            let outcome = tokio::select! {
                biased;
                () = shutdown.aborted() => return Err(Aborted),
                outcome = self.post(&body, &key) => outcome,
            };
            let last = n == self.policy.max_attempts;
            match &outcome {
                Outcome::Delivered { status } => {
                    events::WebhookDelivered {
                        sequence,
                        study_instance_uid: &critical.study_instance_uid,
                        label: &critical.label,
                        revision: critical.revision,
                        attempt,
                        status: *status,
                        endpoint: &self.endpoint,
                    }
                    .emit();
                    self.record_attempt(sequence, critical, attempt, outcome, false)
                        .await;
                    return Ok(());
                }
                Outcome::HttpStatus { status } => events::WebhookFailed {
                    sequence,
                    label: &critical.label,
                    revision: critical.revision,
                    attempt,
                    status: Some(*status),
                    error: None,
                    endpoint: &self.endpoint,
                }
                .emit(),
                Outcome::Error { message } => events::WebhookFailed {
                    sequence,
                    label: &critical.label,
                    revision: critical.revision,
                    attempt,
                    status: None,
                    error: Some(message),
                    endpoint: &self.endpoint,
                }
                .emit(),
            }
            self.record_attempt(sequence, critical, attempt, outcome, last)
                .await;
            if last {
                events::WebhookGaveUp {
                    sequence,
                    study_instance_uid: &critical.study_instance_uid,
                    label: &critical.label,
                    revision: critical.revision,
                    attempts: self.policy.max_attempts,
                    endpoint: &self.endpoint,
                }
                .emit();
                return Ok(());
            }
            let wait = self
                .policy
                .jittered(n, self.random(sequence ^ (u64::from(n) << 40)));
            self.sleep(wait, shutdown).await?;
        }
        Ok(())
    }

    async fn post(&self, body: &[u8], key: &str) -> Outcome {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        // Always a valid header value (see `idempotency_key`); skipped rather than failing if not.
        if let Ok(value) = header::HeaderValue::from_str(key) {
            request = request.header("Idempotency-Key", value);
        }
        match request.send().await {
            // The body is not read: it is the receiver's, may be large, and is never logged.
            Ok(response) if response.status().is_success() => Outcome::Delivered {
                status: response.status().as_u16(),
            },
            Ok(response) => Outcome::HttpStatus {
                status: response.status().as_u16(),
            },
            Err(e) => Outcome::Error {
                message: describe(&e),
            },
        }
    }

    async fn record_attempt(
        &self,
        sequence: u64,
        critical: &pb::CriticalFinding,
        attempt: u32,
        outcome: Outcome,
        gave_up: bool,
    ) {
        let finished = gave_up || matches!(outcome, Outcome::Delivered { .. });
        let critical = critical.clone();
        self.write(move |s| {
            s.record(&AttemptRow {
                sequence,
                critical: &critical,
                attempt,
                outcome: &outcome,
                gave_up,
                finished,
            })
        })
        .await;
    }

    /// Runs a delivery-log write on the blocking pool. A failed write is logged and otherwise ignored:
    /// the worst it costs is a repeated delivery after a restart, which at-least-once allows.
    async fn write(&self, f: impl FnOnce(&mut Store) -> Result<(), WebhookError> + Send + 'static) {
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || match store.lock() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "webhook: writing the delivery log failed"),
            Err(e) => tracing::warn!(error = %e, "webhook: the delivery-log write did not finish"),
        }
    }

    async fn sleep(&self, wait: Duration, shutdown: &Shutdown) -> Result<(), Aborted> {
        tokio::select! {
            biased;
            () = shutdown.aborted() => Err(Aborted),
            () = tokio::time::sleep(wait) => Ok(()),
        }
    }

    fn random(&self, salt: u64) -> u64 {
        let mut h = self.jitter.build_hasher();
        h.write_u64(salt);
        h.write_i64(now_unix_us());
        h.finish()
    }
}

/// A transport error as logged and stored: what failed and why, without the URL.
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut message = what.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn critical() -> pb::CriticalFinding {
        pb::CriticalFinding {
            study_instance_uid: "1.2.3".into(),
            label: "lesion".into(),
            score: 0.97,
            critical_threshold: 0.9,
            slice: Some(pb::SliceRef {
                study_instance_uid: "1.2.3".into(),
                series_instance_uid: "1.2.3.4".into(),
                sop_instance_uid: "1.2.3.4.5".into(),
                frame: 0,
                instance_number: Some(7),
                slice_position_mm: None,
                modality: "CT".into(),
            }),
            revision: 2,
            model: Some(pb::ModelRef {
                name: "lesion-demo".into(),
                version: "1".into(),
                onnx_sha256: "ab".into(),
            }),
            peak: None,
            slice_received_unix_us: 11,
        }
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let c: WebhookConfig = toml::from_str("url = \"http://h/x\"").expect("parses");
        assert_eq!(
            c,
            WebhookConfig {
                url: Some("http://h/x".into()),
                ..WebhookConfig::default()
            }
        );
        let d = WebhookConfig::default();
        assert_eq!(
            (
                d.url,
                d.timeout_secs,
                d.max_attempts,
                d.initial_backoff_ms,
                d.max_backoff_ms
            ),
            (None, 5.0, 8, 500, 30_000)
        );
        assert!(toml::from_str::<WebhookConfig>("retries = 3").is_err());
    }

    #[test]
    fn bad_configuration_is_refused() {
        for (c, what) in [
            (
                WebhookConfig {
                    max_attempts: 0,
                    ..Default::default()
                },
                "max_attempts",
            ),
            (
                WebhookConfig {
                    timeout_secs: f64::NAN,
                    ..Default::default()
                },
                "timeout_secs",
            ),
            (
                WebhookConfig {
                    initial_backoff_ms: 10,
                    max_backoff_ms: 5,
                    ..Default::default()
                },
                "initial_backoff_ms",
            ),
        ] {
            let e = RetryPolicy::from_config(&c).expect_err(what).to_string();
            assert!(e.contains(what), "{e}");
        }
        for bad in ["https://h/x", "ftp://h/x", "not a url", "http://"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        // The parse error never echoes the URL (it may carry a token).
        let e = parse_url("https://user:s3cret@h/x?token=s3cret").expect_err("https");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let p = RetryPolicy {
            timeout: Duration::from_secs(1),
            max_attempts: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        };
        let ms: Vec<u128> = (1..=9).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(
            ms,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(p.backoff(200), Duration::from_secs(30), "no overflow");
        assert_eq!(p.jittered(2, 0), Duration::from_millis(500));
        assert!(p.jittered(2, u64::MAX) <= Duration::from_millis(1000));
        assert!(p.jittered(2, u64::MAX) > Duration::from_millis(999));
    }

    #[test]
    fn logged_url_has_no_userinfo_or_query() {
        let url = parse_url("http://alice:s3cret@alerts.example:8080/hook/in?token=s3cret#f")
            .expect("valid");
        assert_eq!(redacted(&url), "http://alerts.example:8080/hook/in");
        let url = parse_url("http://[::1]/x").expect("valid");
        assert_eq!(redacted(&url), "http://[::1]/x");
    }

    #[test]
    fn idempotency_key_names_study_label_revision_as_a_header_value() {
        assert_eq!(idempotency_key(&critical()), "1.2.3/lesion/2");
        let mut c = critical();
        c.label = "mass effect%é".into();
        let key = idempotency_key(&c);
        assert_eq!(key, "1.2.3/mass%20effect%25%C3%A9/2");
        assert!(header::HeaderValue::from_str(&key).is_ok());
    }

    #[test]
    fn alert_body_carries_the_finding_and_its_log_position() {
        let event = pb::StudyEvent {
            sequence: 42,
            study_instance_uid: "1.2.3".into(),
            study_sequence: 5,
            logged_unix_us: 99,
            modality: "CT".into(),
            event: Some(pb::study_event::Event::Critical(critical())),
        };
        let v = alert_json(&event).expect("critical");
        assert_eq!(v["type"], "critical_finding");
        assert_eq!(v["sequence"], 42);
        assert_eq!(v["study_instance_uid"], "1.2.3");
        assert_eq!(v["label"], "lesion");
        assert_eq!(v["revision"], 2);
        assert!((v["score"].as_f64().expect("number") - 0.97).abs() < 1e-6);
        assert!((v["critical_threshold"].as_f64().expect("number") - 0.9).abs() < 1e-6);
        assert_eq!(v["slice"]["sop_instance_uid"], "1.2.3.4.5");
        assert_eq!(v["slice"]["instance_number"], 7);
        assert_eq!(v["model"]["name"], "lesion-demo");
        assert_eq!(v["logged_unix_us"], 99);
        assert!(v["peak"].is_null());
        let summary = pb::StudyEvent {
            event: Some(pb::study_event::Event::Summary(pb::StudySummary::default())),
            ..event
        };
        assert!(alert_json(&summary).is_none());
    }

    #[test]
    fn store_records_attempts_and_moves_the_cursor_only_when_finished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join(DB_FILE)).expect("open");
        assert_eq!(store.cursor().expect("cursor"), None);
        store.set_cursor(3).expect("set");
        let c = critical();
        let failed = Outcome::HttpStatus { status: 500 };
        let row = |attempt, outcome, finished| AttemptRow {
            sequence: 7,
            critical: &c,
            attempt,
            outcome,
            gave_up: false,
            finished,
        };
        store.record(&row(1, &failed, false)).expect("record");
        assert_eq!(store.cursor().expect("cursor"), Some(3));
        assert_eq!(store.attempts_made(7).expect("count"), 1);
        let ok = Outcome::Delivered { status: 204 };
        store.record(&row(2, &ok, true)).expect("record");
        assert_eq!(store.cursor().expect("cursor"), Some(7));
        drop(store);
        let rows = deliveries(dir.path()).expect("read");
        assert_eq!(
            rows.iter()
                .map(|r| (r.attempt, r.outcome.clone()))
                .collect::<Vec<_>>(),
            [(1, failed), (2, ok)]
        );
        assert_eq!(cursor(dir.path()).expect("cursor"), Some(7));
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(deliveries(empty.path()).expect("none").is_empty());
        assert_eq!(cursor(empty.path()).expect("none"), None);
    }
}
