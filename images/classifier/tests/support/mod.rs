//! Helpers shared by the classifier's integration tests.

pub mod postgres;
