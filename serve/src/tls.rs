//! TLS for a server that has no reverse proxy in front: a certificate chain and its key,
//! and, optionally, the CA whose client certificates it accepts (mutual TLS). rustls with
//! the aws-lc-rs provider: the one the agent's ZooKeeper TLS already builds, so the tree
//! compiles one provider.

use std::{path::Path, sync::Arc};

pub use rustls::ServerConfig;
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};

/// A server TLS setting that cannot be used; the message names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("cannot read {what} {path}: {error}")]
    Read {
        /// Which file (`the TLS certificate`).
        what: &'static str,
        /// Where it is.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The file holds nothing usable.
    #[error("{what} {path} holds no {expected}")]
    Empty {
        /// Which file.
        what: &'static str,
        /// Where it is.
        path: String,
        /// What was looked for (`PEM certificate`).
        expected: &'static str,
    },
    /// rustls refused the setting (a key that does not match the certificate, say).
    #[error("{what}: {error}")]
    Rustls {
        /// What was being set up.
        what: &'static str,
        /// Why it was refused.
        error: rustls::Error,
    },
}

/// The server side of TLS: `cert` (PEM chain, leaf first) and `key` (its PEM private key);
/// with `client_ca`, only clients with a certificate that CA signed are served.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(cert, "the TLS certificate")?;
    let key = private_key(key)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Rustls {
            what: "the TLS protocol versions",
            error,
        })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(path, "the client CA")? {
                roots.add(cert).map_err(|error| TlsError::Rustls {
                    what: "the client CA",
                    error,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| TlsError::Rustls {
                    what: "the client CA",
                    error: rustls::Error::General(error.to_string()),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::Rustls {
            what: "the TLS certificate and key",
            error,
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.display().to_string(),
        error,
    })
}

fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, what)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.display().to_string(),
            expected: "PEM certificate",
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, "the TLS key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Empty {
        what: "the TLS key",
        path: path.display().to_string(),
        expected: "PEM private key (PKCS#8, PKCS#1 or SEC1)",
    })
}
