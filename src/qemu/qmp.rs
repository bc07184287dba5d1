//! A minimal QMP client: one connection per command, enough to reset, power down or quit
//! the VM.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Runs one QMP command on the monitor socket at `socket` and returns its `return` value.
pub fn execute(socket: &Path, command: &str) -> Result<Value> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to QMP socket {}", socket.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .with_context(|| format!("setting a timeout on {}", socket.display()))?;
    let mut writer = stream
        .try_clone()
        .with_context(|| format!("cloning QMP connection {}", socket.display()))?;
    let mut reader = BufReader::new(stream);

    // The greeting, then capabilities negotiation, then the command.
    read_message(&mut reader, socket)?;
    for cmd in ["qmp_capabilities", command] {
        let request = json!({ "execute": cmd });
        writeln!(writer, "{request}")
            .with_context(|| format!("writing to {}", socket.display()))?;
        loop {
            let msg = read_message(&mut reader, socket)?;
            if let Some(ret) = msg.get("return") {
                if cmd == command {
                    return Ok(ret.clone());
                }
                break;
            }
            if let Some(err) = msg.get("error") {
                bail!("QMP command {cmd} failed: {err}");
            }
            // Anything else is an asynchronous event; skip it.
        }
    }
    bail!("QMP command {command} got no answer")
}

fn read_message(reader: &mut impl BufRead, socket: &Path) -> Result<Value> {
    let mut line = String::new();
    let n = reader
        .read_line(&mut line)
        .with_context(|| format!("reading from QMP socket {}", socket.display()))?;
    if n == 0 {
        bail!("QMP socket {} closed", socket.display());
    }
    serde_json::from_str(&line)
        .with_context(|| format!("parsing a QMP message from {}: {line:?}", socket.display()))
}
