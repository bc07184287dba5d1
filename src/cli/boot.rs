//! `imgforge boot`: boot a disk and seed in QEMU, wait for the deployment's status.
//!
//! Exit codes: 0 ready, 1 deployment failed, 2 bad usage, 3 timed out, 4 QEMU stopped
//! or could not run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::qemu::{Accel, MacAddr, Progress, Status, Vm, VmConfig, WaitError};

/// Exit code when the VM did not report in time.
pub const EXIT_TIMEOUT: u8 = 3;
/// Exit code when QEMU exited early or could not be started.
pub const EXIT_QEMU: u8 = 4;

const AFTER_HELP: &str = "\
The base disk is never written: the VM runs on a qcow2 overlay in the run
directory, next to serial.log, qemu.log and boot.json (ports and pid).
Guest ports 22, 80, 443, 8000, 8001 and 8002 (the app's, which must not answer)
are forwarded from free 127.0.0.1 ports.

Exit codes: 0 ready, 1 deployment failed, 2 bad usage, 3 timed out,
4 QEMU exited or could not start.";

#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Base disk image (qcow2 or raw); never modified
    #[arg(long, value_name = "PATH")]
    pub disk: PathBuf,
    /// NoCloud seed disk (label CIDATA)
    #[arg(long, value_name = "PATH")]
    pub seed: Option<PathBuf>,
    /// Kernel for direct kernel boot (disks without a bootloader)
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initrd for direct kernel boot
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for direct kernel boot
    #[arg(long, value_name = "CMDLINE", requires = "kernel")]
    pub append: Option<String>,
    /// Directory for the overlay, logs and boot.json [default: a new temporary one]
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Leave the VM running at the end (its pid is in boot.json)
    #[arg(long)]
    pub keep: bool,
    /// Give up after this many seconds
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    pub timeout: u64,
    /// Also forward this guest TCP port (repeatable)
    #[arg(long = "forward", value_name = "GUESTPORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub forwards: Vec<u16>,
    /// Also attach the guest to this VDE switch (`vde_switch -d -s DIR`): a private network
    /// between local VMs, as a provider gives a cluster's nodes
    #[arg(long, value_name = "DIR", requires = "private_mac")]
    pub private_switch: Option<PathBuf>,
    /// The guest's MAC address on the private switch (each guest its own)
    #[arg(long, value_name = "MAC", requires = "private_switch")]
    pub private_mac: Option<MacAddr>,
    /// Guest memory in MiB
    #[arg(long, value_name = "MIB", default_value_t = 2048)]
    pub memory: u32,
    /// Guest CPUs
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub cpus: u32,
    /// Accelerator: auto uses KVM only if a short probe shows it works
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
}

pub fn run(args: Args) -> Result<()> {
    let run_dir = match &args.run_dir {
        Some(dir) => dir.clone(),
        None => tempfile::Builder::new()
            .prefix("imgforge-boot-")
            .tempdir()
            .context("creating a run directory")?
            .keep(),
    };
    let config = VmConfig {
        disk: args.disk.clone(),
        seed: args.seed.clone(),
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        append: args.append.clone(),
        run_dir,
        forwards: args.forwards.clone(),
        memory_mib: args.memory,
        cpus: args.cpus,
        accel: args.accel,
        disk_size: None,
        network: false,
        private: args
            .private_switch
            .clone()
            .zip(args.private_mac)
            .map(|(switch, mac)| crate::qemu::PrivateNic { switch, mac }),
    };
    let mut vm = match Vm::start(&config) {
        Ok(vm) => vm,
        Err(err) if crate::exit::code_for(&err) == crate::exit::USAGE => return Err(err),
        Err(err) => {
            return Err(crate::exit::with_code(
                EXIT_QEMU,
                err.context("starting QEMU"),
            ))
        }
    };
    print_started(&vm);

    let timeout = Duration::from_secs(args.timeout);
    let mut progress = ProgressPrinter::new();
    let outcome = vm.wait_until(timeout, &Status::is_settled, &mut |p| progress.show(p));

    // The host keys the VM reported on its console: SSH to it can be authenticated.
    match vm.write_known_hosts() {
        Ok(Some(path)) => println!("  known_hosts {} (verify --boot uses it)", path.display()),
        Ok(None) => {}
        Err(e) => eprintln!("imgforge: warning: writing known_hosts: {e:#}"),
    }
    let result = match outcome {
        Ok(status) => report_status(&vm, &status),
        Err(WaitError::Timeout { waited }) => {
            print_failure_lines(&vm);
            if let Some(status) = vm.latest_status() {
                println!("last status: {}", summary(&status));
            }
            Err((
                EXIT_TIMEOUT,
                anyhow::anyhow!(
                    "the VM did not report a finished deployment within {}s (serial log: {})",
                    waited.as_secs(),
                    vm.serial_log().display()
                ),
            ))
        }
        Err(err @ WaitError::Exited { .. }) => {
            print_failure_lines(&vm);
            Err((EXIT_QEMU, anyhow::Error::new(err)))
        }
        Err(WaitError::Other(err)) => Err((crate::exit::FAILED, err)),
    };

    if args.keep {
        let info = vm.detach();
        println!(
            "VM left running: pid {} (stop it with: kill {})",
            info.pid, info.pid
        );
    } else {
        eprintln!("imgforge: shutting the VM down");
        vm.stop(Duration::from_secs(60))?;
    }
    match result {
        Ok(()) => Ok(()),
        Err((code, err)) => Err(crate::exit::with_code(code, err)),
    }
}

fn print_started(vm: &Vm) {
    let info = vm.info();
    println!(
        "imgforge: QEMU pid {} ({}), run directory {}",
        info.pid,
        match vm.accel() {
            Accel::Kvm => "KVM",
            _ => "TCG, software emulation",
        },
        vm.run_dir().display()
    );
    let mut forwards: Vec<(u16, u16)> = info
        .forwards
        .iter()
        .filter_map(|(guest, host)| guest.parse().ok().map(|g| (g, *host)))
        .collect();
    forwards.sort_unstable();
    for (guest, host) in forwards {
        println!("  {}:{host} -> guest port {guest}", info.host);
    }
    println!("  serial log {}", info.serial_log.display());
    println!(
        "  boot.json  {}",
        vm.run_dir().join(crate::qemu::BOOT_JSON).display()
    );
}

fn report_status(vm: &Vm, status: &Status) -> Result<(), (u8, anyhow::Error)> {
    let timings = vm.timings();
    if let Some(t) = timings.login_prompt {
        println!("login prompt after {:.1}s", t.as_secs_f64());
    }
    if let Some(t) = timings.finished {
        println!("cloud-init finished after {:.1}s", t.as_secs_f64());
    }
    println!("status: {}", summary(status));
    if status.is_ready() {
        println!("ready");
        return Ok(());
    }
    for step in status.failed_steps() {
        println!("failed step: {step}");
    }
    for err in status.cloud_init_errors() {
        println!("cloud-init error: {err}");
    }
    print_failure_lines(vm);
    let failed = status.failed_steps().join(", ");
    Err((
        crate::exit::FAILED,
        anyhow::anyhow!(
            "deployment failed{} (serial log: {})",
            if failed.is_empty() {
                format!(": cloud-init {}", status.cloud_init.status)
            } else {
                format!(" at {failed}")
            },
            vm.serial_log().display()
        ),
    ))
}

fn summary(status: &Status) -> String {
    let steps: Vec<String> = status
        .steps
        .iter()
        .map(|(name, state)| format!("{name}={state}"))
        .collect();
    format!(
        "state={:?} cloud-init={} certificate={} steps: {}",
        status.state,
        status.cloud_init.status,
        status.certificate.as_deref().unwrap_or("-"),
        if steps.is_empty() {
            "-".to_string()
        } else {
            steps.join(" ")
        }
    )
}

fn print_failure_lines(vm: &Vm) {
    let lines = vm.failure_lines(30);
    if !lines.is_empty() {
        println!("relevant serial console lines:");
        for line in lines {
            println!("  {line}");
        }
    }
}

/// Progress on stderr: a line when the console says something new, at most every 5 s,
/// and at least every 30 s so a silent guest still shows time passing.
struct ProgressPrinter {
    last_print: Option<Instant>,
    last_line: Option<String>,
}

impl ProgressPrinter {
    fn new() -> Self {
        ProgressPrinter {
            last_print: None,
            last_line: None,
        }
    }

    fn show(&mut self, p: &Progress) {
        let since = self.last_print.map(|t| t.elapsed());
        let changed = p.last_line != self.last_line;
        let due = match since {
            None => true,
            Some(s) => (changed && s >= Duration::from_secs(5)) || s >= Duration::from_secs(30),
        };
        if !due {
            return;
        }
        let line = p.last_line.as_deref().unwrap_or("(no console output yet)");
        let line: String = line.chars().take(100).collect();
        eprintln!("[{:>4}s] {line}", p.elapsed.as_secs());
        self.last_print = Some(Instant::now());
        self.last_line = p.last_line.clone();
    }
}
