//! cloud-init's NoCloud seed: a small FAT disk labelled `cidata` holding `meta-data`
//! (instance-id, hostname), `user-data` (the SSH keys, and any user-data passed through, as
//! a MIME multipart cloud-init merges) and `network-config` (version 1, a static address on
//! the NIC with the given MAC). The files are JSON, which YAML readers take as it is, so no
//! string of a tenant's ever needs YAML escaping.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

use serde_json::json;

/// Size of the seed disk: room for the files, small enough to make in an instant.
pub const SEED_BYTES: u64 = 2 << 20;

/// A static address for the guest's first NIC, until managed networks exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticNetwork {
    /// The NIC's MAC address, `52:54:00:12:34:56`.
    pub mac: String,
    /// Address with prefix length, `10.0.2.15/24`.
    pub address: String,
    pub gateway: Option<String>,
    pub dns: Vec<String>,
}

/// What the seed tells the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seed {
    pub instance_id: String,
    pub hostname: String,
    pub ssh_keys: Vec<String>,
    /// The tenant's own user-data (`#cloud-config`, a `#!` script, ...), passed through.
    pub user_data: Option<String>,
    pub network: Option<StaticNetwork>,
}

/// The boundary between the parts of the multipart user-data.
const BOUNDARY: &str = "==skiff-nocloud-boundary==";

impl Seed {
    pub fn meta_data(&self) -> String {
        json!({ "instance-id": self.instance_id, "local-hostname": self.hostname }).to_string()
    }

    /// Skiff's cloud-config (hostname, SSH keys), alone or as the first part of a MIME
    /// multipart whose second part is the tenant's user-data.
    pub fn user_data(&self) -> String {
        let ours = format!(
            "#cloud-config\n{}\n",
            json!({
                "hostname": self.hostname,
                "ssh_authorized_keys": self.ssh_keys,
                "disable_root": false,
            })
        );
        let Some(theirs) = &self.user_data else {
            return ours;
        };
        let kind = if theirs.starts_with("#cloud-config") {
            "text/cloud-config"
        } else if theirs.starts_with("#!") {
            "text/x-shellscript"
        } else {
            "text/plain"
        };
        format!(
            "Content-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\nMIME-Version: 1.0\n\n\
             --{BOUNDARY}\nContent-Type: text/cloud-config\nMIME-Version: 1.0\n\n{ours}\n\
             --{BOUNDARY}\nContent-Type: {kind}\nMIME-Version: 1.0\n\n{theirs}\n\
             --{BOUNDARY}--\n"
        )
    }

    /// Network config version 1: the NIC with the seed's MAC gets the static address; no
    /// network configuration at all (cloud-init's DHCP fallback) without one.
    pub fn network_config(&self) -> Option<String> {
        let net = self.network.as_ref()?;
        let mut subnet = json!({ "type": "static", "address": net.address });
        if let Some(gw) = &net.gateway {
            subnet["gateway"] = json!(gw);
        }
        if !net.dns.is_empty() {
            subnet["dns_nameservers"] = json!(net.dns);
        }
        Some(
            json!({
                "version": 1,
                "config": [{
                    "type": "physical",
                    "name": "eth0",
                    "mac_address": net.mac,
                    "subnets": [subnet],
                }],
            })
            .to_string(),
        )
    }

    /// Writes the seed disk to `path` (a new file): FAT, labelled `cidata`.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        file.set_len(SEED_BYTES)?;
        let written = self.format(file);
        if written.is_err() {
            let _ = std::fs::remove_file(path);
        }
        written
    }

    fn format(&self, mut file: std::fs::File) -> io::Result<()> {
        let options = fatfs::FormatVolumeOptions::new().volume_label(*b"cidata     ");
        fatfs::format_volume(&mut file, options)?;
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new())?;
        let root = fs.root_dir();
        let mut files = vec![
            ("meta-data", self.meta_data()),
            ("user-data", self.user_data()),
        ];
        if let Some(network) = self.network_config() {
            files.push(("network-config", network));
        }
        for (name, text) in files {
            let mut f = root.create_file(name)?;
            f.truncate()?;
            f.write_all(text.as_bytes())?;
        }
        drop(root);
        fs.unmount()?;
        file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Seed {
        Seed {
            instance_id: "web1-1".into(),
            hostname: "web1".into(),
            ssh_keys: vec!["ssh-ed25519 AAAAC3Nza test@host".into()],
            user_data: None,
            network: Some(StaticNetwork {
                mac: "52:54:00:12:34:56".into(),
                address: "10.0.2.15/24".into(),
                gateway: Some("10.0.2.1".into()),
                dns: vec![],
            }),
        }
    }

    #[test]
    fn the_seed_is_a_cidata_fat_disk_with_the_three_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("seed.img");
        seed().write(&path).expect("write");
        assert_eq!(std::fs::metadata(&path).expect("seed").len(), SEED_BYTES);
        let file = std::fs::File::open(&path).expect("open");
        let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new()).expect("fat");
        assert_eq!(fs.volume_label(), "cidata");
        let read = |name: &str| {
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut fs.root_dir().open_file(name).expect(name),
                &mut text,
            )
            .expect("read");
            text
        };
        let meta: serde_json::Value = serde_json::from_str(&read("meta-data")).expect("json");
        assert_eq!(meta["local-hostname"], "web1");
        assert_eq!(meta["instance-id"], "web1-1");
        let user = read("user-data");
        let config = user
            .strip_prefix("#cloud-config\n")
            .expect("a cloud-config");
        let config: serde_json::Value = serde_json::from_str(config).expect("json");
        assert_eq!(
            config["ssh_authorized_keys"][0],
            "ssh-ed25519 AAAAC3Nza test@host"
        );
        let net: serde_json::Value = serde_json::from_str(&read("network-config")).expect("json");
        assert_eq!(net["config"][0]["mac_address"], "52:54:00:12:34:56");
        assert_eq!(net["config"][0]["subnets"][0]["address"], "10.0.2.15/24");
        assert_eq!(net["config"][0]["subnets"][0]["gateway"], "10.0.2.1");
        // An existing file is not overwritten.
        assert!(seed().write(&path).is_err());
    }

    #[test]
    fn passed_through_user_data_becomes_a_second_part() {
        let mut s = seed();
        s.network = None;
        assert_eq!(s.network_config(), None);
        s.user_data = Some("#!/bin/sh\necho hi\n".into());
        let text = s.user_data();
        assert!(text.starts_with("Content-Type: multipart/mixed"), "{text}");
        assert!(text.contains("Content-Type: text/cloud-config"), "{text}");
        assert!(
            text.contains(
                "Content-Type: text/x-shellscript\nMIME-Version: 1.0\n\n#!/bin/sh\necho hi\n"
            ),
            "{text}"
        );
        assert!(text.ends_with(&format!("--{BOUNDARY}--\n")), "{text}");
    }
}
