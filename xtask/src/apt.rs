//! Debian packages: install what the tasks need, resolve and fetch `.deb` files with
//! `apt-get download`, verified against the SHA256 recorded in apt's package lists.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::cmd;
use crate::paths;

/// Debian packages the host side needs (for QEMU, busybox, mke2fs, dmsetup and cpio;
/// LVM and thin_check for the emulated host's thin volumes;
/// qemu-img for skiff-images' tests; python3-venv for the OpenAPI validator that
/// skiff-host's tests install from PyPI; nft and dnsmasq for managed networks, in
/// skiff-net's tests and in the emulated host).
pub const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "e2fsprogs",
    "dmsetup",
    "lvm2",
    "thin-provisioning-tools",
    "python3-venv",
    "qemu-utils",
    "nftables",
    "dnsmasq-base",
    "openssh-client",
];

/// Set once `apt-get update` ran in this process, so it runs at most once.
static UPDATED: AtomicBool = AtomicBool::new(false);

/// One concrete version of a Debian package, as apt's lists describe it.
#[derive(Debug, Clone)]
pub struct DebPackage {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
}

impl DebPackage {
    /// The file name it is cached under (epoch colon made file-system friendly).
    pub fn file_name(&self) -> String {
        format!("{}_{}.deb", self.name, self.version.replace(':', "%3a"))
    }
}

/// Installs the packages in `names` that are not installed yet.
pub fn ensure_installed(names: &[&str]) -> Result<()> {
    let missing: Vec<&str> = names.iter().copied().filter(|n| !is_installed(n)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    update_once()?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("cannot install {} (are you root?)", missing.join(" ")))
}

fn is_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.ends_with(b" installed"))
}

/// Runs `apt-get update`, at most once per process.
fn update_once() -> Result<()> {
    if UPDATED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    eprintln!("updating apt's package lists");
    cmd::run(Command::new("apt-get").args(["update", "-q"]))
        .context("`apt-get update` failed: Debian's package archive may be unreachable")
}

/// The candidate version of `name` (or exactly `name=version`), from apt's lists.
/// Runs `apt-get update` once if the lists do not know the package.
pub fn resolve(name: &str, version: Option<&str>) -> Result<DebPackage> {
    let spec = match version {
        Some(v) => format!("{name}={v}"),
        None => name.to_owned(),
    };
    let record = match show(&spec) {
        Ok(record) => record,
        Err(_) => {
            update_once()?;
            show(&spec).with_context(|| format!("Debian package `{spec}` is unknown to apt"))?
        }
    };
    parse_record(name, &spec, &record)
}

fn parse_record(name: &str, spec: &str, record: &str) -> Result<DebPackage> {
    let field = |key: &str| {
        field(record, key).with_context(|| format!("apt-cache show {spec}: no {key} field"))
    };
    Ok(DebPackage {
        name: name.to_owned(),
        version: field("Version")?,
        sha256: field("SHA256")?,
        size: field("Size")?.parse().context("bad Size field")?,
    })
}

/// apt with its own source list and package lists in Skiff's cache, for packages the
/// system's sources lack (a backport), without touching the system's apt configuration.
pub struct PrivateApt {
    dir: PathBuf,
    options: Vec<String>,
}

impl PrivateApt {
    /// A configuration under `dir` with the single source line `source`.
    pub fn new(dir: &Path, source: &str) -> Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial", "parts"] {
            paths::create_dir(&dir.join(sub))?;
        }
        let list = dir.join("sources.list");
        if std::fs::read_to_string(&list).ok().as_deref() != Some(source) {
            paths::write_atomic(&list, source.as_bytes())?;
        }
        let option = |key: &str, path: &str| format!("-o{key}={}", dir.join(path).display());
        Ok(PrivateApt {
            dir: dir.to_path_buf(),
            options: vec![
                option("Dir::Etc::SourceList", "sources.list"),
                option("Dir::Etc::SourceParts", "parts"),
                option("Dir::State::Lists", "lists"),
                option("Dir::Cache", "cache"),
                "-oAPT::Sandbox::User=root".to_owned(),
            ],
        })
    }

    /// Refreshes this configuration's package lists.
    pub fn update(&self) -> Result<()> {
        eprintln!("updating apt's lists for {}", self.dir.display());
        cmd::run(
            Command::new("apt-get")
                .args(&self.options)
                .args(["update", "-q"]),
        )
        .context("`apt-get update` failed: Debian's package archive may be unreachable")
    }

    /// The candidate version of `name` in this configuration's lists (updating them once
    /// if they do not know it: a record without SHA256 is dpkg's, of an installed version).
    pub fn resolve(&self, name: &str) -> Result<DebPackage> {
        let show = || {
            let record = cmd::output(Command::new("apt-cache").args(&self.options).args([
                "show",
                "--no-all-versions",
                name,
            ]))?;
            parse_record(name, name, &record)
        };
        match show() {
            Ok(package) => Ok(package),
            Err(_) => {
                self.update()?;
                show().with_context(|| format!("no Debian package `{name}` in {}", self.source()))
            }
        }
    }

    fn source(&self) -> String {
        std::fs::read_to_string(self.dir.join("sources.list"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// Returns the verified `.deb` of `pkg` in `dir` (see [`fetch`]).
    pub fn fetch(&self, pkg: &DebPackage, dir: &Path) -> Result<PathBuf> {
        fetch_with(pkg, dir, &self.options)
    }
}

/// Resolves a meta-package (e.g. `linux-image-cloud-amd64`) to the concrete package it
/// depends on whose name starts with `prefix`.
pub fn resolve_meta(meta: &str, prefix: &str) -> Result<DebPackage> {
    let record = match show(meta) {
        Ok(record) => record,
        Err(_) => {
            update_once()?;
            show(meta).with_context(|| format!("Debian package `{meta}` is unknown to apt"))?
        }
    };
    let depends = field(&record, "Depends").with_context(|| format!("{meta} has no Depends"))?;
    // e.g. "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"
    for dep in depends.split(',') {
        let mut words = dep.split_whitespace();
        let Some(name) = words.next().filter(|n| n.starts_with(prefix)) else {
            continue;
        };
        let version = words
            .collect::<String>()
            .strip_prefix("(=")
            .and_then(|v| v.strip_suffix(')'))
            .map(str::to_owned);
        return resolve(name, version.as_deref());
    }
    bail!("{meta} depends on no `{prefix}*` package: {depends}")
}

/// `apt-cache show` of the candidate version. apt-cache takes most of a second per call
/// here, so records are cached, keyed by the modification time of apt's lists (which
/// `apt-get update` changes).
fn show(spec: &str) -> Result<String> {
    let stamp = std::fs::metadata("/var/lib/apt/lists")
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| format!("lists-mtime {}.{:09}\n", d.as_secs(), d.subsec_nanos()));
    let cached = paths::cache()?
        .join("apt-records")
        .join(spec.replace(['/', ':'], "_"));
    if let Some(stamp) = &stamp {
        if let Some(record) = std::fs::read_to_string(&cached)
            .ok()
            .and_then(|c| c.strip_prefix(stamp.as_str()).map(str::to_owned))
        {
            return Ok(record);
        }
    }
    let out = cmd::output(Command::new("apt-cache").args(["show", "--no-all-versions", spec]))?;
    if out.trim().is_empty() {
        bail!("apt-cache knows no {spec}");
    }
    if let (Some(stamp), Some(dir)) = (stamp, cached.parent()) {
        paths::create_dir(dir)?;
        paths::write_atomic(&cached, format!("{stamp}{out}").as_bytes())?;
    }
    Ok(out)
}

fn field(record: &str, key: &str) -> Option<String> {
    record
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// Resolves a package and fetches it into `dir`. If the download fails with apt's lists
/// not refreshed yet in this run (a stale list may name a version the archive no longer
/// has), runs `apt-get update` and tries once more.
pub fn resolve_and_fetch(
    resolve: impl Fn() -> Result<DebPackage>,
    dir: &Path,
) -> Result<(DebPackage, PathBuf)> {
    let package = resolve()?;
    match fetch(&package, dir) {
        Ok(path) => Ok((package, path)),
        Err(err) if !UPDATED.load(Ordering::SeqCst) => {
            eprintln!("{err:#}\nrefreshing apt's lists and trying again");
            update_once()?;
            let package = resolve()?;
            let path = fetch(&package, dir)?;
            Ok((package, path))
        }
        Err(err) => Err(err),
    }
}

/// Returns the verified `.deb` of `pkg` in `dir`, downloading it unless a good copy is
/// cached. A cached copy whose SHA256 does not match is reported and fetched again.
pub fn fetch(pkg: &DebPackage, dir: &Path) -> Result<PathBuf> {
    fetch_with(pkg, dir, &[])
}

fn fetch_with(pkg: &DebPackage, dir: &Path, apt_options: &[String]) -> Result<PathBuf> {
    paths::create_dir(dir)?;
    let path = dir.join(pkg.file_name());
    if path.exists() {
        match verify(pkg, &path) {
            Ok(()) => return Ok(path),
            Err(err) => {
                eprintln!("cached package is corrupt, fetching it again: {err:#}");
                paths::remove(&path)?;
            }
        }
    }
    download(pkg, dir, &path, apt_options).with_context(|| {
        format!(
            "could not fetch Debian package {} {} (apt-get download failed; is Debian's archive reachable?)",
            pkg.name, pkg.version
        )
    })?;
    verify(pkg, &path)?;
    Ok(path)
}

/// Fetches `pkg` with `apt-get download` (plus `apt_options`, e.g. a private source list).
fn download(pkg: &DebPackage, dir: &Path, dest: &Path, apt_options: &[String]) -> Result<()> {
    let partial = dir.join(format!(".partial-{}", std::process::id()));
    paths::remove(&partial)?;
    paths::create_dir(&partial)?;
    eprintln!(
        "downloading {} {} ({:.1} MB)",
        pkg.name,
        pkg.version,
        pkg.size as f64 / 1e6
    );
    let started = Instant::now();
    let mut command = Command::new("apt-get");
    command
        .args(apt_options)
        .args(["download", "-o", "APT::Sandbox::User=root"]);
    if !std::io::stdout().is_terminal() {
        // apt's progress bar is for terminals; in logs, one line per file is enough.
        command.arg("-q");
    }
    let result = cmd::run(
        command
            .arg(format!("{}={}", pkg.name, pkg.version))
            .current_dir(&partial),
    );
    if let Err(err) = result {
        paths::remove(&partial)?;
        return Err(err);
    }
    let deb = std::fs::read_dir(&partial)
        .with_context(|| format!("cannot list {}", partial.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download produced no .deb file")?;
    paths::rename(&deb, dest)?;
    paths::remove(&partial)?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "downloaded {} in {secs:.1} s ({:.1} MB/s)",
        pkg.name,
        pkg.size as f64 / 1e6 / secs.max(1e-3)
    );
    Ok(())
}

/// Checks size and SHA256 of a `.deb` against apt's lists.
pub fn verify(pkg: &DebPackage, path: &Path) -> Result<()> {
    let actual = sha256_file(path)?;
    if !actual.eq_ignore_ascii_case(&pkg.sha256) {
        bail!(
            "{}: SHA256 {actual} does not match {} from apt's lists",
            path.display(),
            pkg.sha256
        );
    }
    Ok(())
}

/// The hex SHA256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unpacks a `.deb` into `dest` (with `dpkg-deb -x`).
pub fn extract(deb: &Path, dest: &Path) -> Result<()> {
    paths::create_dir(dest)?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_fields() {
        let record = "Package: x\nVersion: 1:2.0-1\nSHA256: abc\nSize: 12\n";
        assert_eq!(field(record, "Version").as_deref(), Some("1:2.0-1"));
        assert_eq!(field(record, "Size").as_deref(), Some("12"));
        assert_eq!(field(record, "Depends"), None);
    }

    #[test]
    fn file_name_escapes_epoch() {
        let pkg = DebPackage {
            name: "busybox-static".into(),
            version: "1:1.35.0-4".into(),
            sha256: String::new(),
            size: 0,
        };
        assert_eq!(pkg.file_name(), "busybox-static_1%3a1.35.0-4.deb");
    }

    #[test]
    fn sha256_of_a_file() {
        let path = std::env::temp_dir().join(format!("xtask-sha-{}", std::process::id()));
        std::fs::write(&path, b"abc").expect("write");
        let sum = sha256_file(&path).expect("hash");
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            sum,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
