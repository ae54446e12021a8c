//! TLS to ZooKeeper: the CA and, when the servers ask for one, this client's identity.

use crate::coord::CoordError;

/// TLS to ZooKeeper: the CA that signs the servers' certificates and, when the servers ask
/// for one (`ssl.clientAuth=need`), this client's certificate and key. PEM text, read when
/// the configuration is read, so that a missing or unreadable file fails the start. `Debug`
/// does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ZkTls {
    ca: String,
    identity: Option<(String, String)>,
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BadTls {
    #[error("cannot read {path}: {error}")]
    Read {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("a client certificate needs its key, and a key its certificate: set both")]
    Half,
}

impl ZkTls {
    pub fn read(
        ca: &std::path::Path,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<Self, BadTls> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|error| BadTls::Read {
                path: path.to_owned(),
                error,
            })
        };
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            (None, None) => None,
            _ => return Err(BadTls::Half),
        };
        Ok(Self {
            ca: read(ca)?,
            identity,
        })
    }

    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// The client's TLS options; an error names what does not parse as PEM.
    pub fn options(&self) -> Result<zookeeper_client::TlsOptions, CoordError> {
        let options = zookeeper_client::TlsOptions::new()
            .with_pem_ca(&self.ca)
            .map_err(|e| {
                CoordError::Settings(format!("the ZooKeeper TLS CA is not PEM certificates: {e}"))
            })?;
        match &self.identity {
            Some((cert, key)) => options.with_pem_identity(cert, key).map_err(|e| {
                CoordError::Settings(format!(
                    "the ZooKeeper TLS client certificate or key is not PEM: {e}"
                ))
            }),
            None => Ok(options),
        }
    }
}

impl std::fmt::Debug for ZkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkTls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}
