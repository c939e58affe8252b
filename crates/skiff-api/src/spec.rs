//! The VM spec: what a VM is made of. Read from TOML or JSON; later issues extend it with
//! disks, NICs, balloon and vsock.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ByteSize;

/// Default CPU and memory shares, as in ESX: a VM with no explicit shares gets this many.
pub const DEFAULT_SHARES: u64 = 1000;

/// The most vCPUs a spec may ask for before the host is even asked (KVM's own limit applies
/// on top of this).
const MAX_SPEC_VCPUS: u32 = 4096;
/// The smallest guest that can hold a kernel, its page tables and an initramfs.
const MIN_MEMORY: ByteSize = ByteSize::from_mib(16);
/// Far beyond any host Skiff runs on (x86-64 guests address 64 TiB at most with 46 bits), and
/// a bound the OpenAPI document can state in every unit.
const MAX_MEMORY: ByteSize = ByteSize::from_mib(16 * 1024 * 1024);
const PAGE_SIZE: u64 = 4096;
/// virtio-blk serial numbers are 20 bytes.
const MAX_DISK_ID: usize = 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// A name for the VM: letters, digits, `-`, `_` and `.`, not starting with `.`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    pub memory: MemorySpec,
    /// A bzImage or a vmlinux ELF with a PVH entry note.
    pub kernel: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmdline: String,
    /// Raw disk images, in the order the guest sees them (vda, vdb, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskSpec>,
    /// A virtio-rng device fed from the host's getrandom.
    #[serde(default = "default_true")]
    pub rng: bool,
    /// Network interfaces (virtio-net on taps), in the order the guest sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<crate::NicSpec>,
    /// A vsock device (host kernel's vhost-vsock) with this guest CID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<crate::VsockSpec>,
    /// The virtio-balloon device (on by default).
    #[serde(default)]
    pub balloon: crate::BalloonSpec,
    /// CPU weight and limit (the host daemon applies them through cgroups).
    #[serde(default, skip_serializing_if = "CpuSpec::is_default")]
    pub cpu: CpuSpec,
    /// What the host daemon does when the VM's process ends on its own.
    #[serde(default, skip_serializing_if = "RestartPolicy::is_default")]
    pub restart: RestartPolicy,
    /// Working-set sampling for the memory manager (on by default: 100 pages per 30 s).
    #[serde(default)]
    pub working_set: crate::WorkingSetSpec,
    /// The guest's address as its cloud-init seed set it (`10.0.2.15/24`), for
    /// `skiff vm ssh`; the VMM does not use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// The CPU shares a cgroup can express (v1's cpu.shares range; v2's weight is derived).
pub const CPU_SHARES: std::ops::RangeInclusive<u64> = 2..=262_144;

/// CPU resource control for a VM's process (the VMM and all its threads).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuSpec {
    /// Relative weight against other VMs when the CPUs are busy (default 1000, as memory
    /// shares; a VM with 2000 gets twice the CPU time of one with 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<u64>,
    /// A hard limit in percent of one host CPU (50 = half a CPU, 200 = two CPUs); none: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u32>,
}

impl CpuSpec {
    fn is_default(&self) -> bool {
        *self == CpuSpec::default()
    }
}

/// Whether the host daemon starts a VM again after its process ended without being asked to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// The VM stays down; a failure leaves it `failed` with the reason.
    #[default]
    Never,
    /// A failure (exit status other than 0, or a signal) starts it again, with backoff.
    OnFailure,
}

impl RestartPolicy {
    fn is_default(&self) -> bool {
        *self == RestartPolicy::default()
    }
}

/// A virtio-blk disk backed by a raw image file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// The serial number the guest reads (at most 20 bytes); default `vda`, `vdb`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The image's format; none: qcow2 if the file starts with qcow2's magic (and then
    /// without a backing file), else raw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// How the host caches the disk's data (docs/virtio.md: durability of each).
    #[serde(default, skip_serializing_if = "DiskCache::is_default")]
    pub cache: DiskCache,
}

/// A disk's host cache mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskCache {
    /// Through the host's page cache; a guest flush makes written data durable.
    #[default]
    Writeback,
    /// Around the host's page cache (O_DIRECT).
    Direct,
}

impl DiskCache {
    fn is_default(&self) -> bool {
        *self == DiskCache::default()
    }
}

/// A disk image's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    /// qcow2 v2 or v3, with a backing chain (docs/images.md).
    Qcow2,
}

fn default_true() -> bool {
    true
}

/// The command-line form: `path=IMG[,ro][,id=NAME][,format=raw|qcow2][,cache=direct]` (a
/// bare `IMG` first works too).
impl std::str::FromStr for DiskSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut disk = DiskSpec {
            path: PathBuf::new(),
            read_only: false,
            id: None,
            format: None,
            cache: DiskCache::Writeback,
        };
        for (i, part) in s.split(',').enumerate() {
            match part.split_once('=') {
                Some(("path", p)) => disk.path = PathBuf::from(p),
                Some(("id", id)) => disk.id = Some(id.to_string()),
                Some(("format", "raw")) => disk.format = Some(DiskFormat::Raw),
                Some(("format", "qcow2")) => disk.format = Some(DiskFormat::Qcow2),
                Some(("cache", "writeback")) => disk.cache = DiskCache::Writeback,
                Some(("cache", "direct")) => disk.cache = DiskCache::Direct,
                None if part == "ro" => disk.read_only = true,
                None if part == "rw" => disk.read_only = false,
                None if i == 0 => disk.path = PathBuf::from(part),
                _ => {
                    return Err(format!(
                        "unknown disk option `{part}` (expected path=IMG, ro, id=NAME, format=raw|qcow2, cache=writeback|direct)"
                    ))
                }
            }
        }
        if disk.path.as_os_str().is_empty() {
            return Err("a disk needs path=IMG".into());
        }
        Ok(disk)
    }
}

/// Guest memory. `size` is what the guest sees (ESX's max); `min` is what is always reserved
/// for it; `shares` weighs it against other VMs when memory is short.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemorySpec {
    pub size: ByteSize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<u64>,
    /// Page sharing is a side channel, so KSM may merge this VM's pages only with VMs of
    /// the same domain. KSM itself merges across every mergeable process: the host daemon
    /// enforces domains by letting only one domain's VMs be mergeable at a time (see
    /// docs/memory.md). Absent: the host's default domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing_domain: Option<String>,
    /// false: KSM never merges this VM's memory (its guest RAM is not MADV_MERGEABLE),
    /// whatever its domain.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub page_sharing: bool,
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

impl MemorySpec {
    pub fn of_size(size: ByteSize) -> Self {
        MemorySpec {
            size,
            min: None,
            shares: None,
            sharing_domain: None,
            page_sharing: true,
        }
    }
}

/// `memory = "512M"` and `[memory] size = "512M"` both mean the same.
impl<'de> Deserialize<'de> for MemorySpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            size: ByteSize,
            #[serde(default)]
            min: Option<ByteSize>,
            #[serde(default)]
            shares: Option<u64>,
            #[serde(default)]
            sharing_domain: Option<String>,
            #[serde(default = "yes")]
            page_sharing: bool,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Size(ByteSize),
            Table(Table),
        }
        match Either::deserialize(d) {
            Ok(Either::Size(size)) => Ok(MemorySpec::of_size(size)),
            Ok(Either::Table(t)) => Ok(MemorySpec {
                size: t.size,
                min: t.min,
                shares: t.shares,
                sharing_domain: t.sharing_domain,
                page_sharing: t.page_sharing,
            }),
            Err(_) => Err(serde::de::Error::custom(
                "expected a size such as \"512M\" or a table { size, min, shares, sharing_domain, page_sharing } with a valid, non-negative size",
            )),
        }
    }
}

fn default_vcpus() -> u32 {
    1
}

/// A spec that cannot run, with the field at fault first.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("cannot parse spec: {0}")]
    Parse(String),
}

impl SpecError {
    fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        SpecError::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// The field at fault, when there is one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            SpecError::Invalid { field, .. } => Some(field),
            SpecError::Parse(_) => None,
        }
    }
}

impl VmSpec {
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: VmSpec = toml::from_str(text).map_err(|e| SpecError::Parse(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let spec: VmSpec =
            serde_json::from_str(text).map_err(|e| SpecError::Parse(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks everything that can be checked without the host: ranges, names, consistency.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(name) = &self.name {
            validate_name(name)?;
        }
        if self.vcpus == 0 {
            return Err(SpecError::invalid("vcpus", "must be at least 1"));
        }
        if self.vcpus > MAX_SPEC_VCPUS {
            return Err(SpecError::invalid(
                "vcpus",
                format!("{} is more than {MAX_SPEC_VCPUS}", self.vcpus),
            ));
        }
        let size = self.memory.size;
        if size < MIN_MEMORY {
            return Err(SpecError::invalid(
                "memory.size",
                format!("{size} is less than the minimum of {MIN_MEMORY}"),
            ));
        }
        if size > MAX_MEMORY {
            return Err(SpecError::invalid(
                "memory.size",
                format!("{size} is more than the maximum of {MAX_MEMORY}"),
            ));
        }
        if !size.bytes().is_multiple_of(PAGE_SIZE) {
            return Err(SpecError::invalid(
                "memory.size",
                format!("{size} is not a multiple of 4 KiB"),
            ));
        }
        if let Some(min) = self.memory.min {
            if min > size {
                return Err(SpecError::invalid(
                    "memory.min",
                    format!("{min} is more than memory.size {size}"),
                ));
            }
        }
        if self.memory.shares == Some(0) {
            return Err(SpecError::invalid("memory.shares", "must be at least 1"));
        }
        if let Some(domain) = &self.memory.sharing_domain {
            check_name(domain).map_err(|r| SpecError::invalid("memory.sharing_domain", r))?;
        }
        self.working_set
            .check()
            .map_err(|reason| SpecError::invalid("working_set", reason))?;
        if self.kernel.as_os_str().is_empty() {
            return Err(SpecError::invalid("kernel", "must name a kernel image"));
        }
        // Control characters (NUL, newline, tab, ESC ...) have no use on a kernel command
        // line, and a newline or ESC would garble every log line and terminal that shows it.
        if let Some(c) = self.cmdline.chars().find(|c| c.is_ascii_control()) {
            return Err(SpecError::invalid(
                "cmdline",
                format!("must not contain control characters ({:?})", c),
            ));
        }
        if self.balloon.stats_interval_secs > crate::balloon::MAX_STATS_INTERVAL_SECS {
            return Err(SpecError::invalid(
                "balloon.stats_interval_secs",
                format!(
                    "must be at most {} seconds",
                    crate::balloon::MAX_STATS_INTERVAL_SECS
                ),
            ));
        }
        if let Some(shares) = self.cpu.shares {
            if !CPU_SHARES.contains(&shares) {
                return Err(SpecError::invalid(
                    "cpu.shares",
                    format!(
                        "{shares} is outside {}..={}",
                        CPU_SHARES.start(),
                        CPU_SHARES.end()
                    ),
                ));
            }
        }
        if self.cpu.quota == Some(0) {
            return Err(SpecError::invalid(
                "cpu.quota",
                "must be at least 1 (percent of one CPU)",
            ));
        }
        crate::net::validate(&self.nics, self.vsock.as_ref())
            .map_err(|(field, reason)| SpecError::invalid(field, reason))?;
        for disk in &self.disks {
            if disk.path.as_os_str().is_empty() {
                return Err(SpecError::invalid("disks.path", "must name an image file"));
            }
            if disk.id.as_ref().is_some_and(|id| id.len() > MAX_DISK_ID) {
                return Err(SpecError::invalid(
                    "disks.id",
                    format!("must be at most {MAX_DISK_ID} bytes"),
                ));
            }
        }
        Ok(())
    }
}

/// A VM name as the daemon uses it (also a directory name): checked here for every caller.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    check_name(name).map_err(|reason| SpecError::invalid("name", reason))
}

/// A sharing domain's name (`memory.sharing_domain`, `skiff host --sharing-domain`).
pub fn validate_domain(name: &str) -> Result<(), SpecError> {
    check_name(name).map_err(|reason| SpecError::invalid("memory.sharing_domain", reason))
}

/// Names (of VMs, of sharing domains) end up in paths and on command lines: keep them tame.
fn check_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if name.starts_with('.') || !name.chars().all(ok_char) {
        return Err(format!(
            "`{name}` may only hold letters, digits, '-', '_' and '.', and not start with '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        kernel = "/boot/vmlinuz"
        memory = "256M"
    "#;

    #[test]
    fn minimal_toml_gets_defaults() {
        let spec = VmSpec::from_toml(MINIMAL).expect("valid spec");
        assert_eq!(spec.vcpus, 1);
        assert_eq!(spec.memory, MemorySpec::of_size(ByteSize::from_mib(256)));
        assert_eq!(spec.initrd, None);
    }

    #[test]
    fn memory_table_form() {
        let spec = VmSpec::from_toml(
            r#"
            name = "web-1"
            vcpus = 2
            kernel = "/k"
            [memory]
            size = "1G"
            min = "128M"
            shares = 2000
        "#,
        )
        .expect("valid spec");
        assert_eq!(spec.memory.size, ByteSize::from_mib(1024));
        assert_eq!(spec.memory.min, Some(ByteSize::from_mib(128)));
        assert_eq!(spec.memory.shares, Some(2000));
        assert_eq!(spec.memory.sharing_domain, None);
    }

    #[test]
    fn sharing_domain_and_working_set() {
        let spec = VmSpec::from_toml(
            r#"
            kernel = "/k"
            memory = { size = "256M", sharing_domain = "tenant-a" }
            working_set = { period_secs = 2, pages = 64 }
        "#,
        )
        .expect("valid spec");
        assert_eq!(spec.memory.sharing_domain.as_deref(), Some("tenant-a"));
        assert!(
            spec.memory.page_sharing,
            "sharing is on unless the spec says no"
        );
        let opted_out = r#"{"kernel":"/k","memory":{"size":"256M","page_sharing":false}}"#;
        let opted = VmSpec::from_json(opted_out).expect("spec");
        assert!(!opted.memory.page_sharing);
        let again = serde_json::to_string(&opted).expect("json");
        assert!(again.contains("\"page_sharing\":false"), "{again}");
        assert_eq!(
            (spec.working_set.period_secs, spec.working_set.pages),
            (2, 64)
        );
        let defaults = VmSpec::from_toml(MINIMAL).expect("minimal");
        assert_eq!(defaults.working_set, crate::WorkingSetSpec::default());
        let bad_domain = r#"{"kernel":"/k","memory":{"size":"256M","sharing_domain":"a/b"}}"#;
        assert_eq!(
            VmSpec::from_json(bad_domain).expect_err("slash").field(),
            Some("memory.sharing_domain")
        );
        let no_pages =
            r#"{"kernel":"/k","memory":"256M","working_set":{"period_secs":30,"pages":0}}"#;
        assert_eq!(
            VmSpec::from_json(no_pages).expect_err("no pages").field(),
            Some("working_set")
        );
    }

    #[test]
    fn disks_and_rng() {
        let spec = VmSpec::from_toml(
            r#"
            kernel = "/k"
            memory = "256M"
            rng = false
            [[disks]]
            path = "/img/root.ext4"
            [[disks]]
            path = "/img/data.raw"
            read_only = true
            id = "data"
        "#,
        )
        .expect("valid spec");
        assert!(!spec.rng);
        assert_eq!(spec.disks.len(), 2);
        assert!(spec.disks[1].read_only && !spec.disks[0].read_only);
        assert_eq!(spec.disks[1].id.as_deref(), Some("data"));
        assert!(
            VmSpec::from_toml(MINIMAL).expect("minimal").rng,
            "rng is on by default"
        );
        let long_id = r#"{"kernel":"/k","memory":"256M","disks":[{"path":"/d","id":"123456789012345678901"}]}"#;
        assert_eq!(
            VmSpec::from_json(long_id).expect_err("too long").field(),
            Some("disks.id")
        );
    }

    #[test]
    fn disk_flag_syntax() {
        let d: DiskSpec = "path=/a.img,ro,id=root".parse().expect("valid");
        assert_eq!(
            (d.path.to_str(), d.read_only, d.id.as_deref()),
            (Some("/a.img"), true, Some("root"))
        );
        let bare: DiskSpec = "/b.img".parse().expect("valid");
        assert_eq!(
            (bare.path.to_str(), bare.read_only),
            (Some("/b.img"), false)
        );
        assert!("ro".parse::<DiskSpec>().is_err());
        let direct: DiskSpec = "path=/c.img,cache=direct".parse().expect("valid");
        assert_eq!(direct.cache, DiskCache::Direct);
        assert_eq!(bare.cache, DiskCache::Writeback);
        assert!("path=/a,cache=none".parse::<DiskSpec>().is_err());
        assert_eq!(bare.format, None, "detected");
        let qcow2: DiskSpec = "path=/c.qcow2,format=qcow2".parse().expect("valid");
        assert_eq!(qcow2.format, Some(DiskFormat::Qcow2));
        assert!("path=/a,format=vmdk".parse::<DiskSpec>().is_err());
    }

    #[test]
    fn cpu_and_restart_policy() {
        let spec = VmSpec::from_toml(
            r#"
            kernel = "/k"
            memory = "256M"
            restart = "on-failure"
            cpu = { shares = 2000, quota = 50 }
        "#,
        )
        .expect("valid spec");
        assert_eq!(spec.restart, RestartPolicy::OnFailure);
        assert_eq!(spec.cpu.shares, Some(2000));
        assert_eq!(spec.cpu.quota, Some(50));
        let minimal = VmSpec::from_toml(MINIMAL).expect("minimal");
        assert_eq!(minimal.restart, RestartPolicy::Never);
        let text = serde_json::to_string(&minimal).expect("json");
        assert!(
            !text.contains("\"restart\"") && !text.contains("\"cpu\""),
            "{text}"
        );
        let bad = VmSpec::from_json(r#"{"kernel":"/k","memory":"256M","cpu":{"shares":0}}"#);
        assert_eq!(bad.expect_err("zero shares").field(), Some("cpu.shares"));
        let huge = VmSpec::from_json(r#"{"kernel":"/k","memory":"256M","cpu":{"shares":262145}}"#);
        assert_eq!(
            huge.expect_err("too many shares").field(),
            Some("cpu.shares")
        );
        assert!(
            VmSpec::from_json(r#"{"kernel":"/k","memory":"256M","restart":"always"}"#).is_err()
        );
    }

    #[test]
    fn json_and_toml_agree() {
        let json =
            VmSpec::from_json(r#"{"kernel": "/boot/vmlinuz", "memory": 256}"#).expect("valid json");
        assert_eq!(json, VmSpec::from_toml(MINIMAL).expect("valid toml"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"kernel":"/k","memory":"256M","vcpus":0}"#,
                Some("vcpus"),
            ),
            (r#"{"kernel":"/k","memory":"1M"}"#, Some("memory.size")),
            (r#"{"kernel":"/k","memory":"16385G"}"#, Some("memory.size")),
            (
                r#"{"kernel":"/k","memory":{"size":"256M","min":"1G"}}"#,
                Some("memory.min"),
            ),
            (
                r#"{"kernel":"/k","memory":"256M","name":"../etc"}"#,
                Some("name"),
            ),
            (r#"{"kernel":"","memory":"256M"}"#, Some("kernel")),
        ];
        for (json, field) in cases {
            let err = VmSpec::from_json(json).expect_err(json);
            assert_eq!(err.field(), field, "{json}: {err}");
        }
        // The bounds themselves are taken.
        for memory in ["16M", "16T"] {
            let json = format!(r#"{{"kernel":"/k","memory":"{memory}"}}"#);
            assert!(VmSpec::from_json(&json).is_ok(), "{json}");
        }
    }

    #[test]
    fn unknown_fields_and_negative_memory_are_parse_errors() {
        let unknown = VmSpec::from_json(r#"{"kernel":"/k","memory":"256M","colour":"red"}"#);
        assert!(matches!(unknown, Err(SpecError::Parse(m)) if m.contains("colour")));
        let negative = VmSpec::from_json(r#"{"kernel":"/k","memory":-5}"#);
        assert!(matches!(negative, Err(SpecError::Parse(_))));
    }
}

#[cfg(test)]
mod readme_example {
    use super::*;

    /// The spec file shown in README.md must stay valid.
    #[test]
    fn readme_spec_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("# vm.toml").expect("README has the example");
        let body = &readme[start..];
        let end = body.find("```").expect("example ends");
        let spec = VmSpec::from_toml(&body[..end]).expect("README example is a valid spec");
        assert_eq!(spec.vcpus, 2);
        assert_eq!(spec.name.as_deref(), Some("web-1"));
    }

    #[test]
    fn a_cmdline_with_control_characters_is_refused() {
        for bad in [
            "console=ttyS0\nroot=/dev/vda",
            "a\tb",
            "x\u{1b}[2J",
            "nul\0",
        ] {
            let json = serde_json::json!({ "kernel": "/k", "memory": "64M", "cmdline": bad });
            let err = VmSpec::from_json(&json.to_string()).expect_err(bad);
            assert!(err.to_string().contains("cmdline"), "{err}");
        }
        let fine = serde_json::json!({ "kernel": "/k", "memory": "64M", "cmdline": "console=ttyS0 quiet é" });
        assert!(VmSpec::from_json(&fine.to_string()).is_ok());
    }
}
