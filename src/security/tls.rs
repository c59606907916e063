//! TLS on both listeners: a rustls configuration per listener kind (ALPN `h2` for gRPC, `http/1.1` for
//! the web view), rebuilt from the files when they change ([`super::reload`]), and an accept loop that
//! hands the server only connections whose handshake finished.
//!
//! Why handshakes run beside the accept loop: a client that opens a connection and sends nothing (or a
//! plain-text client) must not hold up everyone else's handshake; each gets [`HANDSHAKE_TIMEOUT`].

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use rustls::{server::WebPkiClientVerifier, RootCertStore, ServerConfig};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{server::TlsStream, TlsAcceptor};

use super::{reload::Reloading, SecurityError, TlsConfig};

/// How long a client gets to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server to take them.
const QUEUE: usize = 64;

/// The configurations in use, one per listener kind.
#[derive(Debug)]
pub struct Material {
    pub grpc: Arc<ServerConfig>,
    pub http: Arc<ServerConfig>,
}

/// Which listener a connection arrives on (its ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Grpc,
    Http,
}

/// The current TLS material, reloaded from `[tls]`'s files.
pub type Tls = Reloading<Material>;

/// Loads `[tls]` and starts watching its files; `None` when TLS is not configured.
pub fn start(config: &TlsConfig) -> Result<Option<Tls>, SecurityError> {
    let (Some(cert), Some(key)) = (config.cert.clone(), config.key.clone()) else {
        return Ok(None);
    };
    let ca = config.client_ca.clone();
    let paths = [Some(cert.clone()), Some(key.clone()), ca.clone()]
        .into_iter()
        .flatten()
        .collect();
    Reloading::start("TLS certificate", paths, config.reload_every(), move || {
        load(&cert, &key, ca.as_deref())
    })
    .map(Some)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let pem = |detail: String| SecurityError::Pem {
        path: path.to_path_buf(),
        detail,
    };
    let bytes = std::fs::read(path).map_err(|source| SecurityError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Builds both configurations from the files (the key must match the certificate).
pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Material, SecurityError> {
    let chain = read_certs(cert)?;
    let key_bytes = std::fs::read(key).map_err(|source| SecurityError::Read {
        path: key.to_path_buf(),
        source,
    })?;
    let private = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| SecurityError::Pem {
        path: key.to_path_buf(),
        detail: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c).map_err(|e| SecurityError::Pem {
                    path: ca.to_path_buf(),
                    detail: e.to_string(),
                })?;
            }
            Some(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| SecurityError::Tls(e.to_string()))?,
            )
        }
        None => None,
    };
    let build = |alpn: &[u8]| -> Result<Arc<ServerConfig>, SecurityError> {
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| SecurityError::Tls(e.to_string()))?;
        let builder = match &verifier {
            Some(v) => builder.with_client_cert_verifier(v.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain.clone(), private.clone_key())
            .map_err(|e| SecurityError::Tls(format!("{}: {e}", cert.display())))?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    };
    Ok(Material {
        grpc: build(b"h2")?,
        http: build(b"http/1.1")?,
    })
}

/// Accepts on `listener` and yields connections whose handshake finished, with the peer's address,
/// each under the configuration current when it arrived. Ends when the receiver is dropped.
pub fn accept(
    listener: TcpListener,
    tls: Tls,
    kind: Kind,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: wait instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Findings are small writes that must leave at once (see server.rs).
            let _ = tcp.set_nodelay(true);
            let material = tls.current();
            let config = match kind {
                Kind::Grpc => material.grpc.clone(),
                Kind::Http => material.http.clone(),
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(tcp))
                    .await
                {
                    Ok(Ok(stream)) => {
                        let _ = tx.send((stream, peer)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, "TLS handshake refused: {e}"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// The web view's listener over TLS, for `axum::serve`.
pub struct HttpListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl HttpListener {
    pub fn new(listener: TcpListener, tls: Tls) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(Self {
            rx: accept(listener, tls, Kind::Http),
            local,
        })
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop ended (it only does when this listener is dropped): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
