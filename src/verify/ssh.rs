//! The SSH checks, run with the system `ssh` as the owner would: key login as the
//! admin, password and root refused, and the server's state read over one session
//! (effective sshd settings, cloud-init, failed units, imgforge's status record).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{short, Checks, Target, VerifyOptions};
use crate::contract::remote::{ClusterNode, ClusterStatus, Replica};

/// Run on the server after login. Fixed text (the status path and the service name are
/// imgforge's own layout): nothing from the user is pasted in. Each section prints
/// `@@name`, its output, then `@@rc <exit code>`. A swarm's manager adds its nodes, the
/// app's service and running tasks as its Docker has them: the VM program a node got at
/// first boot carries no `status`, so the swarm is read from Docker itself.
fn script() -> String {
    format!(
        r#"echo @@user; id -un; echo "@@rc $?"
echo @@sshd; sudo -n sshd -T 2>&1; echo "@@rc $?"
echo @@cloud-init; cloud-init status --format json 2>&1; echo "@@rc $?"
echo @@units; systemctl --failed --plain --no-legend --no-pager 2>&1; echo "@@rc $?"
echo @@status; cat {status} 2>&1; echo "@@rc $?"
s=$(sudo -n docker info --format '{{{{.Swarm.LocalNodeState}}}} {{{{.Swarm.ControlAvailable}}}}' 2>/dev/null); echo @@swarm; echo "$s"; echo "@@rc 0"
if [ "$s" = "active true" ]; then
echo @@nodes; sudo -n docker node inspect $(sudo -n docker node ls -q) 2>&1; echo "@@rc $?"
echo @@service; sudo -n docker service inspect {service} 2>&1; echo "@@rc $?"
echo @@tasks; t=$(sudo -n docker service ps -q --filter desired-state=running {service}); [ -z "$t" ] && echo '[]' || sudo -n docker inspect --type task $t 2>&1; echo "@@rc $?"
fi
"#,
        status = crate::contract::layout().status,
        service = crate::contract::layout().service,
    )
}

/// One section of the script's output.
#[derive(Debug, Clone)]
pub(super) struct Section {
    pub output: String,
    pub rc: Option<i32>,
}

/// The outcome of the admin's login.
#[derive(Debug)]
pub(super) struct Login {
    /// The sections on success, ssh's error otherwise.
    pub result: Result<BTreeMap<String, Section>, String>,
}

/// How to run `ssh` against the target.
pub(super) struct Ssh {
    host: String,
    port: u16,
    user: String,
    common: Vec<OsString>,
    identity: Option<OsString>,
    pinned: bool,
    timeout: Duration,
}

struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Ssh {
    pub fn new(target: &Target, opts: &VerifyOptions) -> Ssh {
        let mut common: Vec<OsString> = vec!["-F".into(), "/dev/null".into()];
        let mut opt = |o: String| {
            common.push("-o".into());
            common.push(o.into());
        };
        opt("BatchMode=yes".into());
        // The banner exchange counts against ConnectTimeout, and an emulated
        // guest forks sshd slowly: give it more than one network operation.
        opt(format!("ConnectTimeout={}", opts.timeout.as_secs().max(15)));
        opt("ConnectionAttempts=1".into());
        opt("ServerAliveInterval=5".into());
        opt("ServerAliveCountMax=3".into());
        opt("LogLevel=ERROR".into());
        opt("GlobalKnownHostsFile=/dev/null".into());
        let pinned = match &opts.known_hosts {
            Some(path) => {
                opt("StrictHostKeyChecking=yes".into());
                opt(format!("UserKnownHostsFile={}", path.display()));
                // A key pinned before the VM existed is filed under the domain,
                // while ssh connects to an address (and a forwarded port).
                if known_hosts_names(path).contains(&opts.domain) {
                    opt(format!("HostKeyAlias={}", opts.domain));
                }
                true
            }
            None => {
                opt("StrictHostKeyChecking=no".into());
                opt("UserKnownHostsFile=/dev/null".into());
                false
            }
        };
        common.push("-p".into());
        common.push(target.ssh_port.to_string().into());
        Ssh {
            host: target.host.clone(),
            port: target.ssh_port,
            user: opts.user.clone(),
            common,
            identity: opts.identity.as_ref().map(|p| p.as_os_str().to_owned()),
            pinned,
            timeout: opts.ssh_timeout,
        }
    }

    fn destination(&self, user: &str) -> String {
        format!("{user}@{}", self.host)
    }

    fn with_key(&self, cmd: &mut Command) {
        if let Some(key) = &self.identity {
            cmd.arg("-i").arg(key).args(["-o", "IdentitiesOnly=yes"]);
        }
    }

    fn run(&self, cmd: &mut Command) -> Output {
        run_with_timeout(cmd, self.timeout)
    }

    /// Logs in as the admin with the key and runs [`script()`].
    pub fn login(&self) -> Login {
        let mut cmd = Command::new("ssh");
        cmd.args(&self.common);
        self.with_key(&mut cmd);
        cmd.arg("-T")
            .arg(self.destination(&self.user))
            .arg("--")
            .arg(script());
        let out = self.run(&mut cmd);
        let result = if out.success {
            Ok(parse_sections(&out.stdout))
        } else {
            Err(ssh_error(&out))
        };
        Login { result }
    }

    /// Tries to log in with passwords only; the server's list of methods it still
    /// accepts is in ssh's "Permission denied (...)" message.
    fn password_attempt(&self) -> Output {
        let mut cmd = Command::new("ssh");
        cmd.args(&self.common)
            .args(["-o", "PubkeyAuthentication=no"])
            .args([
                "-o",
                "PreferredAuthentications=password,keyboard-interactive",
            ])
            .args(["-o", "NumberOfPasswordPrompts=0"])
            .arg("-T")
            .arg(self.destination(&self.user))
            .args(["--", "true"]);
        self.run(&mut cmd)
    }

    fn root_attempt(&self) -> Output {
        let mut cmd = Command::new("ssh");
        cmd.args(&self.common);
        self.with_key(&mut cmd);
        cmd.arg("-T")
            .arg(self.destination("root"))
            .args(["--", "true"]);
        self.run(&mut cmd)
    }
}

/// Host names in the first field of a plain (unhashed) known_hosts file.
fn known_hosts_names(path: &std::path::Path) -> Vec<String> {
    let Ok(text) = crate::fsutil::read_small(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .flat_map(|f| f.split(','))
        .map(str::to_string)
        .collect()
}

fn ssh_error(out: &Output) -> String {
    let err = out.stderr.trim();
    if err.is_empty() {
        "ssh failed without a message".to_string()
    } else {
        err.lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The methods in "Permission denied (publickey,password).", if ssh said so.
fn denied_methods(stderr: &str) -> Option<Vec<String>> {
    let start = stderr.find("Permission denied (")? + "Permission denied (".len();
    let end = stderr[start..].find(')')? + start;
    Some(
        stderr[start..end]
            .split(',')
            .map(|m| m.trim().to_string())
            .collect(),
    )
}

fn parse_sections(stdout: &str) -> BTreeMap<String, Section> {
    let mut sections = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in stdout.lines() {
        if let Some(rc) = line.strip_prefix("@@rc ") {
            if let Some((name, output)) = current.take() {
                let rc = rc.trim().parse().ok();
                sections.insert(name, Section { output, rc });
            }
        } else if let Some(name) = line.strip_prefix("@@") {
            current = Some((name.trim().to_string(), String::new()));
        } else if let Some((_, output)) = current.as_mut() {
            output.push_str(line);
            output.push('\n');
        }
    }
    sections
}

/// Runs `cmd` with no stdin, collecting its output, killed after `timeout`.
fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let spawned = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return Output {
                success: false,
                stdout: String::new(),
                stderr: format!("running ssh: {e}"),
            }
        }
    };
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                timed_out = true;
                break child.wait().ok();
            }
            Ok(None) => thread::sleep(Duration::from_millis(50)),
            Err(_) => break None,
        }
    };
    let stdout = out.join().unwrap_or_default();
    let mut stderr = err.join().unwrap_or_default();
    if timed_out {
        stderr.push_str(&format!(
            "\nssh did not finish within {} s",
            timeout.as_secs()
        ));
    }
    Output {
        success: !timed_out && status.is_some_and(|s| s.success()),
        stdout,
        stderr,
    }
}

/// `ssh.login`, `ssh.host_key`, `ssh.password_refused`, `ssh.root_refused`,
/// `ssh.sshd_config`.
pub(super) fn login_checks(ssh: &Ssh, login: &Login, opts: &VerifyOptions, checks: &mut Checks) {
    let dest = format!("{}@{}:{}", ssh.user, ssh.host, ssh.port);
    let key = match &opts.identity {
        Some(k) => format!("key {}", k.display()),
        None => "ssh's default keys".to_string(),
    };
    match &login.result {
        Ok(sections) => {
            let who = sections
                .get("user")
                .map(|s| s.output.trim().to_string())
                .unwrap_or_default();
            if who == ssh.user {
                checks.ok("ssh.login", format!("{dest} logged in with {key}"));
            } else {
                checks.failed(
                    "ssh.login",
                    format!("{dest} logged in with {key} but the session runs as {who:?}"),
                );
            }
        }
        Err(e) => checks.failed("ssh.login", format!("{dest} with {key}: {e}")),
    }

    if !ssh.pinned {
        checks.skipped(
            "ssh.host_key",
            "NOT AUTHENTICATED: no --known-hosts given, any host key was accepted",
        );
    } else {
        match &login.result {
            Ok(_) => checks.ok("ssh.host_key", "the host key matches the known_hosts file"),
            Err(e)
                if e.contains("Host key verification failed")
                    || e.contains("IDENTIFICATION HAS CHANGED")
                    || e.contains("No ED25519 host key is known")
                    || e.contains("host key is known") =>
            {
                checks.failed("ssh.host_key", e.clone())
            }
            // Authentication happens after the host key check.
            Err(e) if e.contains("Permission denied") => {
                checks.ok("ssh.host_key", "the host key matches the known_hosts file")
            }
            Err(_) => checks.skipped("ssh.host_key", "not checked: no SSH connection"),
        }
    }

    let out = ssh.password_attempt();
    let r = if out.success {
        Err(format!(
            "{dest} let a session in with no key and no password"
        ))
    } else {
        match denied_methods(&out.stderr) {
            Some(methods) => {
                let offered: Vec<_> = methods
                    .iter()
                    .filter(|m| *m == "password" || *m == "keyboard-interactive")
                    .cloned()
                    .collect();
                if offered.is_empty() {
                    Ok(format!("the server accepts only: {}", methods.join(",")))
                } else {
                    Err(format!(
                        "the server offers {} (accepted methods: {})",
                        offered.join(" and "),
                        methods.join(",")
                    ))
                }
            }
            None => Err(format!("could not ask the server: {}", ssh_error(&out))),
        }
    };
    checks.result("ssh.password_refused", r);

    let out = ssh.root_attempt();
    let r = if out.success {
        Err(format!(
            "root@{}:{} logged in with {key}",
            ssh.host, ssh.port
        ))
    } else if out.stderr.contains("Permission denied") {
        Ok(format!("root with {key}: {}", short(&ssh_error(&out), 80)))
    } else {
        Err(format!("could not try root: {}", ssh_error(&out)))
    };
    checks.result("ssh.root_refused", r);

    let r = match &login.result {
        Err(_) => None,
        Ok(sections) => sections.get("sshd").map(sshd_config_result),
    };
    match r {
        Some(r) => checks.result("ssh.sshd_config", r),
        None => checks.skipped("ssh.sshd_config", "not checked: SSH login failed"),
    }
}

/// The effective sshd settings that keep the server key-only.
const SSHD_WANTED: [(&str, &str); 3] = [
    ("permitrootlogin", "no"),
    ("passwordauthentication", "no"),
    ("kbdinteractiveauthentication", "no"),
];

fn sshd_config_result(section: &Section) -> Result<String, String> {
    if section.rc != Some(0) {
        return Err(format!(
            "`sudo -n sshd -T` failed (exit {}): {}",
            section.rc.map_or("?".to_string(), |c| c.to_string()),
            short(&section.output, 100)
        ));
    }
    let settings: BTreeMap<&str, &str> = section
        .output
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k, v.trim()))
        .collect();
    let mut wrong = Vec::new();
    for (key, want) in SSHD_WANTED {
        // Older OpenSSH names keyboard-interactive after challenge-response.
        let got = settings.get(key).copied().or_else(|| {
            (key == "kbdinteractiveauthentication")
                .then(|| settings.get("challengeresponseauthentication").copied())
                .flatten()
        });
        match got {
            Some(v) if v == want => {}
            Some(v) => wrong.push(format!("{key} {v} (want {want})")),
            None => wrong.push(format!("{key} missing (want {want})")),
        }
    }
    if wrong.is_empty() {
        Ok(SSHD_WANTED
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "))
    } else {
        Err(wrong.join(", "))
    }
}

/// `server.cloud_init`, `server.failed_units`, `server.imgforge_status`, `server.cluster`.
pub(super) fn server_checks(login: &Login, opts: &VerifyOptions, checks: &mut Checks) {
    const NAMES: [&str; 4] = [
        "server.cloud_init",
        "server.failed_units",
        "server.imgforge_status",
        "server.cluster",
    ];
    let sections = match &login.result {
        Ok(s) => s,
        Err(_) => {
            for n in NAMES {
                checks.skipped(n, "not checked: SSH login failed");
            }
            return;
        }
    };
    let get = |name: &str| {
        sections.get(name).cloned().unwrap_or(Section {
            output: String::new(),
            rc: None,
        })
    };
    checks.result(NAMES[0], cloud_init_result(&get("cloud-init")));
    checks.result(NAMES[1], failed_units_result(&get("units")));
    checks.result(NAMES[2], imgforge_status_result(&get("status"), opts.tls));
    let swarm = get("swarm").output;
    match swarm.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["active", "true"] => checks.result(
            NAMES[3],
            swarm_status(&get("nodes"), &get("service"), &get("tasks"))
                .and_then(|c| cluster_result(&c)),
        ),
        ["active", _] => checks.ok(
            NAMES[3],
            "a worker (active): verify the manager for the cluster",
        ),
        [state @ ("pending" | "error" | "locked"), ..] => {
            checks.failed(NAMES[3], format!("this node's swarm state is {state}"))
        }
        _ => checks.skipped(NAMES[3], "not a node of a swarm"),
    }
}

/// The swarm as its manager's Docker tells it (`docker node inspect`, `service inspect`,
/// `inspect --type task`: the Engine API's JSON), in the shape `imgforge status` shows.
fn swarm_status(
    nodes: &Section,
    service: &Section,
    tasks: &Section,
) -> Result<ClusterStatus, String> {
    let json = |what: &str, s: &Section| -> Result<Vec<serde_json::Value>, String> {
        serde_json::from_str(s.output.trim()).map_err(|_| {
            format!(
                "`docker {what}` did not give JSON: {}",
                short(&s.output, 200)
            )
        })
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_lowercase();
    let mut names = BTreeMap::new();
    let mut out = ClusterStatus {
        manager: true,
        state: "active".into(),
        nodes: Vec::new(),
        replicas: Vec::new(),
        update: None,
    };
    for n in json("node inspect", nodes)? {
        let hostname = n["Description"]["Hostname"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        names.insert(n["ID"].as_str().unwrap_or("").to_owned(), hostname.clone());
        out.nodes.push(ClusterNode {
            hostname,
            addr: n["Status"]["Addr"].as_str().unwrap_or("").to_owned(),
            state: text(&n["Status"]["State"]),
            availability: text(&n["Spec"]["Availability"]),
            manager: n.get("ManagerStatus").is_some(),
        });
    }
    out.update = json("service inspect", service)?
        .first()
        .and_then(|s| s["UpdateStatus"]["State"].as_str().map(str::to_owned));
    for t in json("inspect --type task", tasks)? {
        let node = t["NodeID"].as_str().unwrap_or("?");
        out.replicas.push(Replica {
            node: names.get(node).cloned().unwrap_or_else(|| node.to_owned()),
            version: t["Spec"]["ContainerSpec"]["Labels"]["org.imgforge.version"]
                .as_str()
                .unwrap_or("?")
                .to_owned(),
            state: text(&t["Status"]["State"]),
        });
    }
    Ok(out)
}

/// `server.cluster` on the manager: every node ready and active, every replica that
/// should run running, all of one version, and no update under way or stopped.
fn cluster_result(c: &ClusterStatus) -> Result<String, String> {
    let mut problems = Vec::new();
    for n in &c.nodes {
        if n.state != "ready" || n.availability != "active" {
            problems.push(format!(
                "node {} is {}, {}",
                n.hostname, n.state, n.availability
            ));
        }
    }
    for r in &c.replicas {
        if r.state != "running" {
            problems.push(format!(
                "replica {} on {} is {}",
                r.version, r.node, r.state
            ));
        }
    }
    let mut versions: Vec<&str> = c.replicas.iter().map(|r| r.version.as_str()).collect();
    versions.sort_unstable();
    versions.dedup();
    match versions.len() {
        0 => problems.push("no replica of the app runs".into()),
        1 => {}
        _ => problems.push(format!(
            "replicas of {} versions: {}",
            versions.len(),
            versions.join(", ")
        )),
    }
    if let Some(u) = &c.update {
        if !matches!(u.as_str(), "completed" | "rollback_completed") {
            problems.push(format!("the service's update is {u}"));
        }
    }
    if problems.is_empty() {
        Ok(format!(
            "{} nodes ready, {} replicas of {} running",
            c.nodes.len(),
            c.replicas.len(),
            versions[0]
        ))
    } else {
        Err(problems.join("; "))
    }
}

fn cloud_init_result(section: &Section) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(section.output.trim()).map_err(|_| {
        format!(
            "`cloud-init status --format json` did not give JSON: {}",
            short(&section.output, 100)
        )
    })?;
    let status = v.get("status").and_then(|s| s.as_str()).unwrap_or("");
    let errors: Vec<String> = v
        .get("errors")
        .and_then(|e| e.as_array())
        .map(|a| {
            a.iter()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if status == "done" && errors.is_empty() {
        Ok("cloud-init status: done, no errors".to_string())
    } else if errors.is_empty() {
        Err(format!("cloud-init status: {status}"))
    } else {
        Err(format!(
            "cloud-init status: {status}, errors: {}",
            short(&errors.join("; "), 200)
        ))
    }
}

fn failed_units_result(section: &Section) -> Result<String, String> {
    if section.rc != Some(0) {
        return Err(format!(
            "`systemctl --failed` failed: {}",
            short(&section.output, 100)
        ));
    }
    let units: Vec<&str> = section
        .output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|u| *u != "●")
        .collect();
    if units.is_empty() {
        Ok("no failed systemd units".to_string())
    } else {
        Err(format!("failed units: {}", units.join(", ")))
    }
}

fn imgforge_status_result(section: &Section, tls: bool) -> Result<String, String> {
    let path = &crate::contract::layout().status;
    if section.rc != Some(0) {
        return Err(format!("reading {path}: {}", short(&section.output, 100)));
    }
    let st = crate::contract::status::Status::parse(&section.output)
        .map_err(|e| format!("{path} is not a status document: {e}"))?;
    let cert = st.certificate.as_deref().unwrap_or("");
    let bad_steps: Vec<String> = st
        .steps
        .iter()
        .filter(|(_, s)| matches!(s.as_str(), "failed" | "pending"))
        .map(|(k, s)| format!("{k} {s}"))
        .collect();
    let cert_ok = !tls || cert == "ok";
    let state = format!("{:?}", st.state).to_lowercase();
    if st.is_ready() && cert_ok {
        Ok(format!("state {state}, certificate {cert}"))
    } else {
        let mut msg = format!("state {state}, certificate {cert}");
        if tls && cert != "ok" {
            msg.push_str(" (want ok)");
        }
        if !bad_steps.is_empty() {
            msg.push_str(&format!("; steps: {}", bad_steps.join(", ")));
        }
        if let Some(e) = &st.error {
            msg.push_str(&format!("; error: {e}"));
        }
        Err(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_split_on_markers() {
        let s = parse_sections(
            "@@user\ndeploy\n@@rc 0\n@@sshd\nsudo: a password is required\n@@rc 1\n",
        );
        assert_eq!(s["user"].output, "deploy\n");
        assert_eq!(s["sshd"].rc, Some(1));
    }

    #[test]
    fn denied_methods_are_read_from_ssh() {
        assert_eq!(
            denied_methods("deploy@127.0.0.1: Permission denied (publickey,password).\r\n"),
            Some(vec!["publickey".to_string(), "password".to_string()])
        );
        assert_eq!(denied_methods("Connection refused"), None);
    }

    #[test]
    fn sshd_settings_must_all_be_off() {
        let good = Section {
            output: "port 22\npermitrootlogin no\npasswordauthentication no\nkbdinteractiveauthentication no\n".into(),
            rc: Some(0),
        };
        assert!(sshd_config_result(&good).is_ok());
        let bad = Section {
            output: "permitrootlogin without-password\npasswordauthentication no\nkbdinteractiveauthentication no\n".into(),
            rc: Some(0),
        };
        let e = sshd_config_result(&bad).unwrap_err();
        assert!(e.contains("permitrootlogin without-password"), "{e}");
    }

    fn section(output: &str) -> Section {
        Section {
            output: output.into(),
            rc: Some(0),
        }
    }

    /// `docker node inspect`, `service inspect` and `inspect --type task` as the Engine
    /// API gives them: nodes (hostname, state), tasks (node, version, state).
    fn swarm(
        update: &str,
        nodes: &[(&str, &str)],
        tasks: &[(&str, &str, &str)],
    ) -> Result<String, String> {
        let nodes: Vec<_> = nodes
            .iter()
            .map(|(h, st)| {
                serde_json::json!({"ID": format!("id-{h}"), "Description": {"Hostname": h},
                "Spec": {"Availability": "active"}, "Status": {"State": st, "Addr": "10.0.0.2"}})
            })
            .collect();
        let tasks: Vec<_> = tasks
            .iter()
            .map(|(n, v, st)| {
                serde_json::json!({"ID": "t", "NodeID": format!("id-{n}"), "Status": {"State": st},
                "Spec": {"ContainerSpec": {"Labels": {"org.imgforge.version": v}}}})
            })
            .collect();
        let service = serde_json::json!([{"ID": "s", "UpdateStatus": {"State": update}}]);
        swarm_status(
            &section(&serde_json::to_string(&nodes).unwrap()),
            &section(&service.to_string()),
            &section(&serde_json::to_string(&tasks).unwrap()),
        )
        .and_then(|c| cluster_result(&c))
    }

    #[test]
    fn a_cluster_passes_with_every_node_ready_and_every_replica_of_one_version_running() {
        let nodes = [("api-1", "ready"), ("api-2", "ready")];
        let good = [("api-1", "0.2.0", "running"), ("api-2", "0.2.0", "running")];
        assert_eq!(
            swarm("completed", &nodes, &good).unwrap(),
            "2 nodes ready, 2 replicas of 0.2.0 running"
        );
        assert!(swarm("rollback_completed", &nodes, &good).is_ok());

        let down = [("api-1", "ready"), ("api-2", "down")];
        assert_eq!(
            swarm("completed", &down, &good).unwrap_err(),
            "node api-2 is down, active"
        );
        let mixed = [
            ("api-1", "0.2.0", "running"),
            ("api-2", "0.1.0", "starting"),
        ];
        assert_eq!(
            swarm("updating", &nodes, &mixed).unwrap_err(),
            "replica 0.1.0 on api-2 is starting; replicas of 2 versions: 0.1.0, 0.2.0; \
             the service's update is updating"
        );
        assert_eq!(
            swarm("completed", &nodes, &[]).unwrap_err(),
            "no replica of the app runs"
        );
        let e = swarm_status(
            &section("Error response from daemon: This node is not a swarm manager."),
            &section("[]"),
            &section("[]"),
        )
        .unwrap_err();
        assert!(e.contains("`docker node inspect` did not give JSON"), "{e}");
    }

    #[test]
    fn a_node_outside_a_swarm_skips_the_cluster_check_and_a_worker_defers_to_its_manager() {
        let verdict = |swarm: &str| {
            let sections = BTreeMap::from([("swarm".to_string(), section(swarm))]);
            let login = Login {
                result: Ok(sections),
            };
            let mut checks = Checks::default();
            server_checks(
                &login,
                &VerifyOptions::new("a.example", "deploy"),
                &mut checks,
            );
            let c = checks
                .0
                .into_iter()
                .find(|c| c.name == "server.cluster")
                .unwrap();
            (c.status, c.detail)
        };
        use super::super::Status;
        assert_eq!(verdict("inactive false\n").0, Status::Skipped);
        assert_eq!(verdict("").0, Status::Skipped);
        assert_eq!(
            verdict("active false\n"),
            (
                Status::Ok,
                "a worker (active): verify the manager for the cluster".into()
            )
        );
        assert_eq!(
            verdict("pending false\n"),
            (Status::Failed, "this node's swarm state is pending".into())
        );
        // A manager whose Docker gave nothing readable fails, naming what it got.
        assert_eq!(verdict("active true\n").0, Status::Failed);
    }

    #[test]
    fn status_json_needs_ready_and_a_certificate() {
        let s = |json: &str| Section {
            output: json.into(),
            rc: Some(0),
        };
        let ready = r#"{"version":1,"state":"ready","certificate":"ok","health":"ok","steps":{"nginx":"ok"},"cloud_init":{"status":"done","errors":[]}}"#;
        assert!(imgforge_status_result(&s(ready), true).is_ok());
        let pending = r#"{"version":1,"state":"ready","certificate":"pending","steps":{},"cloud_init":{"status":"done","errors":[]}}"#;
        assert!(imgforge_status_result(&s(pending), true).is_err());
        assert!(imgforge_status_result(&s(pending), false).is_ok());
        let failed = r#"{"version":1,"state":"failed","certificate":"ok","steps":{"docker":"failed"},"cloud_init":{"status":"done","errors":[]}}"#;
        let e = imgforge_status_result(&s(failed), true).unwrap_err();
        assert!(e.contains("docker failed"), "{e}");
    }

    #[test]
    fn cloud_init_errors_fail() {
        let s = |json: &str| Section {
            output: json.into(),
            rc: Some(0),
        };
        assert!(cloud_init_result(&s(r#"{"status":"done","errors":[]}"#)).is_ok());
        assert!(cloud_init_result(&s(r#"{"status":"error","errors":["boom"]}"#)).is_err());
        assert!(cloud_init_result(&s(r#"{"status":"running","errors":[]}"#)).is_err());
    }
}
