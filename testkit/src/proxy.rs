//! A TCP proxy in front of ZooKeeper that injects one precise fault: when armed, it forwards
//! the next `create` request to the server, then cuts the connection before the reply
//! reaches the client. The server has created the node; the client sees ConnectionLoss and
//! reconnects (through the proxy, disarmed) within its session.
//!
//! ZooKeeper frames are a 4-byte big-endian length and a payload; after the connect
//! handshake each request payload starts with xid (i32) and the opcode (i32).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// create, create2, createContainer, createTTL.
const CREATE_OPCODES: [i32; 4] = [1, 15, 19, 21];

#[derive(Debug)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    armed: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(server_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (armed, frozen, cuts) = (armed.clone(), frozen.clone(), cuts.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)).await else {
                        continue;
                    };
                    let faults = Faults {
                        armed: armed.clone(),
                        frozen: frozen.clone(),
                        cuts: cuts.clone(),
                    };
                    tokio::spawn(relay(client, server, faults));
                }
            }
        });
        Self {
            addr,
            armed,
            frozen,
            cuts,
            task,
        }
    }

    /// Cut the connection right after forwarding the next create request.
    pub fn cut_after_next_create(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Blackholes every connection, present and future: bytes are swallowed both ways and
    /// sockets stay open, as with a frozen process or a silent network partition. The
    /// server sees no heartbeats and expires the session after its timeout.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }

    /// How many connections were cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Faults {
    armed: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
}

async fn relay(client: TcpStream, server: TcpStream, faults: Faults) {
    let Faults {
        armed,
        frozen,
        cuts,
    } = faults;
    let frozen_down = frozen.clone();
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Set before the fatal request is forwarded: nothing from the server reaches the client
    // after that point.
    let blocked = Arc::new(AtomicBool::new(false));
    let upstream = {
        let blocked = blocked.clone();
        async move {
            let mut first = true;
            loop {
                let mut len = [0_u8; 4];
                if client_read.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut payload = vec![0_u8; u32::from_be_bytes(len) as usize];
                if client_read.read_exact(&mut payload).await.is_err() {
                    return;
                }
                let opcode = (!first && payload.len() >= 8)
                    .then(|| i32::from_be_bytes(payload[4..8].try_into().unwrap()));
                first = false;
                if frozen.load(Ordering::SeqCst) {
                    continue;
                }
                let fatal = opcode.is_some_and(|op| CREATE_OPCODES.contains(&op))
                    && armed.swap(false, Ordering::SeqCst);
                if fatal {
                    blocked.store(true, Ordering::SeqCst);
                }
                if server_write.write_all(&len).await.is_err()
                    || server_write.write_all(&payload).await.is_err()
                {
                    return;
                }
                if fatal {
                    cuts.fetch_add(1, Ordering::SeqCst);
                    return; // dropping both halves closes the client's connection
                }
            }
        }
    };
    let downstream = async move {
        let mut buf = vec![0_u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if frozen_down.load(Ordering::SeqCst) {
                continue;
            }
            if blocked.load(Ordering::SeqCst) || client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Whichever side ends first ends the connection (both halves are dropped).
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}
