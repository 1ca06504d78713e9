//! A TCP echo server inside a namespace, optionally greeting each connection
//! with a line (a pod's name, so a client sees which endpoint it reached),
//! and the client side of the greeting.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::netns::{Netns, NetnsError};

/// Listen on `addr` inside `ns` (bound before this returns) and serve every
/// connection on a thread of its own, for the life of the process: write
/// `greeting` and a newline, if given, then echo what arrives.
pub fn serve(ns: &Netns, addr: SocketAddr, greeting: Option<&str>) -> Result<(), NetnsError> {
    // The socket belongs to the namespace; the accept loop may run anywhere.
    let listener = ns
        .run(|| TcpListener::bind(addr))?
        .map_err(|source| NetnsError::Io {
            operation: "listen on",
            object: format!("{addr} in {}", ns.name()),
            source,
        })?;
    let greeting = greeting.map(|g| format!("{g}\n"));
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let greeting = greeting.clone();
            std::thread::spawn(move || serve_one(conn, greeting.as_deref()));
        }
    });
    Ok(())
}

fn serve_one(mut conn: TcpStream, greeting: Option<&str>) {
    if greeting.is_some_and(|g| conn.write_all(g.as_bytes()).is_err()) {
        return;
    }
    let mut buf = [0u8; 1024];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Connect from the calling thread's namespace to a greeting server at
/// `addr` and read its greeting line; the connection stays open.
pub fn ask_greeting(addr: SocketAddr) -> std::io::Result<(String, TcpStream)> {
    ask_greeting_within(addr, Duration::from_secs(5))
}

/// As [`ask_greeting`], the connect and the read each given `timeout`.
pub fn ask_greeting_within(
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<(String, TcpStream)> {
    let mut conn = TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while conn.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    Ok((String::from_utf8_lossy(&line).into_owned(), conn))
}
