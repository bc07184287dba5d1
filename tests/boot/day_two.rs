//! What the day-two tests share: versions of the classifier to deploy, a steady stream of
//! HTTPS requests whose every answer is checked, and imgforge's own commands against the
//! booted VM, run to the end or interrupted as a person's Ctrl-C would.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imgforge::contract::layout;
use imgforge::contract::remote::StatusAnswer;
use imgforge::contract::status::Status;

use crate::common::*;
use crate::deployment::*;

/// Seconds a slow version takes before its health path answers: longer than every
/// timeout the VM had before the start allowance (120 s for the unit's health wait, 180 s
/// for the boot report).
pub const SLOW_START: u64 = 240;

/// How a packed version behaves beyond the classifier's own ways.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// As the classifier does.
    Plain,
    /// Starts the classifier only after this many seconds.
    SlowStart(u64),
    /// Dies this many seconds after it first answers `GET /` (a request of the traffic,
    /// not of the deploy's health checks: so it dies after the switch, however long the
    /// deploy took from its health to the switch).
    DiesAfterServing(u64),
}

/// The classifier packed as another version: the same model and binary, its version in
/// the image's name, label and `APP_VERSION` (what `GET /` reports), plus `env`. A
/// behaviour other than `Plain` runs it under a busybox shell script.
pub fn classifier_version(
    dir: &Path,
    version: &str,
    env: &[(&str, &str)],
    behaviour: Behaviour,
) -> PathBuf {
    let src = dir.join(format!("classifier-{version}"));
    run(Command::new("cp")
        .args(["-a", &format!("{ROOT}/images/classifier")])
        .arg(&src));
    let spec_path = src.join("image.yaml");
    let mut spec: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    spec["name"] = format!("imgforge/classifier:{version}").into();
    spec["labels"]["org.opencontainers.image.version"] = version.into();
    spec["env"]["APP_VERSION"] = version.into();
    for (k, v) in env {
        spec["env"][*k] = (*v).into();
    }
    let script = match behaviour {
        Behaviour::Plain => None,
        Behaviour::SlowStart(delay) => Some(format!("sleep {delay} && exec /app/classifier")),
        Behaviour::DiesAfterServing(after) => Some(format!(
            "/app/classifier & pid=$!; \
             until /bin/busybox wget -q -O - http://127.0.0.1:8000/metrics 2>/dev/null \
             | /bin/busybox grep -qF 'route=\"/\",status=\"200\"'; do sleep 1; done; \
             sleep {after}; kill $pid; wait $pid; exit 1"
        )),
    };
    if let Some(script) = script {
        // busybox-static: one binary with no libraries to bring along.
        std::fs::copy("/bin/busybox", src.join("busybox")).expect("/bin/busybox");
        let layer: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            "{name: a slow start, files: [{src: busybox, dest: /bin/busybox, mode: '0755'}]}",
        )
        .unwrap();
        spec["layers"].as_sequence_mut().unwrap().push(layer);
        spec["entrypoint"] =
            serde_yaml_ng::to_value(["/bin/busybox", "sh", "-c", &script]).unwrap();
    }
    std::fs::write(&spec_path, serde_yaml_ng::to_string(&spec).unwrap()).unwrap();
    let out = dir.join(format!("classifier-{version}.oci.tar"));
    ok(imgforge(&[
        "pack",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]));
    out
}

/// `curl --rate 10/s` over one connection at a time, GET / with a counter in the query,
/// recording each response's status, time and the version it names.
pub struct Stream {
    child: Child,
    out: PathBuf,
}

impl Stream {
    pub fn start(d: &Deployment, root: &Path, name: &str) -> Stream {
        let port = d.vm.info().https_port;
        let out = d.dir.join(format!("stream-{name}.log"));
        let child = Command::new("curl")
            .args(["-sS", "--rate", "10/s", "--max-time", "3600", "--cacert"])
            .arg(root)
            .args(["--resolve", &format!("{DOMAIN}:{port}:127.0.0.1")])
            .args(["-w", "\n@@ %{http_code} %{time_total}\n"])
            .arg(format!("https://{DOMAIN}:{port}/?n=[1-100000]"))
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(3));
        Stream { child, out }
    }

    /// Stops the stream; the versions answered, in order, the failed requests, and the
    /// slowest answer's seconds.
    pub fn stop(mut self) -> (Vec<String>, Vec<String>, f64) {
        std::thread::sleep(Duration::from_secs(3));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut text = String::new();
        std::fs::File::open(&self.out)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        let mut versions = Vec::new();
        let mut failed = Vec::new();
        let mut body = String::new();
        let mut slowest: f64 = 0.0;
        for line in text.lines() {
            let tail = line.strip_prefix("@@ ").map(|t| {
                let (code, secs) = t.split_once(' ').unwrap_or((t, "0"));
                if code != "000" {
                    slowest = slowest.max(secs.parse().unwrap_or(0.0));
                }
                code
            });
            match tail {
                Some("200") => match serde_json::from_str::<serde_json::Value>(body.trim()) {
                    Ok(v) => versions.push(v["version"].as_str().unwrap_or("?").to_owned()),
                    Err(_) => failed.push(format!("200 with a body that is not JSON: {body:?}")),
                },
                Some(code) => failed.push(format!("{code}: {}", body.trim())),
                None => {
                    body.push_str(line);
                    continue;
                }
            }
            body.clear();
        }
        // The last request, cut by the kill, is not a failure of the server.
        if failed.last().is_some_and(|f| f.starts_with("000")) {
            failed.pop();
        }
        (versions, failed, slowest)
    }

    /// Stops the stream and checks that every request was answered, and that the
    /// versions answered moved as `expected` (each run of equal answers once).
    pub fn stop_expecting(self, what: &str, expected: &[&str]) -> usize {
        self.stop_timed(what, expected).0
    }

    /// [`Stream::stop_expecting`], and the slowest answer's seconds.
    pub fn stop_timed(self, what: &str, expected: &[&str]) -> (usize, f64) {
        let (versions, failed, slowest) = self.stop();
        assert!(
            failed.is_empty(),
            "failed requests during {what}: {failed:?}"
        );
        assert_eq!(runs(&versions), expected, "traffic during {what}");
        eprintln!(
            "{what}: {} requests, none failed, the slowest {slowest:.3} s",
            versions.len()
        );
        (versions.len(), slowest)
    }
}

/// The versions in the order traffic saw them, each run of equal answers once.
pub fn runs(versions: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in versions {
        if out.last() != Some(v) {
            out.push(v.clone());
        }
    }
    out
}

/// The flags that reach the booted VM: its forwarded SSH port, the admin key, its pinned
/// host key.
fn connection(d: &Deployment) -> Vec<String> {
    let known = d.ssh.known_hosts.clone().expect("host key pinned");
    [
        "--host",
        "127.0.0.1",
        "--ssh-port",
        &d.vm.info().ssh_port.to_string(),
        "--identity",
        d.key.to_str().unwrap(),
        "--known-hosts",
        known.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// SSH connections each command makes (UFW allows 6 in 30 s from one address).
fn connections(command: &str, extra: &[&str]) -> usize {
    match command {
        "deploy" if extra.contains(&"--attach") => 2,
        "deploy" => 3,
        _ => 2,
    }
}

/// Waits for a boot after a reboot or power cut to finish ready.
pub fn booted(d: &mut Deployment, what: &str) {
    let st = d.wait(what, Duration::from_secs(1800), &|s| s.is_finished());
    assert!(st.is_ready(), "after {what}: {st:?}");
}

/// Reboots the VM and waits for the boot to finish ready.
pub fn reboot(d: &mut Deployment) {
    d.reboot();
    booted(d, "the reboot");
}

/// `imgforge COMMAND` against the VM, run to its end.
pub fn cli(d: &Deployment, command: &str, extra: &[&str]) -> Output {
    let mut args = vec![command.to_owned()];
    args.extend(connection(d));
    args.extend(extra.iter().map(|s| s.to_string()));
    d.ssh.pace(connections(command, extra));
    let started = Instant::now();
    let out = imgforge(&args.iter().map(String::as_str).collect::<Vec<_>>());
    d.ssh.made_until_now(connections(command, extra));
    eprintln!(
        "imgforge {command} {extra:?} ({:.0}s, {}):\n{}{}",
        started.elapsed().as_secs_f64(),
        out.status,
        shortened(&String::from_utf8_lossy(&out.stdout)),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A long output's first and last lines (`imgforge logs` prints thousands).
fn shortened(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= 40 {
        return text.to_owned();
    }
    format!(
        "{}\n[{} lines]\n{}\n",
        lines[..10].join("\n"),
        lines.len() - 20,
        lines[lines.len() - 10..].join("\n")
    )
}

/// `imgforge COMMAND` against the VM in its own process group (as a shell runs a
/// command), its progress lines collected as they come.
pub struct Client {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    connections: usize,
}

impl Client {
    pub fn spawn(d: &Deployment, command: &str, extra: &[&str]) -> Client {
        use std::os::unix::process::CommandExt;
        d.ssh.pace(connections(command, extra));
        // A client started from a terminal takes Ctrl-C; this one may be started from a
        // background job, which ignores SIGINT and passes that on across exec: env
        // (coreutils) gives imgforge the default action back, then becomes it.
        let mut child = Command::new("env")
            .arg("--default-signal=INT,HUP")
            .arg(env!("CARGO_BIN_EXE_imgforge"))
            .arg(command)
            .args(connection(d))
            .args(extra)
            .env_remove("SOURCE_DATE_EPOCH")
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running imgforge");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("  | {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Client {
            child,
            lines,
            reader: Some(reader),
            connections: connections(command, extra),
        }
    }

    /// Waits until a progress line contains `marker`.
    pub fn wait_for(&self, marker: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(marker))
        {
            assert!(
                Instant::now() < deadline,
                "no {marker:?} from imgforge within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for imgforge to end by itself; returns whether it succeeded, and its lines.
    pub fn wait(self, d: &Deployment) -> (bool, Vec<String>) {
        let (status, lines) = self.end(d);
        eprintln!("imgforge ended: {status}");
        (status.success(), lines)
    }

    /// Sends `signal` (`INT`, `KILL`) to imgforge and its ssh, as a terminal's Ctrl-C or a
    /// CI timeout does, and waits for them to end.
    pub fn kill(self, signal: &str, d: &Deployment) -> Vec<String> {
        let pgid = self.child.id().to_string();
        run(Command::new("kill").args([&format!("-{signal}"), "--", &format!("-{pgid}")]));
        let (status, lines) = self.end(d);
        eprintln!("imgforge killed with SIG{signal}: {status}");
        assert!(
            !status.success(),
            "imgforge ended on its own before the SIG{signal}"
        );
        lines
    }

    fn end(mut self, d: &Deployment) -> (std::process::ExitStatus, Vec<String>) {
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        d.ssh.made_until_now(self.connections);
        let lines = self.lines.lock().unwrap().clone();
        (status, lines)
    }
}

impl Drop for Client {
    /// A client left behind (its VM lost power) goes too.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let pgid = format!("-{}", self.child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
            let _ = self.child.wait();
        }
    }
}

/// Makes the VM program hold a deploy at `phase` (`[phase]` is its last line until
/// `release`): how a fault lands where it should, however fast or slow the guest is.
pub fn hold(d: &Deployment, phase: &str) {
    let hold = &layout().hold;
    let dir = Path::new(hold).parent().unwrap().display();
    d.ssh.ok(&format!(
        "sudo sh -c 'mkdir -p {dir} && echo {phase} > {hold}'"
    ));
}

pub fn release(d: &Deployment) {
    d.ssh.ok(&format!("sudo rm -f {}", layout().hold));
}

/// `imgforge status --json`: the VM's answer (imgforge exits 1 when it does not serve as
/// it should; the answer says why).
pub fn status(d: &Deployment) -> StatusAnswer {
    let out = cli(d, "status", &["--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// status.json, read on the VM.
pub fn status_json(d: &Deployment) -> Status {
    let text = d.ssh.ok(&format!("cat {}", layout().status));
    Status::parse(&text).unwrap_or_else(|e| panic!("status.json: {e}: {text}"))
}

/// The deploy a client left running ends on the VM: `deploy --attach` follows it until it
/// does, then says there is none. Returns the last answer it gave.
pub fn settle(d: &Deployment) -> Output {
    for _ in 0..10 {
        let last = cli(d, "deploy", &["--attach"]);
        if stderr(&last).contains("no deploy is running") {
            return last;
        }
        assert!(
            last.status.code() != Some(2),
            "--attach refused: {}",
            stderr(&last)
        );
    }
    panic!("a deploy was still running after 10 attaches");
}

/// What serves, from `imgforge status`, agrees everywhere on the VM; returns its version.
pub fn serving_version(d: &Deployment) -> String {
    let answer = status(d);
    assert!(
        answer.serving.problems.is_empty(),
        "the VM disagrees with itself: {answer:#?}"
    );
    assert!(answer.healthy, "not healthy: {answer:#?}");
    answer
        .status
        .and_then(|s| s.app)
        .map(|a| a.version)
        .expect("a version serves")
}

/// The SHA-256 fingerprint of the certificate the VM serves over HTTPS.
pub fn served_certificate(d: &Deployment) -> String {
    let port = d.vm.info().https_port;
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername {DOMAIN} </dev/null 2>/dev/null \
         | openssl x509 -noout -fingerprint -sha256"
    )));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        text.contains("Fingerprint"),
        "no certificate served: {text}"
    );
    text
}
