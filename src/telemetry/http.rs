//! What monitoring reads over the `--http` listener, beside the web view: `/metrics` (Prometheus, the
//! OpenMetrics text format), `/readyz` (may a load balancer send work here?) and `/healthz` (is the
//! process answering at all?).
//!
//! Readiness tells the same truth as gRPC health, from the same watch channel ([`Catalog::health`]):
//! 503 while the drain runs or while any active model version's engine is not serving — its worker has
//! stopped, a call hangs past the stall timeout, or every recent slice failed — and 200 again when it
//! recovers. The body names why, per model version, so an operator need not read the logs to learn which
//! model is down. Liveness is only "the HTTP server answers": restarting a process because a model fails
//! would not mend the model, and would drop every stream the other models still serve.

use axum::{
    extract::State,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::json;
use tokio::sync::watch;

use crate::{catalog::Catalog, pipeline::EngineHealth, shutdown::Shutdown};

#[derive(Clone)]
struct Monitor {
    catalog: Catalog,
    health: watch::Receiver<EngineHealth>,
    shutdown: Shutdown,
}

/// `/metrics`, `/readyz` and `/healthz` (see the module docs).
pub fn router(catalog: Catalog, shutdown: Shutdown) -> Router {
    let health = catalog.health();
    Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .route("/healthz", get(healthz))
        .with_state(Monitor {
            catalog,
            health,
            shutdown,
        })
}

async fn metrics() -> Response {
    let body = tokio::task::spawn_blocking(super::events::render)
        .await
        .unwrap_or_default();
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(super::events::CONTENT_TYPE),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

async fn healthz() -> Response {
    Json(json!({ "status": "alive" })).into_response()
}

/// The health state's name in readiness answers.
pub fn health_name(h: EngineHealth) -> &'static str {
    match h {
        EngineHealth::Serving => "serving",
        EngineHealth::Failing => "failing",
        EngineHealth::Stalled => "stalled",
        EngineHealth::Stopped => "stopped",
    }
}

/// Why a model in state `h` cannot take work.
fn why(h: EngineHealth) -> &'static str {
    match h {
        EngineHealth::Serving => "serving",
        EngineHealth::Failing => "every recent slice failed",
        EngineHealth::Stalled => "a preprocess/model call has run past the stall timeout",
        EngineHealth::Stopped => "the scoring worker has stopped",
    }
}

async fn readyz(State(m): State<Monitor>) -> Response {
    let overall = *m.health.borrow();
    let models: Vec<_> = m
        .catalog
        .engine_health()
        .into_iter()
        .map(|(name, version, h)| {
            json!({ "name": name, "version": version, "health": health_name(h) })
        })
        .collect();
    let reason = if m.shutdown.is_draining() {
        Some("the server is draining".to_string())
    } else if overall != EngineHealth::Serving {
        let failing: Vec<String> = m
            .catalog
            .engine_health()
            .into_iter()
            .filter(|(_, _, h)| *h != EngineHealth::Serving)
            .map(|(name, version, h)| format!("{name} {version}: {}", why(h)))
            .collect();
        Some(if failing.is_empty() {
            // the catalog serves no version at all
            format!("no model version can score ({})", why(overall))
        } else {
            failing.join("; ")
        })
    } else {
        None
    };
    match reason {
        None => Json(json!({ "status": "ready", "models": models })).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not_ready",
                "health": health_name(overall),
                "reason": reason,
                "models": models,
            })),
        )
            .into_response(),
    }
}
