//! A sensor's network grants, as allow-lists: the endpoints it may reach and nothing else.
//!
//! - `connect = ["10.0.0.5:502", "meter.local:502"]`: TCP connections to exactly these
//!   endpoints. Names are resolved by the host when the plugin is loaded and the addresses
//!   they resolved to are the ones allowed (pinned): a name that points elsewhere later (DNS
//!   rebinding) opens nothing new until the agent loads the plugin again. Binding is allowed
//!   only as the implicit bind of a connect (any address, port 0); listening, accepting and
//!   UDP are refused.
//! - `http = ["http://10.0.0.7:8080", "https://meter.example"]`: outgoing `wasi:http`
//!   requests to exactly these origins (scheme, host, port). The host makes those
//!   connections itself, so they never pass the socket check: the request's origin is
//!   checked in the send hook instead, which sends with the host's client: names pinned as
//!   for `connect`, no proxy, every wait bounded by the plugin's time limit. A redirect is a response like any other: the host
//!   does not follow it, and a plugin that asks for its target is checked again.
//! - `network = true` (`--network`): everything, for local experiments.
//!
//! A refusal is remembered and added to the plugin's next error, naming the grant to add:
//! the guest itself only sees "access denied".

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// A `host:port` a sensor may open a TCP connection to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// An unusable grant, with what was wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct GrantError(String);

impl Endpoint {
    /// Parses `host:port`, `1.2.3.4:port` or `[v6]:port`.
    pub fn parse(spec: &str) -> Result<Self, GrantError> {
        let bad = |why: &str| {
            GrantError(format!(
                "connect grant `{spec}`: {why} (expected HOST:PORT, e.g. \"10.0.0.5:502\" or \
                 \"meter.local:502\")"
            ))
        };
        let (host, port) = spec.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port is not 1 to 65535"))?;
        if port == 0 {
            return Err(bad("the port is not 1 to 65535"));
        }
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => {
                let ip: std::net::Ipv6Addr = v6.parse().map_err(|_| bad("not an IPv6 address"))?;
                ip.to_string()
            }
            None if host.contains(':') => return Err(bad("write an IPv6 address as [ADDR]")),
            None => host.to_ascii_lowercase(),
        };
        if host.is_empty() || host.len() > 253 {
            return Err(bad("no host"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err(bad("not a host name or address"));
        }
        Ok(Self { host, port })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// An HTTP origin a sensor may send requests to: scheme, host and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// Parses `http://host[:port]` or `https://host[:port]` (a trailing `/` is allowed; no
    /// path, query, credentials).
    pub fn parse(spec: &str) -> Result<Self, GrantError> {
        let bad = |why: &str| {
            GrantError(format!(
                "http grant `{spec}`: {why} (expected an origin, e.g. \"http://10.0.0.7:8080\" \
                 or \"https://meter.example\")"
            ))
        };
        let url = url::Url::parse(spec).map_err(|e| bad(&e.to_string()))?;
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(bad(&format!("scheme `{other}` is not http or https"))),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("credentials do not belong in a grant"));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(bad("an origin has no path, query or fragment"));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => return Err(bad("no host")),
        };
        let port = url.port_or_known_default().ok_or_else(|| bad("no port"))?;
        Ok(Self { https, host, port })
    }

    /// The origin of a request's URI, in the same form.
    fn of(uri: &http::Uri) -> Option<Self> {
        let https = match uri.scheme_str()? {
            "http" => false,
            "https" => true,
            _ => return None,
        };
        let host = uri.host()?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .map(|v6| v6.parse::<std::net::Ipv6Addr>().map(|ip| ip.to_string()))
            .unwrap_or_else(|| Ok(host.to_ascii_lowercase()))
            .ok()?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Some(Self { https, host, port })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.https, self.port) {
            (false, 80) | (true, 443) => write!(f, "{scheme}://{host}"),
            _ => write!(f, "{scheme}://{host}:{}", self.port),
        }
    }
}

/// What one sensor may reach, its `connect` names resolved (once, when loaded).
#[derive(Debug, Default)]
pub struct NetworkPolicy {
    any: bool,
    connect: BTreeSet<SocketAddr>,
    /// A `connect` grant names a host.
    lookups: bool,
    http: Vec<Origin>,
    /// The last thing refused, with the grant that would allow it.
    refused: Mutex<Option<String>>,
    /// The client `http` grants are served with (none without such grants).
    client: Option<reqwest::Client>,
}

impl NetworkPolicy {
    /// Resolves the `connect` grants' names. A name that resolves to nothing is an error
    /// naming the grant: a typo must not become a sensor that silently never connects.
    pub async fn resolve(
        any: bool,
        connect: &[Endpoint],
        http: &[Origin],
        timeout: Duration,
    ) -> Result<Self, GrantError> {
        let mut addrs = BTreeSet::new();
        for endpoint in connect {
            let grant = format!("connect grant `{endpoint}`");
            addrs.extend(lookup(&grant, &endpoint.host, endpoint.port).await?);
        }
        let client = if any || !http.is_empty() {
            let mut builder = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .connect_timeout(timeout)
                .read_timeout(timeout)
                .timeout(timeout);
            for origin in http {
                if origin.host.parse::<IpAddr>().is_err() {
                    let grant = format!("http grant `{origin}`");
                    let pinned: Vec<SocketAddr> =
                        lookup(&grant, &origin.host, origin.port).await?.collect();
                    builder = builder.resolve_to_addrs(&origin.host, &pinned);
                }
            }
            Some(builder.build().map_err(|e| {
                GrantError(format!("the HTTP client for the sensor's grants: {e:#}"))
            })?)
        } else {
            None
        };
        Ok(Self {
            any,
            connect: addrs,
            lookups: connect.iter().any(|e| e.host.parse::<IpAddr>().is_err()),
            http: http.to_vec(),
            refused: Mutex::new(None),
            client,
        })
    }

    /// Whether the sensor may resolve names: with `network = true`, or when a `connect`
    /// grant names a host (its own resolver then finds the pinned address). Grants by address
    /// give no lookups at all, so no DNS query can carry data out.
    pub(super) fn lookups(&self) -> bool {
        self.any || self.lookups
    }

    pub(super) fn any(&self) -> bool {
        self.any
    }

    /// The socket check: the implicit bind of a connect, and connects to granted addresses.
    pub(super) fn allows_socket(&self, addr: SocketAddr, use_: SocketAddrUse) -> bool {
        if self.any {
            return true;
        }
        let addr = canonical(addr);
        let allowed = match use_ {
            SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
            SocketAddrUse::TcpConnect => self.connect.contains(&addr),
            _ => false,
        };
        if !allowed {
            let (what, hint) = match use_ {
                SocketAddrUse::TcpConnect => (
                    format!("a TCP connection to {addr}"),
                    format!(
                        "grant it with `connect = [\"{addr}\"]` in [plugins.grants] (or `--connect {addr}`)"
                    ),
                ),
                other => (
                    format!("{other:?} on {addr}"),
                    "sensors may only connect out (no listening, no UDP)".to_owned(),
                ),
            };
            self.refuse(format!("the sandbox refused {what}: {hint}"));
        }
        allowed
    }

    fn allows_origin(&self, uri: &http::Uri) -> bool {
        if self.any {
            return true;
        }
        let origin = Origin::of(uri);
        if origin.as_ref().is_some_and(|o| self.http.contains(o)) {
            return true;
        }
        let shown = origin.map_or_else(|| uri.to_string(), |o| o.to_string());
        self.refuse(format!(
            "the sandbox refused an HTTP request to {shown}: grant the origin with \
             `http = [\"{shown}\"]` in [plugins.grants] (or `--http {shown}`)"
        ));
        false
    }

    fn refuse(&self, message: String) {
        tracing::warn!(target: "plugin", "{message}");
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
    }

    /// The last refusal since this was last asked.
    pub(super) fn take_refusal(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// The addresses `host` resolves to now (an address is itself), or an error naming `grant`.
async fn lookup(
    grant: &str,
    host: &str,
    port: u16,
) -> Result<impl Iterator<Item = SocketAddr>, GrantError> {
    let found: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| GrantError(format!("{grant}: cannot resolve `{host}`: {e}")))?
            .collect(),
    };
    if found.is_empty() {
        return Err(GrantError(format!(
            "{grant}: `{host}` resolves to no address"
        )));
    }
    Ok(found.into_iter().map(canonical))
}

/// What a sensor's imports let it ask for, each with the grant that would allow it: shown by
/// `fleetmeter plugin inspect` so that an operator sees a sensor wants the network before
/// granting it. (Importing is not using: Rust's standard library imports the filesystem
/// and the environment in every component.)
pub fn uses(imports: &[String]) -> Vec<String> {
    let has = |prefix: &str| imports.iter().any(|i| i.starts_with(prefix));
    let mut uses = Vec::new();
    if has("wasi:sockets/tcp") {
        uses.push("TCP connections: a `connect` grant (--connect HOST:PORT)".to_owned());
    }
    if has("wasi:sockets/udp") {
        uses.push("UDP: refused unless `network = true` (allow_any_network)".to_owned());
    }
    if has("wasi:sockets/ip-name-lookup") {
        uses.push("name lookups: allowed with a `connect` grant".to_owned());
    }
    if has("wasi:http/outgoing-handler") {
        uses.push("HTTP requests: an `http` grant (--http ORIGIN)".to_owned());
    }
    if has("wasi:filesystem") {
        uses.push("files: a `dirs` grant (--dir HOST[:GUEST]), read-only".to_owned());
    }
    if has("wasi:cli/environment") {
        uses.push("environment variables: [plugins.grants.env] (--env KEY=VALUE)".to_owned());
    }
    uses
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they are.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// Longest request body a sensor may send, and longest response body the host buffers for
/// it (a sensor reads a status page or a metrics endpoint, not a download).
const MAX_REQUEST_BODY: usize = 64 * 1024;
const MAX_RESPONSE_BODY: usize = 4 * 1024 * 1024;

/// The `wasi:http` send hook of one sensor's instances: the origin check, then the host's own
/// client (reqwest) with no redirects, no proxy, the origins' names pinned to the addresses
/// they resolved to at load, and every wait bounded by the plugin's time limit.
pub(super) struct HttpHooks {
    pub policy: Arc<NetworkPolicy>,
}

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                    ),
                    HttpError,
                >,
            > + Send,
    > {
        drop(fut);
        let allowed = self.policy.allows_origin(request.uri());
        let client = self.policy.client.clone();
        Box::new(async move {
            let Some(client) = client.filter(|_| allowed) else {
                return Err(HttpError::HttpRequestDenied);
            };
            send(&client, request).await
        })
    }
}

async fn send(
    client: &reqwest::Client,
    request: http::Request<WasiBody>,
) -> Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
> {
    use http_body_util::{BodyExt, Full, Limited};
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, MAX_REQUEST_BODY)
        .collect()
        .await
        .map_err(|_| HttpError::HttpRequestBodySize(None))?
        .to_bytes();
    let mut outgoing = client.request(parts.method, parts.uri.to_string());
    for (name, value) in &parts.headers {
        if name != http::header::HOST {
            outgoing = outgoing.header(name, value);
        }
    }
    let response = outgoing.body(body).send().await.map_err(|e| {
        if e.is_timeout() {
            HttpError::ConnectionTimeout
        } else if e.is_connect() {
            HttpError::ConnectionRefused
        } else {
            HttpError::InternalError(Some(crate::text::one_line_bounded(&format!("{e:#}"), 300)))
        }
    })?;
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BODY as u64)
    {
        return Err(HttpError::HttpResponseBodySize(response.content_length()));
    }
    let mut reply = http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        reply = reply.header(name, value);
    }
    let mut bytes = Vec::new();
    let mut response = response;
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        if e.is_timeout() {
            HttpError::HttpResponseTimeout
        } else {
            HttpError::HttpProtocolError
        }
    })? {
        if bytes.len() + chunk.len() > MAX_RESPONSE_BODY {
            return Err(HttpError::HttpResponseBodySize(None));
        }
        bytes.extend_from_slice(&chunk);
    }
    let body = Full::new(bytes::Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync();
    let reply = reply
        .body(body)
        .map_err(|e| HttpError::InternalError(Some(e.to_string())))?;
    Ok((
        reply,
        Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_refuse() {
        let e = Endpoint::parse("Meter.Local:502").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("meter.local", 502));
        assert_eq!(
            Endpoint::parse("[::1]:502").unwrap().to_string(),
            "[::1]:502"
        );
        for bad in [
            "meter",
            "meter:0",
            "meter:70000",
            ":502",
            "::1:502",
            "a b:1",
            "[zz]:1",
        ] {
            let err = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains(bad) && err.contains("HOST:PORT"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn origins_parse_and_refuse() {
        let o = Origin::parse("https://Meter.Example").unwrap();
        assert_eq!(
            (o.https, o.host.as_str(), o.port),
            (true, "meter.example", 443)
        );
        assert_eq!(o.to_string(), "https://meter.example");
        let o = Origin::parse("http://10.0.0.7:8080/").unwrap();
        assert_eq!(o.to_string(), "http://10.0.0.7:8080");
        for bad in [
            "ftp://x",
            "http://u:p@x",
            "http://x/path",
            "http://x/?q=1",
            "10.0.0.7:8080",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn only_granted_addresses_and_origins_pass() {
        let policy = NetworkPolicy::resolve(
            false,
            &[Endpoint::parse("127.0.0.1:502").unwrap()],
            &[Origin::parse("http://127.0.0.1:8080").unwrap()],
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        let ok: SocketAddr = "127.0.0.1:502".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:502".parse().unwrap();
        assert!(policy.allows_socket(ok, SocketAddrUse::TcpConnect));
        assert!(policy.allows_socket(mapped, SocketAddrUse::TcpConnect));
        assert!(policy.allows_socket("0.0.0.0:0".parse().unwrap(), SocketAddrUse::TcpBind));
        assert_eq!(policy.take_refusal(), None);
        assert!(!policy.allows_socket("127.0.0.1:503".parse().unwrap(), SocketAddrUse::TcpConnect));
        let refusal = policy.take_refusal().unwrap();
        assert!(
            refusal.contains("connect = [\"127.0.0.1:503\"]"),
            "{refusal}"
        );
        assert!(!policy.allows_socket("0.0.0.0:8080".parse().unwrap(), SocketAddrUse::TcpBind));
        assert!(!policy.allows_socket(ok, SocketAddrUse::TcpListen));
        assert!(!policy.allows_socket(ok, SocketAddrUse::UdpBind));
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert!(policy.allows_origin(&uri("http://127.0.0.1:8080/metrics")));
        assert!(!policy.allows_origin(&uri("https://127.0.0.1:8080/metrics")));
        assert!(!policy.allows_origin(&uri("http://127.0.0.1:8081/")));
        let refusal = policy.take_refusal().unwrap();
        assert!(
            refusal.contains("http = [\"http://127.0.0.1:8081\"]"),
            "{refusal}"
        );
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_nothing_names_its_grant() {
        let err = NetworkPolicy::resolve(
            false,
            &[Endpoint::parse("no-such-host.invalid:502").unwrap()],
            &[],
            Duration::from_secs(1),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("connect grant `no-such-host.invalid:502`"),
            "{err}"
        );
    }
}
