//! `imgforge pack`: build a service's OCI image bundle from its `image.yaml`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;

use crate::oci::{Compression, PackOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    /// Plain tar layers
    None,
    /// gzip layers: loads everywhere, including Docker 20.10
    Gzip,
    /// zstd layers: smaller and faster; needs Docker 23+, Podman or containerd
    Zstd,
}

const AFTER_HELP: &str = "\
The archive is an OCI image layout and a `docker save` archive at once:
  docker load -i OUT      podman load -i OUT      ctr images import OUT
  skopeo copy oci-archive:OUT ...   skopeo copy docker-archive:OUT ...
Prints the image (manifest) digest; writes a summary to OUT.json.
Same inputs and options give the same bytes: every timestamp is
SOURCE_DATE_EPOCH (default 0).";

/// Build an OCI image bundle of a service, with no Docker daemon
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Directory holding image.yaml (or the spec file itself)
    #[arg(value_name = "SPEC_DIR")]
    pub spec: PathBuf,

    /// Archive to write (an uncompressed tar)
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,

    /// Image reference to tag, overriding the spec's `name`
    #[arg(long, value_name = "REPO:TAG")]
    pub tag: Option<String>,

    /// Layer compression
    #[arg(long, value_enum, default_value_t = CompressionArg::Gzip)]
    pub compression: CompressionArg,

    /// Compression level (gzip 1-9, default 2; zstd 1-19, default 3)
    #[arg(long, value_name = "N")]
    pub level: Option<u32>,

    /// Timestamp for every file and the image, in seconds since 1970
    #[arg(
        long,
        env = "SOURCE_DATE_EPOCH",
        default_value_t = 0,
        value_name = "SECONDS"
    )]
    pub source_date_epoch: u64,
}

pub fn run(args: Args) -> Result<()> {
    let compression = match (args.compression, args.level) {
        (CompressionArg::None, None) => Compression::None,
        (CompressionArg::None, Some(_)) => {
            return Err(crate::exit::usage(
                "--level needs --compression gzip or zstd",
            ))
        }
        (CompressionArg::Gzip, level) => {
            let level = level.unwrap_or(Compression::DEFAULT_GZIP_LEVEL);
            if !(1..=9).contains(&level) {
                return Err(crate::exit::usage(format!(
                    "gzip --level {level} is not in 1-9"
                )));
            }
            Compression::Gzip { level }
        }
        (CompressionArg::Zstd, level) => {
            let level = level.map_or(Compression::DEFAULT_ZSTD_LEVEL, |l| {
                i32::try_from(l).unwrap_or(i32::MAX)
            });
            if !(1..=19).contains(&level) {
                return Err(crate::exit::usage(format!(
                    "zstd --level {level} is not in 1-19"
                )));
            }
            Compression::Zstd { level }
        }
    };
    let opts = PackOptions {
        output: args.output,
        compression,
        reference: args.tag,
        source_date_epoch: args.source_date_epoch,
        progress: std::io::stderr().is_terminal(),
    };
    let summary = crate::oci::pack(&args.spec, &opts)?;
    let mib = summary.size as f64 / (1024.0 * 1024.0);
    eprintln!(
        "packed {} ({} layers, {mib:.1} MiB) into {}",
        summary.reference,
        summary.layers.len(),
        summary.output.display()
    );
    println!("{}", summary.digest);
    Ok(())
}
