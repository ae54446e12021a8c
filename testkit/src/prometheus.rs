//! Debian's `prometheus` server on a free loopback port with a temporary TSDB, started from a
//! given configuration (tests rewrite the deployment's targets to their local processes).

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::free_port;

#[derive(Debug)]
pub struct PrometheusServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl PrometheusServer {
    /// Starts `prometheus` with `config` (YAML text) and waits until it is ready.
    pub fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start prometheus ({e}); scripts/test installs Debian's prometheus")
            });
        let server = Self { port, dir, child };
        let start = Instant::now();
        while !server.ready() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "prometheus on port {port} not ready within 30 s; log:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn ready(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut reply = String::new();
        let answered = stream
            .write_all(b"GET /-/ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_ok()
            && stream.read_to_string(&mut reply).is_ok();
        answered && (reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"))
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
