//! Loading the deployment the way `render`, `seed` and `build` share: the config file the
//! flags name, the flags over it, validated into a [`Deployment`].

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::input::{Bundle, ConfigFile, Deployment, Settings};
use crate::render::Templates;

/// A validated deployment and the config file it came from.
pub struct Loaded {
    pub spec: Deployment,
    pub file: Option<ConfigFile>,
}

impl Loaded {
    /// Reads `flags.config` (if any) and validates the flags over it. Warnings go to
    /// stderr; problems come back as a [`crate::input::Problems`] (exit code 2).
    pub fn load(flags: &Settings, bundle: Option<Bundle>) -> Result<Loaded> {
        let file = match &flags.config {
            Some(path) => Some(ConfigFile::read(path)?),
            None => None,
        };
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let (spec, report) = crate::input::load(flags, file.as_ref(), bundle, home.as_deref())?;
        for warning in report.warnings() {
            eprintln!("{warning}");
        }
        Ok(Loaded { spec, file })
    }

    /// The templates: the `--templates` directory, else the file's `templates` key
    /// (relative to the file), else the built-in ones.
    pub fn templates(&self, flags: &Settings) -> Result<Templates> {
        let from_file = self.file.as_ref().and_then(|f| {
            f.settings
                .templates
                .as_ref()
                .map(|dir| f.path.parent().unwrap_or(Path::new("")).join(dir))
        });
        Templates::load(flags.templates.as_deref().or(from_file.as_deref()))
    }
}

/// With a bundle (`seed --bundle`, `build --bundle`): the flags with the image the bundle
/// holds, and where the VM finds it. An `--image` that names another image is an error.
pub fn with_bundle(
    flags: &Settings,
    bundle: Option<&Path>,
    place: fn(crate::input::Sha256Hex) -> Bundle,
) -> Result<(Settings, Option<Bundle>)> {
    let Some(path) = bundle else {
        return Ok((flags.clone(), None));
    };
    if flags.app.bundle.url.is_some() || flags.app.bundle.sha256.is_some() {
        return Err(crate::exit::usage(format!(
            "--bundle {} and --bundle-url/--bundle-sha256 both say how the image reaches the VM: pass one",
            path.display()
        )));
    }
    let info = crate::oci::bundle::inspect(path)?;
    if let Some(image) = &flags.app.image {
        if image != info.image.as_str() {
            return Err(crate::exit::usage(format!(
                "--image {image} but the bundle {} holds {}: drop --image, or pack the bundle under that name",
                path.display(),
                info.image
            )));
        }
    }
    let mut flags = flags.clone();
    flags.app.image = Some(info.image.to_string());
    Ok((flags, Some(place(info.sha256))))
}

/// Prints what a generated host key means for the user: its known_hosts line, and the
/// warning that the private key travels in the user-data.
pub fn print_known_hosts(line: Option<&str>) {
    if let Some(line) = line {
        eprintln!("warning: the VM's private SSH host key is in this user-data; anyone who can read the provider's metadata service (including processes on the VM) can read it");
        eprintln!("known_hosts line (add it to ~/.ssh/known_hosts to pin the VM's identity):");
        eprintln!("{line}");
    }
}
