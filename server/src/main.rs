//! `parley-server`: Parley's SIP server.

mod config;
mod directory;
mod home;
mod ops;
mod serve;
mod sip;
mod store;
mod transaction;
mod transport;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "parley-server", version, about = "Parley's SIP server: Home Server and Front-End")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PARLEY_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Role {
    Home,
    Frontend,
}

#[derive(Subcommand)]
enum Command {
    /// Run the SIP server.
    Serve {
        #[arg(long, value_enum, default_value_t = Role::Home)]
        role: Role,
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Print the users-file entry (digest HA1 for MD5 and SHA-256) for a new user.
    /// The password is read from standard input or --password-file, never from the command line.
    Hash {
        /// Address of record, e.g. alice@example.test (the domain is the digest realm).
        address: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARLEY_LOG").unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    // Colours only for a person at a terminal, never in files or container logs.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve { role, config } => serve_cmd(role, config),
        Command::User(UserCommand::Hash { address, password_file }) => user_hash(&address, password_file),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parley-server: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve_cmd(role: Role, path: PathBuf) -> anyhow::Result<()> {
    if role == Role::Frontend {
        anyhow::bail!("the Front-End role is not built yet; run --role home");
    }
    let config = config::Config::load(&path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(serve::run(config))
}

fn user_hash(address: &str, password_file: Option<PathBuf>) -> anyhow::Result<()> {
    use home::auth::{Algorithm, ha1};
    let address = address.trim_start_matches("sip:").to_ascii_lowercase();
    let Some((user, realm)) = address.split_once('@') else {
        anyhow::bail!("address {address:?} is not user@domain");
    };
    let password = match password_file {
        Some(p) => std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        None => {
            let mut s = String::new();
            std::io::stdin().read_line(&mut s).context("reading the password from standard input")?;
            s
        }
    };
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        anyhow::bail!("empty password");
    }
    println!("[[users]]");
    println!("address = \"{address}\"");
    println!("ha1_md5 = \"{}\"", ha1(Algorithm::Md5, user, realm, password));
    println!("ha1_sha256 = \"{}\"", ha1(Algorithm::Sha256, user, realm, password));
    Ok(())
}
