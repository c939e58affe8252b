//! The emulator that runs the emulated AMD-V host. Debian 12's QEMU 7.2 emulates AMD-V
//! with nested paging well enough to boot guests, but under load its emulated hosts hung,
//! panicked and killed guests with triple faults (docs/testing.md); QEMU 10 fixed much of
//! TCG's nested SVM. So the outer emulator is QEMU 10 or newer: the system's if it is new
//! enough, otherwise Debian's backport, fetched with apt into Skiff's cache and run from
//! there. The system's QEMU stays what the benchmarks measure inside the host.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::apt::PrivateApt;
use crate::{cmd, paths};

/// The oldest QEMU trusted to emulate the host.
const MIN_MAJOR: u32 = 10;
/// Debian's archive key, which signs backports too.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The packages that make up a runnable emulator: the binary and its firmware.
const PACKAGES: &[&str] = &["qemu-system-x86", "qemu-system-data"];

/// A QEMU to run the emulated host with.
pub struct OuterQemu {
    pub binary: PathBuf,
    /// Its firmware directory (`-L`), when it is not the one it was built for.
    pub datadir: Option<PathBuf>,
}

/// Finds or fetches the outer emulator. `SKIFF_OUTER_QEMU` names one explicitly.
pub fn get() -> Result<OuterQemu> {
    if let Some(binary) = std::env::var_os("SKIFF_OUTER_QEMU") {
        let binary = PathBuf::from(binary);
        check_version(&binary)?;
        return Ok(OuterQemu {
            binary,
            datadir: None,
        });
    }
    let system = cmd::require("qemu-system-x86_64", "qemu-system-x86")?;
    if major_version(&system)? >= MIN_MAJOR {
        return Ok(OuterQemu {
            binary: system,
            datadir: None,
        });
    }
    let dir = paths::cache()?.join("outer-qemu");
    if let Some(root) = cached(&dir) {
        return Ok(from_root(&root));
    }
    let root = fetch(&dir)?;
    Ok(from_root(&root))
}

fn from_root(root: &Path) -> OuterQemu {
    OuterQemu {
        binary: root.join("usr/bin/qemu-system-x86_64"),
        datadir: Some(root.join("usr/share/qemu")),
    }
}

/// The unpacked emulator a previous run left, if it is whole.
fn cached(dir: &Path) -> Option<PathBuf> {
    let name = std::fs::read_to_string(dir.join("current")).ok()?;
    let root = dir.join(name.trim());
    let qemu = from_root(&root);
    (qemu.binary.is_file() && qemu.datadir.is_some_and(|d| d.join("qboot.rom").is_file()))
        .then_some(root)
}

/// Fetches Debian's backport of QEMU for this release and unpacks it under `dir`.
fn fetch(dir: &Path) -> Result<PathBuf> {
    let codename = release_codename().context(
        "the emulated host needs QEMU 10 or newer; this is not a Debian system apt can fetch \
         a backport for: install one, or name it with SKIFF_OUTER_QEMU",
    )?;
    eprintln!("the emulated host needs QEMU {MIN_MAJOR}+; fetching Debian's {codename}-backports");
    let apt = PrivateApt::new(
        &dir.join("apt"),
        &format!(
            "deb [signed-by={KEYRING}] http://deb.debian.org/debian {codename}-backports main\n"
        ),
    )?;
    let mut debs = Vec::new();
    let mut version = String::new();
    for name in PACKAGES {
        let package = apt.resolve(name)?;
        version.clone_from(&package.version);
        debs.push(apt.fetch(&package, &dir.join("debs"))?);
    }
    let root = dir.join(version.replace([':', '~', '+'], "_"));
    let partial = paths::unique_tmp(&root);
    paths::remove(&partial)?;
    for deb in &debs {
        crate::apt::extract(deb, &partial)?;
    }
    check_version(&from_root(&partial).binary)?;
    if root.exists() {
        paths::remove(&partial)?;
    } else {
        paths::rename(&partial, &root)?;
    }
    let name = root
        .file_name()
        .context("unpacked QEMU has no directory name")?;
    paths::write_atomic(&dir.join("current"), name.as_encoded_bytes())?;
    Ok(root)
}

fn check_version(binary: &Path) -> Result<()> {
    let major = major_version(binary)?;
    if major < MIN_MAJOR {
        bail!(
            "{} is QEMU {major}; the emulated host needs {MIN_MAJOR} or newer",
            binary.display()
        );
    }
    Ok(())
}

/// The major version `binary --version` reports.
fn major_version(binary: &Path) -> Result<u32> {
    let out = cmd::output(Command::new(binary).arg("--version"))?;
    parse_major(&out).with_context(|| format!("{}: unexpected --version: {out}", binary.display()))
}

/// `QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)` → 7.
fn parse_major(version_output: &str) -> Option<u32> {
    let rest = version_output.lines().next()?.split("version ").nth(1)?;
    rest.split('.').next()?.trim().parse().ok()
}

/// `VERSION_CODENAME` from /etc/os-release, on Debian.
fn release_codename() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_owned())
    };
    (value("ID").as_deref() == Some("debian"))
        .then(|| value("VERSION_CODENAME"))
        .flatten()
        .filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_major_version() {
        assert_eq!(
            parse_major(
                "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright"
            ),
            Some(7)
        );
        assert_eq!(
            parse_major("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)"),
            Some(10)
        );
        assert_eq!(parse_major("something else"), None);
    }
}
