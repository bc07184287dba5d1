//! `imgforge cluster token`: the swarm's join token, from its manager, into a file only its
//! owner reads (the token lets a machine join the cluster: it is never printed or put in
//! an argument list). A joining node is rendered with `--join-token-file` and the
//! `--manager` address printed here.

use std::path::PathBuf;

use anyhow::Result;

use crate::contract::remote::ClusterToken;
use crate::input::cluster::JoinToken;
use crate::remote::Host;

#[derive(Debug, clap::Subcommand)]
pub enum Cluster {
    /// Write the swarm's join token (from the --cluster init node) to a 0600 file
    #[command(
        after_help = "Example:\n  imgforge cluster token --host 203.0.113.10 -o swarm.token\n  imgforge render --cluster join --cluster-network 10.0.0.0/16 --manager 10.0.0.2 --join-token-file swarm.token ..."
    )]
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub host: Host,
    /// Where the token goes (written 0600, atomically)
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,
    /// Replace an existing file
    #[arg(long)]
    pub force: bool,
}

pub fn run(cluster: Cluster) -> Result<()> {
    match cluster {
        Cluster::Token(args) => token(args),
    }
}

fn token(args: TokenArgs) -> Result<()> {
    crate::fsutil::check_output(&args.output, "-o", &[])?;
    if args.output.exists() && !args.force {
        return Err(crate::exit::usage(format!(
            "-o {}: the file exists; pass --force to replace it",
            args.output.display()
        )));
    }
    args.host.update_program()?;
    let answer: ClusterToken = args.host.call(&["cluster-token"], |stdin| {
        crate::remote::send(stdin, &serde_json::json!({}), None)
    })?;
    let token = JoinToken::parse(&answer.token).map_err(|p| {
        anyhow::anyhow!(
            "{} answered something that is not a join token: {}",
            args.host.host,
            p.message
        )
    })?;
    crate::fsutil::write_file_atomic(
        &args.output,
        format!("{}\n", token.expose()).as_bytes(),
        0o600,
    )?;
    eprintln!(
        "wrote {} (0600): the join token of the swarm {} manages; join with --manager {}",
        args.output.display(),
        args.host.host,
        answer.manager
    );
    Ok(())
}
