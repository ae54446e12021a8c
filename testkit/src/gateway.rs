//! An HTTP gateway in front of a server, as a load balancer or reverse proxy in front of the
//! measurements API would be: it passes connections through, or answers each new connection
//! with a fixed response (a redirect, a 413 from its body limit, a 422 from a stricter API
//! version) and closes it. Changing the mode closes the connections it relays, so a client's
//! next request opens a new connection and sees the new mode.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// What the gateway does with a new connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Relay it to the server.
    Pass,
    /// Read one request, answer `status` (e.g. `"301 Moved Permanently"`) with `headers`
    /// and `body`, close.
    Answer {
        status: String,
        headers: Vec<(String, String)>,
        body: String,
    },
}

impl Mode {
    pub fn answer(status: &str, body: &str) -> Self {
        Mode::Answer {
            status: status.to_owned(),
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }

    pub fn redirect(status: &str, location: &str) -> Self {
        Mode::Answer {
            status: status.to_owned(),
            headers: vec![("location".into(), location.to_owned())],
            body: String::new(),
        }
    }
}

#[derive(Debug)]
pub struct Gateway {
    pub port: u16,
    mode: Arc<Mutex<Mode>>,
    answered: Arc<AtomicUsize>,
    relays: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Gateway {
    /// A gateway on a free loopback port in front of `127.0.0.1:{server_port}`, passing.
    pub async fn start(server_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let answered = Arc::new(AtomicUsize::new(0));
        let relays = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (mode, answered, relays) = (mode.clone(), answered.clone(), relays.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let now = mode.lock().unwrap().clone();
                    match now {
                        Mode::Pass => {
                            let relay = tokio::spawn(relay(client, server_port));
                            let mut relays = relays.lock().unwrap();
                            relays.retain(|r: &JoinHandle<()>| !r.is_finished());
                            relays.push(relay);
                        }
                        Mode::Answer {
                            status,
                            headers,
                            body,
                        } => {
                            let answered = answered.clone();
                            tokio::spawn(async move {
                                if answer(client, &status, &headers, &body).await {
                                    answered.fetch_add(1, Ordering::SeqCst);
                                }
                            });
                        }
                    }
                }
            }
        });
        Self {
            port,
            mode,
            answered,
            relays,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// From the next connection on; the connections relayed so far are closed.
    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
        for relay in self.relays.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    /// Requests answered by the gateway itself so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
        for relay in self.relays.lock().unwrap().drain(..) {
            relay.abort();
        }
    }
}

async fn relay(mut client: TcpStream, server_port: u16) {
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", server_port)).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// Reads one request (its head and a `content-length` body, up to 8 MiB) and answers it.
async fn answer(
    mut client: TcpStream,
    status: &str,
    headers: &[(String, String)],
    body: &str,
) -> bool {
    let mut request = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    let head_end = loop {
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
        .min(8 << 20);
    while request.len() < head_end + length {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let mut response = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    client.write_all(response.as_bytes()).await.is_ok()
}
