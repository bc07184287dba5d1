//! `imgforge seed`: a NoCloud seed disk (label CIDATA) with the user-data, meta-data,
//! an optional network-config and the OCI bundle.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::spec_args::SpecArgs;
use crate::render::SEED_BUNDLE_FILE;
use crate::seed::{SeedFile, SeedFormat};
use crate::spec::Bundle;
use crate::templates::Templates;

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
    pub spec: SpecArgs,
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
    /// The seed disk to write
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,
    /// Directory of templates that replace the built-in ones, file by file
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct MetaData<'a> {
    #[serde(rename = "instance-id")]
    instance_id: &'a str,
    #[serde(rename = "local-hostname")]
    local_hostname: &'a str,
}

pub fn run(args: Args) -> Result<()> {
    let overrides = args
        .spec
        .overrides_with_bundle(args.bundle.as_deref(), |sha256| {
            Ok(Bundle::Seed {
                file: SEED_BUNDLE_FILE.into(),
                sha256,
            })
        })?;
    let spec = args.spec.load_with(overrides)?;
    let hostname = match &args.hostname {
        Some(h) => crate::spec::Hostname::parse(h)
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

    let templates = Templates::load(args.templates.as_deref())?;
    let user_data = crate::render::render(&spec, &templates)?
        .cloud_config
        .to_user_data()?;
    crate::render::check_parses_back(&user_data)?;
    // A new instance-id whenever the user-data changes: cloud-init then runs it as a new instance.
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(user_data.as_bytes()));
    let instance_id = format!("imgforge-{}", &digest[..16]);
    let meta = serde_yaml_ng::to_string(&MetaData {
        instance_id: &instance_id,
        local_hostname: &hostname,
    })?;

    let mut files = vec![
        SeedFile::bytes("user-data", user_data),
        SeedFile::bytes("meta-data", meta),
    ];
    if let Some(path) = &args.network_config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading network config {}", path.display()))?;
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).map_err(|e| {
            crate::exit::usage(format!(
                "--network-config {}: not YAML: {e}",
                path.display()
            ))
        })?;
        files.push(SeedFile::bytes("network-config", text));
    }
    if let Some(bundle) = &args.bundle {
        files.push(SeedFile::path(SEED_BUNDLE_FILE, bundle));
    }
    let format = match args.format {
        Format::Vfat => SeedFormat::Vfat,
        Format::Iso => SeedFormat::Iso9660,
    };
    crate::seed::write_seed_as(&args.output, &files, format)?;
    eprintln!(
        "wrote {} (label CIDATA, instance-id {instance_id})",
        args.output.display()
    );
    Ok(())
}
