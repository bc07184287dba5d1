//! (being built)
#[derive(Debug, thiserror::Error)]
#[error("invalid input")]
pub struct Report;
