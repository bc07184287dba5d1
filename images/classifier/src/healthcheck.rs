//! `classifier healthcheck`: asks the service on this host (`127.0.0.1:$PORT`) for
//! `GET /health` and exits 0 on a 200 answer, 1 otherwise. The image has no shell and no
//! curl, so this is the command a container health check runs, in exec form
//! (`["CMD", "/app/classifier", "healthcheck"]`: Docker's `--health-cmd` would need a
//! shell), and what gates a Swarm service's rolling update.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Longer than a healthy service ever takes, shorter than Docker's default 30 s timeout.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// `Ok` when `GET /health` on `127.0.0.1:port` answers 200 within `timeout`.
pub fn check(port: u16, timeout: Duration) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .with_context(|| format!("asking {addr} for /health"))?;
    // The status line is all that counts; a health answer is small, and more is not read.
    let mut head = Vec::with_capacity(256);
    stream
        .take(4096)
        .read_to_end(&mut head)
        .with_context(|| format!("reading {addr}'s answer"))?;
    let status = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let status = String::from_utf8_lossy(status);
    let status = status.trim_end();
    let code = status.split(' ').nth(1);
    if !status.starts_with("HTTP/1.") || code != Some("200") {
        bail!("GET /health on {addr} answered {status:?}");
    }
    Ok(())
}
