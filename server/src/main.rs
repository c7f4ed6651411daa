//! `parley-server`: Parley's SIP server.

mod sip;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "parley-server", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the canonical name of a (possibly compact) SIP header name.
    HeaderName { name: String },
}

fn main() {
    match Cli::parse().command {
        Command::HeaderName { name } => println!("{}", sip::compact::expand(&name)),
    }
}
