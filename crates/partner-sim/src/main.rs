//! `partner-sim`: A real HTTPS partner endpoint: verifies signatures and OAuth, injects latency and failures, records what it got.
//!
//! Not built yet: this binary only answers `--help` and `--version` until its issue lands.

use clap::Parser;

/// A real HTTPS partner endpoint: verifies signatures and OAuth, injects latency and failures, records what it got.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!(
        "partner-sim is not implemented yet (see the issue \"One command, the whole system\")"
    )
}
