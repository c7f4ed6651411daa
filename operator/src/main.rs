//! `parley-operator`: reconciles Parley's custom resources into workloads.

mod tiers;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "parley-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the sizing tier a domain of USERS users resolves to.
    Tier { users: u64 },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Tier { users } => {
            let sizing = tiers::resolve(users);
            println!("{}", serde_json::to_string_pretty(&sizing)?);
        }
    }
    Ok(())
}
