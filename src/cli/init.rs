//! `imgforge init`: a commented starter imgforge.yaml.

use std::path::PathBuf;

use anyhow::Result;

use crate::render::Templates;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the file
    #[arg(
        long,
        short = 'o',
        default_value = "imgforge.yaml",
        value_name = "FILE"
    )]
    pub output: PathBuf,
    /// Replace an existing file
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> Result<()> {
    crate::fsutil::check_output(&args.output, "-o", &[])?;
    if args.output.exists() && !args.force {
        return Err(crate::exit::usage(format!(
            "{} exists: pass --force to replace it, or -o another path",
            args.output.display()
        )));
    }
    let text = Templates::load(None)?.file("imgforge.yaml")?;
    crate::fsutil::write_file_atomic(&args.output, text.as_bytes(), 0o644)?;
    eprintln!(
        "wrote {}; edit it, then: imgforge render --config {} -o user-data.yaml",
        args.output.display(),
        args.output.display()
    );
    Ok(())
}
