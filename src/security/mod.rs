//! What stands in front of every way into the service (issue #13): TLS on both listeners ([`tls`]),
//! bearer tokens with roles ([`auth`]) and the audit log ([`audit`]).
//!
//! Why it looks like this:
//! - **One acceptor, reloadable.** tonic's and axum's own TLS set-ups are fixed when the server starts;
//!   a hospital rotates certificates without a restart. So one rustls configuration, rebuilt when the
//!   certificate, key or client CA files change ([`reload`]), sits in front of both listeners, and each
//!   new connection takes whichever configuration is current. Open connections keep theirs.
//! - **Roles per service, checked once.** A tower layer maps the gRPC path to the role it needs
//!   (`Analysis`: push, `Studies`: watch, `Models`: admin; health and reflection: none), so no service
//!   can forget the check. Tokens are kept only as SHA-256 hashes in a file the service re-reads.
//! - **Plain text is a decision, not a default.** Without `[tls]`, a listener on a non-loopback address
//!   refuses to start unless `[tls] allow_plaintext = true`; the same for tokens and
//!   `[auth] allow_anonymous`. Loopback stays open for development and the tests.
//! - **The audit log names people, never patients.** Who (the token's name), which role, which action,
//!   which study (its Study Instance UID) or model, from which peer: UIDs identify studies, not
//!   patients; no patient name or ID reaches it.

pub mod audit;
pub mod auth;
pub mod reload;
pub mod tls;
pub mod web;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

pub use audit::Audit;
pub use auth::{Caller, Gate, GrpcAuthLayer, Role};

/// What `[tls]`, `[auth]` and `[audit]` set up, loaded before the server takes a connection (a bad
/// certificate, key or tokens file stops the start).
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// `None`: plain text.
    pub tls: Option<tls::Tls>,
    pub gate: Gate,
}

impl Security {
    pub fn start(config: &crate::config::Config) -> Result<Self, SecurityError> {
        let audit = match &config.audit.file {
            Some(path) => Audit::open(path)?,
            None => Audit::off(),
        };
        Ok(Self {
            tls: tls::start(&config.tls)?,
            gate: Gate::start(&config.auth, audit)?,
        })
    }
}

/// `[tls]`: certificate and key (PEM) for both listeners; with `client_ca`, clients must present a
/// certificate it signed (mutual TLS).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM), leaf first. Unset (with `key`): no TLS.
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates; set: every client must present one.
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes; a change is loaded without a restart.
    pub reload_secs: f64,
    /// Serve plain text on a non-loopback address (without it such a listener refuses to start).
    pub allow_plaintext: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            client_ca: None,
            reload_secs: 10.0,
            allow_plaintext: false,
        }
    }
}

impl TlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    pub fn reload_every(&self) -> Duration {
        Duration::from_secs_f64(self.reload_secs)
    }
}

/// `[auth]`: bearer tokens with roles.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// One token per line: `role[,role] name sha256hex` (`radstream token hash` prints the hash).
    /// Unset: no token is asked for.
    pub tokens_file: Option<PathBuf>,
    /// How often the file is checked for changes.
    pub reload_secs: f64,
    /// Serve without tokens on a non-loopback address (without it such a listener refuses to start).
    pub allow_anonymous: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            tokens_file: None,
            reload_secs: 5.0,
            allow_anonymous: false,
        }
    }
}

/// `[audit]`: the append-only audit log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// JSON lines appended to this file; unset: no audit log.
    pub file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Pem { path: PathBuf, detail: String },
    #[error("TLS configuration refused: {0}")]
    Tls(String),
    #[error("{path} line {line}: {detail}")]
    Tokens {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("cannot open the audit log {path}: {source}")]
    Audit {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The `[tls]`, `[auth]` and listener rules of the module docs; the message says what to set.
pub fn check_config(config: &crate::config::Config) -> Result<(), String> {
    let tls = &config.tls;
    if tls.cert.is_some() != tls.key.is_some() {
        return Err("tls.cert and tls.key must be set together".into());
    }
    if tls.client_ca.is_some() && tls.cert.is_none() {
        return Err("tls.client_ca needs tls.cert and tls.key".into());
    }
    for (name, secs) in [
        ("tls.reload_secs", tls.reload_secs),
        ("auth.reload_secs", config.auth.reload_secs),
    ] {
        if !(secs.is_finite() && secs > 0.0) {
            return Err(format!("{name} must be a positive number of seconds"));
        }
    }
    let exposed: Vec<SocketAddr> = std::iter::once(config.listen)
        .chain(config.http.listen)
        .filter(|a| !a.ip().is_loopback())
        .collect();
    if let Some(addr) = exposed.first() {
        if !tls.enabled() && !tls.allow_plaintext {
            return Err(format!(
                "{addr} is not a loopback address: set [tls] cert and key, or [tls] allow_plaintext = true"
            ));
        }
        if config.auth.tokens_file.is_none() && !config.auth.allow_anonymous {
            return Err(format!(
                "{addr} is not a loopback address: set [auth] tokens_file, or [auth] allow_anonymous = true"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn exposed() -> Config {
        Config {
            listen: "0.0.0.0:50051".parse().expect("addr"),
            ..Config::default()
        }
    }

    #[test]
    fn loopback_needs_nothing() {
        assert!(check_config(&Config::default()).is_ok());
    }

    #[test]
    fn a_non_loopback_listener_needs_tls_and_tokens_or_an_explicit_choice() {
        let err = check_config(&exposed()).expect_err("plain text on 0.0.0.0");
        assert!(err.contains("allow_plaintext"), "{err}");
        let mut c = exposed();
        c.tls.allow_plaintext = true;
        let err = check_config(&c).expect_err("no tokens on 0.0.0.0");
        assert!(err.contains("tokens_file"), "{err}");
        c.auth.allow_anonymous = true;
        assert!(check_config(&c).is_ok());
        let mut c = exposed();
        c.tls.cert = Some("c.pem".into());
        c.tls.key = Some("k.pem".into());
        c.auth.tokens_file = Some("tokens".into());
        assert!(check_config(&c).is_ok());
        let mut c = Config::default();
        c.http.listen = Some("10.0.0.1:8080".parse().expect("addr"));
        assert!(check_config(&c).is_err(), "the HTTP listener counts too");
    }

    #[test]
    fn half_a_tls_configuration_is_refused() {
        let mut c = Config::default();
        c.tls.cert = Some("c.pem".into());
        assert!(check_config(&c).is_err());
        let mut c = Config::default();
        c.tls.client_ca = Some("ca.pem".into());
        assert!(check_config(&c).is_err());
        let mut c = Config::default();
        c.auth.reload_secs = 0.0;
        assert!(check_config(&c).is_err());
    }
}
