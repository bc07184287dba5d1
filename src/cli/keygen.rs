//! `imgforge keygen`: an ed25519 key pair for users without one.

use std::path::PathBuf;

use anyhow::Result;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  imgforge keygen -o ~/.ssh/id_ed25519   # writes id_ed25519 (0600) and id_ed25519.pub"
)]
pub struct Args {
    /// Private key path; the public key goes to the same path plus .pub
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Comment stored in the key
    #[arg(long, default_value = "imgforge")]
    pub comment: String,
    /// Replace existing files
    #[arg(long, conflicts_with = "if_missing")]
    pub force: bool,
    /// Keep an existing key pair (print its public key) instead of failing
    #[arg(long)]
    pub if_missing: bool,
}

pub fn run(args: Args) -> Result<()> {
    let path = match args.output {
        Some(p) => p,
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".ssh/id_ed25519"),
            None => return Err(crate::exit::usage("HOME is not set: pass -o FILE")),
        },
    };
    let mut pub_path = path.clone().into_os_string();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    if args.if_missing && path.exists() && pub_path.exists() {
        let public = std::fs::read_to_string(&pub_path)
            .map_err(|e| anyhow::anyhow!("reading ssh key {}: {e}", pub_path.display()))?;
        eprintln!("keeping the existing key pair {}", path.display());
        print!("{public}");
        return Ok(());
    }
    for p in [&path, &pub_path] {
        // A missing directory is created below; what is there must be a plain file.
        if p.parent()
            .is_none_or(|d| d.as_os_str().is_empty() || d.is_dir())
        {
            crate::fsutil::check_output(p, "-o", &[])?;
        }
        if p.exists() && !args.force {
            return Err(crate::exit::usage(format!(
                "{} exists: pass --force to replace it, or -o another path",
                p.display()
            )));
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("creating directory {}: {e}", dir.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| anyhow::anyhow!("setting mode 0700 on {}: {e}", dir.display()))?;
        }
    }
    if let Some(c) = args
        .comment
        .chars()
        .find(|c| !c.is_ascii_graphic() && *c != ' ')
    {
        return Err(crate::exit::usage(format!(
            "--comment {:?}: {c:?} is not printable ASCII; the comment ends the .pub line, so use letters, digits, punctuation and spaces",
            args.comment
        )));
    }
    let pair = crate::keys::KeyPair::generate(&args.comment)?;
    pair.write(&path)?;
    eprintln!(
        "wrote {} (private, 0600) and {}",
        path.display(),
        pub_path.display()
    );
    println!("{}", pair.public_openssh()?);
    Ok(())
}
