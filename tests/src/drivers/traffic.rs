//! Real traffic between namespaces, with the far end's view of it: what the
//! server received and from which address. Every wait is bounded.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::topology::netns::Netns;

/// How long one exchange may take (scaled for emulated kernels).
pub fn timeout() -> Duration {
    crate::scaled(Duration::from_secs(5))
}

/// What the server saw of one exchange.
#[derive(Debug)]
pub struct Seen {
    /// The client address as the server saw it (after any NAT).
    pub peer: SocketAddr,
    /// The bytes the server received.
    pub received: Vec<u8>,
    /// The bytes the client got back (the server echoes).
    pub echoed: Vec<u8>,
}

/// One TCP connection from `client` to `server_ip:port` (bound in `server`):
/// send `payload`, the server echoes it and closes.
pub fn tcp_echo(
    client: &Netns,
    server: &Netns,
    server_ip: Ipv4Addr,
    port: u16,
    payload: &[u8],
) -> Result<Seen> {
    let at = SocketAddr::V4(SocketAddrV4::new(server_ip, port));
    tcp_echo_via(client, server, at, at, payload)
}

/// Like [`tcp_echo`], with the server bound at `bind` and the client
/// connecting to `connect` (a NodePort or service address that something
/// in between translates).
pub fn tcp_echo_via(
    client: &Netns,
    server: &Netns,
    bind: SocketAddr,
    connect: SocketAddr,
    payload: &[u8],
) -> Result<Seen> {
    let listener = server
        .run_in(|| TcpListener::bind(bind))
        .with_context(|| format!("binding {bind} in {}", server.name()))?;
    listener.set_nonblocking(true)?;
    let len = payload.len();
    let srv = std::thread::spawn(move || -> Result<(SocketAddr, Vec<u8>)> {
        let deadline = Instant::now() + timeout();
        let (mut conn, peer) = loop {
            match listener.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        bail!("no connection within {:?}", timeout());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e.into()),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(timeout()))?;
        conn.set_write_timeout(Some(timeout()))?;
        let mut buf = vec![0u8; len];
        conn.read_exact(&mut buf)?;
        conn.write_all(&buf)?;
        Ok((peer, buf))
    });
    let payload = payload.to_vec();
    let echoed = client.run_in(move || -> Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&connect, timeout())?;
        s.set_read_timeout(Some(timeout()))?;
        // A black-holed path stalls the sender too: bounded, not a hang.
        s.set_write_timeout(Some(timeout()))?;
        s.write_all(&payload)?;
        let mut back = vec![0u8; payload.len()];
        s.read_exact(&mut back)?;
        Ok(back)
    });
    let served = srv
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))?;
    let echoed = echoed.context("TCP client")?;
    let (peer, received) = served.context("TCP server")?;
    Ok(Seen {
        peer,
        received,
        echoed,
    })
}

/// `count` UDP request/response exchanges from `client` to `server_ip:port`.
/// Returns what the server saw of the last one.
pub fn udp_echo(
    client: &Netns,
    server: &Netns,
    server_ip: Ipv4Addr,
    port: u16,
    count: usize,
) -> Result<Seen> {
    let addr = SocketAddr::from((server_ip, port));
    echo_udp(client, server, addr, addr, count, Client::Unconnected)
}

/// `count` UDP exchanges as a resolver makes them: the client's socket is
/// connected to `dial` (a Service address, say), so the kernel drops any
/// answer that does not come from exactly `dial`; the server listens on
/// `listen` in `server` (the backend, after DNAT). Requests are
/// `trunkline query <i>`. Returns what the server saw of the last one.
pub fn udp_echo_via(
    client: &Netns,
    server: &Netns,
    listen: SocketAddr,
    dial: SocketAddr,
    count: usize,
) -> Result<Seen> {
    echo_udp(client, server, listen, dial, count, Client::Connected)
}

#[derive(Clone, Copy)]
enum Client {
    /// `send_to`/`recv_from`: any answer is taken.
    Unconnected,
    /// `connect` first: only answers from the dialled address arrive.
    Connected,
}

fn echo_udp(
    client: &Netns,
    server: &Netns,
    listen: SocketAddr,
    dial: SocketAddr,
    count: usize,
    mode: Client,
) -> Result<Seen> {
    let sock = server
        .run_in(|| UdpSocket::bind(listen))
        .with_context(|| format!("binding udp {listen} in {}", server.name()))?;
    sock.set_read_timeout(Some(timeout()))?;
    let srv = std::thread::spawn(move || -> Result<(SocketAddr, Vec<u8>)> {
        let mut last = None;
        let mut buf = [0u8; 2048];
        for _ in 0..count {
            let (n, peer) = sock.recv_from(&mut buf)?;
            sock.send_to(&buf[..n], peer)?;
            last = Some((peer, buf[..n].to_vec()));
        }
        last.context("no datagram")
    });
    let echoed = client.run_in(move || -> Result<Vec<u8>> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.set_read_timeout(Some(timeout()))?;
        let mut buf = [0u8; 2048];
        let mut last = Vec::new();
        for i in 0..count {
            let n = match mode {
                Client::Unconnected => {
                    s.send_to(format!("trunkline udp {i}").as_bytes(), dial)?;
                    s.recv_from(&mut buf)?.0
                }
                Client::Connected => {
                    if i == 0 {
                        s.connect(dial)?;
                    }
                    s.send(format!("trunkline query {i}").as_bytes())?;
                    s.recv(&mut buf)
                        .with_context(|| format!("answer {i} from {dial}"))?
                }
            };
            last = buf[..n].to_vec();
        }
        Ok(last)
    });
    let served = srv
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))?;
    let echoed = echoed.context("UDP client")?;
    let (peer, received) = served.context("UDP server")?;
    Ok(Seen {
        peer,
        received,
        echoed,
    })
}

/// A pod forging its source: `forged` is added to the client's `eth0` (as
/// a process in the pod can do with `NET_ADMIN`, or with a raw socket) and
/// `count` UDP datagrams are sent from it to `server_ip:port`; the address
/// is removed again before this returns. Returns how many datagrams the
/// server received (from any source: a forgery SNATed on the way still
/// arrived), waiting a bounded quiet time after the last one.
pub fn udp_forged(
    client: &Netns,
    forged: Ipv4Addr,
    server: &Netns,
    server_ip: Ipv4Addr,
    port: u16,
    count: usize,
) -> Result<usize> {
    let sock = server
        .run_in(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
        .with_context(|| format!("binding udp :{port} in {}", server.name()))?;
    let quiet = crate::scaled(Duration::from_millis(1500));
    sock.set_read_timeout(Some(quiet))?;
    let srv = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut got = 0;
        // Bounded: at most `count` datagrams, each within `quiet`.
        while got < count && sock.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    let addr = format!("{forged}/32");
    client.ip(&["addr", "add", &addr, "dev", "eth0"])?;
    let sent = client.run_in(move || -> Result<()> {
        let s = UdpSocket::bind((forged, 0)).context("binding the forged address")?;
        for i in 0..count {
            s.send_to(format!("forged {i}").as_bytes(), (server_ip, port))?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    });
    let removed = client.ip(&["addr", "del", &addr, "dev", "eth0"]);
    let got = srv
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))?;
    sent.context("sending forged datagrams")?;
    removed.context("removing the forged address")?;
    Ok(got)
}

/// `count` ICMP echo requests from `from` to `dst`; fails unless all are answered.
pub fn ping(from: &Netns, dst: Ipv4Addr, count: u32) -> Result<()> {
    let out = from.exec_ok(
        "ping",
        &[
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            &dst.to_string(),
        ],
    )?;
    let want = format!("{count} packets transmitted, {count} received");
    if !out.contains(&want) {
        bail!("ping {dst} from {}: {out}", from.name());
    }
    Ok(())
}

/// A process started in a namespace (a server for the test's traffic),
/// killed and reaped when dropped.
pub struct Background {
    child: Option<std::process::Child>,
}

impl Background {
    pub fn spawn(ns: &Netns, program: &str, args: &[&str]) -> Result<Self> {
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", ns.name(), program])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {program} in {}", ns.name()))?;
        Ok(Self { child: Some(child) })
    }

    /// Waits (bounded) for the process to exit by itself; its stdout.
    pub fn finish(mut self, within: Duration) -> Result<String> {
        let mut child = self.child.take().context("already finished")?;
        let deadline = Instant::now() + within;
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One UDP exchange per client socket, one after the other, each bounded by
/// `wait`: the server (bound in its namespace) records the source address
/// it saw and echoes; returns those addresses (None: nothing arrived) and
/// whether each client got its echo.
pub fn udp_exchanges(
    server: &UdpSocket,
    clients: &[UdpSocket],
    dst: SocketAddr,
    wait: Duration,
) -> Result<Vec<(Option<SocketAddr>, bool)>> {
    server.set_read_timeout(Some(wait))?;
    let mut out = Vec::with_capacity(clients.len());
    let mut buf = [0u8; 64];
    for (i, c) in clients.iter().enumerate() {
        c.set_read_timeout(Some(wait))?;
        c.send_to(format!("flow {i}").as_bytes(), dst)?;
        let seen = match server.recv_from(&mut buf) {
            Ok((n, peer)) => {
                server.send_to(&buf[..n], peer)?;
                Some(peer)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => return Err(e.into()),
        };
        let answered = seen.is_some() && c.recv_from(&mut buf).is_ok();
        out.push((seen, answered));
    }
    Ok(out)
}

/// What the far end of a [`udp_stream_across`] received.
#[derive(Debug)]
pub struct StreamSeen {
    pub sent: u32,
    pub received: u32,
    /// Source addresses the server saw (one: the flow kept its translation).
    pub sources: std::collections::HashSet<SocketAddr>,
    /// Datagrams sent when `during` began and when it ended: both inside
    /// `0..sent` means it ran while the stream did.
    pub sent_when_started: u32,
    pub sent_when_done: u32,
}

/// Datagrams sent after `during` ended, so that the stream outlasts it on
/// any machine (an agent restart under emulation takes seconds).
const TAIL_AFTER_DURING: u32 = 2_000;
/// Bounds of the stream whatever `during` does.
const STREAM_MAX: u32 = 2_000_000;
const STREAM_MAX_TIME: Duration = Duration::from_secs(120);

/// A steady UDP stream (at least `count` datagrams, ~10,000 a second, one
/// flow) from `client` to `server` (a socket bound where the far end is),
/// with `during` run half a second in (an agent restart, an upgrade); the
/// stream goes on for [`TAIL_AFTER_DURING`] datagrams after `during` ends
/// (bounded in count and time). Returns what the server received.
pub fn udp_stream_across(
    client: &Netns,
    server: UdpSocket,
    count: u32,
    during: impl FnOnce() -> Result<()>,
) -> Result<StreamSeen> {
    use std::sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    };
    let dst = server.local_addr()?;
    let sock = server;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    // What is measured is the data path's loss, not the receiver's: a
    // receiver that falls behind (an emulated kernel, tests in parallel)
    // must not overflow its queue. RCVBUFFORCE: past rmem_max, as root.
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBufForce, &(64 << 20))
        .context("SO_RCVBUFFORCE on the stream's receiver")?;
    let receiver = std::thread::spawn(move || {
        let mut received = 0u32;
        let mut sources = std::collections::HashSet::new();
        let mut buf = [0u8; 16];
        while let Ok((_, peer)) = sock.recv_from(&mut buf) {
            received += 1;
            sources.insert(peer);
        }
        (received, sources)
    });
    let sender_sock = client.run_in(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?;
    let progress = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let stop_at = Arc::new(AtomicU32::new(count));
    let (p, d, stop) = (progress.clone(), done.clone(), stop_at.clone());
    let sender = std::thread::spawn(move || -> std::io::Result<u32> {
        let started = Instant::now();
        let mut i = 0u32;
        // Until `during` is over and the tail is out (or `count`, whichever
        // is later), within the bounds.
        while (!d.load(Ordering::Acquire) || i < stop.load(Ordering::Acquire))
            && i < STREAM_MAX
            && started.elapsed() < STREAM_MAX_TIME
        {
            sender_sock.send_to(&i.to_be_bytes(), dst)?;
            i += 1;
            p.store(i, Ordering::Release);
            if i.is_multiple_of(100) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(i)
    });
    std::thread::sleep(Duration::from_millis(500));
    let sent_when_started = progress.load(Ordering::Acquire);
    let during = during();
    let sent_when_done = progress.load(Ordering::Acquire);
    stop_at.fetch_max(
        sent_when_done.saturating_add(TAIL_AFTER_DURING),
        Ordering::AcqRel,
    );
    done.store(true, Ordering::Release);
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))?;
    let (received, sources) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    during?;
    let sent = sent?;
    Ok(StreamSeen {
        sent,
        received,
        sources,
        sent_when_started,
        sent_when_done,
    })
}

/// Byte `i` of a [`tcp_transfer`]'s stream: the receiver checks every one.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// What the receiving end of a [`tcp_transfer`] saw.
#[derive(Debug)]
pub struct TransferSeen {
    pub sent: u64,
    pub received: u64,
    /// Every received byte was the one expected at its offset.
    pub intact: bool,
    /// The client as the server saw it (after any NAT), at accept.
    pub peer: SocketAddr,
}

/// A paced one-way TCP transfer on one connection, running in the
/// background: `chunks` writes of 64 KiB, `pace` apart.
pub struct Transfer {
    worker: Option<std::thread::JoinHandle<Result<TransferSeen>>>,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub total: u64,
}

pub const TRANSFER_CHUNK: usize = 64 * 1024;

impl Transfer {
    /// The client in `client` connects to `at` (bound in `server`); the
    /// client sends if `upload`, else the server does.
    pub fn start(
        client: &Netns,
        server: &Netns,
        at: SocketAddr,
        upload: bool,
        chunks: u64,
        pace: Duration,
    ) -> Result<Self> {
        use std::sync::{atomic::Ordering, Arc};
        let listener = server
            .run_in(|| TcpListener::bind(at))
            .with_context(|| format!("binding {at} in {}", server.name()))?;
        let conn = client
            .run_in(|| TcpStream::connect_timeout(&at, timeout()))
            .with_context(|| format!("connecting to {at} from {}", client.name()))?;
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + timeout();
        let (accepted, peer) = loop {
            match listener.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        bail!("no connection arrived at {at}");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e.into()),
            }
        };
        accepted.set_nonblocking(false)?;
        let (mut tx, mut rx) = if upload {
            (conn, accepted)
        } else {
            (accepted, conn)
        };
        let total = chunks * TRANSFER_CHUNK as u64;
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = received.clone();
        // Stalls longer than this fail the transfer (a dead connection).
        let stall = Duration::from_secs(10);
        let worker = std::thread::spawn(move || -> Result<TransferSeen> {
            tx.set_write_timeout(Some(stall))?;
            rx.set_read_timeout(Some(stall))?;
            let sender = std::thread::spawn(move || -> Result<u64> {
                let mut sent = 0u64;
                let mut buf = vec![0u8; TRANSFER_CHUNK];
                for _ in 0..chunks {
                    for (j, b) in buf.iter_mut().enumerate() {
                        *b = pattern(sent + j as u64);
                    }
                    tx.write_all(&buf).context("sending")?;
                    sent += buf.len() as u64;
                    std::thread::sleep(pace);
                }
                tx.shutdown(std::net::Shutdown::Write)?;
                Ok(sent)
            });
            let mut got = 0u64;
            let mut intact = true;
            let mut buf = vec![0u8; TRANSFER_CHUNK];
            let read_result = loop {
                match rx.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        intact &= buf[..n]
                            .iter()
                            .enumerate()
                            .all(|(j, b)| *b == pattern(got + j as u64));
                        got += n as u64;
                        counter.store(got, Ordering::Relaxed);
                    }
                    Err(e) => break Err(e),
                }
            };
            let sent = sender
                .join()
                .map_err(|_| anyhow::anyhow!("sender panicked"))??;
            read_result.with_context(|| format!("receiving after {got} of {sent} bytes"))?;
            Ok(TransferSeen {
                sent,
                received: got,
                intact,
                peer,
            })
        });
        Ok(Self {
            worker: Some(worker),
            received,
            total,
        })
    }

    /// Bytes the receiver has so far.
    pub fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (bounded by the stall timeout per read/write) for the end.
    pub fn finish(mut self) -> Result<TransferSeen> {
        self.worker
            .take()
            .context("already finished")?
            .join()
            .map_err(|_| anyhow::anyhow!("transfer thread panicked"))?
    }
}
