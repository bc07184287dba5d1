//! The closed-port checks: the app's port and other commonly leaked ports must
//! not answer from outside; only SSH, HTTP and HTTPS may.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{short, Checks, Target, VerifyOptions};

/// What a connection attempt to one port found.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// Refused, unreachable or timed out: nothing is reachable there.
    NoConnection(String),
    /// Connected, then the peer closed or reset without sending a byte.
    ClosedSilently,
    /// Connected and nothing came back within the timeout.
    Silent,
    /// Bytes came back; the first line of them.
    Answered(String),
}

fn probe(host: &str, port: u16, domain: &str, timeout: Duration) -> Probe {
    let addrs = match (host, port).to_socket_addrs() {
        Ok(a) => a.collect::<Vec<_>>(),
        Err(e) => return Probe::NoConnection(format!("resolving {host}: {e}")),
    };
    let mut last = Probe::NoConnection(format!("{host} has no address"));
    for addr in addrs {
        let mut sock = match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => s,
            Err(e) => {
                last = Probe::NoConnection(e.to_string());
                continue;
            }
        };
        if sock.set_read_timeout(Some(timeout)).is_err() {
            return Probe::Silent;
        }
        let request = format!("GET / HTTP/1.0\r\nHost: {domain}\r\n\r\n");
        if sock.write_all(request.as_bytes()).is_err() {
            return Probe::ClosedSilently;
        }
        let mut buf = [0u8; 512];
        return match sock.read(&mut buf) {
            Ok(0) => Probe::ClosedSilently,
            Ok(mut n) => {
                // The status line may arrive in pieces; a little more makes the
                // report readable.
                let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
                while n < buf.len() && !buf[..n].contains(&b'\n') {
                    match sock.read(&mut buf[n..]) {
                        Ok(k) if k > 0 => n += k,
                        _ => break,
                    }
                }
                Probe::Answered(short(&String::from_utf8_lossy(&buf[..n]), 60))
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Probe::Silent
            }
            Err(_) => Probe::ClosedSilently,
        };
    }
    last
}

/// One check per probe port, named `port.<port>.closed`.
pub(super) fn port_checks(target: &Target, opts: &VerifyOptions, checks: &mut Checks) {
    // Probes that find nothing wait out their timeout; a short one keeps a run
    // over several filtered ports quick.
    let timeout = opts.timeout.min(Duration::from_secs(3));
    for p in &target.probe_ports {
        let name = format!("port.{}.closed", p.port);
        let via = if p.connect == p.port {
            format!("{}:{}", target.host, p.port)
        } else {
            format!("{}:{} (forwarded to {})", target.host, p.connect, p.port)
        };
        let found = probe(&target.host, p.connect, &opts.domain, timeout);
        let r = match found {
            Probe::NoConnection(e) => Ok(format!("{via}: no connection ({e})")),
            Probe::Answered(line) => Err(format!("{via} answered: {line}")),
            // A QEMU forward accepts on the host side whatever is behind it, so
            // only an answer proves the guest port is open.
            Probe::ClosedSilently if target.forwarded => {
                Ok(format!("{via}: the forward was closed without an answer"))
            }
            Probe::Silent if target.forwarded => Ok(format!(
                "{via}: no answer within {} ms",
                timeout.as_millis()
            )),
            Probe::ClosedSilently | Probe::Silent => Err(format!("{via} accepts TCP connections")),
        };
        checks.result(&name, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_refused_port_is_no_connection() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let p = probe("127.0.0.1", port, "a.test", Duration::from_secs(1));
        assert!(matches!(p, Probe::NoConnection(_)), "{p:?}");
    }

    #[test]
    fn a_silent_listener_is_silent() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let p = probe("127.0.0.1", port, "a.test", Duration::from_millis(300));
        assert_eq!(p, Probe::Silent);
    }
}
