//! `parley-operator`: reconciles Parley's custom resources into workloads.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use parley_operator::{crd, tiers};

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
    /// Write the CRDs as YAML into crds/ and the chart (or into --out).
    Crdgen {
        /// Repository root; CRDs go to <repo>/crds and <repo>/charts/parley-operator/crds.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// Write only into this directory instead.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Tier { users } => {
            let sizing = tiers::resolve(users);
            println!("{}", serde_json::to_string_pretty(&sizing)?);
        }
        Command::Crdgen { repo, out } => {
            let dirs = match out {
                Some(dir) => vec![dir],
                None => crd::generate::default_dirs(&repo),
            };
            for dir in dirs {
                for path in crd::generate::write(&dir)? {
                    println!("wrote {}", path.display());
                }
            }
        }
    }
    Ok(())
}
