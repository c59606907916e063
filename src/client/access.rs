//! How a client reaches a secured service: `https://` endpoints with the CA that signed the service's
//! certificate (and, for mutual TLS, the client's own certificate and key), and a bearer token sent
//! as `authorization: Bearer <token>` on every call.
//!
//! Why the token is added by a wrapper around the channel and not by an interceptor: the generated
//! clients stay `XClient<Authorized>` for every command, so `push`, `watch` and `models` share one
//! [`connect`].

use std::{
    path::{Path, PathBuf},
    task::{Context, Poll},
};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::error::{Error, Result};

/// Credentials for a service; all optional.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The bearer token (sent on every call).
    pub token: Option<String>,
    /// CA certificate (PEM) that signed the service's certificate; needed for `https://`.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Access {
    /// The token from, in order: `token` (a flag or `RADSTREAM_TOKEN`), else the first line of
    /// `token_file`. A file that cannot be read is an error (a typo must not silently send none).
    pub fn token_from(token: Option<String>, token_file: Option<&Path>) -> Result<Option<String>> {
        if let Some(t) = token.filter(|t| !t.trim().is_empty()) {
            return Ok(Some(t.trim().to_string()));
        }
        let Some(path) = token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| Error::Input {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(text
            .lines()
            .next()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string))
    }
}

/// An endpoint and the credentials to use there.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub endpoint: String,
    pub access: Access,
}

impl Target {
    pub fn new(endpoint: impl Into<String>, access: Access) -> Self {
        Self {
            endpoint: endpoint.into(),
            access,
        }
    }
}

impl From<&str> for Target {
    fn from(endpoint: &str) -> Self {
        Self::new(endpoint, Access::default())
    }
}

impl From<&String> for Target {
    fn from(endpoint: &String) -> Self {
        Self::new(endpoint.as_str(), Access::default())
    }
}

impl From<String> for Target {
    fn from(endpoint: String) -> Self {
        Self::new(endpoint, Access::default())
    }
}

impl From<&Target> for Target {
    fn from(target: &Target) -> Self {
        target.clone()
    }
}

/// A channel that adds the bearer token to every request.
#[derive(Debug, Clone)]
pub struct Authorized {
    channel: Channel,
    token: Option<http::HeaderValue>,
}

impl tower::Service<http::Request<tonic::body::Body>> for Authorized {
    type Response = <Channel as tower::Service<http::Request<tonic::body::Body>>>::Response;
    type Error = <Channel as tower::Service<http::Request<tonic::body::Body>>>::Error;
    type Future = <Channel as tower::Service<http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(token) = &self.token {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, token.clone());
        }
        self.channel.call(request)
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Input {
        path: path.to_path_buf(),
        source,
    })
}

/// `host:port` as a URL: `https://` when a CA is given (TLS is asked for), else `http://`; an endpoint
/// with a scheme is left as it is. PACS administrators write addresses without one.
fn with_scheme(endpoint: &str, access: &Access) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else if access.ca.is_some() {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

/// A channel to `target`; an unreachable one (or a refused handshake) is [`Error::Connect`] with a hint.
pub async fn connect(target: &Target) -> Result<Authorized> {
    let access = &target.access;
    let endpoint = &with_scheme(&target.endpoint, access);
    let connect_err = |detail: String| Error::Connect {
        endpoint: endpoint.to_string(),
        detail,
    };
    let mut builder = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| connect_err(e.to_string()))?;
    if endpoint.starts_with("https://") {
        let Some(ca) = &access.ca else {
            return Err(connect_err(
                "an https:// endpoint needs --ca (the CA certificate that signed the service's)"
                    .into(),
            ));
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        match (&access.cert, &access.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => return Err(connect_err("--cert and --key go together".into())),
        }
        builder = builder
            .tls_config(tls)
            .map_err(|e| connect_err(e.to_string()))?;
    } else if access.cert.is_some() || access.ca.is_some() {
        return Err(connect_err(
            "--ca/--cert/--key need an https:// endpoint".into(),
        ));
    }
    let token = match &access.token {
        Some(t) => Some(
            http::HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| connect_err("the token holds characters a header cannot".into()))?,
        ),
        None => None,
    };
    let channel = builder.connect().await.map_err(|e| {
        // The transport error alone says little ("transport error"); its causes say why (a refused
        // certificate, a closed port).
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail.push_str(&format!(": {s}"));
            source = s.source();
        }
        connect_err(format!("{detail} (is `radstream serve` running there?)"))
    })?;
    Ok(Authorized { channel, token })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_wins_over_a_file_and_a_file_gives_its_first_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\nsecond\n").expect("write");
        assert_eq!(
            Access::token_from(Some("flag".into()), Some(&file)).expect("ok"),
            Some("flag".into())
        );
        assert_eq!(
            Access::token_from(None, Some(&file)).expect("ok"),
            Some("from-file".into())
        );
        assert_eq!(Access::token_from(None, None).expect("ok"), None);
        assert!(Access::token_from(None, Some(&dir.path().join("missing"))).is_err());
    }

    #[test]
    fn an_endpoint_without_a_scheme_gets_one() {
        let plain = Access::default();
        assert_eq!(
            with_scheme("127.0.0.1:50051", &plain),
            "http://127.0.0.1:50051"
        );
        assert_eq!(with_scheme("http://h:1", &plain), "http://h:1");
        let tls = Access {
            ca: Some("ca.pem".into()),
            ..Access::default()
        };
        assert_eq!(with_scheme("pacs-gw:50051", &tls), "https://pacs-gw:50051");
        assert_eq!(with_scheme("https://h:1", &tls), "https://h:1");
    }

    #[tokio::test]
    async fn https_without_a_ca_says_so() {
        let err = connect(&Target::from("https://127.0.0.1:1"))
            .await
            .expect_err("no CA");
        assert!(err.to_string().contains("--ca"), "{err}");
    }
}
