//! A TCP forwarder from 127.0.0.1 inside a test namespace to a server on
//! the host's 127.0.0.1 (moto, the IMDS fixture), so an agent running in a
//! simulated node reaches them without touching the host's interfaces.
//! The listening socket is made inside the namespace; upstream sockets are
//! made by threads of the test process, which live in the host namespace.
//! Stopped on drop.

use std::{
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::topology::netns::Netns;

pub struct NsForward {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

impl NsForward {
    pub fn new(ns: &Netns, target: SocketAddr) -> Result<Self> {
        let listener = ns
            .run_in(|| TcpListener::bind("127.0.0.1:0"))
            .with_context(|| format!("binding a forwarder in {}", ns.name()))?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ns-forward".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((down, _)) => {
                            let _ = down.set_nonblocking(false);
                            let Ok(up) =
                                TcpStream::connect_timeout(&target, Duration::from_secs(2))
                            else {
                                continue; // the client sees the connection close
                            };
                            let (Ok(down2), Ok(up2)) = (down.try_clone(), up.try_clone()) else {
                                continue;
                            };
                            std::thread::spawn(move || pipe(down, up));
                            std::thread::spawn(move || pipe(up2, down2));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
            .context("starting the forwarder thread")?;
        Ok(Self {
            port,
            stop,
            thread: Some(thread),
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for NsForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
