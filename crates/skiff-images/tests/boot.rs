//! Finding an image's own kernel: GPT, MBR and whole-disk layouts built here (partition
//! tables with the `gpt` crate and by hand, file systems with `mke2fs -d`), the default
//! kernel by Debian's links or the newest version, and images without one refused.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{symlink, FileExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use skiff_images::{find_boot, ImageError, Progress, Store};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn bzimage(tag: u8) -> Vec<u8> {
    let mut k = vec![tag; 8192];
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k
}

/// An ext4 file system from `content` (a directory), 16 MiB, with a fixed UUID.
fn mkfs(content: &Path, image: &Path, uuid: &str) {
    let out = Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-U",
            uuid,
            "-d",
            s(content),
            s(image),
            "16M",
        ])
        .output()
        .expect("mke2fs (e2fsprogs) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A root file system: two kernels in /boot, Debian's links when `links`.
fn root_fs(dir: &Path, links: bool) -> std::path::PathBuf {
    let content = dir.join("root");
    fs::create_dir_all(content.join("boot")).expect("dir");
    fs::create_dir_all(content.join("etc")).expect("dir");
    fs::write(content.join("etc/hostname"), "image\n").expect("file");
    fs::write(content.join("boot/vmlinuz-6.1.0-9-cloud-amd64"), bzimage(9)).expect("k");
    fs::write(
        content.join("boot/initrd.img-6.1.0-9-cloud-amd64"),
        b"initrd 9",
    )
    .expect("i");
    fs::write(
        content.join("boot/vmlinuz-6.1.0-10-cloud-amd64"),
        bzimage(10),
    )
    .expect("k");
    fs::write(
        content.join("boot/initrd.img-6.1.0-10-cloud-amd64"),
        b"initrd 10",
    )
    .expect("i");
    if links {
        // Debian points /vmlinuz at the kernel it installed last, not the newest version.
        symlink("boot/vmlinuz-6.1.0-9-cloud-amd64", content.join("vmlinuz")).expect("link");
        symlink(
            "boot/initrd.img-6.1.0-9-cloud-amd64",
            content.join("initrd.img"),
        )
        .expect("link");
    }
    let image = dir.join("root.ext4");
    mkfs(&content, &image, "0b5c9d1e-7f1a-4c2b-9d3e-1a2b3c4d5e6f");
    image
}

/// A 24 MiB disk with the file system `fs_image` in a partition from 2 MiB on.
fn disk_with_partition(dir: &Path, fs_image: &Path, gpt: bool) -> std::path::PathBuf {
    let disk = dir.join(if gpt { "gpt.raw" } else { "mbr.raw" });
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&disk)
        .expect("disk");
    file.set_len(24 << 20).expect("size");
    let start_lba: u64 = if gpt {
        let mut f = file.try_clone().expect("clone");
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from((24u64 << 20) / 512 - 1).expect("lba"))
            .overwrite_lba0(&mut f)
            .expect("protective MBR");
        let mut table = gpt::GptConfig::new()
            .writable(true)
            .create_from_device(f, None)
            .expect("gpt");
        // A small first partition without a file system, as a BIOS boot partition is.
        table
            .add_partition("bios", 1 << 20, gpt::partition_types::BIOS, 0, Some(2048))
            .expect("part");
        let root = table
            .add_partition(
                "root",
                18 << 20,
                gpt::partition_types::LINUX_FS,
                0,
                Some(2048),
            )
            .expect("part");
        let start = table.partitions()[&root].first_lba;
        table.write().expect("write gpt");
        start
    } else {
        let mut mbr = [0u8; 512];
        let entry = &mut mbr[446..462];
        entry[4] = 0x83;
        entry[8..12].copy_from_slice(&4096u32.to_le_bytes());
        entry[12..16].copy_from_slice(&(((18u32) << 20) / 512).to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        file.write_all_at(&mbr, 0).expect("mbr");
        4096
    };
    let data = fs::read(fs_image).expect("fs");
    file.write_all_at(&data, start_lba * 512)
        .expect("fs into partition");
    disk
}

#[test]
fn the_default_kernel_is_found_in_every_layout() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let bare_links = root_fs(&d.join("a").tap_mkdir(), true);
    let found = find_boot(&bare_links, "bare").expect("kernel");
    assert_eq!(
        found.entry.kernel, "/boot/vmlinuz-6.1.0-9-cloud-amd64",
        "the link"
    );
    assert_eq!(
        found.entry.initrd.as_deref(),
        Some("/boot/initrd.img-6.1.0-9-cloud-amd64")
    );
    assert_eq!(found.kernel, bzimage(9));
    assert_eq!(found.initrd.as_deref(), Some(&b"initrd 9"[..]));
    assert_eq!(found.entry.partition, None);
    assert_eq!(
        found.entry.cmdline,
        "root=UUID=0b5c9d1e-7f1a-4c2b-9d3e-1a2b3c4d5e6f ro console=ttyS0"
    );

    let newest = root_fs(&d.join("b").tap_mkdir(), false);
    for gpt in [true, false] {
        let disk = disk_with_partition(d, &newest, gpt);
        let found = find_boot(&disk, "disk").unwrap_or_else(|e| panic!("gpt {gpt}: {e}"));
        assert_eq!(
            found.entry.kernel, "/boot/vmlinuz-6.1.0-10-cloud-amd64",
            "the newest"
        );
        assert_eq!(found.kernel, bzimage(10));
        assert_eq!(found.initrd.as_deref(), Some(&b"initrd 10"[..]));
        assert_eq!(
            found.entry.partition,
            Some(if gpt { 2 } else { 1 }),
            "gpt {gpt}"
        );
        assert_eq!(
            found.entry.root_uuid,
            "0b5c9d1e-7f1a-4c2b-9d3e-1a2b3c4d5e6f"
        );
    }
}

#[test]
fn import_keeps_the_kernel_and_refuses_an_image_without_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let store = Store::open(&d.join("store")).expect("store");
    let disk = disk_with_partition(d, &root_fs(&d.join("a").tap_mkdir(), true), true);
    let info = store
        .import(&disk, Some("debian"), &mut |_: Progress| {})
        .expect("import");
    assert_eq!(info.boot.kernel, "/boot/vmlinuz-6.1.0-9-cloud-amd64");
    let (kernel, initrd) = store.boot_files(&info.digest);
    let initrd = initrd.expect("initrd");
    assert_eq!(fs::read(&kernel).expect("kernel"), bzimage(9));
    assert_eq!(fs::read(&initrd).expect("initrd"), b"initrd 9");
    // A jailed VMM reads them as another uid: readable by all, whatever the umask.
    for file in [&kernel, &initrd] {
        let mode = fs::metadata(file).expect("boot file").permissions().mode();
        assert_eq!(mode & 0o777, 0o444, "{}", file.display());
    }

    let empty = d.join("empty");
    fs::create_dir_all(empty.join("etc")).expect("dir");
    let no_kernel = d.join("nokernel.ext4");
    mkfs(&empty, &no_kernel, "11111111-2222-3333-4444-555555555555");
    let e = store
        .import(&no_kernel, Some("nokernel"), &mut |_: Progress| {})
        .expect_err("no kernel");
    assert!(matches!(e, ImageError::NoKernel { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "{} has no kernel: none of its ext2/3/4 file systems has /vmlinuz, /boot/vmlinuz or /boot/vmlinuz-*",
            no_kernel.display()
        )
    );
    assert_eq!(store.list().expect("ls").len(), 1, "nothing of it stored");
    assert_eq!(
        fs::read_dir(store.root().join("tmp")).expect("tmp").count(),
        0
    );
    assert_eq!(
        fs::read_dir(store.root().join("boot"))
            .expect("boot")
            .count(),
        1
    );

    store.remove("debian").expect("rm");
    assert_eq!(
        fs::read_dir(store.root().join("boot"))
            .expect("boot")
            .count(),
        0
    );
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        fs::create_dir_all(&self).expect("dir");
        self
    }
}
