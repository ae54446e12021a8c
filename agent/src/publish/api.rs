//! One request to the measurements API, and what came of it: a [`Delivery`] (the API decided)
//! or a [`SendError`] (transient: keep the result and retry).

use reqwest::StatusCode;

use crate::{
    config::{PublishFormat, PublishSettings, Secret},
    wire::Round,
};

/// What the API did with one result.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    Stored,
    /// Already stored (a resend after a crash or a failover).
    Duplicate,
    /// The API will never accept it (e.g. 409: a different result is stored under this round,
    /// or 422). Logged loudly and moved to `{root}/rejected`: retrying cannot help.
    Refused(Refusal),
}

/// The API's answer to a result it refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{status}: {body}")]
pub struct Refusal {
    pub status: StatusCode,
    /// The API's answer, trimmed.
    pub body: String,
}

/// A failure to deliver that retrying can fix: the result stays in the outbox.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot reach the API at {base}: {source}")]
    Unreachable {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    /// Down (5xx), misconfigured (401, 403, 404: fix the URL or the token and it goes
    /// through), slow (408) or busy (429).
    #[error("the API answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    /// A redirect: never followed for a write (a 301/302 would turn the POST into a GET that
    /// stores nothing). Fix the API URL.
    #[error(
        "the API answered {status} redirecting to {location}; redirects are not followed for writes: set the API URL to where it should go"
    )]
    Redirect {
        status: StatusCode,
        location: String,
    },
    /// The API URL's origin is not one the local configuration allows: nothing is sent (no
    /// round, no token) until the URL is one of them again.
    #[error(
        "the API URL's origin {origin} is not allowed by this agent's configuration (allowed: {allowed}); nothing is sent there"
    )]
    OriginNotAllowed { origin: String, allowed: String },
    /// TLS to the API failed, and why: the message says what to set.
    #[error("TLS to the API at {base} failed: {problem} ({source})")]
    Tls {
        base: String,
        problem: super::TlsProblem,
        #[source]
        source: reqwest::Error,
    },
    /// The answer to a read was not what the API sends.
    #[error("the API's answer to {what} is not valid: {reason}")]
    BadAnswer { what: &'static str, reason: String },
}

/// The HTTP side of the publisher.
#[derive(Clone, Debug)]
pub(super) struct ApiClient {
    http: reqwest::Client,
    format: PublishFormat,
    token: Option<Secret>,
    allowed_origins: Vec<String>,
}

impl ApiClient {
    pub(super) fn new(settings: &PublishSettings) -> Result<Self, reqwest::Error> {
        let http = settings.tls.client(|| {
            reqwest::Client::builder()
                .timeout(settings.timeout)
                .connect_timeout(settings.timeout)
                .user_agent(concat!("fleetmeter/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none())
        })?;
        Ok(Self {
            http,
            format: settings.format,
            token: settings.token.clone(),
            allowed_origins: settings.allowed_origins.clone(),
        })
    }

    pub(super) fn format(&self) -> PublishFormat {
        self.format
    }

    pub(super) async fn send(&self, api_url: &str, result: &Round) -> Result<Delivery, SendError> {
        let base = self.base(api_url)?;
        let request = match self.format {
            PublishFormat::Json => self.http.post(format!("{base}api/v1/rounds")).json(result),
            PublishFormat::Query => self
                .http
                .get(format!("{base}nuevo"))
                .query(&[("dato", result.value.to_string())]),
        };
        let (status, body) = self.execute(request, base, MAX_ANSWER).await?;
        if status.is_success() {
            let duplicate = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("duplicate").and_then(serde_json::Value::as_bool))
                .unwrap_or(false);
            return Ok(if duplicate {
                Delivery::Duplicate
            } else {
                Delivery::Stored
            });
        }
        // The answer goes into logs: one line, control characters escaped.
        let body = crate::text::one_line(body.trim()).into_owned();
        if status.is_server_error()
            || status == StatusCode::UNAUTHORIZED
            || status == StatusCode::FORBIDDEN
            || status == StatusCode::NOT_FOUND
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            return Err(SendError::Status { status, body });
        }
        Ok(Delivery::Refused(Refusal { status, body }))
    }

    /// Sends `request` with the token; a redirect is an error (never followed); returns the
    /// status and the answer's first `max` bytes.
    async fn execute(
        &self,
        request: reqwest::RequestBuilder,
        base: String,
        max: usize,
    ) -> Result<(StatusCode, String), SendError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token.expose()),
            None => request,
        };
        let response = request.send().await.map_err(|source| {
            let base_shown = crate::text::redact_url(&base);
            match super::TlsProblem::of(&source, &base) {
                Some(problem) => SendError::Tls {
                    base: base_shown,
                    problem,
                    source: source.without_url(),
                },
                None => SendError::Unreachable {
                    base: base_shown,
                    source: source.without_url(),
                },
            }
        })?;
        let status = response.status();
        if status.is_redirection() {
            return Err(redirect(status, &response));
        }
        Ok((status, read_bounded(response, max).await))
    }

    /// `GET {api_url}api/v1/rounds?limit=1[&before=R]`: the highest stored round (below `R`).
    /// `None` with the `query` format (no round numbers) or when the API stores none.
    pub(super) async fn latest(
        &self,
        api_url: &str,
        before: Option<u64>,
    ) -> Result<Option<Round>, SendError> {
        if self.format == PublishFormat::Query {
            return Ok(None);
        }
        let base = self.base(api_url)?;
        let mut request = self
            .http
            .get(format!("{base}api/v1/rounds"))
            .query(&[("limit", "1")]);
        if let Some(before) = before {
            request = request.query(&[("before", before)]);
        }
        let (status, body) = self
            .execute(request, base, fleetmeter_wire::MAX_ROUND_JSON + 16)
            .await?;
        if !status.is_success() {
            return Err(SendError::Status {
                status,
                body: crate::text::one_line_bounded(body.trim(), 512),
            });
        }
        let mut rounds: Vec<Round> =
            serde_json::from_str(&body).map_err(|e| SendError::BadAnswer {
                what: "GET /api/v1/rounds?limit=1",
                reason: e.to_string(),
            })?;
        Ok(rounds.pop())
    }
}

impl ApiClient {
    /// `api_url` with a trailing `/`, once its origin is checked against the allowed ones
    /// (the dynamic configuration refuses others already; this is the last line).
    fn base(&self, api_url: &str) -> Result<String, SendError> {
        let origin = url::Url::parse(api_url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|_| crate::text::one_line_bounded(api_url, 256));
        if !self.allowed_origins.contains(&origin) {
            return Err(SendError::OriginNotAllowed {
                origin: crate::text::redact_url(&origin),
                allowed: self.allowed_origins.join(", "),
            });
        }
        Ok(if api_url.ends_with('/') {
            api_url.to_owned()
        } else {
            format!("{api_url}/")
        })
    }
}

fn redirect(status: StatusCode, response: &reqwest::Response) -> SendError {
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|v| crate::text::one_line_bounded(&String::from_utf8_lossy(v.as_bytes()), 256))
        .unwrap_or_else(|| "(no Location)".to_owned());
    SendError::Redirect { status, location }
}

/// The longest answer kept from the API: enough for `{"duplicate":true}` or an error message.
const MAX_ANSWER: usize = 16 * 1024;

/// The answer's first `max` bytes, as text; the rest is not read. A server that answers
/// with an endless body cannot fill the agent's memory.
pub(crate) async fn read_bounded(mut response: reqwest::Response, max: usize) -> String {
    let mut body = Vec::new();
    while body.len() < max {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = max - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn client(allowed: &[&str]) -> ApiClient {
        ApiClient::new(&PublishSettings {
            api_url: format!("{}/", allowed[0]),
            format: PublishFormat::Json,
            token: Some(Secret::new("t")),
            tls: Default::default(),
            allowed_origins: allowed.iter().map(|o| (*o).to_owned()).collect(),
            timeout: Duration::from_secs(1),
            retry_initial: Duration::from_millis(10),
            retry_max: Duration::from_millis(100),
            outbox_max: crate::publish::outbox::Ledger {
                rounds: 1,
                bytes: 1,
            },
            wire_version: crate::wire::VERSION,
            mark_key: None,
        })
        .unwrap()
    }

    #[test]
    fn an_origin_is_scheme_host_and_port() {
        let https = client(&["https://api.example:4000"]);
        assert!(https.base("https://api.example:4000/").is_ok());
        for other in [
            "http://api.example:4000/",
            "https://api.example:4001/",
            "https://api.example.evil:4000/",
            "https://api.example/",
        ] {
            assert!(
                matches!(https.base(other), Err(SendError::OriginNotAllowed { .. })),
                "{other} must not match https://api.example:4000"
            );
        }
        let http = client(&["http://api.example:4000"]);
        assert!(matches!(
            http.base("https://api.example:4000/"),
            Err(SendError::OriginNotAllowed { .. })
        ));
    }
}
