//! TLS to the measurements API: what the agent trusts and presents ([`ApiTls`]), and what a
//! failed handshake means ([`TlsProblem`]), so that the log says "the API's certificate is
//! not signed by a CA this agent trusts: set `[publish] tls_ca`", not "error sending
//! request".
//!
//! rustls with the aws-lc-rs provider (already built for ZooKeeper TLS). By default the
//! system's roots are trusted (the platform verifier); with `tls_ca`, only the CA it names.

use reqwest::{Certificate, Identity};

use crate::config::keys;

/// What the agent trusts and presents for an `https://` API URL. PEM text, read when the
/// configuration is read, so that a missing or bad file fails the start. `Debug` does not
/// show the key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiTls {
    /// The CA certificates to trust instead of the system's roots.
    ca: Option<Vec<u8>>,
    /// A client certificate chain and its key, for an API that requires one.
    identity: Option<Vec<u8>>,
}

impl std::fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTls")
            .field("private_ca", &self.ca.is_some())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

/// A TLS file for the API that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BadApiTls {
    #[error("cannot read {path}: {error}")]
    Read {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: std::path::PathBuf },
    #[error("a client certificate needs its key, and a key its certificate: set both")]
    Half,
    #[error("the client certificate and key are not a PEM certificate and private key: {0}")]
    Identity(String),
}

impl ApiTls {
    /// Reads `ca` (PEM certificates) and the client identity (`cert` and `key`, both or
    /// neither), checking that they parse.
    pub fn read(
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<Self, BadApiTls> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|error| BadApiTls::Read {
                path: path.to_owned(),
                error,
            })
        };
        let ca = match ca {
            Some(path) => {
                let pem = read(path)?;
                if Certificate::from_pem_bundle(&pem).is_ok_and(|c| !c.is_empty()) {
                    Some(pem)
                } else {
                    return Err(BadApiTls::NoCertificate {
                        path: path.to_owned(),
                    });
                }
            }
            None => None,
        };
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend(read(key)?);
                Identity::from_pem(&pem).map_err(|e| BadApiTls::Identity(e.to_string()))?;
                Some(pem)
            }
            (None, None) => None,
            _ => return Err(BadApiTls::Half),
        };
        Ok(Self { ca, identity })
    }

    /// Whether a client certificate is configured.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// A client from `make`, trusting and presenting what is configured.
    ///
    /// Without `tls_ca` the system's roots are trusted; a system that has none (a minimal
    /// image without `ca-certificates`) would make the client fail to build, and so the
    /// agent to start even for an `http://` API. It gets a client that trusts no CA instead,
    /// with a warning: plain HTTP works, and an `https://` API fails as untrusted, naming
    /// `tls_ca`.
    pub(crate) fn client(
        &self,
        make: impl Fn() -> reqwest::ClientBuilder,
    ) -> Result<reqwest::Client, reqwest::Error> {
        let with_identity = |builder: reqwest::ClientBuilder| match &self.identity {
            Some(pem) => Ok::<_, reqwest::Error>(builder.identity(Identity::from_pem(pem)?)),
            None => Ok(builder),
        };
        if let Some(pem) = &self.ca {
            let roots = Certificate::from_pem_bundle(pem)?;
            return with_identity(make().tls_certs_only(roots))?.build();
        }
        match with_identity(make())?.build() {
            Ok(client) => Ok(client),
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    "no CA certificates on this system (install ca-certificates): an https:// API needs {}",
                    keys::API_TLS_CA.where_set()
                );
                with_identity(make().tls_certs_only(Vec::new()))?.build()
            }
        }
    }
}

/// Why TLS to the API failed, as far as the agent can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsProblem {
    /// The certificate is not signed by a CA this agent trusts.
    Untrusted,
    /// The certificate is not valid for the API URL's host.
    NameMismatch,
    /// The certificate has expired, or is not valid yet.
    Expired,
    /// An `https://` URL, but the server answers in plain HTTP.
    NotTls,
    /// An `http://` URL, but the server speaks TLS.
    TlsOnHttp,
    /// The API requires a client certificate this agent did not present (or refused it).
    ClientCertificate,
    /// Another TLS failure.
    Other,
}

impl TlsProblem {
    /// The metrics label.
    pub fn reason(self) -> &'static str {
        match self {
            TlsProblem::Untrusted => "untrusted",
            TlsProblem::NameMismatch => "name_mismatch",
            TlsProblem::Expired => "expired",
            TlsProblem::NotTls => "not_tls",
            TlsProblem::TlsOnHttp => "tls_on_http",
            TlsProblem::ClientCertificate => "client_certificate",
            TlsProblem::Other => "other",
        }
    }

    /// What is wrong and what to set, for the log and `/healthz`.
    pub fn advice(self) -> String {
        let ca = keys::API_TLS_CA.where_set();
        let cert = keys::API_TLS_CERT.where_set();
        match self {
            TlsProblem::Untrusted => format!(
                "the API's certificate is not signed by a CA this agent trusts: give the CA that signs it with {ca}"
            ),
            TlsProblem::NameMismatch => "the API's certificate is not valid for the API URL's host: use the name the certificate was issued for in the API URL, or reissue the certificate for this name".into(),
            TlsProblem::Expired => "the API's certificate has expired (or is not valid yet): renew it on the API, and check both clocks".into(),
            TlsProblem::NotTls => "the API URL says https:// but the server answers in plain HTTP: use an http:// URL, or serve TLS on the API (--tls-cert/--tls-key)".into(),
            TlsProblem::TlsOnHttp => "the API URL says http:// but the server speaks TLS: use an https:// URL".into(),
            TlsProblem::ClientCertificate => format!(
                "the API requires a client certificate signed by its CA: set {cert} and its key"
            ),
            TlsProblem::Other => "TLS to the API failed".into(),
        }
    }

    /// What `error` (from a request to `base`) says about TLS; `None` when it is not a TLS
    /// failure (the API is down, say).
    pub fn of(error: &reqwest::Error, base: &str) -> Option<Self> {
        let https = base.starts_with("https://");
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(err) = next {
            if let Some(tls) = err.downcast_ref::<rustls::Error>() {
                return Some(Self::of_rustls(tls, https));
            }
            if !https
                && let Some(hyper) = err.downcast_ref::<hyper::Error>()
                && hyper.is_parse()
            {
                // An answer that is not HTTP, to a request in plain HTTP: a TLS server's
                // alert record.
                return Some(TlsProblem::TlsOnHttp);
            }
            // io::Error hides a custom error from `source()`: look inside.
            next = match err.downcast_ref::<std::io::Error>() {
                Some(io) => io
                    .get_ref()
                    .map(|inner| inner as _)
                    .or_else(|| err.source()),
                None => err.source(),
            };
        }
        None
    }

    fn of_rustls(error: &rustls::Error, https: bool) -> Self {
        use rustls::{AlertDescription as Alert, CertificateError as Cert, Error};
        match error {
            Error::InvalidCertificate(cert) => match cert {
                Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                    TlsProblem::NameMismatch
                }
                Cert::Expired
                | Cert::ExpiredContext { .. }
                | Cert::NotValidYet
                | Cert::NotValidYetContext { .. } => TlsProblem::Expired,
                Cert::UnknownIssuer | Cert::BadSignature | Cert::BadEncoding => {
                    TlsProblem::Untrusted
                }
                _ => TlsProblem::Untrusted,
            },
            Error::InvalidMessage(_) if https => TlsProblem::NotTls,
            Error::AlertReceived(
                Alert::CertificateRequired
                | Alert::BadCertificate
                | Alert::UnknownCA
                | Alert::CertificateUnknown
                | Alert::HandshakeFailure,
            ) => TlsProblem::ClientCertificate,
            _ => TlsProblem::Other,
        }
    }
}

impl std::fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.advice())
    }
}
