//! `imgforge render`: the deployment as cloud-init user-data.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::spec_args::SpecArgs;
use crate::templates::Templates;
use crate::userdata::{Encoding, Provider};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  imgforge render --domain api.example.com --email ops@example.com \\
      --ssh-key ~/.ssh/id_ed25519.pub --image ghcr.io/acme/classifier:1.0
  imgforge render --config imgforge.yaml --provider aws --gzip -o user-data.gz
  imgforge render --no-tls -o user-data.yaml")]
pub struct Args {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Write the user-data here (atomically, mode 0600) instead of stdout
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Check the size limit and encoding of this provider
    #[arg(long, value_enum, default_value = "generic")]
    pub provider: Provider,
    /// gzip the user-data (cloud-init decompresses it)
    #[arg(long)]
    pub gzip: bool,
    /// base64-encode the output
    #[arg(long)]
    pub base64: bool,
    /// Directory of templates that replace the built-in ones, file by file
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let spec = args.spec.load()?;
    let templates = Templates::load(args.templates.as_deref())?;
    let rendered = crate::render::render(&spec, &templates)?;
    let text = rendered.cloud_config.to_user_data()?;
    crate::render::check_parses_back(&text)?;
    let packaged = crate::userdata::package(
        &text,
        args.provider,
        Encoding {
            gzip: args.gzip,
            base64: args.base64,
        },
    )?;

    match &args.output {
        Some(path) => {
            crate::fsutil::write_file_atomic(path, &packaged.bytes, 0o600)?;
            eprintln!("wrote {} ({} bytes)", path.display(), packaged.bytes.len());
        }
        None => {
            let stdout = std::io::stdout();
            if packaged.binary && stdout.is_terminal() {
                return Err(crate::exit::usage(
                    "gzip output is binary: pass -o FILE or --base64",
                ));
            }
            let mut out = stdout.lock();
            out.write_all(&packaged.bytes)
                .context("writing user-data to stdout")?;
            out.flush().context("writing user-data to stdout")?;
        }
    }
    if let Some(line) = rendered.known_hosts {
        eprintln!("warning: the VM's private SSH host key is in this user-data; anyone who can read the provider's metadata service (including processes on the VM) can read it");
        eprintln!("known_hosts line (add it to ~/.ssh/known_hosts to pin the VM's identity):");
        eprintln!("{line}");
    }
    Ok(())
}
