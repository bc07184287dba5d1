//! The `imgforge` binary: parse, dispatch, print the error chain, exit.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = imgforge::cli::Cli::parse();
    match imgforge::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            imgforge::exit::report(&err);
            ExitCode::from(imgforge::exit::code_for(&err))
        }
    }
}
