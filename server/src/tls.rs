//! TLS for the server: rustls with the ring provider, from PEM files.

use std::path::Path;
use std::sync::Arc;

use dreamos_bridge::BridgeError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

/// Load `bridge.tls`: a PEM certificate chain and a PEM private key.
pub fn load(cert: &Path, key: &Path) -> dreamos_bridge::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).and_then(|it| it.collect::<Result<Vec<_>, _>>()).map_err(|e| {
            BridgeError::config(
                "bridge.tls.cert",
                format!("cannot read a PEM certificate from {}: {e}", cert.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(BridgeError::config(
            "bridge.tls.cert",
            format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        BridgeError::config("bridge.tls.key", format!("cannot read a PEM private key from {}: {e}", key.display()))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BridgeError::config("bridge.tls", format!("TLS setup failed: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| BridgeError::config("bridge.tls", format!("the certificate and key do not fit together: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
