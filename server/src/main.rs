//! `parley-server`: Parley's SIP server (the command line; the server itself is the library).

use parley_server::{admin, config, home, ops, prep, probe, serve};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[cfg(not(feature = "system-allocator"))]
mod allocator;

#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

#[cfg(not(feature = "system-allocator"))]
use allocator::give_back_freed_memory_promptly;

#[cfg(feature = "system-allocator")]
fn give_back_freed_memory_promptly() {}

/// No transparent huge pages for this process. mimalloc asks for them on its arenas, and memory
/// given back (above) and touched again, or touched for the first time as the heap grows, then
/// faults in 2 MiB at a time: a fault zeroes the whole huge page, and with the kernel's usual
/// `defrag = madvise` may first compact memory. In `make bench`'s Front-End row such faults held
/// a server's thread for 20 to 40 ms several times a run (perf: `clear_page_erms` under
/// `do_huge_pmd_anonymous_page`), which made its MESSAGE p99. Small pages fault a little at a time.
fn no_transparent_huge_pages() {
    // SAFETY: a process-wide flag; takes no pointers.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        eprintln!("parley-server: transparent huge pages left on: {}", std::io::Error::last_os_error());
    }
}

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

impl From<Role> for config::Role {
    fn from(r: Role) -> config::Role {
        match r {
            Role::Home => config::Role::Home,
            Role::Frontend => config::Role::FrontEnd,
        }
    }
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
    /// Check a config file without opening its files or sockets: exit 0, or name the offending key.
    CheckConfig {
        #[arg(long, value_enum, default_value_t = Role::Home)]
        role: Role,
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a deployment end to end: two users sign in, watch, publish and message; exit 0 or 1.
    Probe(probe::ProbeArgs),
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Prepare the LDAP directory: schema, enterprise, domain, domainadd, verify.
    #[command(subcommand)]
    Prep(prep::PrepCommand),
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
    #[command(flatten)]
    Ldap(admin::UserLdapCommand),
}

/// Logs go to standard error (text or JSON) and, for a server, also to `parley.log` in the logs
/// directory as JSON lines, so the logs volume keeps them across pod restarts. `PARLEY_LOG` (default
/// `info`) filters what reaches every output.
/// The server's log file and its rotation: path, size limit, files kept.
struct LogFile<'a>(&'a std::path::Path, u64, u32);

fn init_logging(format: LogFormat, file: Option<LogFile>) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, layer::Layered, prelude::*};
    let filter = EnvFilter::try_from_env("PARLEY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in files or container logs.
    let stderr = fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    // The outputs sit on top of the filter, so it decides for all of them. (As one more entry in
    // the list beside them it would not: a list of layers is interested in whatever any member is.)
    let mut outputs: Vec<Box<dyn Layer<Layered<EnvFilter, Registry>> + Send + Sync>> = vec![match format {
        LogFormat::Text => stderr.boxed(),
        LogFormat::Json => stderr.json().boxed(),
    }];
    if let Some(LogFile(path, max_bytes, keep)) = file {
        let f = ops::logfile::RotatingFile::open(path, max_bytes, keep)
            .with_context(|| format!("opening the log file {}", path.display()))?;
        outputs.push(fmt::layer().json().with_ansi(false).with_writer(std::sync::Mutex::new(f)).boxed());
    }
    tracing_subscriber::registry().with(filter).with(outputs).init();
    Ok(())
}

fn main() -> std::process::ExitCode {
    give_back_freed_memory_promptly();
    no_transparent_huge_pages();
    let cli = Cli::parse();
    let format = cli.log_format;
    let result = match cli.command {
        Command::Serve { role, config } => serve_cmd(role, config, format),
        command => init_logging(format, None).and_then(|()| match command {
            Command::User(UserCommand::Hash { address, password_file }) => user_hash(&address, password_file),
            Command::User(UserCommand::Ldap(cmd)) => admin::run(cmd),
            Command::Prep(cmd) => prep::run(cmd),
            Command::Probe(args) => probe::run(args),
            Command::CheckConfig { role, config } => {
                config::Config::load(&config, role.into())?;
                println!(
                    "{}: valid for role {}",
                    config.display(),
                    role.to_possible_value().expect("named").get_name()
                );
                Ok(())
            }
            Command::Serve { .. } => unreachable!("handled above"),
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parley-server: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve_cmd(role: Role, path: PathBuf, format: LogFormat) -> anyhow::Result<()> {
    let config = config::Config::load(&path, role.into())?;
    let logs = &config.storage.logs_dir;
    std::fs::create_dir_all(logs).with_context(|| format!("creating {}", logs.display()))?;
    let path = logs.join("parley.log");
    init_logging(format, Some(LogFile(&path, config.storage.log_max_bytes, config.storage.log_files)))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(serve::run(config, role.into()))
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
