//! TLS for `ebb serve` and `ebb watch` (rustls with ring): PEM files in,
//! configurations out.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

/// Debian's bundle of trusted authorities, used when no `--ca-cert` is
/// given.
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("{}: not PEM certificates", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no certificate (expected PEM, -----BEGIN CERTIFICATE-----)",
        path.display()
    );
    Ok(certs)
}

/// The server's side: its certificate chain and private key (PEM).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let certs = read_certs(cert)?;
    let file = std::fs::File::open(key).with_context(|| format!("opening {}", key.display()))?;
    let key_der = rustls_pemfile::private_key(&mut BufReader::new(file))
        .with_context(|| format!("{}: not a PEM private key", key.display()))?
        .with_context(|| format!("{} holds no private key", key.display()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .with_context(|| {
            format!(
                "{} and {} do not make a usable certificate and key",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// The client's side: trust the authorities in `ca` (PEM), or the
/// system's.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>> {
    let path = ca.unwrap_or(Path::new(SYSTEM_CAS));
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(read_certs(path)?);
    anyhow::ensure!(
        added > 0,
        "{}: no usable certificate authority",
        path.display()
    );
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
