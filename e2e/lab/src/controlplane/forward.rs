//! How a program in a node's network namespace reaches the API server, which
//! listens on the host's loopback, without touching the host's interfaces,
//! routes or rules: a TCP listener made inside the node namespace on
//! 127.0.0.1 (the same port as the API server, so one kubeconfig works on the
//! host and in every node), whose connections are relayed to the API server
//! by threads of the host namespace.
//!
//! A forwarder may be gated: while its gate is closed it accepts and at once
//! closes every connection, as a load balancer with no ready backend would,
//! so that programs in the namespaces never reach an API server that is still
//! starting (one serves before its RBAC caches are filled, and refuses
//! everyone with 403 until then).
//!
//! A socket stays in the namespace it was made in: the listener is made by a
//! short-lived thread that entered the node namespace; everything else
//! (accepting, connecting out, relaying) runs on threads that never leave the
//! namespace of the thread that called [`Forwarder::start`].

use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::ControlPlaneError;
use crate::netns::Netns;

/// Open relayed connections by number, both ends, so a stop can cut them.
type Open = Arc<Mutex<Vec<(u64, TcpStream, TcpStream)>>>;

/// Whether forwarded connections are let through.
pub type Gate = Arc<AtomicBool>;

/// A running forwarder; stopped (listener closed, connections cut) on drop.
#[derive(Debug)]
pub struct Forwarder {
    listen: SocketAddr,
    listener: TcpListener,
    stopping: Arc<AtomicBool>,
    open: Open,
    acceptor: Option<JoinHandle<()>>,
}

fn forward_err(ns: &Netns, source: std::io::Error) -> ControlPlaneError {
    ControlPlaneError::Forward {
        netns: ns.name().to_string(),
        source,
    }
}

impl Forwarder {
    /// Listen on 127.0.0.1:`target.port()` inside `ns` and relay every
    /// connection to `target`.
    pub fn start(ns: &Netns, target: SocketAddr) -> Result<Forwarder, ControlPlaneError> {
        Forwarder::gated(ns, target, Arc::new(AtomicBool::new(true)))
    }

    /// As [`Forwarder::start`], relaying only while `gate` is open.
    pub fn gated(
        ns: &Netns,
        target: SocketAddr,
        gate: Gate,
    ) -> Result<Forwarder, ControlPlaneError> {
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, target.port()));
        let listener = ns
            .run(|| TcpListener::bind(listen))
            .map_err(std::io::Error::other)
            .and_then(|made| made)
            .map_err(|e| forward_err(ns, e))?;
        Forwarder::serve(listener, listen, target, gate).map_err(|e| forward_err(ns, e))
    }

    /// Listen on 127.0.0.1:`target.port()` in the caller's own namespace
    /// and relay every connection to `target` (in the VM: the API server
    /// on the host, at the VM's forwarded address).
    pub fn here(target: SocketAddr) -> Result<Forwarder, ControlPlaneError> {
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, target.port()));
        let here = |source| ControlPlaneError::Forward {
            netns: "of the caller".into(),
            source,
        };
        let listener = TcpListener::bind(listen).map_err(here)?;
        Forwarder::serve(listener, listen, target, Arc::new(AtomicBool::new(true))).map_err(here)
    }

    fn serve(
        listener: TcpListener,
        listen: SocketAddr,
        target: SocketAddr,
        gate: Gate,
    ) -> std::io::Result<Forwarder> {
        let accepting = listener.try_clone()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let open: Open = Arc::default();
        let acceptor = {
            let (stopping, open) = (stopping.clone(), open.clone());
            std::thread::spawn(move || accept_loop(&accepting, target, &stopping, &gate, &open))
        };
        Ok(Forwarder {
            listen,
            listener,
            stopping,
            open,
            acceptor: Some(acceptor),
        })
    }

    /// The address to connect to from inside the node namespace.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }
}

fn accept_loop(
    listener: &TcpListener,
    target: SocketAddr,
    stopping: &AtomicBool,
    gate: &AtomicBool,
    open: &Open,
) {
    let next = AtomicU64::new(0);
    for accepted in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        // A closed gate drops the connection: the client sees it closed.
        let Some(inside) = accepted.ok().filter(|_| gate.load(Ordering::SeqCst)) else {
            continue;
        };
        // A failed connect drops `inside`: the client sees the connection closed.
        let Ok(outside) = TcpStream::connect(target) else {
            continue;
        };
        let _ = inside.set_nodelay(true);
        let _ = outside.set_nodelay(true);
        let id = next.fetch_add(1, Ordering::Relaxed);
        if let (Ok(a), Ok(b)) = (inside.try_clone(), outside.try_clone()) {
            lock(open).push((id, a, b));
        }
        relay(id, inside, outside, open.clone());
    }
}

fn lock(open: &Open) -> std::sync::MutexGuard<'_, Vec<(u64, TcpStream, TcpStream)>> {
    open.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Copy both ways on two threads; the end of each direction is passed on as
/// a half-close, and the pair leaves the open list when both are done.
fn relay(id: u64, inside: TcpStream, outside: TcpStream, open: Open) {
    let (Ok(inside_rx), Ok(outside_rx)) = (inside.try_clone(), outside.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let up = std::thread::spawn(move || pump(inside_rx, &outside));
        pump(outside_rx, &inside);
        let _ = up.join();
        lock(&open).retain(|(i, _, _)| *i != id);
    });
}

fn pump(mut from: TcpStream, mut to: &TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // shutdown(2) on a listening socket wakes the blocked accept on Linux.
        // SAFETY: shutting down our own listening socket.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for (_, a, b) in lock(&self.open).drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}
