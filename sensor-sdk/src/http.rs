//! Outgoing HTTP for sensors, through `wasi:http`: the agent sends the request for the
//! plugin, and only to the origins it was granted (`[plugins.grants] http = ["ORIGIN"]`, or
//! `fleetmeter plugin run --http ORIGIN`). Redirects are returned, never followed.
//!
//! ```ignore
//! let page = fleetmeter_sdk::http::get("http://10.0.0.7:8080/status", &[], 64 * 1024)?;
//! if page.status != 200 { bail!("HTTP {}", page.status) }
//! ```

use crate::{Config, Error, Result};

/// The config keys [`Page::from_config`] reads.
pub const PAGE_KEYS: [&str; 2] = ["url", "max_body_kib"];

/// The page a sensor reads: its `url` (required, `http://` or `https://`) and `max_body_kib`
/// (1 to 4096), as the bundled HTTP sensors take them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The URL, checked by [`Url::parse`].
    pub url: String,
    /// The largest body read, in bytes.
    pub max_body: usize,
}

impl Page {
    /// Reads `url` (`example` shows one in the error when it is missing) and `max_body_kib`
    /// (`default_kib` when absent).
    pub fn from_config(config: &Config, example: &str, default_kib: usize) -> Result<Self> {
        let url = config
            .get("url")
            .ok_or_else(|| Error::new(format!("config `url` is required, e.g. {example}")))?
            .to_owned();
        Url::parse(&url).map_err(|e| Error::new(format!("config `url`: {e}")))?;
        let max_body_kib: usize = config.parse_or("max_body_kib", default_kib)?;
        if !(1..=4096).contains(&max_body_kib) {
            return Err(Error::new(format!(
                "config `max_body_kib`: {max_body_kib} is not 1 to 4096"
            )));
        }
        Ok(Self {
            url,
            max_body: max_body_kib * 1024,
        })
    }
}

/// A response: its status and its whole body (at most the size asked for).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The whole body.
    pub body: Vec<u8>,
}

/// The parts of an `http://` or `https://` URL a request is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `https://` rather than `http://`.
    pub https: bool,
    /// `host[:port]`.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// Parses `http(s)://authority[/path][?query]` (no credentials, no fragment).
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| Error::new(format!("`{url}` is not a usable URL: {why}"));
        let (https, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(bad("it must start with http:// or https://"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if authority.contains('@') {
            return Err(bad("credentials in a URL are refused; send a header"));
        }
        if path.contains('#') {
            return Err(bad("a fragment is never sent"));
        }
        if authority
            .chars()
            .chain(path.chars())
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad("spaces or control characters"));
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        Ok(Self {
            https,
            authority: authority.to_owned(),
            path,
        })
    }

    /// The origin, as a grant names it.
    pub fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority
        )
    }
}

/// A `Name: value` header line, split.
pub fn parse_header(line: &str) -> Result<(String, String)> {
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| Error::new(format!("header `{line}`: expected `Name: value`")))?;
    let name = name.trim();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(Error::new(format!(
            "header `{line}`: `{name}` is not a header name"
        )));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// GET `url` with `headers`, reading at most `max_body` bytes of the body (more is an
/// error). Any status is returned: the caller decides what a 404 or a 302 means.
#[cfg(target_arch = "wasm32")]
pub fn get(url: &str, headers: &[(String, String)], max_body: usize) -> Result<Response> {
    use wasip2::http::{
        outgoing_handler,
        types::{Fields, IncomingBody, Method, OutgoingRequest, Scheme},
    };
    use wasip2::io::streams::StreamError;

    let parsed = Url::parse(url)?;
    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, value.as_bytes())
            .map_err(|e| Error::new(format!("header `{name}`: {e:?}")))?;
    }
    let request = OutgoingRequest::new(fields);
    let refused = |what: &str| Error::new(format!("{url}: {what}"));
    request
        .set_method(&Method::Get)
        .map_err(|()| refused("bad method"))?;
    request
        .set_scheme(Some(if parsed.https {
            &Scheme::Https
        } else {
            &Scheme::Http
        }))
        .map_err(|()| refused("bad scheme"))?;
    request
        .set_authority(Some(&parsed.authority))
        .map_err(|()| refused("bad host"))?;
    request
        .set_path_with_query(Some(&parsed.path))
        .map_err(|()| refused("bad path"))?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| failed(&parsed, url, e))?;
    let response = loop {
        match pending.get() {
            Some(response) => break response,
            None => pending.subscribe().block(),
        }
    };
    let response = response
        .map_err(|()| refused("the response was already taken"))?
        .map_err(|e| failed(&parsed, url, e))?;
    let status = response.status();
    let body = response.consume().map_err(|()| refused("no body"))?;
    let stream = body.stream().map_err(|()| refused("no body stream"))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                if bytes.len() + chunk.len() > max_body {
                    return Err(refused(&format!(
                        "the body is larger than {max_body} bytes"
                    )));
                }
                bytes.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(refused(&format!(
                    "reading the body: {}",
                    e.to_debug_string()
                )));
            }
        }
    }
    drop(stream);
    drop(IncomingBody::finish(body));
    Ok(Response {
        status,
        body: bytes,
    })
}

#[cfg(target_arch = "wasm32")]
fn failed(url: &Url, shown: &str, error: wasip2::http::types::ErrorCode) -> Error {
    use wasip2::http::types::ErrorCode;
    let what = match error {
        // The agent adds which grant is missing to the error.
        ErrorCode::HttpRequestDenied => {
            format!("refused by the agent: no `http` grant for {}", url.origin())
        }
        ErrorCode::ConnectionRefused => "connection refused".to_owned(),
        ErrorCode::ConnectionTimeout => "no connection within the time limit".to_owned(),
        ErrorCode::HttpResponseTimeout => "no answer within the time limit".to_owned(),
        ErrorCode::HttpResponseBodySize(_) => "the response is too large".to_owned(),
        ErrorCode::InternalError(Some(why)) => why,
        other => format!("{other:?}"),
    };
    Error::new(format!("{shown}: {what}"))
}

/// Outside the sandbox (the plugin's own unit tests) there is no `wasi:http`.
#[cfg(not(target_arch = "wasm32"))]
pub fn get(url: &str, _headers: &[(String, String)], _max_body: usize) -> Result<Response> {
    Url::parse(url)?;
    Err(Error::new(format!(
        "{url}: HTTP is available inside the agent's sandbox only"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://10.0.0.7:8080/status?x=1").unwrap();
        assert_eq!(
            (u.https, u.authority.as_str(), u.path.as_str()),
            (false, "10.0.0.7:8080", "/status?x=1")
        );
        assert_eq!(u.origin(), "http://10.0.0.7:8080");
        assert_eq!(Url::parse("https://meter.example").unwrap().path, "/");
        assert_eq!(Url::parse("http://h?q").unwrap().path, "/?q");
        for bad in [
            "ftp://x/",
            "http:///x",
            "http://u:p@h/",
            "http://h/#f",
            "http://h/a b",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("Authorization: Bearer abc").unwrap(),
            ("Authorization".to_owned(), "Bearer abc".to_owned())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: x").is_err());
    }
}
