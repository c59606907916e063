//! The gate in front of the web view: the page and its assets are public (they hold no data), every
//! `/api/` route needs the watch role. The token comes in `Authorization: Bearer <token>`, or, for
//! what a browser cannot give a header to (`EventSource`, `<img>`), as `?token=<token>` in the URL;
//! the page passes on the `token` of its own address. No cookie is ever set, so no other site's page
//! can make the browser send the token along (no CSRF).

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{header, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Router,
};

use super::{
    audit::Subject,
    auth::{bearer, Refusal},
    Gate, Role,
};

/// The peer of an HTTP connection, plain or TLS (`ConnectInfo<PeerAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, super::tls::HttpListener>,
    > for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, super::tls::HttpListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// `router` with every `/api/` route behind `gate` (watch role).
pub fn guard(router: Router, gate: Gate) -> Router {
    router.layer(axum::middleware::from_fn_with_state(gate, check))
}

/// The `token` parameter of a query string, percent-decoded (the page encodes it).
fn query_token(query: Option<&str>) -> Option<String> {
    let raw = query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

async fn check(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    if !path.starts_with("/api/") {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<PeerAddr>>()
        .map(|c| c.0 .0);
    let token = bearer(request.headers())
        .map(str::to_string)
        .or_else(|| query_token(request.uri().query()));
    let caller = match gate.admit(token.as_deref(), Role::Watch, peer) {
        Ok(c) => c,
        Err(Refusal::Unauthenticated(m)) => {
            let mut r = (StatusCode::UNAUTHORIZED, m).into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        Err(Refusal::PermissionDenied(m)) => return (StatusCode::FORBIDDEN, m).into_response(),
    };
    // Who looked at which study: the study pages and the live stream (every study).
    let mut parts = path.trim_start_matches("/api/").split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("studies"), Some(uid), None) if !uid.is_empty() => {
            caller.audit("view", Subject::Study(uid));
        }
        (Some("events"), None, None) => caller.audit("watch", Subject::Studies(&[])),
        _ => {}
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_parameter_is_found_among_others() {
        assert_eq!(
            query_token(Some("from=3&token=abc")).as_deref(),
            Some("abc")
        );
        assert_eq!(query_token(Some("token=a%2Fb%3D")).as_deref(), Some("a/b="));
        assert_eq!(query_token(Some("token=a%2")), None);
        assert_eq!(query_token(Some("xtoken=abc")), None);
        assert_eq!(query_token(None), None);
    }
}
