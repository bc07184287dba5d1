//! The local QEMU runner behind `imgforge boot`: boots a disk (through a throwaway
//! overlay) with a seed, forwards loopback ports to the guest, follows the serial console
//! and waits for the deployment's status report. Tests drive the same [`Vm`].

pub mod accel;
pub mod qmp;
pub mod serial;
pub use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::contract::status::{State, Status};
pub use accel::Accel;

use serial::{SerialState, Watcher};

/// Guest ports always forwarded: SSH, HTTP and HTTPS, and the app's ports, which are
/// probes: from outside they must not answer.
pub fn default_forwards() -> Vec<u16> {
    let ports = &crate::contract::layout().public_ports;
    let mut forwards = vec![ports.ssh, ports.http, ports.https];
    forwards.extend(probe_ports());
    forwards
}

/// The guest ports that must not answer from outside: the app's slots and a cluster
/// node's published service port (layout.json).
pub fn probe_ports() -> Vec<u16> {
    let layout = crate::contract::layout();
    let mut ports: Vec<u16> = layout.slots.values().copied().collect();
    ports.push(layout.service_port);
    ports
}
/// Name of the file `imgforge boot` writes in its run directory.
pub const BOOT_JSON: &str = "boot.json";
/// The known_hosts file `imgforge boot` writes in the run directory.
pub const KNOWN_HOSTS: &str = "known_hosts";

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Base disk (qcow2 or raw); never written.
    pub disk: PathBuf,
    /// NoCloud seed disk (label CIDATA), attached read-only.
    pub seed: Option<PathBuf>,
    /// Direct kernel boot, for disks without a bootloader.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: Option<String>,
    /// Holds the overlay, serial log, QMP socket, QEMU's own log and boot.json.
    pub run_dir: PathBuf,
    /// Guest TCP ports forwarded besides [`default_forwards`].
    pub forwards: Vec<u16>,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    /// The overlay's size when larger than the base (the guest grows its root into it).
    pub disk_size: Option<u64>,
    /// Lets the guest reach the network beyond the forwarded ports (a provisioning boot
    /// installs packages); deployments boot with QEMU's `restrict=on`.
    pub network: bool,
    /// A second network card on a VDE switch: the private network a provider gives its
    /// VMs (a cluster's nodes reach each other there).
    pub private: Option<PrivateNic>,
}

/// A network card on a VDE switch (Debian's `vde2`: `vde_switch -d -s DIR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateNic {
    /// The switch's socket directory.
    pub switch: PathBuf,
    /// Each guest on one switch needs its own.
    pub mac: MacAddr,
}

/// A unicast Ethernet address, `52:54:00:12:34:57`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr([u8; 6]);

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let mut mac = [0u8; 6];
        let well_formed = parts.len() == 6
            && parts
                .iter()
                .zip(mac.iter_mut())
                .all(|(p, b)| p.len() == 2 && u8::from_str_radix(p, 16).map(|v| *b = v).is_ok());
        if !well_formed || mac[0] & 1 == 1 {
            return Err(format!(
                "{s:?} is not a unicast MAC address: use six hex pairs, e.g. 52:54:00:12:34:57"
            ));
        }
        Ok(MacAddr(mac))
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex: Vec<String> = self.0.iter().map(|b| format!("{b:02x}")).collect();
        f.write_str(&hex.join(":"))
    }
}

impl VmConfig {
    /// 2 GiB, 2 CPUs, accelerator chosen by probe, no seed, no kernel.
    pub fn new(disk: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        VmConfig {
            disk: disk.into(),
            seed: None,
            kernel: None,
            initrd: None,
            append: None,
            run_dir: run_dir.into(),
            forwards: Vec::new(),
            memory_mib: 2048,
            cpus: 2,
            accel: Accel::Auto,
            disk_size: None,
            network: false,
            private: None,
        }
    }

    /// Checks what the user can get wrong before anything starts.
    fn validate(&self) -> Result<()> {
        let must_exist = [
            ("disk", Some(&self.disk)),
            ("seed", self.seed.as_ref()),
            ("kernel", self.kernel.as_ref()),
            ("initrd", self.initrd.as_ref()),
        ];
        for (what, path) in must_exist {
            if let Some(path) = path {
                if !path.is_file() {
                    return Err(crate::exit::usage(format!(
                        "{what} {} does not exist or is not a file",
                        path.display()
                    )));
                }
            }
        }
        if self.kernel.is_none() && (self.initrd.is_some() || self.append.is_some()) {
            return Err(crate::exit::usage("--initrd and --append need --kernel"));
        }
        if self.memory_mib < 256 {
            return Err(crate::exit::usage("--memory must be at least 256 MiB"));
        }
        if self.cpus == 0 {
            return Err(crate::exit::usage("--cpus must be at least 1"));
        }
        if let Some(port) = self.forwards.iter().find(|p| **p == 0) {
            return Err(crate::exit::usage(format!(
                "cannot forward guest port {port}"
            )));
        }
        Ok(())
    }
}

/// `<run-dir>/boot.json`: how to reach a booted VM (see the boot protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootInfo {
    pub pid: u32,
    pub ssh_port: u16,
    pub http_port: u16,
    pub https_port: u16,
    /// Guest port (as a string, JSON keys are strings) to host port.
    pub forwards: BTreeMap<String, u16>,
    pub serial_log: PathBuf,
    pub overlay: PathBuf,
    pub host: String,
    /// Where `imgforge boot` writes the guest's SSH host keys as a known_hosts file once
    /// the guest reports them on its serial console (a channel no one else can speak on).
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
}

impl BootInfo {
    /// Reads a boot.json written by `imgforge boot`.
    pub fn read(path: &Path) -> Result<BootInfo> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The host port forwarded to `guest_port`, if any.
    pub fn host_port(&self, guest_port: u16) -> Option<u16> {
        self.forwards.get(&guest_port.to_string()).copied()
    }
}

/// Times of one boot, from power-on (or from the reboot request or kernel banner of a
/// reboot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootTimings {
    /// First `login:` prompt on the serial console.
    pub login_prompt: Option<Duration>,
    /// First status report with cloud-init done or error.
    pub finished: Option<Duration>,
}

/// Why a wait ended without the status it waited for. Callers match on it to choose an
/// exit code.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("timed out after {}s waiting for the VM's status", .waited.as_secs())]
    Timeout { waited: Duration },
    #[error("QEMU exited ({status}) before the VM reported its status{}", tail_suffix(.log_tail))]
    Exited { status: String, log_tail: String },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

fn tail_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", tail.trim())
    }
}

/// A snapshot handed to a wait's progress callback about once a second.
#[derive(Debug, Clone)]
pub struct Progress {
    pub elapsed: Duration,
    pub last_line: Option<String>,
    /// The lines the console printed since the previous call, each with the time since
    /// power-on it was seen at (a caller that looks for some lines misses none).
    pub new_lines: Vec<(Duration, String)>,
}

/// A running QEMU guest. Dropping it kills QEMU; [`Vm::detach`] leaves it running.
pub struct Vm {
    child: Option<Child>,
    info: BootInfo,
    accel: Accel,
    run_dir: PathBuf,
    qmp_socket: PathBuf,
    qemu_log: PathBuf,
    watcher: Watcher,
    config: VmConfig,
    forwards: BTreeMap<u16, u16>,
}

impl Vm {
    /// Creates the overlay, picks free loopback ports, starts QEMU, writes boot.json and
    /// starts following the serial console. Returns once QEMU's monitor answers.
    pub fn start(config: &VmConfig) -> Result<Vm> {
        config.validate()?;
        fs::create_dir_all(&config.run_dir)
            .with_context(|| format!("creating run directory {}", config.run_dir.display()))?;
        let run_dir = fs::canonicalize(&config.run_dir)
            .with_context(|| format!("resolving run directory {}", config.run_dir.display()))?;
        let format = crate::qemu_img::info(&config.disk)?.format;
        let overlay = run_dir.join("overlay.qcow2");
        crate::qemu_img::create_overlay(&config.disk, &format, &overlay, config.disk_size)?;
        let accel = accel::resolve(config.accel, config.kernel.as_deref());

        let serial_log = run_dir.join("serial.log");
        // QEMU appends to it (a power cut starts QEMU again on the same log).
        let _ = fs::remove_file(&serial_log);
        let qmp_socket = run_dir.join("qmp.sock");
        let qemu_log = run_dir.join("qemu.log");
        let mut guest_ports: Vec<u16> = default_forwards();
        for p in &config.forwards {
            if !guest_ports.contains(p) {
                guest_ports.push(*p);
            }
        }

        // Free ports are picked by binding and releasing them, so another process can take
        // one before QEMU binds it; QEMU then exits at once and a new set is tried.
        let mut last_err = None;
        for _attempt in 0..3 {
            let forwards = pick_ports(&guest_ports)?;
            let _ = fs::remove_file(&qmp_socket);
            let mut child = spawn_qemu(
                config,
                accel,
                &overlay,
                &serial_log,
                &qmp_socket,
                &qemu_log,
                &forwards,
            )?;
            let power_on = Instant::now();
            match wait_for_monitor(&mut child, &qmp_socket, &qemu_log) {
                Ok(()) => {
                    let info = BootInfo {
                        pid: child.id(),
                        ssh_port: forwards[&22],
                        http_port: forwards[&80],
                        https_port: forwards[&443],
                        forwards: forwards.iter().map(|(g, h)| (g.to_string(), *h)).collect(),
                        serial_log: serial_log.clone(),
                        overlay: overlay.clone(),
                        host: "127.0.0.1".to_string(),
                        known_hosts: Some(run_dir.join(KNOWN_HOSTS)),
                    };
                    let mut vm = Vm {
                        child: Some(child),
                        info,
                        accel,
                        run_dir: run_dir.clone(),
                        qmp_socket: qmp_socket.clone(),
                        qemu_log: qemu_log.clone(),
                        watcher: Watcher::spawn(serial_log.clone(), power_on),
                        config: config.clone(),
                        forwards,
                    };
                    let json =
                        serde_json::to_vec_pretty(&vm.info).context("serializing boot.json")?;
                    let path = run_dir.join(BOOT_JSON);
                    if let Err(e) = crate::fsutil::write_file_atomic(&path, &json, 0o644) {
                        vm.kill();
                        return Err(e);
                    }
                    return Ok(vm);
                }
                Err(e) => {
                    let log = fs::read_to_string(&qemu_log).unwrap_or_default();
                    if log.contains("host forwarding rule") {
                        last_err = Some(e);
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("QEMU did not start")))
    }

    /// Ports, pid and paths, as written to boot.json.
    pub fn info(&self) -> &BootInfo {
        &self.info
    }

    /// The accelerator in use (`Tcg` or `Kvm`).
    pub fn accel(&self) -> Accel {
        self.accel
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn serial_log(&self) -> &Path {
        &self.info.serial_log
    }

    /// How many boots were seen (1 until the guest is reset or reboots).
    pub fn boot_count(&self) -> usize {
        self.watcher.lock().boots.len()
    }

    /// Lines the serial console printed during the current boot so far.
    pub fn serial_lines(&self) -> Vec<String> {
        let st = self.watcher.lock();
        let boot = st.current_boot();
        st.lines
            .iter()
            .skip(st.boots[boot].first_line)
            .map(|l| l.text.clone())
            .collect()
    }

    /// The last status report of the current boot, if any.
    /// Writes the host keys the guest reported on its console as a known_hosts file
    /// (`[127.0.0.1]:PORT key`), so SSH to the guest can be authenticated. Returns the
    /// file, or `None` while no report named any key.
    pub fn write_known_hosts(&self) -> Result<Option<PathBuf>> {
        let Some(status) = self.latest_status() else {
            return Ok(None);
        };
        if status.host_keys.is_empty() {
            return Ok(None);
        }
        let mut text = String::new();
        for key in &status.host_keys {
            text.push_str(&format!(
                "[{}]:{} {key}\n",
                self.info.host, self.info.ssh_port
            ));
        }
        let path = self.run_dir.join(KNOWN_HOSTS);
        crate::fsutil::write_file_atomic(&path, text.as_bytes(), 0o644)?;
        Ok(Some(path))
    }

    pub fn latest_status(&self) -> Option<Status> {
        let st = self.watcher.lock();
        st.statuses(st.current_boot()).last()
    }

    /// Timings of the current boot.
    pub fn timings(&self) -> BootTimings {
        let st = self.watcher.lock();
        timings_of(&st, st.current_boot())
    }

    /// Timings of every boot seen, first boot first.
    pub fn all_timings(&self) -> Vec<BootTimings> {
        let st = self.watcher.lock();
        (0..st.boots.len()).map(|b| timings_of(&st, b)).collect()
    }

    /// Waits for this boot's first "finished" report (cloud-init done or error).
    pub fn wait_finished(
        &mut self,
        timeout: Duration,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Status, WaitError> {
        self.wait_until(timeout, &|s: &Status| s.is_finished(), progress)
    }

    /// Waits until a status report of the current boot satisfies `accept`, or QEMU exits,
    /// or `timeout` passes. Reports are checked in order, so a later report that no longer
    /// satisfies `accept` does not hide an earlier one that did.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        accept: &dyn Fn(&Status) -> bool,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Status, WaitError> {
        let start = Instant::now();
        let mut last_progress: Option<Instant> = None;
        let mut seen = self.watcher.lock().lines.len();
        loop {
            {
                let st = self.watcher.lock();
                if let Some(found) = st.statuses(st.current_boot()).find(|s| accept(s)) {
                    return Ok(found);
                }
                if let Some(err) = &st.error {
                    return Err(WaitError::Other(anyhow::anyhow!("{err}")));
                }
                if last_progress.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    last_progress = Some(Instant::now());
                    let power_on = st.boots[st.current_boot()].power_on;
                    let p = Progress {
                        elapsed: power_on.elapsed(),
                        last_line: st.last_line().map(str::to_string),
                        new_lines: st.lines[seen.min(st.lines.len())..]
                            .iter()
                            .map(|l| (l.at.saturating_duration_since(power_on), l.text.clone()))
                            .collect(),
                    };
                    seen = st.lines.len();
                    drop(st);
                    progress(&p);
                }
            }
            if let Some(status) = self.exit_status() {
                // Let the watcher take in the last lines; the report may be among them.
                self.watcher.finish();
                let st = self.watcher.lock();
                if let Some(found) = st.statuses(st.current_boot()).find(|s| accept(s)) {
                    return Ok(found);
                }
                return Err(WaitError::Exited {
                    status,
                    log_tail: tail(&self.qemu_log, 5),
                });
            }
            if start.elapsed() >= timeout {
                return Err(WaitError::Timeout {
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Serial lines of the current boot that explain a failure: cloud-init warnings and
    /// errors, tracebacks, failed units. At most `max`, the latest ones.
    pub fn failure_lines(&self, max: usize) -> Vec<String> {
        let lines = self.serial_lines();
        let picked: Vec<String> = lines.into_iter().filter(|l| is_failure_line(l)).collect();
        let skip = picked.len().saturating_sub(max);
        picked.into_iter().skip(skip).collect()
    }

    /// Hard reset (QMP `system_reset`); waits then look at the next boot only.
    pub fn reset(&mut self) -> Result<()> {
        self.note_reboot();
        qmp::execute(&self.qmp_socket, "system_reset")?;
        Ok(())
    }

    /// Pulls the plug: QEMU is killed at once (what the guest had not written to its disk
    /// is lost), then started again on the same disk with the same ports. Waits then look
    /// at the new boot.
    pub fn power_cut(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.power_on()
    }

    /// Waits up to `grace` for the guest to power itself off (QEMU exits when it does),
    /// then starts it again on the same disk with the same ports: an orderly shutdown and
    /// a cold boot, as a provider's reboot is for most VMs. Unlike the guest's own warm
    /// reboot, the new boot starts from a machine state QEMU has just built: under TCG a
    /// warm reboot once left the second CPU never woken (RCU stalls from the new boot's
    /// 8th second on, for 30 minutes).
    pub fn power_on_after_shutdown(&mut self, grace: Duration) -> Result<()> {
        let deadline = Instant::now() + grace;
        while self.is_running() {
            if Instant::now() >= deadline {
                bail!("the guest did not power off within {}s", grace.as_secs());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.child = None;
        self.power_on()
    }

    /// Starts QEMU again on the same disk, serial log and ports; waits look at the new boot.
    fn power_on(&mut self) -> Result<()> {
        self.note_reboot();
        // A wait that saw QEMU exit stopped the watcher.
        self.watcher.resume();
        let _ = fs::remove_file(&self.qmp_socket);
        let mut child = spawn_qemu(
            &self.config,
            self.accel,
            &self.info.overlay,
            &self.info.serial_log,
            &self.qmp_socket,
            &self.qemu_log,
            &self.forwards,
        )?;
        wait_for_monitor(&mut child, &self.qmp_socket, &self.qemu_log)?;
        self.info.pid = child.id();
        self.child = Some(child);
        let json = serde_json::to_vec_pretty(&self.info).context("serializing boot.json")?;
        crate::fsutil::write_file_atomic(&self.run_dir.join(BOOT_JSON), &json, 0o644)
    }

    /// Call right before rebooting the guest from inside (e.g. `ssh ... sudo reboot`), so
    /// that waits look at the next boot only, and its timings start now.
    pub fn note_reboot(&mut self) {
        self.watcher.lock().begin_boot(Instant::now());
    }

    /// Whether QEMU is still running.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// Asks the guest to power off (ACPI), waits up to `grace`, then quits QEMU, then
    /// kills it. Always ends with QEMU gone.
    pub fn stop(mut self, grace: Duration) -> Result<()> {
        if self.is_running() && qmp::execute(&self.qmp_socket, "system_powerdown").is_ok() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && self.is_running() {
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        if self.is_running() {
            let _ = qmp::execute(&self.qmp_socket, "quit");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && self.is_running() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.kill();
        Ok(())
    }

    /// Kills QEMU at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.watcher.finish();
    }

    /// Leaves QEMU running after this process exits; returns how to reach it.
    pub fn detach(mut self) -> BootInfo {
        self.child = None;
        self.info.clone()
    }

    fn exit_status(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown: {e}")),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn timings_of(st: &SerialState, boot: usize) -> BootTimings {
    let b = &st.boots[boot];
    BootTimings {
        login_prompt: b
            .login_prompt
            .map(|t| t.saturating_duration_since(b.power_on)),
        finished: b.finished.map(|t| t.saturating_duration_since(b.power_on)),
    }
}

fn is_failure_line(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    (l.contains("cloud-init") || l.contains("cc_") || l.contains("imgforge"))
        && (l.contains("error") || l.contains("warning") || l.contains("fail"))
        || l.contains("traceback")
        || l.contains("failed to start")
        || (l.contains("[failed]") || l.contains("failed ]"))
}

fn pick_ports(guest_ports: &[u16]) -> Result<BTreeMap<u16, u16>> {
    // Hold every listener until all are picked, so no port is handed out twice.
    let mut listeners = Vec::new();
    let mut map = BTreeMap::new();
    for guest in guest_ports {
        let l = TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
        let port = l
            .local_addr()
            .context("reading a bound port on 127.0.0.1")?
            .port();
        map.insert(*guest, port);
        listeners.push(l);
    }
    Ok(map)
}

#[allow(clippy::too_many_arguments)]
fn spawn_qemu(
    config: &VmConfig,
    accel: Accel,
    overlay: &Path,
    serial_log: &Path,
    qmp_socket: &Path,
    qemu_log: &Path,
    forwards: &BTreeMap<u16, u16>,
) -> Result<Child> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-name", "imgforge", "-machine", "q35", "-nodefaults"])
        .args(["-display", "none", "-vga", "none"])
        .args(accel::qemu_args(accel))
        .args(["-m", &config.memory_mib.to_string()])
        .args(["-smp", &config.cpus.to_string()])
        .arg("-chardev")
        .arg(format!(
            "file,id=serial0,path={},append=on",
            serial_log.display()
        ))
        .args(["-serial", "chardev:serial0"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_socket.display()))
        .arg("-drive")
        .arg(format!(
            "file={},format=qcow2,if=virtio,discard=unmap",
            overlay.display()
        ));
    if let Some(seed) = &config.seed {
        let seed =
            fs::canonicalize(seed).with_context(|| format!("resolving seed {}", seed.display()))?;
        let format = crate::qemu_img::info(&seed)?.format;
        cmd.arg("-drive").arg(format!(
            "file={},format={format},if=virtio,readonly=on",
            seed.display()
        ));
    }
    // restrict=on keeps the guest offline; forwarded ports still reach it.
    let mut netdev = String::from(if config.network {
        "user,id=net0"
    } else {
        "user,id=net0,restrict=on"
    });
    for (guest, host) in forwards {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    cmd.arg("-netdev")
        .arg(netdev)
        .args(["-device", "virtio-net-pci,netdev=net0"]);
    if let Some(nic) = &config.private {
        // QEMU's option syntax: a comma would start another option.
        let switch = nic.switch.to_str().filter(|p| !p.contains(','));
        let Some(switch) = switch else {
            return Err(crate::exit::usage(format!(
                "--private-switch {}: a path QEMU can take has no commas and is UTF-8",
                nic.switch.display()
            )));
        };
        cmd.arg("-netdev")
            .arg(format!("vde,id=net1,sock={switch}"))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=net1,mac={}", nic.mac));
    }
    cmd
        // The guest generates SSH host keys on first boot; entropy from the host avoids a
        // long wait for the kernel's pool under emulation.
        .args(["-object", "rng-random,filename=/dev/urandom,id=rng0"])
        .args(["-device", "virtio-rng-pci,rng=rng0"]);
    if let Some(kernel) = &config.kernel {
        cmd.arg("-kernel").arg(kernel);
        if let Some(initrd) = &config.initrd {
            cmd.arg("-initrd").arg(initrd);
        }
        if let Some(append) = &config.append {
            cmd.arg("-append").arg(append);
        }
    }
    let log = File::create(qemu_log)
        .with_context(|| format!("creating QEMU log {}", qemu_log.display()))?;
    let log2 = log
        .try_clone()
        .with_context(|| format!("opening QEMU log {}", qemu_log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    cmd.spawn()
        .context("starting qemu-system-x86_64 (is qemu-system-x86 installed?)")
}

fn wait_for_monitor(child: &mut Child, qmp_socket: &Path, qemu_log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "QEMU exited at start ({status}): {}",
                tail(qemu_log, 10).trim()
            );
        }
        if qmp_socket.exists() && qmp::execute(qmp_socket, "query-status").is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "QEMU's monitor {} did not answer within 30s: {}",
                qmp_socket.display(),
                tail(qemu_log, 10).trim()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `n` lines of a text file, or nothing if it cannot be read.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses() {
        let mac: MacAddr = "52:54:00:0A:bc:01".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:0a:bc:01");
        for bad in [
            "",
            "52:54:00:0a:bc",
            "52:54:00:0a:bc:01:02",
            "53:54:00:0a:bc:01",
            "52-54-00-0a-bc-01",
            "52:54:00:0a:bc:0g",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn failure_lines_are_recognised() {
        assert!(is_failure_line(
            "[  61.2] cloud-init[612]: 2025-01-01 WARNING: Failed to run module scripts_user"
        ));
        assert!(is_failure_line(
            "[FAILED] Failed to start nginx.service - A high performance web server."
        ));
        assert!(is_failure_line("Traceback (most recent call last):"));
        assert!(!is_failure_line(
            "[  OK  ] Started ssh.service - OpenBSD Secure Shell server."
        ));
        assert!(!is_failure_line(
            "cloud-init[512]: Cloud-init v. 22.4.2 running 'init' at ..."
        ));
    }

    #[test]
    fn picked_ports_are_distinct_loopback_ports() {
        let ports = pick_ports(&default_forwards()).expect("ports");
        let mut hosts: Vec<u16> = ports.values().copied().collect();
        hosts.sort_unstable();
        hosts.dedup();
        assert_eq!(hosts.len(), default_forwards().len());
        assert!(hosts.iter().all(|p| *p > 0));
    }

    #[test]
    fn boot_info_round_trips_with_the_protocol_field_names() {
        let json = r#"{"pid":7,"ssh_port":2222,"http_port":8080,"https_port":8443,
            "forwards":{"22":2222,"80":8080,"443":8443,"8000":8001},
            "serial_log":"/r/serial.log","overlay":"/r/overlay.qcow2","host":"127.0.0.1"}"#;
        let info: BootInfo = serde_json::from_str(json).expect("boot.json");
        assert_eq!(info.host_port(8000), Some(8001));
        assert_eq!(info.host_port(15000), None);
        let back: serde_json::Value = serde_json::to_value(&info).expect("json");
        let mut keys: Vec<&str> = back
            .as_object()
            .expect("object")
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        let mut expected = [
            "pid",
            "ssh_port",
            "http_port",
            "https_port",
            "forwards",
            "serial_log",
            "overlay",
            "host",
            "known_hosts",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }
}
