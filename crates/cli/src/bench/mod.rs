//! `socketcluster bench`: a load generator (being written; see the benchmark issue).

use std::process::ExitCode;

use clap::Args;

/// Flags of `socketcluster bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {}

/// Errors of `socketcluster bench`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    #[error("socketcluster bench is not available in this build yet")]
    NotImplemented,
}

pub(crate) async fn run(_args: BenchArgs) -> Result<ExitCode, BenchError> {
    Err(BenchError::NotImplemented)
}
