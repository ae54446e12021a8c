//! Instruments for the real-instrument sensors' tests, each a real peer nobody here wrote or,
//! where no such program fits, the smallest honest one:
//!
//! - [`ModbusServer`]: a Modbus/TCP server from pymodbus (PyPI), with a register of every type
//!   the `modbus-tcp` sensor reads ([`HOLDING`], [`INPUT`]) and an exception for any address
//!   past them;
//! - [`JsonPeer`]: Python's standard `http.server` serving a JSON status page, a redirect to
//!   another origin, and a count of the requests it saw;
//! - [`SilentPeer`]: a TCP port that accepts connections and never answers.
//!
//! (Prometheus endpoints are Debian's own `prometheus`, in [`crate::prometheus`].) Python is
//! the `.venv` scripts/test makes (`FLEETMETER_KAZOO_PYTHON`, or `.venv/bin/python` at the
//! repository's root), with kazoo and pymodbus.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::free_port;

/// The test virtualenv's Python, checked to import `module`.
pub fn python(module: &str) -> PathBuf {
    let python = std::env::var_os("FLEETMETER_KAZOO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import {module}: run scripts/test (it makes .venv with kazoo and pymodbus), \
         or set FLEETMETER_KAZOO_PYTHON to a Python that has it",
        python.display()
    );
    python
}

/// Holding registers the server serves: (protocol address, `type`, `word_order`, the value
/// the sensor must read).
pub const HOLDING: &[(u16, &str, &str, f64)] = &[
    (0, "u16", "big", 65534.0),
    (1, "i16", "big", -200.0),
    (2, "u32", "big", 70000.0),
    (4, "i32", "big", -70000.0),
    (6, "f32", "big", 230.5),
    (8, "f32", "little", 49.95),
];
/// Holding registers 11, 12, 13: one u16 per device of a fleet test (read with `scale =
/// 0.01`: 21.01, 22.02, 23.03).
pub const PER_DEVICE: [(u16, f64); 3] = [(11, 2101.0), (12, 2202.0), (13, 2303.0)];
/// Holding registers 20 to 25: a temperature (°C × 100) and a relative humidity (% × 100) per
/// device of a fleet test, in pairs from the first register given (read as `quantities =
/// "temperature:Cel, humidity:%"` with `scale = 0.01`).
pub const ENVIRONMENT: [(u16, f64, f64); 3] = [
    (20, 2150.0, 4020.0),
    (22, 2210.0, 4130.0),
    (24, 2270.0, 3990.0),
];
/// Input registers: (protocol address, u16 value).
pub const INPUT: &[(u16, f64)] = &[(0, 1234.0), (1, 5678.0)];
/// The first holding register past the served ones: reading it is exception 2.
pub const PAST_THE_END: u16 = 100;

const MODBUS_SERVER: &str = r#"
import asyncio, struct, sys, warnings
warnings.simplefilter("ignore")
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import StartAsyncTcpServer

def f32(v, little):
    hi, lo = struct.unpack(">HH", struct.pack(">f", v))
    return [lo, hi] if little else [hi, lo]

def u32(v):
    return [(v >> 16) & 0xFFFF, v & 0xFFFF]

holding = [65534, (-200) & 0xFFFF] + u32(70000) + u32((-70000) & 0xFFFFFFFF)
holding += f32(230.5, False) + f32(49.95, True)
holding += [0] * (11 - len(holding)) + [2101, 2202, 2303]
holding += [0] * (20 - len(holding)) + [2150, 4020, 2210, 4130, 2270, 3990]
holding += [0] * (100 - len(holding))
# pymodbus's blocks start at 1 for protocol address 0.
device = ModbusDeviceContext(hr=ModbusSequentialDataBlock(1, holding),
                             ir=ModbusSequentialDataBlock(1, [1234, 5678]))
context = ModbusServerContext(devices=device, single=True)
port = int(sys.argv[1])
print("serving", port, flush=True)
asyncio.run(StartAsyncTcpServer(context=context, address=("127.0.0.1", port)))
"#;

/// pymodbus's Modbus/TCP server on a free loopback port; stopped when dropped.
#[derive(Debug)]
pub struct ModbusServer {
    pub port: u16,
    child: Child,
}

impl ModbusServer {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// On a given port (a server that comes back where it was).
    pub fn start_on(port: u16) -> Self {
        let child = Command::new(python("pymodbus"))
            .args(["-c", MODBUS_SERVER, &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pymodbus's server");
        let server = Self { port, child };
        wait_for_port(port, "pymodbus's Modbus/TCP server");
        server
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for ModbusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const JSON_PEER: &str = r#"
import http.server, sys
hits = {"n": 0}
status, redirect_to = sys.argv[2], sys.argv[3]
class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def reply(self, code, body, headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/hits":
            return self.reply(200, str(hits["n"]).encode())
        hits["n"] += 1
        if self.path == "/status":
            self.reply(200, status.encode(), [("Content-Type", "application/json")])
        elif self.path == "/redirect":
            self.reply(302, b"", [("Location", redirect_to)])
        elif self.path == "/token":
            ok = self.headers.get("Authorization") == "Bearer s3cret"
            self.reply(200 if ok else 401, b'{"t": 1.5}')
        else:
            self.reply(404, b"not found")
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("serving", flush=True)
server.serve_forever()
"#;

/// Python's `http.server` serving `/status` (the JSON given), `/redirect` (302 to a URL
/// given), `/token` (200 only with `Authorization: Bearer s3cret`) and `/hits` (how many
/// requests the others got); stopped when dropped.
#[derive(Debug)]
pub struct JsonPeer {
    pub port: u16,
    child: Child,
}

impl JsonPeer {
    pub fn start(status: &str, redirect_to: &str) -> Self {
        let port = free_port();
        let child = Command::new(python("json"))
            .args(["-c", JSON_PEER, &port.to_string(), status, redirect_to])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python's http.server");
        let peer = Self { port, child };
        wait_for_port(port, "the JSON peer");
        peer
    }

    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests seen, `/hits` itself not counted.
    pub fn hits(&self) -> u64 {
        let reply = http_get(self.port, "/hits");
        let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
        body.trim()
            .parse()
            .unwrap_or_else(|e| panic!("/hits: {e}: {reply}"))
    }
}

impl Drop for JsonPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that accepts every connection and never sends a byte (the connections are held
/// until dropped): what a hung instrument looks like.
#[derive(Debug)]
pub struct SilentPeer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl SilentPeer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            held.len()
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops accepting; returns how many connections it was given.
    pub fn connections(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

impl Drop for SilentPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One plain GET on loopback; the whole reply, headers included.
fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply
}

fn wait_for_port(port: u16, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} on port {port} not listening within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
