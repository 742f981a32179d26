//! `atbus bench` (placeholder replaced below).
use crate::transfer::Failure;
use std::process::ExitCode;
/// Arguments of `atbus bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}
pub fn bench(_: &BenchArgs) -> Result<ExitCode, Failure> {
    Err(Failure("not yet".into(), 2))
}
