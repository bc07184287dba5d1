//! The web checks: a minimal HTTP/1.1 client over rustls that connects to the
//! target's address but speaks to the domain (SNI, Host), as DNS would once it
//! points at the server.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use super::{short, Checks, Target, VerifyOptions};
use crate::exit::usage;

/// Responses larger than this are cut: the checks only need the head and a
/// JSON body.
const MAX_BODY: usize = 1024 * 1024;

/// The rustls client configuration: roots from `ca_bundle`, or the public roots.
pub(super) fn client_config(ca_bundle: Option<&Path>) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    match ca_bundle {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| usage(format!("reading CA bundle {}: {e}", path.display())))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| usage(format!("reading CA bundle {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(usage(format!(
                    "reading CA bundle {}: no PEM certificates in it",
                    path.display()
                )));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    usage(format!(
                        "reading CA bundle {}: unusable certificate: {e}",
                        path.display()
                    ))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("setting up TLS")?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An HTTP response, body cut at [`MAX_BODY`].
#[derive(Debug)]
pub(super) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request failed, kept apart so the certificate check can tell a bad
/// certificate from a server that is not there.
#[derive(Debug)]
pub(super) enum Failure {
    Connect(String),
    Tls(String),
    Http(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(m) => write!(f, "connecting: {m}"),
            Failure::Tls(m) => write!(f, "TLS: {m}"),
            Failure::Http(m) => write!(f, "HTTP: {m}"),
        }
    }
}

/// What the TLS handshake established.
#[derive(Debug)]
pub(super) struct TlsInfo {
    pub version: String,
    pub chain_len: usize,
}

fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, Failure> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| Failure::Connect(format!("resolving {host}: {e}")))?;
    let mut last = Failure::Connect(format!("{host} has no address"));
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                s.set_read_timeout(Some(timeout))
                    .and_then(|()| s.set_write_timeout(Some(timeout)))
                    .map_err(|e| Failure::Connect(e.to_string()))?;
                return Ok(s);
            }
            Err(e) => last = Failure::Connect(format!("{addr}: {e}")),
        }
    }
    Err(last)
}

/// GET `path` from `host:port` with `Host: domain`; over TLS with SNI `domain` when
/// `tls` is given.
pub(super) fn get(
    host: &str,
    port: u16,
    domain: &str,
    path: &str,
    tls: Option<&Arc<ClientConfig>>,
    timeout: Duration,
) -> Result<(Response, Option<TlsInfo>), Failure> {
    let mut sock = connect(host, port, timeout)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {domain}\r\nUser-Agent: imgforge-verify\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    match tls {
        None => {
            sock.write_all(request.as_bytes())
                .map_err(|e| Failure::Http(format!("sending the request: {e}")))?;
            Ok((read_response(&mut sock)?, None))
        }
        Some(config) => {
            let name = ServerName::try_from(domain.to_string())
                .map_err(|e| Failure::Tls(format!("{domain}: {e}")))?;
            let mut conn = rustls::ClientConnection::new(config.clone(), name)
                .map_err(|e| Failure::Tls(e.to_string()))?;
            while conn.is_handshaking() {
                conn.complete_io(&mut sock)
                    .map_err(|e| Failure::Tls(tls_error(&e)))?;
            }
            let info = TlsInfo {
                version: conn
                    .protocol_version()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default(),
                chain_len: conn.peer_certificates().map_or(0, |c| c.len()),
            };
            let mut stream = rustls::StreamOwned::new(conn, sock);
            stream
                .write_all(request.as_bytes())
                .map_err(|e| Failure::Http(format!("sending the request: {e}")))?;
            Ok((read_response(&mut stream)?, Some(info)))
        }
    }
}

fn tls_error(e: &io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(c)) => format!("certificate rejected: {c:?}"),
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

fn read_response(stream: &mut impl Read) -> Result<Response, Failure> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut head_len = None;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            // Servers that close without TLS close_notify are common; what was read counts.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && head_len.is_some() => 0,
            Err(e) => return Err(Failure::Http(format!("reading the response: {e}"))),
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if head_len.is_none() {
            head_len = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
        if raw.len() > MAX_BODY + 64 * 1024 {
            break;
        }
        if let Some(h) = head_len {
            if body_complete(&raw[..h], &raw[h..]) {
                break;
            }
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if raw.is_empty() => {
            return Err(Failure::Http(
                "the server closed the connection without answering".into(),
            ))
        }
        Ok(httparse::Status::Partial) => {
            return Err(Failure::Http("the response head is incomplete".into()))
        }
        Err(e) => return Err(Failure::Http(format!("not an HTTP response: {e}"))),
    };
    let status = parsed.code.unwrap_or(0);
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let mut body = raw[head_len..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        body = dechunk(&body).ok_or_else(|| Failure::Http("malformed chunked body".into()))?;
    }
    body.truncate(MAX_BODY);
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Whether the whole body is in: by Content-Length or the chunked terminator.
/// Without either, the body ends when the server closes (Connection: close).
fn body_complete(head: &[u8], body: &[u8]) -> bool {
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    for line in head.lines() {
        if let Some(v) = line.strip_prefix("content-length:") {
            if let Ok(n) = v.trim().parse::<usize>() {
                return body.len() >= n;
            }
        }
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            return body.ends_with(b"0\r\n\r\n");
        }
    }
    false
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// The web checks: certificate, app, health and redirect over HTTPS, or app and
/// health over HTTP when TLS is off.
pub(super) fn web_checks(
    target: &Target,
    opts: &VerifyOptions,
    tls: Option<&Arc<ClientConfig>>,
    checks: &mut Checks,
) {
    let domain = opts.domain.as_str();
    let Some(config) = tls else {
        let r = get(
            &target.host,
            target.http_port,
            domain,
            "/",
            None,
            opts.timeout,
        );
        checks.result("http.app", app_result(r.map(|(r, _)| r)));
        let r = get(
            &target.host,
            target.http_port,
            domain,
            "/health",
            None,
            opts.timeout,
        );
        checks.result("http.health", health_result(r.map(|(r, _)| r)));
        return;
    };

    let roots = match &opts.ca_bundle {
        Some(p) => format!("CA bundle {}", p.display()),
        None => "the public roots".to_string(),
    };
    let first = get(
        &target.host,
        target.https_port,
        domain,
        "/",
        Some(config),
        opts.timeout,
    );
    let app = match first {
        Ok((response, info)) => {
            let info = info.unwrap_or(TlsInfo {
                version: String::new(),
                chain_len: 0,
            });
            checks.ok(
                "tls.certificate",
                format!(
                    "valid for {domain}, chain of {} verified against {roots} ({})",
                    info.chain_len, info.version
                ),
            );
            Ok(response)
        }
        Err(Failure::Tls(m)) => {
            checks.failed(
                "tls.certificate",
                format!(
                    "{domain} on {}:{}: {m} (roots: {roots})",
                    target.host, target.https_port
                ),
            );
            Err(None)
        }
        Err(other) => {
            checks.failed(
                "tls.certificate",
                format!("{}:{}: {other}", target.host, target.https_port),
            );
            Err(Some(other))
        }
    };
    match app {
        Ok(response) => {
            checks.result("https.app", app_result(Ok(response)));
            let r = get(
                &target.host,
                target.https_port,
                domain,
                "/health",
                Some(config),
                opts.timeout,
            );
            checks.result("https.health", health_result(r.map(|(r, _)| r)));
        }
        Err(None) => {
            checks.skipped("https.app", "not checked: the certificate was rejected");
            checks.skipped("https.health", "not checked: the certificate was rejected");
        }
        Err(Some(f)) => {
            checks.failed("https.app", f.to_string());
            checks.skipped("https.health", "not checked: HTTPS is not answering");
        }
    }

    let probe = "/imgforge-verify?redirect";
    let r = get(
        &target.host,
        target.http_port,
        domain,
        probe,
        None,
        opts.timeout,
    );
    let expected = format!("https://{domain}{probe}");
    checks.result(
        "http.redirect",
        match r {
            Err(f) => Err(format!("{}:{}: {f}", target.host, target.http_port)),
            Ok((resp, _)) => {
                let location = resp.header("location").unwrap_or("");
                if matches!(resp.status, 301 | 302 | 307 | 308) && location == expected {
                    Ok(format!("{} -> {location}", resp.status))
                } else {
                    Err(format!(
                        "expected a redirect to {expected}, got {} {}",
                        resp.status,
                        if location.is_empty() {
                            "without Location".to_string()
                        } else {
                            format!("to {location}")
                        }
                    ))
                }
            }
        },
    );
}

fn app_result(r: Result<Response, Failure>) -> Result<String, String> {
    let resp = r.map_err(|f| f.to_string())?;
    let body = String::from_utf8_lossy(&resp.body);
    if !(200..300).contains(&resp.status) {
        return Err(format!(
            "GET / answered {}: {}",
            resp.status,
            short(&body, 80)
        ));
    }
    match serde_json::from_slice::<serde_json::Value>(&resp.body) {
        Ok(_) => Ok(format!(
            "GET / answered {} with JSON: {}",
            resp.status,
            short(&body, 80)
        )),
        Err(e) => Err(format!(
            "GET / answered {} but not with JSON ({e}): {}",
            resp.status,
            short(&body, 80)
        )),
    }
}

fn health_result(r: Result<Response, Failure>) -> Result<String, String> {
    let resp = r.map_err(|f| f.to_string())?;
    let body = String::from_utf8_lossy(&resp.body);
    if (200..300).contains(&resp.status) {
        Ok(format!(
            "GET /health answered {}: {}",
            resp.status,
            short(&body, 60)
        ))
    } else {
        Err(format!(
            "GET /health answered {}: {}",
            resp.status,
            short(&body, 60)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n").unwrap(),
            b"{\"a\":1}"
        );
        assert!(dechunk(b"ff\r\nshort\r\n").is_none());
    }

    #[test]
    fn responses_parse_with_content_length() {
        let raw = b"HTTP/1.1 301 Moved\r\nLocation: https://a.b/\r\nContent-Length: 2\r\n\r\nhi";
        let r = read_response(&mut &raw[..]).unwrap();
        assert_eq!(r.status, 301);
        assert_eq!(r.header("LOCATION"), Some("https://a.b/"));
        assert_eq!(r.body, b"hi");
    }
}
