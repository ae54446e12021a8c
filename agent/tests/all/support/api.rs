//! The real `fleetmeter-api` binary as a child process on a free loopback port, stopped when
//! dropped.

use std::{
    ffi::OsStr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{fleet::api_binary, free_port, redis::RedisServer, wait_until};

pub struct ApiProcess {
    child: Child,
    pub port: u16,
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ApiProcess {
    /// The API on `redis`, taking writes without a token unless `env` sets `API_TOKEN`,
    /// with `env` added; returns once its port accepts connections.
    pub async fn start<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        redis: &RedisServer,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let port = free_port();
        let mut command = Command::new(api_binary());
        command
            .env("API_LISTEN", format!("127.0.0.1:{port}"))
            .env("REDIS_URL", redis.url())
            .env_remove("API_TOKEN")
            .env("API_ALLOW_ANONYMOUS_WRITES", "true")
            .envs(env)
            .stderr(Stdio::null());
        let api = Self {
            child: command.spawn().unwrap(),
            port,
        };
        wait_until("the API to listen", Duration::from_secs(15), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        api
    }

    /// `scheme://host:port/`.
    pub fn url(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}/", self.port)
    }
}
