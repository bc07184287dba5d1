//! Exit codes, and how an error reaches the terminal.
//!
//! 0 ok, 1 failed, 2 bad usage or bad input. Errors a user can fix by changing
//! their input carry a [`UsageError`] somewhere in their chain.

use std::fmt;

/// Exit code for a failure that is not the user's input.
pub const FAILED: u8 = 1;
/// Exit code for bad usage or bad input (the same code clap uses).
pub const USAGE: u8 = 2;

/// Marks an error as caused by the user's input: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The source of an error that reports the user's input in full (the input module's list
/// of problems): exit code 2, and the report is printed as it is.
#[derive(Debug, Default, thiserror::Error)]
#[error("bad input")]
pub struct BadInput;

/// Builds an `anyhow::Error` that exits with code 2.
pub fn usage(msg: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.to_string()))
}

/// An error that exits with its own code (`imgforge boot`'s timeout, say). It prints as
/// the error it wraps.
#[derive(Debug)]
pub struct Coded {
    pub code: u8,
    pub error: anyhow::Error,
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Coded {}

/// Wraps `error` so that the process exits with `code`.
pub fn with_code(code: u8, error: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Coded { code, error })
}

/// The exit code for an error: its own for [`Coded`], 2 when any cause is the user's
/// input, else 1.
pub fn code_for(err: &anyhow::Error) -> u8 {
    if let Some(coded) = err.downcast_ref::<Coded>() {
        return coded.code;
    }
    let is_usage = err
        .chain()
        .any(|cause| cause.is::<UsageError>() || cause.is::<BadInput>());
    if is_usage {
        USAGE
    } else {
        FAILED
    }
}

/// Prints an error the way users read it: a validation report as is, anything
/// else as `error: outer: inner: root`.
pub fn report(err: &anyhow::Error) {
    let chain: Vec<_> = err.chain().collect();
    match chain.iter().position(|cause| cause.is::<BadInput>()) {
        Some(i) if i > 0 => eprint!("{}", chain[i - 1]),
        _ => eprintln!("error: {err:#}"),
    }
}
