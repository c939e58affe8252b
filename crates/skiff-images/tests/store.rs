//! The image store against real images made by `qemu-img` and `mke2fs` in temporary
//! directories: formats, content addressing, bad input, overlays and their users.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use imago::file::File;
use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate};
use skiff_images::{ImageError, Layout, Progress, SourceFormat, Store};

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (qemu-utils, e2fsprogs) must be installed: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_img_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    serde_json::from_slice(&out.stdout).expect("qemu-img json")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// An 8 MiB ext4 file system holding a few files and a (pretend) kernel in /boot.
fn ext4(dir: &Path) -> PathBuf {
    let content = dir.join("content");
    fs::create_dir_all(content.join("boot")).expect("dir");
    fs::write(content.join("hello.txt"), "hello from the image\n").expect("file");
    let mut kernel = vec![0xa5u8; 300_000];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    fs::write(content.join("boot/vmlinuz-6.1.0-9-test"), &kernel).expect("file");
    let image = dir.join("disk.raw");
    run(
        "mke2fs",
        &["-q", "-F", "-t", "ext4", "-d", s(&content), s(&image), "8M"],
    );
    image
}

fn no_progress() -> impl FnMut(Progress) {
    |_| {}
}

fn entries(store: &Store, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(store.root().join(dir))
        .expect("store dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn raw_and_every_qcow2_flavour_import_to_one_blob() {
    let dir = tempfile::tempdir().expect("tmp");
    let raw = ext4(dir.path());
    let v2 = dir.path().join("v2.qcow2");
    let v3 = dir.path().join("v3.qcow2");
    let compressed = dir.path().join("compressed.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "compat=0.10",
            s(&raw),
            s(&v2),
        ],
    );
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "compat=1.1",
            s(&raw),
            s(&v3),
        ],
    );
    run(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", s(&raw), s(&compressed)],
    );
    let store = Store::open(&dir.path().join("store")).expect("store");

    let mut seen = Vec::new();
    let first = store
        .import(&raw, Some("base"), &mut |p| seen.push(p))
        .expect("raw import");
    assert_eq!(first.virtual_size, 8 << 20);
    assert_eq!(first.layout, Layout::Ext4);
    assert_eq!(first.source_format, SourceFormat::Raw);
    assert_eq!(
        seen.first(),
        Some(&Progress {
            done: 0,
            total: 8 << 20
        })
    );
    assert_eq!(
        seen.last(),
        Some(&Progress {
            done: 8 << 20,
            total: 8 << 20
        })
    );
    assert!(seen.len() > 2, "progress in steps: {seen:?}");

    for (file, name) in [(&v2, "v2"), (&v3, "v3"), (&compressed, "small")] {
        let info = store
            .import(file, Some(name), &mut no_progress())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.digest, first.digest, "{name} holds the same disk");
        // What the store knows of an image is what its first import learnt.
        assert_eq!(info.source_format, SourceFormat::Raw);
    }
    assert_eq!(entries(&store, "blobs").len(), 1, "stored once");
    let info = store.inspect("small").expect("inspect");
    assert_eq!(info.names, ["base", "small", "v2", "v3"]);
    let blob = store.blob_path(&first.digest);
    assert_eq!(fs::read(&blob).expect("blob"), fs::read(&raw).expect("raw"));
    let mode = fs::metadata(&blob).expect("blob").permissions().mode();
    assert_eq!(mode & 0o777, 0o444, "read-only");
    assert!(info.disk_usage < info.virtual_size / 2, "sparse: {info:?}");
    assert_eq!(
        store
            .resolve(&format!("sha256:{}", &first.digest[..12]))
            .expect("prefix"),
        first.digest
    );

    // Names come off one at a time; the blob goes with the last.
    for name in ["base", "v2", "v3"] {
        store.remove(name).expect("rm");
        assert!(blob.exists());
    }
    store.remove("small").expect("rm");
    assert!(!blob.exists());
    assert!(store.list().expect("ls").is_empty());
    assert!(matches!(
        store.inspect("small"),
        Err(ImageError::NotFound(_))
    ));
}

/// The import fails with one line naming `file`, and the store holds nothing afterwards.
fn refused(store: &Store, file: &Path, expect: &str) -> ImageError {
    let err = store
        .import(file, Some("bad"), &mut no_progress())
        .expect_err("must be refused");
    let line = err.to_string();
    assert!(!line.contains('\n'), "one line: {line}");
    assert!(line.contains(expect), "{line:?} should say {expect:?}");
    for dir in ["blobs", "meta", "names", "tmp"] {
        assert!(entries(store, dir).is_empty(), "{dir} after {line}");
    }
    err
}

#[test]
fn bad_input_gets_one_line_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let raw = ext4(d);
    let store = Store::open(&d.join("store")).expect("store");

    let text = d.join("notes.txt");
    fs::write(&text, "just some text\n".repeat(100)).expect("text");
    let e = refused(&store, &text, "is not a disk image");
    assert!(matches!(e, ImageError::NotADiskImage { .. }));

    let good = d.join("good.qcow2");
    run("qemu-img", &["convert", "-O", "qcow2", s(&raw), s(&good)]);
    let bytes = fs::read(&good).expect("qcow2");
    let truncated = d.join("truncated.qcow2");
    fs::write(&truncated, &bytes[..60]).expect("write");
    let e = refused(&store, &truncated, "corrupt qcow2");
    assert!(e.to_string().contains("truncated.qcow2"), "{e}");
    // cluster_bits (offset 20) of 40: no such cluster size.
    let mut corrupt = bytes.clone();
    corrupt[20..24].copy_from_slice(&40u32.to_be_bytes());
    let bad_header = d.join("badheader.qcow2");
    fs::write(&bad_header, &corrupt).expect("write");
    refused(&store, &bad_header, "corrupt qcow2");
    // An L1 table far past the end of the file: imago reads it as zeros (an empty disk),
    // which holds no file system.
    let mut corrupt = bytes;
    corrupt[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes());
    let bad_table = d.join("badtable.qcow2");
    fs::write(&bad_table, &corrupt).expect("write");
    refused(&store, &bad_table, "badtable.qcow2 is not a disk image");

    // a -> b -> a
    let a = d.join("a.qcow2");
    let b = d.join("b.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&a), "8M"]);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "a.qcow2",
            "-F",
            "qcow2",
            s(&b),
        ],
    );
    run(
        "qemu-img",
        &["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", s(&a)],
    );
    let e = refused(&store, &b, "backing-file loop");
    assert!(e.to_string().contains("b.qcow2 -> "), "{e}");
    let me = d.join("me.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&me), "8M"]);
    run(
        "qemu-img",
        &["rebase", "-u", "-b", "me.qcow2", "-F", "qcow2", s(&me)],
    );
    refused(&store, &me, "backing-file loop");

    let outside = d.join("outside.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            s(&raw),
            "-F",
            "raw",
            s(&outside),
        ],
    );
    let e = refused(&store, &outside, "outside the image store");
    assert!(matches!(e, ImageError::BackingOutsideStore { .. }));

    let vmdk = d.join("disk.vmdk");
    run("qemu-img", &["convert", "-O", "vmdk", s(&raw), s(&vmdk)]);
    refused(&store, &vmdk, "VMDK");
    refused(&store, &d.join("missing.raw"), "cannot read");
}

#[test]
fn a_qcow2_on_a_stored_image_imports_flattened() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let raw = ext4(d);
    let store = Store::open(&d.join("store")).expect("store");
    let base = store
        .import(&raw, Some("base"), &mut no_progress())
        .expect("import");
    let child = d.join("child.qcow2");
    let blob = store.blob_path(&base.digest);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            s(&blob),
            "-F",
            "raw",
            s(&child),
        ],
    );
    {
        let gate = PermissiveImplicitOpenGate::default();
        let img = Qcow2::<File>::builder_path(&child)
            .write(true)
            .open(gate)
            .expect("open");
        let img = FormatAccess::new(img);
        img.write(&b"changed!"[..], 4 << 20).expect("write");
        img.flush().expect("flush");
    }
    let info = store
        .import(&child, Some("child"), &mut no_progress())
        .expect("import");
    assert_ne!(info.digest, base.digest);
    let flat = fs::read(store.blob_path(&info.digest)).expect("blob");
    let mut expect = fs::read(&raw).expect("raw");
    expect[4 << 20..(4 << 20) + 8].copy_from_slice(b"changed!");
    assert!(flat == expect, "base plus the child's write");
}

#[test]
fn overlays_are_thin_private_and_keep_their_image() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let raw = ext4(d);
    let store = Store::open(&d.join("store")).expect("store");
    let image = store
        .import(&raw, Some("base"), &mut no_progress())
        .expect("import");

    let one = store.create_overlay("vm1", "base", None).expect("overlay");
    let two = store
        .create_overlay("vm2", "base", Some(16 << 20))
        .expect("overlay");
    assert!(matches!(
        store.create_overlay("vm1", "base", None),
        Err(ImageError::OverlayExists { .. })
    ));
    assert!(matches!(
        store.create_overlay("vm3", "base", Some(4 << 20)),
        Err(ImageError::DiskTooSmall { .. })
    ));
    let info = qemu_img_json(&["info", "--output=json", s(&two)]);
    assert_eq!(info["virtual-size"], 16 << 20);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["backing-filename-format"], "raw");
    let backing = info["full-backing-filename"].as_str().map(PathBuf::from);
    assert_eq!(
        backing.map(|p| p.canonicalize().expect("backing")),
        Some(store.blob_path(&image.digest))
    );
    assert!(fs::metadata(&one).expect("overlay").len() < 1 << 20, "thin");
    run("qemu-img", &["check", s(&one)]);

    // A write through vm1's overlay is vm1's alone.
    {
        let gate = PermissiveImplicitOpenGate::default();
        let img = Qcow2::<File>::builder_path(&one)
            .write(true)
            .open(gate)
            .expect("open");
        let img = FormatAccess::new(img);
        img.write(&[0x5au8; 4096][..], 1 << 20).expect("write");
        img.flush().expect("flush");
    }
    run("qemu-img", &["check", s(&one)]);
    let read = |path: &Path| {
        let gate = PermissiveImplicitOpenGate::default();
        let img = FormatAccess::new(Qcow2::<File>::builder_path(path).open(gate).expect("open"));
        let mut buf = vec![0u8; 4096];
        img.read(&mut buf[..], 1 << 20).expect("read");
        buf
    };
    let original = fs::read(&raw).expect("raw")[1 << 20..(1 << 20) + 4096].to_vec();
    assert_eq!(read(&one), vec![0x5a; 4096]);
    assert_eq!(read(&two), original, "the other VM sees the image");
    assert_eq!(
        fs::read(store.blob_path(&image.digest)).expect("blob"),
        fs::read(&raw).expect("raw")
    );

    assert_eq!(
        store.inspect("base").expect("inspect").users,
        ["vm1", "vm2"]
    );
    let e = store.remove("base").expect_err("in use");
    assert_eq!(
        e.to_string(),
        "image base is used by VM vm1, vm2; delete the VM first"
    );
    assert!(store.remove_overlay("vm1").expect("rm overlay"));
    assert!(!store.remove_overlay("vm1").expect("rm overlay"));
    assert!(store
        .remove("base")
        .expect_err("in use")
        .to_string()
        .contains("VM vm2;"));
    assert!(store.remove_overlay("vm2").expect("rm overlay"));
    store.remove("base").expect("rm");
    assert!(entries(&store, "blobs").is_empty());
}
