//! `imgforge render`: the deployment as cloud-init user-data.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::load::{print_known_hosts, Loaded};
use crate::input::{Settings, UserDataSettings};
use crate::render::Encoding;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  imgforge render --domain api.example.com --email ops@example.com \\
      --ssh-key ~/.ssh/id_ed25519.pub --image ghcr.io/acme/classifier:1.0
  imgforge render --config imgforge.yaml --provider aws -o user-data.gz
  imgforge render --no-tls -o user-data.yaml")]
pub struct Args {
    #[command(flatten)]
    pub settings: Settings,
    #[command(flatten)]
    pub user_data: UserDataSettings,
    /// Write the user-data here (atomically, mode 0600) instead of stdout
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(output) = &args.output {
        crate::fsutil::check_output(output, "-o", &args.settings.input_files())?;
    }
    let deployment = Loaded::load(&args.settings, None)?;
    let templates = deployment.templates(&args.settings)?;
    let rendered = crate::render::user_data(&deployment.spec, &templates)?;
    // The render flags over the config file's `user-data:` keys.
    let file = deployment
        .file
        .as_ref()
        .map(|f| f.settings.user_data.clone())
        .unwrap_or_default();
    let provider = args
        .user_data
        .provider
        .or(file.provider)
        .unwrap_or_default();
    let encoding = Encoding {
        gzip: args.user_data.gzip || file.gzip,
        base64: args.user_data.base64 || file.base64,
    };
    let packaged = crate::render::package_user_data(&rendered, provider, encoding)?;
    if packaged.binary && args.output.is_none() && std::io::stdout().is_terminal() {
        return Err(crate::exit::usage(
            "gzip output is binary: pass -o FILE or --base64",
        ));
    }
    if let Some(note) = &packaged.note {
        eprintln!("note: {note}");
    }
    match &args.output {
        Some(path) => {
            crate::fsutil::write_file_atomic(path, &packaged.bytes, 0o600)?;
            eprintln!("wrote {} ({} bytes)", path.display(), packaged.bytes.len());
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&packaged.bytes)
                .context("writing user-data to stdout")?;
            out.flush().context("writing user-data to stdout")?;
        }
    }
    print_known_hosts(rendered.known_hosts.as_deref());
    Ok(())
}
