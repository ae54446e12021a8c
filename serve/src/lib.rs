//! The HTTP server loop of fleetmeter's two servers: the measurements API and the agent's
//! `/metrics` + `/healthz` (and [`redact_url`], for what both sides log). What `axum::serve` does, plus what a server on a network needs:
//!
//! - **a connection limit**: at most [`Limits::max_connections`] open at once; the next
//!   client waits in the kernel's backlog instead of costing a task and a buffer;
//! - **a header timeout**: a client that does not send a whole request head within
//!   [`Limits::header_timeout`] (slowloris, or an idle keep-alive connection) is dropped;
//! - **a request timeout**: reading the body and answering take at most
//!   [`Limits::request_timeout`], else `408` and the connection closes;
//! - **graceful shutdown**: once `shutdown` completes, no new connection is taken and those
//!   in flight finish (at most [`Limits::drain`]);
//! - **TLS, when asked** ([`serve_tls`], [`tls::server_config`]): for a server without a
//!   reverse proxy in front; the handshake counts against the header timeout.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{Request, Response, StatusCode, header},
};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::Semaphore,
};
use tower::ServiceExt;

pub mod tls;

/// A server's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long a client may take to send its request's headers.
    pub header_timeout: Duration,
    /// How long one request may take, body and answer included.
    pub request_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub drain: Duration,
}

impl Limits {
    /// For the API: many agents' leaders and dashboards, bodies up to a few MB.
    pub const API: Limits = Limits {
        max_connections: 1024,
        header_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(30),
        drain: Duration::from_secs(10),
    };

    /// For an agent's telemetry: a scraper or two and a healthcheck; small answers.
    pub const TELEMETRY: Limits = Limits {
        max_connections: 64,
        header_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        drain: Duration::from_secs(2),
    };
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, router, limits, None, shutdown).await
}

/// [`serve`] over TLS ([`tls::server_config`]).
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    serve_with(listener, router, limits, Some(acceptor), shutdown).await
}

/// [`serve`], over TLS when `tls` is given.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                // Said at most once a minute, not per waiting client.
                if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(
                        max = limits.max_connections,
                        "connection limit reached: new clients wait until one closes"
                    );
                    warned = Some(tokio::time::Instant::now());
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %err, "accept failed; retrying");
                    drop(slot);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small answers go out at once (no Nagle delay waiting for more to send).
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let router = router.clone();
            async move {
                let request = request.map(Body::new);
                let answer = tokio::time::timeout(limits.request_timeout, router.oneshot(request));
                Ok::<_, Infallible>(match answer.await {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => timed_out(limits.request_timeout),
                })
            }
        });
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            // A client that goes away, or a timeout, ends its connection: nothing to report.
            match tls {
                None => serve_connection(stream, service, limits, watcher).await,
                // The handshake counts against the header timeout: a client that connects
                // and sends nothing is dropped as a slow one is.
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => serve_connection(stream, service, limits, watcher).await,
                        Ok(Err(err)) => {
                            tracing::debug!(error = %err, "TLS handshake refused");
                        }
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after {:?}; closing them",
            limits.drain
        );
    }
    Ok(())
}

/// One connection, HTTP/1.1, watched for a graceful shutdown.
async fn serve_connection<I, S>(
    io: I,
    service: S,
    limits: Limits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service);
    let _ = watcher.watch(connection).await;
}

fn timed_out(limit: Duration) -> Response<Body> {
    let mut response = Response::new(Body::from(format!(
        "{{\"error\":\"the request took longer than {} s (body and answer)\"}}",
        limit.as_secs()
    )));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// A URL with the password of its user part (`redis://:PASSWORD@host`,
/// `https://user:PASSWORD@api/`) replaced by `***`, for log lines and printed settings on
/// both sides; text that is not a URL comes back as it is.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => raw.to_owned(),
    }
}
