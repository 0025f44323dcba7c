//! `loadgen`: Synthetic traffic for segment-relay: users, traits, ID syncs and opt-outs at a set rate.
//!
//! Not built yet: this binary only answers `--help` and `--version` until its issue lands.

use clap::Parser;

/// Synthetic traffic for segment-relay: users, traits, ID syncs and opt-outs at a set rate.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!(
        "loadgen is not implemented yet (see the issue \"One command, the whole system\")"
    )
}
