//! Bearer tokens with roles.
//!
//! The tokens file holds one line per token, `role[,role] name sha256hex` (`#` starts a comment):
//! the service never sees a token at rest, only its SHA-256, so the file may be read by whoever deploys
//! it without handing out tokens. `name` is who the audit log records. The file is re-read when it
//! changes ([`super::reload`]); a broken file keeps the tokens in use.
//!
//! A request with no token, or one not in the file, is refused UNAUTHENTICATED (HTTP 401); a known
//! token without the role the service needs is refused PERMISSION_DENIED (HTTP 403). Roles are
//! independent (admin does not imply push): a token that needs several lists them.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use http_body::Frame;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::{
    audit::{Audit, Subject},
    reload::Reloading,
    AuthConfig, SecurityError,
};
use crate::proto::v1 as pb;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Stream studies in (`radstream.v1.Analysis`).
    Push,
    /// Follow studies (`radstream.v1.Studies`, the web view's data).
    Watch,
    /// Change the serving models (`radstream.v1.Models`).
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Push => "push",
            Role::Watch => "watch",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "push" => Some(Role::Push),
            "watch" => Some(Role::Watch),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The role a gRPC method needs; `None`: open to all (health, reflection, unknown paths, which
    /// answer UNIMPLEMENTED anyway).
    pub fn for_grpc_path(path: &str) -> Option<Self> {
        let service = path.trim_start_matches('/').split('/').next()?;
        match service {
            "radstream.v1.Analysis" => Some(Role::Push),
            "radstream.v1.Studies" => Some(Role::Watch),
            "radstream.v1.Models" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The hex SHA-256 of a token, as the tokens file holds it (surrounding whitespace is not part of it).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

#[derive(Debug)]
struct Holder {
    name: String,
    roles: Vec<Role>,
}

/// The parsed tokens file.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Holder>,
}

impl Tokens {
    /// Parses the file's text; an error names the line (never a hash).
    pub fn parse(path: &Path, text: &str) -> Result<Self, SecurityError> {
        let mut by_hash = HashMap::new();
        let mut names = HashSet::new();
        for (i, raw) in text.lines().enumerate() {
            let bad = |detail: &str| SecurityError::Tokens {
                path: path.to_path_buf(),
                line: i + 1,
                detail: detail.to_string(),
            };
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [roles, name, hash] = fields[..] else {
                return Err(bad("expected `role[,role] name sha256hex`"));
            };
            let roles = roles
                .split(',')
                .map(|r| Role::parse(r.trim()))
                .collect::<Option<Vec<Role>>>()
                .ok_or_else(|| bad("roles are push, watch and admin, separated by commas"))?;
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hash, &mut digest)
                .map_err(|_| bad("the hash must be 64 hex digits (`radstream token hash`)"))?;
            if !names.insert(name.to_string()) {
                return Err(bad("this name is already used by another token"));
            }
            let holder = Holder {
                name: name.to_string(),
                roles,
            };
            if by_hash.insert(digest, holder).is_some() {
                return Err(bad("the same token hash appears twice"));
            }
        }
        Ok(Self { by_hash })
    }

    fn read(path: &Path) -> Result<Self, SecurityError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecurityError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// Who made a request (after the gate admitted it): put in the request's extensions, so a service
/// can record what it did for whom.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name; `anonymous` when no tokens are configured.
    pub who: String,
    /// The role the request needed.
    pub role: Option<Role>,
    pub peer: Option<SocketAddr>,
    audit: Audit,
}

impl Caller {
    /// The caller the gate put in `request` (none when the service runs without the gate, in tests).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Self> {
        request.extensions().get::<Caller>().cloned()
    }

    /// Appends an audit line for this caller.
    pub fn audit(&self, action: &str, subject: Subject<'_>) {
        self.audit
            .record(&self.who, self.role, action, subject, self.peer);
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one the file does not hold.
    Unauthenticated(String),
    /// A known token without the role.
    PermissionDenied(String),
}

impl Refusal {
    pub fn into_status(self) -> tonic::Status {
        match self {
            Refusal::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            Refusal::PermissionDenied(m) => tonic::Status::permission_denied(m),
        }
    }
}

/// Admits requests: the tokens (reloaded) and the audit log they are recorded in.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    tokens: Option<Reloading<Tokens>>,
    audit: Audit,
}

impl Gate {
    /// Loads `[auth] tokens_file` (an error stops the start) and watches it.
    pub fn start(config: &AuthConfig, audit: Audit) -> Result<Self, SecurityError> {
        let tokens = match &config.tokens_file {
            Some(path) => {
                let p = path.clone();
                let tokens = Reloading::start(
                    "tokens file",
                    vec![path.clone()],
                    std::time::Duration::from_secs_f64(config.reload_secs),
                    move || Tokens::read(&p),
                )?;
                if tokens.current().is_empty() {
                    tracing::warn!(path = %path.display(), "the tokens file holds no token: every request needing a role is refused");
                }
                Some(tokens)
            }
            None => None,
        };
        Ok(Self { tokens, audit })
    }

    /// Whether tokens are asked for.
    pub fn requires_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Admits `token` (the bearer value, if any) for `role`.
    pub fn admit(
        &self,
        token: Option<&str>,
        role: Role,
        peer: Option<SocketAddr>,
    ) -> Result<Caller, Refusal> {
        let caller = |who: &str| Caller {
            who: who.to_string(),
            role: Some(role),
            peer,
            audit: self.audit.clone(),
        };
        let Some(tokens) = &self.tokens else {
            return Ok(caller("anonymous"));
        };
        let Some(token) = token.filter(|t| !t.trim().is_empty()) else {
            return Err(Refusal::Unauthenticated(
                "a bearer token is required (--token, RADSTREAM_TOKEN or --token-file)".into(),
            ));
        };
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        let tokens = tokens.current();
        let Some(holder) = tokens.by_hash.get(&digest) else {
            return Err(Refusal::Unauthenticated("unknown token".into()));
        };
        if !holder.roles.contains(&role) {
            return Err(Refusal::PermissionDenied(format!(
                "the token of {} lacks the {} role",
                holder.name,
                role.as_str()
            )));
        }
        Ok(caller(&holder.name))
    }
}

/// The token of `Authorization: Bearer <token>`, if the header has that form.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The peer of a gRPC request, plain or TLS.
fn grpc_peer(extensions: &http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

/// The gate in front of every gRPC service (`Server::builder().layer(..)`).
#[derive(Debug, Clone)]
pub struct GrpcAuthLayer {
    gate: Gate,
}

impl GrpcAuthLayer {
    pub fn new(gate: Gate) -> Self {
        Self { gate }
    }
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcAuth {
            inner,
            gate: self.gate.clone(),
        }
    }
}

/// See [`GrpcAuthLayer`].
#[derive(Debug, Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    gate: Gate,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for GrpcAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is not ready; the one polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(role) = Role::for_grpc_path(request.uri().path()) else {
            return Box::pin(inner.call(request));
        };
        let peer = grpc_peer(request.extensions());
        let caller = match self.gate.admit(bearer(request.headers()), role, peer) {
            Ok(c) => c,
            Err(refusal) => {
                tracing::info!(peer = ?peer, role = role.as_str(), "gRPC request refused: {refusal:?}");
                let response = refusal.into_status().into_http();
                return Box::pin(async move { Ok(response) });
            }
        };
        request.extensions_mut().insert(caller.clone());
        if role != Role::Push || !caller.audit.is_on() {
            return Box::pin(inner.call(request));
        }
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(response.map(|body| tonic::body::Body::new(PushAudit::new(body, caller))))
        })
    }
}

/// Records "who pushed which study" from the `Analyze` responses going out: the first
/// `InstanceAccepted` of each study on the stream. Reading the responses (small messages) keeps the
/// check out of the ingest path, where the requests are whole DICOM instances.
struct PushAudit {
    body: tonic::body::Body,
    caller: Caller,
    pending: BytesMut,
    seen: HashSet<String>,
}

impl PushAudit {
    fn new(body: tonic::body::Body, caller: Caller) -> Self {
        Self {
            body,
            caller,
            pending: BytesMut::new(),
            seen: HashSet::new(),
        }
    }

    /// Reads every complete gRPC message in `pending` (1 byte compressed flag, 4 bytes length, the
    /// message); the service does not compress responses, a compressed one is skipped.
    fn scan(&mut self, data: &Bytes) {
        self.pending.extend_from_slice(data);
        while self.pending.len() >= 5 {
            let compressed = self.pending[0] != 0;
            let len = u32::from_be_bytes([
                self.pending[1],
                self.pending[2],
                self.pending[3],
                self.pending[4],
            ]) as usize;
            if self.pending.len() < 5 + len {
                return;
            }
            self.pending.advance(5);
            let message = self.pending.split_to(len);
            if compressed {
                continue;
            }
            let Ok(response) = pb::AnalyzeResponse::decode(&message[..]) else {
                continue;
            };
            if let Some(pb::analyze_response::Event::Accepted(a)) = response.event {
                if let Some(uid) = a.slice.map(|s| s.study_instance_uid) {
                    if !uid.is_empty() && !self.seen.contains(&uid) {
                        self.caller.audit("push", Subject::Study(&uid));
                        self.seen.insert(uid);
                    }
                }
            }
        }
    }
}

impl http_body::Body for PushAudit {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.scan(data);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        let text = format!(
            "# comment\n\npush,watch pacs-1 {}\nadmin alice {}  # trailing\n",
            hash_token("t-pacs"),
            hash_token("t-alice")
        );
        Tokens::parse(Path::new("tokens"), &text).expect("parse")
    }

    #[test]
    fn roles_map_to_services() {
        assert_eq!(
            Role::for_grpc_path("/radstream.v1.Analysis/Analyze"),
            Some(Role::Push)
        );
        assert_eq!(
            Role::for_grpc_path("/radstream.v1.Studies/Watch"),
            Some(Role::Watch)
        );
        assert_eq!(
            Role::for_grpc_path("/radstream.v1.Models/Activate"),
            Some(Role::Admin)
        );
        assert_eq!(Role::for_grpc_path("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            Role::for_grpc_path("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
    }

    #[test]
    fn the_gate_tells_unknown_from_unauthorised() {
        let gate = Gate {
            tokens: Some(
                Reloading::start("t", vec![], std::time::Duration::from_secs(1), || {
                    Ok(tokens())
                })
                .expect("start"),
            ),
            audit: Audit::off(),
        };
        let c = gate.admit(Some("t-pacs"), Role::Push, None).expect("push");
        assert_eq!(c.who, "pacs-1");
        assert!(gate.admit(Some(" t-pacs\n"), Role::Watch, None).is_ok());
        assert!(matches!(
            gate.admit(Some("t-pacs"), Role::Admin, None),
            Err(Refusal::PermissionDenied(_))
        ));
        assert!(matches!(
            gate.admit(Some("t-alice"), Role::Push, None),
            Err(Refusal::PermissionDenied(_))
        ));
        assert!(matches!(
            gate.admit(Some("nope"), Role::Push, None),
            Err(Refusal::Unauthenticated(_))
        ));
        assert!(matches!(
            gate.admit(None, Role::Watch, None),
            Err(Refusal::Unauthenticated(_))
        ));
        assert_eq!(
            Gate::default()
                .admit(None, Role::Admin, None)
                .expect("no tokens configured")
                .who,
            "anonymous"
        );
    }

    #[test]
    fn a_broken_tokens_file_names_the_line() {
        let h = hash_token("x");
        for (text, line) in [
            (format!("push a {h}\nsuperuser b {h}\n"), 2),
            ("push a 1234\n".to_string(), 1),
            (format!("push a\n{h}"), 1),
            (format!("push a {h}\nwatch b {h}\n"), 2),
            (format!("push a {h}\nwatch a {}\n", hash_token("y")), 2),
        ] {
            match Tokens::parse(Path::new("f"), &text) {
                Err(SecurityError::Tokens { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn bearer_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer abc".parse().expect("v"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            http::header::AUTHORIZATION,
            "bearer  abc ".parse().expect("v"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().expect("v"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn hashes_match_sha256sum() {
        // printf 'secret' | sha256sum
        assert_eq!(
            hash_token("secret\n"),
            "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
        );
    }
}
