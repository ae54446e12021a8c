//! A real ZooKeeper (Debian's `zookeeper` package, Java) on a free loopback port with a temp
//! data directory. `stop` kills it as a crash would; `restart` brings it back with the same
//! data, so sessions survive an outage shorter than their timeout.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::free_port;

const JAR: &str = "/usr/share/java/zookeeper.jar";
const CONF_DIR: &str = "/etc/zookeeper/conf";

#[derive(Debug)]
pub struct ZkServer {
    pub port: u16,
    /// The TLS port (`secureClientPort`) of a server started with [`ZkServer::start_tls`].
    pub secure_port: Option<u16>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra JVM options (a JAAS file for SASL, a larger heap).
    jvm: Vec<String>,
}

impl ZkServer {
    /// tickTime 500 ms: sessions may last 1 to 10 s.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// [`ZkServer::start`] with `extra` lines in zoo.cfg (e.g. `enforce.auth.enabled=true`).
    pub fn start_with(extra: &str) -> Self {
        Self::launch(extra, Vec::new())
    }

    /// For many clients from one address: no per-address connection cap
    /// (`maxClientCnxns=0`; the default, 60, refuses the 61st session from 127.0.0.1), an
    /// accept backlog of 4,096 instead of 50 (a storm of connects overflows 50 and the
    /// kernel drops the rest, to be retried seconds later), and a heap of `heap_mib` MiB.
    pub fn start_for_fleet(heap_mib: u32) -> Self {
        Self::launch(
            "maxClientCnxns=0\nclientPortListenBacklog=4096\n",
            vec![format!("-Xmx{heap_mib}m")],
        )
    }

    /// A server on a free port with `extra` zoo.cfg lines and `jvm` options.
    fn launch(extra: &str, jvm: Vec<String>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        write_config(dir.path(), port, extra);
        let mut server = Self {
            port,
            secure_port: None,
            dir,
            child: None,
            jvm,
        };
        server.spawn();
        server
    }

    /// The server's process id (for its CPU time and memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// With TLS: `secureClientPort` on a second free port (see `secure_port`), served by
    /// Netty with `keystore` (PEM: key, then certificate) and `truststore` (PEM CA), client
    /// certificates required. The plain port stays for the four-letter commands.
    pub fn start_tls(keystore: &Path, truststore: &Path) -> Self {
        let secure = free_port();
        let mut server = Self::start_with(&format!(
            "secureClientPort={secure}\nsecureClientPortAddress=127.0.0.1\n\
             serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n\
             ssl.keyStore.location={}\nssl.keyStore.type=PEM\n\
             ssl.trustStore.location={}\nssl.trustStore.type=PEM\nssl.clientAuth=need\n",
            keystore.display(),
            truststore.display()
        ));
        server.secure_port = Some(secure);
        server
    }

    /// With SASL DIGEST-MD5 for `users` (name, password), as a JAAS `Server` section with
    /// ZooKeeper's DigestLoginModule.
    pub fn start_sasl(users: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let jaas = dir.path().join("jaas.conf");
        let entries: String = users
            .iter()
            .map(|(user, password)| format!("  user_{user}=\"{password}\"\n"))
            .collect();
        std::fs::write(
            &jaas,
            format!(
                "Server {{\n  org.apache.zookeeper.server.auth.DigestLoginModule required\n{entries};\n}};\n"
            ),
        )
        .unwrap();
        let port = free_port();
        write_config(
            dir.path(),
            port,
            "authProvider.1=org.apache.zookeeper.server.auth.SASLAuthenticationProvider\n",
        );
        let mut server = Self {
            port,
            secure_port: None,
            dir,
            child: None,
            jvm: vec![format!(
                "-Djava.security.auth.login.config={}",
                jaas.display()
            )],
        };
        server.spawn();
        server
    }

    /// `127.0.0.1:PORT` of the TLS port.
    pub fn secure_hosts(&self) -> String {
        format!(
            "127.0.0.1:{}",
            self.secure_port.expect("a server started with start_tls")
        )
    }

    pub fn hosts(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        self.child = Some(spawn_java(
            self.dir.path(),
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            &self.jvm,
        ));
        let started = Instant::now();
        while four_letter(self.port, "ruok").as_deref() != Some("imok") {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "ZooKeeper on port {} did not start within 30 s; log: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Kills the server (SIGKILL), as a crash or a network cut would look to clients.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Kills the server, deletes its data (snapshots and transaction logs) and starts it
    /// again on the same port: a ZooKeeper recreated without its volume, or a disk replaced.
    /// Sessions are gone with the data.
    pub fn wipe(&mut self) {
        self.stop();
        let data = self.dir.path().join("data");
        std::fs::remove_dir_all(&data).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        self.spawn();
    }

    /// Whether some client holds a watch on `path` (absolute, root included): lets a test
    /// wait until another client is really waiting, instead of sleeping.
    pub fn is_watched(&self, path: &str) -> bool {
        four_letter(self.port, "wchp").is_some_and(|out| out.lines().any(|l| l.trim() == path))
    }

    /// How many sessions hold a watch on `path` (absolute), from `wchp`: the path's line is
    /// followed by one indented line per session.
    pub fn watchers_of(&self, path: &str) -> usize {
        let out = four_letter(self.port, "wchp").unwrap_or_default();
        out.lines()
            .skip_while(|l| l.trim() != path)
            .skip(1)
            .take_while(|l| l.starts_with(char::is_whitespace))
            .count()
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes `dir/zoo.cfg` for a server on `port` with its data in `dir/data`: tickTime 500 ms
/// (sessions may last 1 to 10 s), loopback only, no admin server, the four-letter commands
/// the fixtures use, then `extra` (ensemble settings).
fn write_config(dir: &Path, port: u16, extra: &str) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("zoo.cfg"),
        format!(
            "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n4lw.commands.whitelist=ruok,srvr,wchp,mntr\n{extra}",
            dir.join("data").display()
        ),
    )
    .unwrap();
}

/// Starts `main_class` on `dir/zoo.cfg`, logging to `dir/server.log`.
/// Netty's codec and resolver, which the TLS server needs and the zookeeper jar's manifest
/// does not list (Debian's libnetty-java ships them).
const NETTY_EXTRA: &str = "/usr/share/java/netty-codec.jar:/usr/share/java/netty-resolver.jar";

fn spawn_java(dir: &Path, main_class: &str, jvm: &[String]) -> Child {
    assert!(
        Path::new(JAR).exists(),
        "{JAR} not found: scripts/test installs Debian's zookeeper package"
    );
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    Command::new("java")
        .arg(format!("-Dzookeeper.log.dir={}", dir.display()))
        // A later -Xmx (in `jvm`) wins over this default.
        .args([
            "-Xmx256m",
            "-cp",
            &format!("{CONF_DIR}:{JAR}:{NETTY_EXTRA}"),
        ])
        .args(jvm)
        .arg(main_class)
        .arg(dir.join("zoo.cfg"))
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("java (a JRE comes with Debian's zookeeper package)")
}

/// Sends a four-letter command; `None` when the server does not answer.
pub fn four_letter(port: u16, command: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(command.as_bytes()).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    Some(reply)
}

/// A 3-node ensemble (`QuorumPeerMain`) on loopback, for quorum tests.
#[derive(Debug)]
pub struct ZkEnsemble {
    dir: tempfile::TempDir,
    pub client_ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl ZkEnsemble {
    pub fn start(size: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let client_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let servers: String = (0..size)
            .map(|i| {
                format!(
                    "server.{}=127.0.0.1:{}:{}\n",
                    i + 1,
                    free_port(),
                    free_port()
                )
            })
            .collect();
        for (i, port) in client_ports.iter().enumerate() {
            let node = dir.path().join(format!("zk{}", i + 1));
            write_config(
                &node,
                *port,
                &format!("initLimit=20\nsyncLimit=10\n{servers}"),
            );
            std::fs::write(node.join("data/myid"), format!("{}\n", i + 1)).unwrap();
        }
        let mut ensemble = Self {
            dir,
            client_ports,
            children: (0..size).map(|_| None).collect(),
        };
        for i in 0..size {
            ensemble.spawn(i);
        }
        ensemble.wait_for_quorum();
        ensemble
    }

    pub fn hosts(&self) -> String {
        self.client_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        let node = self.dir.path().join(format!("zk{}", i + 1));
        self.children[i] = Some(spawn_java(
            &node,
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            &[],
        ));
    }

    /// Every running member serves clients (leader or follower).
    pub fn wait_for_quorum(&self) {
        let started = Instant::now();
        loop {
            let serving = self
                .children
                .iter()
                .zip(&self.client_ports)
                .filter(|(c, _)| c.is_some())
                .all(|(_, port)| four_letter(*port, "srvr").is_some_and(|s| s.contains("Mode: ")));
            if serving {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the ensemble did not form a quorum within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills member `i` (0-based).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self, i: usize) {
        self.stop(i);
        self.spawn(i);
    }
}

impl Drop for ZkEnsemble {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.stop(i);
        }
    }
}
