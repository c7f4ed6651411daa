//! `parley-directory`: the entrypoint of the managed directory's image (the Dockerfile's
//! `directory` target), so that the image needs no shell.
//!
//! ```text
//! parley-directory --config CONFIG.ldif --seed SEED.ldif --data DIR [--slapd PATH] -- SLAPD-ARGS...
//! ```
//!
//! On the first start (no `DIR/slapd.d/cn=config.ldif`) it writes OpenLDAP's `cn=config` from
//! `CONFIG.ldif` (`slapadd -n0`) and the first entries of the database from `SEED.ldif` (the base
//! entry and the administrator, `slapadd -n1`) into `DIR/slapd.d.new` and `DIR/data`, then renames
//! `slapd.d.new` to `slapd.d`: an interrupted first start leaves no `slapd.d` and is redone from
//! scratch. Later starts keep what is there: `cn=config` is the directory's own from then on
//! (`parley-server prep schema` and `prep domain` change it over LDAP). Then it becomes
//! `slapd -F DIR/slapd.d SLAPD-ARGS...` (exec: slapd is the container's process and gets its signals).
//!
//! slapadd is slapd under another name (Debian installs hard links), so only slapd is needed.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

#[derive(Debug, PartialEq)]
struct Args {
    config: PathBuf,
    seed: PathBuf,
    data: PathBuf,
    slapd: PathBuf,
    slapd_args: Vec<OsString>,
}

const USAGE: &str =
    "usage: parley-directory --config CONFIG.ldif --seed SEED.ldif --data DIR [--slapd PATH] -- SLAPD-ARGS...";

fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
    let mut it = args.into_iter();
    let (mut config, mut seed, mut data) = (None, None, None);
    let mut slapd = PathBuf::from("/usr/sbin/slapd");
    let mut slapd_args = Vec::new();
    while let Some(a) = it.next() {
        let mut value = || it.next().map(PathBuf::from).ok_or_else(|| format!("{a:?} needs a value; {USAGE}"));
        match a.to_str() {
            Some("--config") => config = Some(value()?),
            Some("--seed") => seed = Some(value()?),
            Some("--data") => data = Some(value()?),
            Some("--slapd") => slapd = value()?,
            Some("--") => {
                slapd_args.extend(it.by_ref());
                break;
            }
            _ => return Err(format!("unexpected argument {a:?}; {USAGE}")),
        }
    }
    let need = |v: Option<PathBuf>, what: &str| v.ok_or_else(|| format!("missing {what}; {USAGE}"));
    Ok(Args {
        config: need(config, "--config")?,
        seed: need(seed, "--seed")?,
        data: need(data, "--data")?,
        slapd,
        slapd_args,
    })
}

/// `DIR/slapd.d`, the configuration slapd runs with.
fn config_dir(data: &Path) -> PathBuf {
    data.join("slapd.d")
}

/// Whether the directory was initialised (a complete first start renamed `slapd.d.new`).
fn initialised(data: &Path) -> bool {
    config_dir(data).join("cn=config.ldif").exists()
}

/// Runs slapd as the tool `tool` (slapadd) with `args`; fails with its output.
fn tool(slapd: &Path, tool: &str, args: &[&OsString]) -> Result<(), String> {
    let out = Command::new(slapd)
        .arg0(tool)
        .args(args)
        .output()
        .map_err(|e| format!("running {} as {tool}: {e}", slapd.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{tool} {:?} failed ({}): {}{}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The first start: `cn=config` and the seed entries, written aside and then put in place.
fn initialise(a: &Args) -> Result<(), String> {
    let fresh = a.data.join("slapd.d.new");
    let db = a.data.join("data");
    // Whatever an interrupted first start left goes: nothing in it was ever served.
    for dir in [&fresh, &db] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let f = OsString::from("-F");
    let l = OsString::from("-l");
    let fresh_os = fresh.clone().into_os_string();
    tool(&a.slapd, "slapadd", &[&OsString::from("-n0"), &f, &fresh_os, &l, &a.config.clone().into_os_string()])?;
    tool(&a.slapd, "slapadd", &[&OsString::from("-n1"), &f, &fresh_os, &l, &a.seed.clone().into_os_string()])?;
    std::fs::rename(&fresh, config_dir(&a.data)).map_err(|e| format!("renaming {}: {e}", fresh.display()))?;
    Ok(())
}

fn main() -> ExitCode {
    let a = match parse(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("parley-directory: {e}");
            return ExitCode::from(2);
        }
    };
    if initialised(&a.data) {
        eprintln!("parley-directory: {} exists: starting slapd with it", config_dir(&a.data).display());
    } else {
        eprintln!("parley-directory: first start: writing cn=config and the base entries under {}", a.data.display());
        if let Err(e) = initialise(&a) {
            eprintln!("parley-directory: {e}");
            return ExitCode::FAILURE;
        }
    }
    let err = Command::new(&a.slapd).arg("-F").arg(config_dir(&a.data)).args(&a.slapd_args).exec();
    eprintln!("parley-directory: starting {}: {err}", a.slapd.display());
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments() {
        let a = parse(os(&["--config", "c", "--seed", "s", "--data", "d", "--", "-d", "stats", "-h", "ldaps:///"]))
            .unwrap();
        assert_eq!(a.config, PathBuf::from("c"));
        assert_eq!(a.slapd, PathBuf::from("/usr/sbin/slapd"));
        assert_eq!(a.slapd_args, os(&["-d", "stats", "-h", "ldaps:///"]));
        assert!(parse(os(&["--config", "c", "--seed", "s"])).unwrap_err().contains("--data"));
        assert!(parse(os(&["--bogus"])).unwrap_err().contains("unexpected"));
    }

    /// With Debian's slapd on the host: a first start initialises, an interrupted one is redone,
    /// a later one keeps what is there.
    #[test]
    fn initialises_once_with_real_slapadd() {
        let slapd = Path::new("/usr/sbin/slapd");
        if !slapd.exists() || !Path::new("/usr/lib/ldap/back_mdb.so").exists() {
            eprintln!("skipped: no slapd (apt-get install slapd)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let config = format!(
            "dn: cn=config\nobjectClass: olcGlobal\ncn: config\n\n\
             dn: cn=module{{0}},cn=config\nobjectClass: olcModuleList\ncn: module{{0}}\nolcModulePath: /usr/lib/ldap\nolcModuleLoad: back_mdb\n\n\
             dn: cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: schema\n\n\
             include: file:///etc/ldap/schema/core.ldif\n\n\
             dn: olcDatabase={{1}}mdb,cn=config\nobjectClass: olcDatabaseConfig\nobjectClass: olcMdbConfig\nolcDatabase: {{1}}mdb\n\
             olcDbDirectory: {}/data\nolcSuffix: dc=example,dc=test\nolcRootDN: cn=admin,dc=example,dc=test\nolcDbMaxSize: 16777216\n",
            d.display()
        );
        std::fs::write(d.join("config.ldif"), config).unwrap();
        let seed = "dn: dc=example,dc=test\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: x\n";
        std::fs::write(d.join("seed.ldif"), seed).unwrap();
        let a = Args {
            config: d.join("config.ldif"),
            seed: d.join("seed.ldif"),
            data: d.to_path_buf(),
            slapd: slapd.into(),
            slapd_args: vec![],
        };
        // An interrupted first start left a half-written config and database.
        std::fs::create_dir_all(d.join("slapd.d.new/junk")).unwrap();
        std::fs::create_dir_all(d.join("data")).unwrap();
        std::fs::write(d.join("data/stale"), "x").unwrap();
        assert!(!initialised(d));
        initialise(&a).unwrap();
        assert!(initialised(d) && !d.join("slapd.d.new").exists() && !d.join("data/stale").exists());
        // slapadd again would fail on the existing entries: the entrypoint does not run it again.
        assert!(initialise_again_fails(&a));
    }

    fn initialise_again_fails(a: &Args) -> bool {
        let f = OsString::from("-F");
        let dir = config_dir(&a.data).into_os_string();
        tool(
            &a.slapd,
            "slapadd",
            &[&OsString::from("-n1"), &f, &dir, &OsString::from("-l"), &a.seed.clone().into_os_string()],
        )
        .is_err()
    }
}
