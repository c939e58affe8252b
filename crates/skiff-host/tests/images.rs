//! The image store over the API, in-process without KVM: an import streamed as JSON lines,
//! listing, a VM created from an image (its overlay, its kernel), removal refused while the
//! VM exists, and the overlay gone with the VM.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use skiff_api::image::{Image, ImportEvent};
use skiff_api::model::VmInfo;
use skiff_api::VmSpec;
use skiff_host::{api, connections, Client, Endpoint, Host, HostConfig};

/// An ext4 image with a (pretend) kernel in /boot, in `dir`.
fn bootable_image(dir: &Path) -> PathBuf {
    let mut kernel = vec![7u8; 4096];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    image_with_kernel(dir, "debian.raw", &kernel)
}

/// An ext4 image `name` in `dir` with `kernel` as /boot/vmlinuz-6.1.0-1-test.
fn image_with_kernel(dir: &Path, name: &str, kernel: &[u8]) -> PathBuf {
    let content = dir.join(format!("{name}.content"));
    std::fs::create_dir_all(content.join("boot")).expect("mkdir");
    std::fs::write(content.join("boot/vmlinuz-6.1.0-1-test"), kernel).expect("kernel");
    let image = dir.join(name);
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&content)
        .arg(&image)
        .arg("8M")
        .output()
        .expect("mke2fs (e2fsprogs) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

async fn daemon(dir: &Path, image_dirs: &[PathBuf]) -> Client {
    let vmm_bin = dir.join("fake-vmm");
    std::fs::write(&vmm_bin, "#!/bin/sh\nexit 0\n").expect("write");
    std::fs::set_permissions(&vmm_bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = HostConfig {
        state_dir: dir.join("state"),
        vmm_bin,
        stop_timeout: Duration::from_millis(500),
        start_timeout: Duration::from_millis(500),
        memory: skiff_host::memory::MemoryConfig::default(),
        jail: None,
        log_max_bytes: skiff_host::log_rotation::DEFAULT_MAX_BYTES,
        image_dirs: skiff_host::image_dirs::ImageDirs::new(image_dirs).expect("dirs"),
        meter: std::sync::Arc::new(skiff_host::memory::measure::ProcMeter),
    };
    let host = Host::open(config).await.expect("host");
    let socket = dir.join("api.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    tokio::spawn(connections::serve_unix(
        listener,
        api::router(host, None),
        connections::MAX_UNIX_CONNECTIONS,
    ));
    Client::new(Endpoint::Unix(socket), None)
}

async fn call(client: &Client, method: &str, path: &str, body: Option<String>) -> (u16, String) {
    let r = client
        .request(method, path, body.map(String::into_bytes))
        .await
        .expect("request");
    (r.status, r.text())
}

#[tokio::test]
async fn import_create_a_vm_from_it_and_remove_both() {
    let dir = tempfile::tempdir().expect("tmp");
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).expect("mkdir");
    let file = bootable_image(&images);
    let client = daemon(dir.path(), std::slice::from_ref(&images)).await;

    // Outside the image directories: refused before anything is read.
    let outside = bootable_image(&dir.path().join("elsewhere"));
    let body = format!(r#"{{"path":"{}"}}"#, outside.display());
    let (status, text) = call(&client, "POST", "/images", Some(body)).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("outside the daemon's image directories"),
        "{text}"
    );

    let body = format!(r#"{{"path":"{}","name":"debian-12"}}"#, file.display());
    let (status, text) = call(&client, "POST", "/images", Some(body)).await;
    assert_eq!(status, 200, "{text}");
    let events: Vec<ImportEvent> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("an ImportEvent a line"))
        .collect();
    assert!(
        matches!(events.first(), Some(ImportEvent::Progress { done: 0, total }) if *total == 8 << 20),
        "{text}"
    );
    let Some(ImportEvent::Image(image)) = events.last() else {
        panic!("no image at the end: {text}");
    };
    assert_eq!(image.names, ["debian-12"]);
    assert_eq!(image.boot.kernel, "/boot/vmlinuz-6.1.0-1-test");

    // What can be checked before the disk is read is refused before the answer begins:
    // a file that is not a disk image, a name that is taken.
    let text_file = images.join("notes.txt");
    std::fs::write(&text_file, "not a disk\n".repeat(200)).expect("write");
    let body = format!(r#"{{"path":"{}"}}"#, text_file.display());
    let (status, text) = call(&client, "POST", "/images", Some(body)).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("is not a disk image"), "{text}");
    let body = format!(r#"{{"path":"{}","name":"debian-12"}}"#, file.display());
    let (status, text) = call(&client, "POST", "/images", Some(body)).await;
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("already names"), "{text}");
    // A failure found while reading the disk is a line, and the answer still 200 (it had
    // begun): here, a /boot/vmlinuz that is no kernel.
    let no_kernel = image_with_kernel(&images, "nokernel.raw", &[0u8; 4096]);
    let body = format!(r#"{{"path":"{}"}}"#, no_kernel.display());
    let (status, text) = call(&client, "POST", "/images", Some(body)).await;
    assert_eq!(status, 200, "{text}");
    let last: ImportEvent =
        serde_json::from_str(text.lines().last().expect("a line")).expect("event");
    assert!(
        matches!(&last, ImportEvent::Error(e) if e.contains("is not a Linux kernel")),
        "{text}"
    );

    let body = r#"{"name":"web1","image":"debian-12","disk_size":"16M","memory":"128M",
        "ssh_keys":["ssh-ed25519 AAAAC3Nza key@host"],"nics":[{"tap":"sktap9"}],
        "network":{"address":"10.0.2.15/24","gateway":"10.0.2.1"}}"#;
    let (status, text) = call(&client, "POST", "/vms", Some(body.into())).await;
    assert_eq!(status, 201, "{text}");
    let vm: VmInfo = serde_json::from_str(&text).expect("VmInfo");
    let spec: &VmSpec = &vm.spec;
    assert!(spec.cmdline.starts_with("root=UUID="), "{spec:?}");
    assert!(
        spec.kernel
            .ends_with(format!("boot/{}/kernel", image.digest)),
        "{spec:?}"
    );
    let overlay = spec.disks[0].path.clone();
    assert_eq!(spec.disks[0].format, Some(skiff_api::DiskFormat::Qcow2));
    assert!(overlay.exists(), "{}", overlay.display());
    // The NoCloud seed: a read-only second disk; the NIC got a MAC for its network-config.
    let seed = spec.disks[1].path.clone();
    assert!(spec.disks[1].read_only, "{spec:?}");
    assert!(seed.exists(), "{}", seed.display());
    assert_eq!(spec.address.as_deref(), Some("10.0.2.15/24"));
    assert!(spec.nics[0].mac.is_some(), "{spec:?}");

    let (status, text) = call(&client, "POST", "/vms", Some(body.into())).await;
    assert_eq!(status, 409, "a second web1: {text}");
    assert!(overlay.exists(), "the first VM keeps its overlay");
    let no_nic = r#"{"name":"web3","image":"debian-12","network":{"address":"10.0.2.16/24"}}"#;
    let (status, text) = call(&client, "POST", "/vms", Some(no_nic.into())).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("needs a NIC"), "{text}");
    let missing = r#"{"name":"web2","image":"nope"}"#;
    let (status, text) = call(&client, "POST", "/vms", Some(missing.into())).await;
    assert_eq!(status, 404, "{text}");

    let (status, text) = call(&client, "GET", "/images/debian-12", None).await;
    assert_eq!(status, 200, "{text}");
    let listed: Image = serde_json::from_str(&text).expect("Image");
    assert_eq!(listed.users, ["web1"]);
    let (status, text) = call(&client, "DELETE", "/images/debian-12", None).await;
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("used by VM web1"), "{text}");

    let (status, text) = call(&client, "DELETE", "/vms/web1", None).await;
    assert_eq!(status, 204, "{text}");
    assert!(!overlay.exists(), "the overlay goes with the VM");
    assert!(!seed.exists(), "and so does the seed");
    let (status, text) = call(&client, "DELETE", "/images/debian-12", None).await;
    assert_eq!(status, 204, "{text}");
    let (status, text) = call(&client, "GET", "/images", None).await;
    assert_eq!((status, text.as_str()), (200, "[]"));
}
