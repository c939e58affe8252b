//! Kernel modules of the Debian kernel package: find them by name, read their
//! dependencies from the `.modinfo` section (the package ships no modules.dep: depmod
//! runs at install time), and list them in load order.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use object::read::elf::{FileHeader, SectionHeader};
use object::Endianness;

/// The modules of one kernel release (`lib/modules/<release>`).
pub struct ModuleTree {
    root: PathBuf,
    /// Module name (with `_`) → path relative to `root`.
    paths: HashMap<String, PathBuf>,
    builtin: HashSet<String>,
}

/// The result of resolving a list of wanted modules.
pub struct Resolved {
    /// Paths relative to the tree root, dependencies first.
    pub load_order: Vec<PathBuf>,
    /// Wanted names that are built into the kernel or absent: nothing to load.
    pub skipped: Vec<String>,
}

/// Module names use `_`; file names may use `-`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

impl ModuleTree {
    pub fn open(root: &Path) -> Result<Self> {
        let mut paths = HashMap::new();
        collect(root, root, &mut paths)?;
        let builtin = std::fs::read_to_string(root.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| Path::new(l).file_stem()?.to_str().map(normalize))
            .collect();
        Ok(Self {
            root: root.to_path_buf(),
            paths,
            builtin,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The wanted modules and everything they depend on, dependencies first.
    pub fn resolve(&self, wanted: &[&str]) -> Result<Resolved> {
        let mut resolved = Resolved {
            load_order: Vec::new(),
            skipped: Vec::new(),
        };
        let mut done = HashSet::new();
        for name in wanted {
            let name = normalize(name);
            if self.paths.contains_key(&name) {
                self.visit(&name, &mut done, &mut resolved.load_order)?;
            } else {
                resolved.skipped.push(name);
            }
        }
        Ok(resolved)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut HashSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<()> {
        if !done.insert(name.to_owned()) || self.builtin.contains(name) {
            return Ok(());
        }
        let rel = self
            .paths
            .get(name)
            .with_context(|| format!("module {name} is needed but not in the kernel package"))?;
        for dep in depends(&self.root.join(rel))? {
            self.visit(&dep, done, order)?;
        }
        order.push(rel.clone());
        Ok(())
    }
}

fn collect(root: &Path, dir: &Path, out: &mut HashMap<String, PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "ko") {
            if let (Some(stem), Ok(rel)) = (path.file_stem(), path.strip_prefix(root)) {
                out.insert(normalize(&stem.to_string_lossy()), rel.to_path_buf());
            }
        }
    }
    Ok(())
}

/// The `depends=` list of a module's `.modinfo` section.
fn depends(ko: &Path) -> Result<Vec<String>> {
    let data = std::fs::read(ko).with_context(|| format!("cannot read {}", ko.display()))?;
    let modinfo = modinfo(&data).with_context(|| format!("{}: bad module ELF", ko.display()))?;
    Ok(modinfo
        .split(|&b| b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|deps| {
            String::from_utf8_lossy(deps)
                .split(',')
                .map(normalize)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .collect())
}

fn modinfo(data: &[u8]) -> Result<&[u8]> {
    let header = object::elf::FileHeader64::<Endianness>::parse(data)?;
    let endian = header.endian()?;
    let sections = header.sections(endian, data)?;
    let (_, section) = sections
        .section_by_name(endian, b".modinfo")
        .context("no .modinfo section")?;
    Ok(section.data(endian, data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_dashes() {
        assert_eq!(normalize("kvm-amd"), "kvm_amd");
        assert_eq!(normalize("virtio_ring"), "virtio_ring");
    }
}
