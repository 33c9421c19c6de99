//! `ebb bench`: measurements against a baseline taken in the same run.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum Bench {
    /// Cold reads of released files against reads of resident ones.
    Populate {},
}

pub fn run(bench: Bench) -> Result<ExitCode> {
    match bench {
        Bench::Populate {} => Ok(ExitCode::SUCCESS),
    }
}
