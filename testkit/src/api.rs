//! The real `fleetmeter-api` binary on a free loopback port, writing to a given Redis, with
//! a token; stopped (SIGKILL) when dropped.

use std::{
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::free_port;

#[derive(Debug)]
pub struct ApiServer {
    pub port: u16,
    child: Child,
}

impl ApiServer {
    /// Starts `binary` on a free port with `REDIS_URL = redis_url` and `API_TOKEN = token`,
    /// its log in `log`, and waits until it accepts connections.
    pub fn start(binary: &Path, redis_url: &str, token: &str, log: &Path) -> Self {
        assert!(
            binary.exists(),
            "{} is missing: `cargo build -p fleetmeter-api` (with --release for benchmarks)",
            binary.display()
        );
        let port = free_port();
        let log = std::fs::File::create(log).expect("API log file");
        let child = Command::new(binary)
            .env("API_LISTEN", format!("127.0.0.1:{port}"))
            .env("REDIS_URL", redis_url)
            .env("API_TOKEN", token)
            .env_remove("API_TOKEN_FILE")
            .env_remove("API_ALLOW_ANONYMOUS_WRITES")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the API binary starts");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the API did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
