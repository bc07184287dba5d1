//! The command line: one module per subcommand, each with its clap `Args` and a `run`.
//! clap types here are plain data; the work lives in the library modules.

use clap::{Parser, Subcommand};

pub mod backup;
pub mod boot;
pub mod build;
pub mod cluster;
pub mod deploy;
pub mod docs;
pub mod init;
pub mod keygen;
pub mod load;
pub mod logs;
pub mod pack;
pub mod render;
pub mod seed;
pub mod status;
pub mod verify;

const AFTER_HELP: &str = "\
Examples:
  imgforge init                       # a commented starter imgforge.yaml
  imgforge render --domain api.example.com --email ops@example.com \\
      --ssh-key ~/.ssh/id_ed25519.pub -o user-data.yaml
  imgforge pack images/classifier -o classifier.oci.tar
  imgforge seed --config imgforge.yaml --bundle classifier.oci.tar -o seed.img
  imgforge boot --disk debian.qcow2 --seed seed.img
  imgforge verify --host 127.0.0.1 --domain api.example.com
  imgforge deploy --host api.example.com --bundle classifier-0.2.oci.tar
  imgforge logs --host api.example.com --source app,proxy --since 10m -f

Exit codes: 0 ok, 1 failed, 2 bad usage or bad input.";

/// Deploy a containerized API to a fresh Ubuntu VM on its first boot.
#[derive(Debug, Parser)]
#[command(name = "imgforge", version, about, after_help = AFTER_HELP, max_term_width = 80)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// The deployment flags make some variants large; boxed, the enum stays small.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented starter imgforge.yaml
    Init(init::Args),
    /// Render cloud-init user-data that deploys everything on first boot
    Render(Box<render::Args>),
    /// Generate an ed25519 SSH key pair in OpenSSH format
    Keygen(keygen::Args),
    /// Build an OCI image bundle of a service, with no Docker daemon
    Pack(pack::Args),
    /// Write a NoCloud seed disk (label CIDATA) with user-data and a bundle
    Seed(Box<seed::Args>),
    /// Bake the deployment into a bootable disk image
    Build(Box<build::Args>),
    /// Boot a disk and seed locally in QEMU and wait for first boot to finish
    Boot(boot::Args),
    /// Check a deployed server from outside, as its owner would
    Verify(Box<verify::Args>),
    /// Deploy a new version of the app to a running VM, blue-green
    Deploy(Box<deploy::Args>),
    /// Go back to the version that ran before the last deploy
    Rollback(deploy::RollbackArgs),
    /// Show what a deployed VM runs, its certificate and its last deploys
    Status(status::Args),
    /// Show the app's, nginx's and imgforge's logs on a deployed VM
    Logs(Box<logs::Args>),
    /// Back up a deployed VM's data now, or list its backups
    Backup(Box<backup::Args>),
    /// Restore a deployed VM's data from a backup, with the app serving until it is ready
    Restore(Box<backup::RestoreArgs>),
    /// A Docker Swarm cluster's join token, for the nodes that join it
    #[command(subcommand)]
    Cluster(cluster::Cluster),
    /// Print shell completions or the man page
    #[command(subcommand)]
    Docs(docs::Docs),
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init(args) => init::run(args),
        Command::Render(args) => render::run(*args),
        Command::Keygen(args) => keygen::run(args),
        Command::Pack(args) => pack::run(args),
        Command::Seed(args) => seed::run(*args),
        Command::Build(args) => build::run(*args),
        Command::Boot(args) => boot::run(args),
        Command::Verify(args) => verify::run(*args),
        Command::Deploy(args) => deploy::run(*args),
        Command::Rollback(args) => deploy::rollback(args),
        Command::Status(args) => status::run(args),
        Command::Logs(args) => logs::run(*args),
        Command::Backup(args) => backup::run(*args),
        Command::Restore(args) => backup::restore(*args),
        Command::Cluster(cluster) => cluster::run(cluster),
        Command::Docs(docs) => docs::run(docs),
    }
}
