//! `imgforge build`: a new disk image made from a base cloud image with the deployment
//! baked in as cloud-init system configuration, plus the OCI bundle when one is given.

use std::path::PathBuf;

use anyhow::Result;

use super::load::{with_bundle, Loaded};
use crate::disk::{BuildPlan, DiskFile, Format};
use crate::input::{Bundle, Settings};

// A macro, not a const: concat! below takes only literals.
macro_rules! examples {
    () => {
        "\
Examples:
  imgforge build --base noble-server-cloudimg-amd64.img --config imgforge.yaml \\
      --bundle classifier.oci.tar -o deploy.qcow2
  imgforge build --base base.qcow2 --domain api.example.com \\
      --email ops@example.com -o deploy.raw --format raw"
    };
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = examples!(),
    after_long_help = concat!("\
The base cloud image (qcow2 or raw; GPT, MBR or no partition table; an ext4
root such as Ubuntu's cloudimg-rootfs) is copied, never modified. No mounts,
loop devices or VM: the root filesystem is written with e2fsprogs' debugfs.

The cloud-config goes into the copy as cloud-init system configuration,
/etc/cloud/cloud.cfg.d/90-imgforge.cfg (mode 0600), not as a NoCloud seed: on
a provider with its own datasource (EC2, GCE, Hetzner, ...) the provider's
network config and SSH keys still apply and the deployment merges in.
User-data given to the provider is merged over it with cloud-init's default
rules: a top-level key it sets (runcmd, write_files, users, ...) replaces
imgforge's, so leave those keys out of it.

With --bundle, the bundle is stored at /var/lib/imgforge/bundle.oci.tar and
the VM loads it from there after checking its sha256: nothing is pulled.
Files get the timestamp SOURCE_DATE_EPOCH, or else the base filesystem's last
write time, so the same inputs give the same image, byte for byte.

Needs qemu-img (qemu-utils) and debugfs, dumpe2fs (e2fsprogs).

", examples!())
)]
pub struct Args {
    #[command(flatten)]
    pub settings: Settings,
    /// Base cloud image (qcow2 or raw); only read
    #[arg(long, value_name = "FILE")]
    pub base: PathBuf,
    /// OCI bundle to bake in; the VM loads it, checking its sha256
    #[arg(long, value_name = "FILE", conflicts_with = "bundle_url")]
    pub bundle: Option<PathBuf>,
    /// The disk image to write (mode 0600: it may hold keys)
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,
    /// Output format [default: raw for .raw/.img, else qcow2]
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Compress the qcow2 output (smaller to upload to a provider)
    #[arg(long)]
    pub compress: bool,
    #[command(flatten)]
    pub provision: ProvisionArgs,
}

/// A provisioning boot: the stack installed into the image, so first boot only configures.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Provisioning")]
pub struct ProvisionArgs {
    /// Boot the image once to install packages, Docker and the app's image into it
    #[arg(long)]
    pub provision: bool,
    /// The disk's size, grown from the base's (e.g. 8G)
    #[arg(long, value_name = "SIZE", requires = "provision")]
    pub size: Option<String>,
    /// Most seconds the provisioning boot may take
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    pub provision_timeout: u64,
    /// Kernel to boot the base with (images without a bootloader)
    #[arg(long, value_name = "FILE", requires = "provision")]
    pub kernel: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line
    #[arg(long, value_name = "CMDLINE", requires = "kernel")]
    pub append: Option<String>,
    /// Accelerator of the provisioning boot
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: crate::qemu::Accel,
}

pub fn run(args: Args) -> Result<()> {
    // The base has its own message (the build never modifies it).
    let mut inputs = args.settings.input_files();
    inputs.extend(args.bundle.as_deref());
    crate::fsutil::check_output(&args.output, "-o", &inputs)?;
    if args.provision.provision {
        return provisioned(args);
    }
    let (flags, bundle) = with_bundle(&args.settings, args.bundle.as_deref(), |sha256| {
        Bundle::File { sha256 }
    })?;
    let deployment = Loaded::load(&flags, bundle)?;
    let layout = crate::contract::layout();
    let mut files = Vec::new();
    if let Some(bundle) = &args.bundle {
        files.push(DiskFile::path(&layout.baked_bundle, bundle, 0o600));
    }
    bake(&args, &flags, &deployment, &args.base, files)
}

/// `--provision`: boots the base once to install the stack and load the image, then
/// bakes the deployment into what it left, as `--offline` with the image in Docker's store.
fn provisioned(args: Args) -> Result<()> {
    let size = match &args.provision.size {
        Some(s) => Some(parse_size(s)?),
        None => None,
    };
    // What the provisioning boot installs: the deployment as it would be online.
    let (flags, bundle) = with_bundle(&args.settings, args.bundle.as_deref(), |sha256| {
        Bundle::Seed { sha256 }
    })?;
    let online = Loaded::load(&flags, bundle)?;
    if online.spec.offline {
        return Err(crate::exit::usage(
            "--provision with --offline: provisioning installs the packages; leave --offline out",
        ));
    }
    let size = crate::provision::check_base(&args.base, size, args.bundle.as_deref())?;
    let out_dir = match args.output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let work = tempfile::Builder::new()
        .prefix(".imgforge-provision-")
        .tempdir_in(&out_dir)
        .map_err(|e| {
            crate::exit::usage(format!(
                "creating a work directory in {}: {e}",
                out_dir.display()
            ))
        })?;
    let started = std::time::Instant::now();
    let p = crate::provision::Provisioning {
        base: &args.base,
        spec: &online.spec,
        bundle: args.bundle.as_deref(),
        size: Some(size),
        kernel: args.provision.kernel.clone(),
        initrd: args.provision.initrd.clone(),
        append: args.provision.append.clone(),
        accel: args.provision.accel,
        timeout: std::time::Duration::from_secs(args.provision.provision_timeout),
        work: work.path(),
    };
    let overlay = match crate::provision::run(&p, &mut crate::disk::stderr_progress) {
        Ok(o) => o,
        Err(e) => {
            // Kept for the guest's log.
            let kept = work.keep();
            return Err(e.context(format!("work directory kept: {}", kept.display())));
        }
    };
    // First boot configures only: packages present, the image in Docker's store.
    let mut baked = flags.clone();
    baked.offline = true;
    let deployment = Loaded::load(&baked, Some(Bundle::Baked))?;
    bake(&args, &baked, &deployment, &overlay, Vec::new())?;
    crate::disk::stderr_progress(&format!(
        "provisioned and baked in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `8G`, `512M`, `10240K` or bytes.
fn parse_size(s: &str) -> Result<u64> {
    let (digits, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        Some('T' | 't') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            crate::exit::usage(format!(
                "--size {s:?}: not a size; use a number with K, M, G or T, e.g. 8G"
            ))
        })
}

/// Writes the deployment's cloud-config (and `files`) into a copy of `base` at the output.
fn bake(
    args: &Args,
    flags: &Settings,
    deployment: &Loaded,
    base: &std::path::Path,
    mut files: Vec<DiskFile>,
) -> Result<()> {
    if deployment.spec.host_key {
        return Err(crate::exit::usage(
            "--host-key: every VM made from one image would share its host key; leave it out (each VM makes its own at first boot and reports it in status.json and on the serial console)",
        ));
    }
    let templates = deployment.templates(flags)?;
    let rendered = crate::render::user_data(&deployment.spec, &templates)?;
    let layout = crate::contract::layout();
    files.insert(
        0,
        DiskFile::bytes(&layout.system_cloud_config, rendered.text, 0o600),
    );
    let format =
        args.format
            .unwrap_or_else(|| match args.output.extension().and_then(|e| e.to_str()) {
                Some("raw" | "img") => Format::Raw,
                _ => Format::Qcow2,
            });
    if args.compress && matches!(format, Format::Raw) {
        return Err(crate::exit::usage(
            "--compress with a raw image: only qcow2 output is compressed; drop --compress, or write qcow2 (--format qcow2)",
        ));
    }
    let plan = BuildPlan {
        base: base.to_path_buf(),
        output: args.output.clone(),
        format,
        files,
        epoch: None,
        compress: args.compress,
    };
    let started = std::time::Instant::now();
    let report = crate::disk::build(&plan, &mut crate::disk::stderr_progress)?;
    let size = std::fs::metadata(&plan.output)
        .map(|m| m.len())
        .unwrap_or(0);
    crate::disk::stderr_progress(&format!(
        "wrote {} in {:.1}s: {} baked into partition {} of a {} image; the file is {}{}",
        plan.output.display(),
        started.elapsed().as_secs_f64(),
        crate::disk::human(report.written),
        report.root.partition.number,
        crate::disk::human(report.virtual_size),
        crate::disk::human(size),
        if args.compress { " (compressed)" } else { "" }
    ));
    Ok(())
}
