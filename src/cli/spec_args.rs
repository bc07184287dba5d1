//! The flags that describe a deployment, shared by `render`, `seed` and `build`.
//! Each overrides the same key in the config file.

use std::path::PathBuf;

use crate::spec::{DockerSource, Overrides};

#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Deployment")]
pub struct SpecArgs {
    /// Config file (see `imgforge init`); flags override its values
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Domain the API is served on; its DNS A/AAAA record points at the VM
    #[arg(long, value_name = "NAME")]
    pub domain: Option<String>,
    /// E-mail for the certificate account (expiry notices)
    #[arg(long, value_name = "ADDRESS")]
    pub email: Option<String>,
    /// Admin's SSH public key file (repeatable) [default: ~/.ssh/id_ed25519.pub]
    #[arg(long = "ssh-key", value_name = "FILE.pub")]
    pub ssh_keys: Vec<PathBuf>,
    /// Container image to run [default: the project's classifier]
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// Admin user name [default: deploy]
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Port the container listens on [default: 8000]
    #[arg(long, value_name = "PORT")]
    pub app_port: Option<String>,
    /// Host directory for the app's data [default: /srv/app/data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// Where the data directory is mounted in the container [default: /app/data]
    #[arg(long, value_name = "DIR")]
    pub data_path: Option<String>,
    /// Environment variable for the container (repeatable)
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// The app's health endpoint [default: /health]
    #[arg(long, value_name = "PATH")]
    pub health_path: Option<String>,
    /// Serve plain HTTP only (no domain or certificate yet)
    #[arg(long)]
    pub no_tls: bool,
    /// ACME directory URL (staging or a private CA) [default: Let's Encrypt]
    #[arg(long, value_name = "URL")]
    pub acme_server: Option<String>,
    /// PEM bundle to trust for an ACME server that is not publicly trusted
    #[arg(long, value_name = "FILE")]
    pub acme_ca_bundle: Option<PathBuf>,
    /// Where Docker comes from [default: docker-ce]
    #[arg(long, value_enum, value_name = "SOURCE")]
    pub docker_source: Option<DockerSource>,
    /// Install nothing at boot: the image already carries the packages
    #[arg(long)]
    pub offline: bool,
    /// Daily data backups to keep [default: 7]
    #[arg(long, value_name = "N")]
    pub backup_keep: Option<String>,
    /// Pre-generate the VM's SSH host key and print its known_hosts line
    #[arg(long)]
    pub host_key: bool,
    /// Fetch the image as an OCI bundle from this https URL instead of a registry
    #[arg(long, value_name = "URL", requires = "bundle_sha256")]
    pub bundle_url: Option<String>,
    /// sha256 of the bundle at --bundle-url
    #[arg(long, value_name = "HEX")]
    pub bundle_sha256: Option<String>,
}

impl SpecArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            domain: self.domain.clone(),
            email: self.email.clone(),
            user: self.user.clone(),
            ssh_key_files: self.ssh_keys.clone(),
            image: self.image.clone(),
            app_port: self.app_port.clone(),
            data_dir: self.data_dir.clone(),
            data_path: self.data_path.clone(),
            env: self.env.clone(),
            health_path: self.health_path.clone(),
            no_tls: self.no_tls,
            acme_server: self.acme_server.clone(),
            acme_ca_bundle: self.acme_ca_bundle.clone(),
            docker_source: self.docker_source,
            offline: self.offline,
            backup_keep: self.backup_keep.clone(),
            host_key: self.host_key,
            bundle_url: self.bundle_url.clone(),
            bundle_sha256: self.bundle_sha256.clone(),
            bundle_local: None,
        }
    }
}

impl SpecArgs {
    /// The overrides, with the image and its delivery taken from an OCI bundle when one
    /// is given: `place` says where the bundle travels (seed disk, baked image).
    pub fn overrides_with_bundle(
        &self,
        bundle: Option<&std::path::Path>,
        place: impl FnOnce(crate::spec::Sha256Hex) -> anyhow::Result<crate::spec::Bundle>,
    ) -> anyhow::Result<Overrides> {
        let mut overrides = self.overrides();
        let Some(bundle) = bundle else {
            return Ok(overrides);
        };
        let info = crate::bundle::inspect(bundle)?;
        if let Some(image) = &overrides.image {
            if image != info.image.as_str() {
                return Err(crate::exit::usage(format!(
                    "--image {image} but the bundle {} holds {}: drop --image, or pack the bundle under that name",
                    bundle.display(),
                    info.image
                )));
            }
        }
        overrides.image = Some(info.image.to_string());
        overrides.bundle_local = Some(place(info.sha256)?);
        Ok(overrides)
    }

    /// Loads and validates the deployment: warnings go to stderr, problems come
    /// back as a [`crate::spec::Report`] (exit code 2).
    pub fn load(&self) -> anyhow::Result<crate::spec::Spec> {
        self.load_with(self.overrides())
    }

    pub fn load_with(&self, overrides: Overrides) -> anyhow::Result<crate::spec::Spec> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        match crate::spec::load(self.config.as_deref(), &overrides, home.as_deref()) {
            Ok((spec, report)) => {
                for warning in report.warnings() {
                    eprintln!("{warning}");
                }
                Ok(spec)
            }
            Err(report) => Err(report.into()),
        }
    }
}
