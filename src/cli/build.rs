//! `imgforge build`: a new disk image made from a base cloud image with the deployment
//! baked in as cloud-init system configuration, plus the OCI bundle when one is given.

use std::path::PathBuf;

use anyhow::Result;

use super::deployment::{with_bundle, Deployment};
use crate::disk::{BuildPlan, DiskFile, Format};
use crate::spec::{Bundle, Settings};

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
}

pub fn run(args: Args) -> Result<()> {
    let (flags, bundle) = with_bundle(&args.settings, args.bundle.as_deref(), |sha256| {
        Bundle::File { sha256 }
    })?;
    let deployment = Deployment::load(&flags, bundle)?;
    if deployment.spec.host_key {
        return Err(crate::exit::usage(
            "--host-key: every VM made from one image would share its host key; leave it out (each VM makes its own at first boot and reports it in status.json and on the serial console)",
        ));
    }
    let templates = deployment.templates(&flags)?;
    let rendered = crate::render::user_data(&deployment.spec, &templates)?;

    let layout = crate::render::layout();
    let mut files = vec![DiskFile::bytes(
        &layout.system_cloud_config,
        rendered.text,
        0o600,
    )];
    if let Some(bundle) = &args.bundle {
        files.push(DiskFile::path(&layout.baked_bundle, bundle, 0o600));
    }
    let format =
        args.format
            .unwrap_or_else(|| match args.output.extension().and_then(|e| e.to_str()) {
                Some("raw" | "img") => Format::Raw,
                _ => Format::Qcow2,
            });
    let plan = BuildPlan {
        base: args.base,
        output: args.output,
        format,
        files,
        epoch: None,
    };
    let started = std::time::Instant::now();
    let report = crate::disk::build(&plan, &mut crate::disk::stderr_progress)?;
    crate::disk::stderr_progress(&format!(
        "wrote {} in {:.1}s: {} baked into partition {} of a {} image",
        plan.output.display(),
        started.elapsed().as_secs_f64(),
        crate::disk::human(report.written),
        report.root.partition.number,
        crate::disk::human(report.virtual_size),
    ));
    Ok(())
}
