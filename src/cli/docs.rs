//! `imgforge docs completions SHELL` and `imgforge docs man`: generated from the
//! clap definition, so they cannot drift from it.

use std::io::Write;

use anyhow::{Context, Result};
use clap::{CommandFactory, Subcommand};

#[derive(Debug, Subcommand)]
pub enum Docs {
    /// Print shell completions (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff)
    Man,
}

pub fn run(docs: Docs) -> Result<()> {
    let mut cmd = super::Cli::command();
    let mut out = std::io::stdout().lock();
    match docs {
        Docs::Completions { shell } => {
            clap_complete::generate(shell, &mut cmd, "imgforge", &mut out);
        }
        Docs::Man => {
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("writing the man page")?;
        }
    }
    out.flush().context("writing to stdout")
}
