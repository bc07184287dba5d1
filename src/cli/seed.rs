//! `imgforge seed`: a NoCloud seed disk (label CIDATA) with the user-data, meta-data,
//! an optional network-config and the OCI bundle.

use std::path::PathBuf;

use anyhow::Result;

use super::load::{print_known_hosts, with_bundle, Loaded};
use crate::input::{Bundle, Settings};
use crate::seed::{SeedFile, SeedFormat};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// FAT, written by imgforge
    Vfat,
    /// ISO 9660, written by xorriso
    Iso,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  imgforge seed --config imgforge.yaml --bundle classifier.oci.tar -o seed.img
  imgforge seed --domain api.example.com --email ops@example.com -o seed.iso --format iso")]
pub struct Args {
    #[command(flatten)]
    pub settings: Settings,
    /// OCI bundle to put on the seed; the VM loads it from there, checking its sha256
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// Network config (cloud-init v1 or v2 YAML) to add as network-config
    #[arg(long, value_name = "FILE")]
    pub network_config: Option<PathBuf>,
    /// The VM's hostname in meta-data [default: the domain's first label]
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    #[arg(long, value_enum, default_value = "vfat")]
    pub format: Format,
    /// The seed disk to write (mode 0600: it holds the app's environment)
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let mut inputs = args.settings.input_files();
    inputs.extend(args.bundle.as_deref());
    inputs.extend(args.network_config.as_deref());
    crate::fsutil::check_output(&args.output, "-o", &inputs)?;
    let (flags, bundle) = with_bundle(&args.settings, args.bundle.as_deref(), |sha256| {
        Bundle::Seed { sha256 }
    })?;
    let deployment = Loaded::load(&flags, bundle)?;
    let spec = &deployment.spec;
    let hostname = match &args.hostname {
        Some(h) => crate::input::Hostname::parse(h)
            .map(|h| h.to_string())
            .map_err(|p| {
                crate::exit::usage(format!("--hostname {h:?}: {}; {}", p.message, p.help))
            })?,
        None => spec
            .domain
            .as_ref()
            .and_then(|d| d.as_str().split('.').next())
            .unwrap_or("imgforge")
            .to_owned(),
    };
    let network_config = match &args.network_config {
        Some(path) => {
            let text = crate::fsutil::read_small(path).map_err(|e| {
                crate::exit::usage(format!("--network-config {}: {e}", path.display()))
            })?;
            serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).map_err(|e| {
                crate::exit::usage(format!(
                    "--network-config {}: not YAML: {}",
                    path.display(),
                    crate::input::parse_message(&e.to_string())
                ))
            })?;
            Some(text)
        }
        None => None,
    };

    let templates = deployment.templates(&flags)?;
    let rendered = crate::render::user_data(spec, &templates)?;
    let (instance_id, meta) = crate::seed::meta_data(&rendered.text, &hostname)?;
    let mut files = vec![
        SeedFile::bytes("user-data", rendered.text),
        SeedFile::bytes("meta-data", meta),
    ];
    if let Some(text) = network_config {
        files.push(SeedFile::bytes("network-config", text));
    }
    if let Some(bundle) = &args.bundle {
        files.push(SeedFile::path(
            &crate::contract::layout().seed_bundle,
            bundle,
        ));
    }
    let format = match args.format {
        Format::Vfat => SeedFormat::Vfat,
        Format::Iso => SeedFormat::Iso9660,
    };
    crate::seed::write_seed(&args.output, &files, format)?;
    eprintln!(
        "wrote {} (label CIDATA, instance-id {instance_id})",
        args.output.display()
    );
    print_known_hosts(rendered.known_hosts.as_deref());
    Ok(())
}
