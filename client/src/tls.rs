//! TLS to an `https://` bridge server, for both halves of a remote bridge.
//!
//! The HTTP half is reqwest (rustls, the Mozilla roots built in). The
//! WebSocket half opens its own socket, so it gets a rustls connector here
//! with the same trust: the same built-in roots (`webpki-roots`, the version
//! reqwest already uses, so no second copy) plus the CA certificates of
//! [`ClientOptions::ca_file`](crate::ClientOptions::ca_file), which is how a
//! client trusts a server with a private or self-signed certificate.
//! The file is read once, at connect, so a wrong path is a `CONFIG` error
//! there and not a failed handshake on every reconnect.

use std::path::Path;
use std::sync::Arc;

use dreamos_bridge::{BridgeError, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A connection to the server: plain TCP for `http://`, TLS for `https://`.
pub(crate) type Stream = tokio_util::either::Either<TcpStream, TlsStream<TcpStream>>;

/// What a client trusts beyond the built-in roots.
#[derive(Clone, Default)]
pub(crate) struct Trust {
    extra: Vec<CertificateDer<'static>>,
}

impl Trust {
    /// Read the PEM certificates of `ca_file` (none when it is `None`).
    pub(crate) fn load(ca_file: Option<&Path>) -> Result<Trust> {
        let Some(path) = ca_file else { return Ok(Trust::default()) };
        let bad = |what: String| BridgeError::config("ca_file", format!("{}: {what}", path.display()));
        let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
        let extra = CertificateDer::pem_slice_iter(&pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not PEM certificates ({e})")))?;
        if extra.is_empty() {
            return Err(bad("holds no certificate: give a PEM file with -----BEGIN CERTIFICATE----- blocks".into()));
        }
        Ok(Trust { extra })
    }

    /// The extra CA certificates, DER-encoded (for reqwest).
    pub(crate) fn extra(&self) -> &[CertificateDer<'static>] {
        &self.extra
    }

    /// A rustls connector trusting the built-in roots and the extra CAs.
    pub(crate) fn connector(&self) -> Result<TlsConnector> {
        let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        for cert in &self.extra {
            roots
                .add(cert.clone())
                .map_err(|e| BridgeError::config("ca_file", format!("a certificate is not a usable CA ({e})")))?;
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| BridgeError::internal(format!("cannot configure TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// Open a TCP connection to `host:port`, with TLS when `tls` is given.
pub(crate) async fn open(host: &str, port: u16, tls: Option<&TlsConnector>) -> std::io::Result<Stream> {
    // `[::1]` in a URL is `::1` to the resolver and to the certificate check.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare, port)).await?;
    tcp.set_nodelay(true)?;
    let Some(connector) = tls else { return Ok(Stream::Left(tcp)) };
    let name = ServerName::try_from(bare.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad server name {bare:?}: {e}")))?;
    Ok(Stream::Right(connector.connect(name, tcp).await?))
}
