//! Links as they really are, for target tests and the link benchmark: the server in its own
//! network namespace behind a veth pair whose both directions are shaped with `tc tbf` (this
//! kernel has no `netem` for delay), and a relay on loopback that holds every byte for half
//! the round trip in each direction before passing it on.
//!
//! The test subnet (`10.213.N.0/24`) gets an `unreachable` route in the root namespace first,
//! so nothing meant for it can leave the machine; the veth pair's own /30 inside it is the
//! only way there.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A link's speed and round trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// Megabits per second, each direction.
    pub mbit: u32,
    /// Round-trip time the relay adds, in milliseconds.
    pub rtt_ms: f64,
}

impl Link {
    /// A gigabit LAN: 1 Gbit/s, 0.5 ms round trip.
    pub const LAN: Link = Link {
        mbit: 1000,
        rtt_ms: 0.5,
    };
    /// A line to another site: 100 Mbit/s, 20 ms round trip.
    pub const WAN: Link = Link {
        mbit: 100,
        rtt_ms: 20.0,
    };
}

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A network namespace reached over a shaped veth pair.
pub struct ShapedNet {
    /// The namespace the server runs in.
    pub ns: String,
    /// The server's address there.
    pub server_ip: String,
    host_if: String,
}

impl ShapedNet {
    /// Namespace `hf-TAG` (TAG: at most 8 characters, unique per test) behind a veth pair
    /// shaped to `link.mbit` both ways. `subnet` (1–250) picks `10.213.SUBNET.0/24`.
    pub fn new(test: &str, tag: &str, subnet: u8, link: Link) -> Option<Self> {
        let ns = format!("hf-{tag}");
        let host_if = format!("hfv-{tag}");
        let net = format!("10.213.{subnet}");
        // Whatever an earlier run left behind goes first.
        let _ = sh(&format!("ip netns del {ns}; ip link del {host_if}"));
        let _ = sh(&format!("ip route add unreachable {net}.0/24"));
        // Queue at most 50 ms of traffic; bursts of 10 ms (tbf needs at least rate / HZ).
        let bytes_per_sec = u64::from(link.mbit) * 125_000;
        let burst = (bytes_per_sec / 100).max(32 << 10);
        let tbf = format!("tbf rate {}mbit burst {burst} latency 50ms", link.mbit);
        let ok = sh(&format!("ip netns add {ns}"))
            && sh(&format!("ip -n {ns} link set lo up"))
            && sh(&format!(
                "ip link add {host_if} type veth peer name eth0 netns {ns}"
            ))
            && sh(&format!("ip addr add {net}.1/30 dev {host_if}"))
            && sh(&format!("ip -n {ns} addr add {net}.2/30 dev eth0"))
            && sh(&format!("ip link set {host_if} up"))
            && sh(&format!("ip -n {ns} link set eth0 up"))
            && sh(&format!("tc qdisc add dev {host_if} root {tbf}"))
            && sh(&format!(
                "ip netns exec {ns} tc qdisc add dev eth0 root {tbf}"
            ));
        let shaped = Self {
            ns,
            server_ip: format!("{net}.2"),
            host_if,
        };
        if !ok {
            crate::servers::unavailable(
                test,
                "cannot make a shaped network namespace (needs root, veth and tc tbf)",
            );
            return None;
        }
        Some(shaped)
    }

    /// Bytes the server's side has sent over the link so far (headers included).
    pub fn bytes_from_server(&self) -> u64 {
        std::fs::read_to_string(format!(
            "/sys/class/net/{}/statistics/rx_bytes",
            self.host_if
        ))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
    }
}

impl Drop for ShapedNet {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "ip netns del {}; ip link del {}",
            self.ns, self.host_if
        ));
    }
}

/// Listens on `127.0.0.1` on each of some ports and passes every connection on to the same
/// port of another address, each byte held for a fixed time in each direction.
pub struct DelayRelay {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Bytes a direction holds at most (read ahead of the delay line).
const HELD_CHUNKS: usize = 64;
const CHUNK: usize = 64 << 10;

impl DelayRelay {
    /// Relay `127.0.0.1:P` to `to:P` for every P in `ports`, holding bytes `one_way` each way.
    pub fn start(to: &str, ports: &[u16], one_way: Duration) -> std::io::Result<Self> {
        let listeners = ports
            .iter()
            .map(|p| {
                let l = std::net::TcpListener::bind(("127.0.0.1", *p))?;
                l.set_nonblocking(true)?;
                Ok((l, *p))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let to = to.to_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let mut accepting = Vec::new();
                for (l, port) in listeners {
                    let Ok(l) = tokio::net::TcpListener::from_std(l) else {
                        continue;
                    };
                    let to = to.clone();
                    accepting.push(tokio::spawn(async move {
                        while let Ok((client, _)) = l.accept().await {
                            let to = to.clone();
                            tokio::spawn(async move {
                                if let Ok(server) =
                                    tokio::net::TcpStream::connect((to.as_str(), port)).await
                                {
                                    let _ = client.set_nodelay(true);
                                    let _ = server.set_nodelay(true);
                                    let (cr, cw) = client.into_split();
                                    let (sr, sw) = server.into_split();
                                    tokio::join!(
                                        delayed(cr, sw, one_way),
                                        delayed(sr, cw, one_way)
                                    );
                                }
                            });
                        }
                    }));
                }
                let _ = stopped.await;
                for a in accepting {
                    a.abort();
                }
            });
            rt.shutdown_background();
        });
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// Copy `from` to `to`, each piece written `delay` after it was read; the end (or an error)
/// is passed on as a shutdown after the same delay.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Option<Vec<u8>>)>(HELD_CHUNKS);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let piece = match from.read(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(buf[..n].to_vec()),
            };
            let end = piece.is_none();
            if tx.send((Instant::now() + delay, piece)).await.is_err() || end {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, piece)) = rx.recv().await {
            tokio::time::sleep_until(at.into()).await;
            match piece {
                Some(p) => {
                    if to.write_all(&p).await.is_err() {
                        break;
                    }
                }
                None => {
                    let _ = to.shutdown().await;
                    break;
                }
            }
        }
    };
    tokio::join!(reader, writer);
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A server reached over a shaped link: its namespace, and the relay that adds the delay.
pub struct FarServer {
    pub net: ShapedNet,
    _relay: DelayRelay,
}

impl FarServer {
    /// Relay `ports` on loopback to the namespace's server over `link`.
    pub fn relay(net: ShapedNet, ports: &[u16], link: Link) -> std::io::Result<Self> {
        let one_way = Duration::from_secs_f64(link.rtt_ms / 2000.0);
        let relay = DelayRelay::start(&net.server_ip, ports, one_way)?;
        Ok(Self { net, _relay: relay })
    }
}
