//! Tests of [`DiskFile`] on real files: I/O, locks, refusals, discard and write-zeroes on
//! a sparse file (its allocated blocks), cache=direct.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::*;

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("skiff-disk-{}-{name}", std::process::id()))
}

fn image(name: &str, data: &[u8]) -> PathBuf {
    let path = temp(name);
    std::fs::write(&path, data).expect("image");
    path
}

fn rw() -> OpenMode {
    OpenMode::default()
}

/// 512-byte units the file system holds for `path` (st_blocks).
fn allocated(path: &PathBuf) -> u64 {
    std::fs::metadata(path).expect("stat").blocks()
}

#[test]
fn vectored_io_goes_straight_between_the_file_and_guest_memory() {
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
    let path = image("vectored", &data);
    let disk = DiskFile::open(&path, rw()).expect("open");
    assert_eq!((disk.len(), disk.kind()), (8192, DiskKind::File));
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("mem");
    // Three uneven pieces, as a guest's scatter list may be.
    let pieces = [(0x1000, 100usize), (0x3000, 1000), (0x5000, 3000)];
    let slices: Vec<_> = pieces
        .iter()
        .map(|&(a, n)| mem.get_slice(GuestAddress(a), n).expect("slice"))
        .collect();
    disk.read_vectored_at(&slices, 512).expect("read");
    let mut at = 512;
    for &(a, n) in &pieces {
        let mut got = vec![0u8; n];
        mem.read_slice(&mut got, GuestAddress(a)).expect("guest");
        assert_eq!(got, data[at..at + n]);
        at += n;
    }
    mem.write_slice(&[0xee; 100], GuestAddress(0x1000))
        .expect("guest");
    disk.write_vectored_at(&slices[..1], 0).expect("write");
    let after = std::fs::read(&path).expect("image");
    assert_eq!(after[..100], [0xee; 100]);
    assert_eq!(after[100..], data[100..]);
    let past = disk.read_vectored_at(&slices, 8000);
    assert_eq!(
        past.map_err(|e| e.kind()),
        Err(io::ErrorKind::UnexpectedEof)
    );
    std::fs::remove_file(path).expect("clean up");
}

#[test]
fn a_second_writer_is_refused() {
    let path = image("locked", &[0; 512]);
    let _first = DiskFile::open(&path, rw()).expect("open");
    assert!(matches!(
        DiskFile::open(&path, rw()),
        Err(DiskError::Locked { .. })
    ));
    let reader = OpenMode {
        read_only: true,
        ..rw()
    };
    assert!(matches!(
        DiskFile::open(&path, reader),
        Err(DiskError::Locked { .. })
    ));
    std::fs::remove_file(path).expect("clean up");
}

fn refusal(path: &std::path::Path) -> Unusable {
    match DiskFile::open(path, rw()) {
        Err(DiskError::Unusable { reason, .. }) => reason,
        Err(e) => panic!("{}: {e}", path.display()),
        Ok(_) => panic!("{} was taken as a disk", path.display()),
    }
}

#[test]
fn what_cannot_be_a_disk_is_refused_in_one_line() {
    let empty = image("empty", &[]);
    assert_eq!(refusal(&empty), Unusable::Empty);
    let odd = image("odd", &[0; 1000]);
    assert_eq!(refusal(&odd), Unusable::NotSectorMultiple(1000));
    assert_eq!(refusal(&std::env::temp_dir()), Unusable::Directory);
    assert_eq!(
        refusal(std::path::Path::new("/dev/null")),
        Unusable::CharacterDevice
    );
    let fifo = temp("fifo");
    let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("path");
    // SAFETY: a NUL-terminated path; mkfifo creates a node.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // Opened without blocking, though no writer is there.
    let err = DiskFile::open(
        &fifo,
        OpenMode {
            read_only: true,
            ..rw()
        },
    );
    assert!(
        matches!(
            err,
            Err(DiskError::Unusable {
                reason: Unusable::Fifo,
                ..
            })
        ),
        "{:?}",
        err.err().map(|e| e.to_string())
    );
    let line = DiskError::Unusable {
        path: "/dev/null".into(),
        reason: Unusable::CharacterDevice,
    }
    .to_string();
    assert!(!line.contains('\n') && line.starts_with("disk /dev/null is a character"));
    for path in [empty, odd, fifo] {
        std::fs::remove_file(path).expect("clean up");
    }
}

#[test]
fn discard_gives_a_sparse_file_its_space_back() {
    const MIB: u64 = 1 << 20;
    let path = temp("discard");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(8 * MIB))
        .expect("sparse file");
    let before = allocated(&path);
    let disk = DiskFile::open(&path, rw()).expect("open");
    assert_eq!(disk.geometry().discard_granularity, Some(4096));
    std::fs::write(&path, vec![0x5au8; 8 * MIB as usize]).expect("fill");
    let full = allocated(&path);
    assert!(full >= before + 8 * MIB / 512, "{before} -> {full}");
    disk.discard(MIB, 4 * MIB).expect("discard");
    let after = allocated(&path);
    assert!(
        after <= full - 4 * MIB / 512,
        "{full} blocks -> {after} after discarding 4 MiB"
    );
    // Write-zeroes with unmap punches too, and the range reads zeros.
    disk.write_zeroes(6 * MIB, MIB, true).expect("zeroes");
    assert!(allocated(&path) <= after - MIB / 512);
    let data = std::fs::read(&path).expect("read");
    assert!(data[6 * MIB as usize..7 * MIB as usize]
        .iter()
        .all(|b| *b == 0));
    assert!(data[7 * MIB as usize..].iter().all(|b| *b == 0x5a));
    // Without unmap, the range still reads zeros.
    disk.write_zeroes(0, 4096, false).expect("zeroes");
    let data = std::fs::read(&path).expect("read");
    assert!(data[..4096].iter().all(|b| *b == 0) && data[4096] == 0x5a);
    std::fs::remove_file(path).expect("clean up");
}

#[test]
fn direct_io_bounces_unaligned_guest_buffers() {
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 241) as u8).collect();
    let path = image("direct", &data);
    let mode = OpenMode {
        read_only: false,
        cache: CacheMode::Direct,
    };
    let disk = match DiskFile::open(&path, mode) {
        Ok(disk) => disk,
        // A file system without O_DIRECT (tmpfs before Linux 6.6) says so in one line.
        Err(DiskError::NoDirect { .. }) => return,
        Err(e) => panic!("{e}"),
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40000)]).expect("mem");
    let aligned = mem.get_slice(GuestAddress(0x2000), 8192).expect("slice");
    let odd = mem.get_slice(GuestAddress(0x8003), 4096).expect("slice");
    disk.read_vectored_at(&[aligned], 4096)
        .expect("aligned read");
    disk.read_vectored_at(&[odd], 8192).expect("bounced read");
    let mut got = vec![0u8; 4096];
    mem.read_slice(&mut got, GuestAddress(0x8003))
        .expect("guest");
    assert_eq!(got, data[8192..12288]);
    mem.write_slice(&[0xab; 4096], GuestAddress(0x8003))
        .expect("guest");
    disk.write_vectored_at(&[odd], 0).expect("bounced write");
    disk.flush().expect("flush");
    let after = std::fs::read(&path).expect("read");
    assert_eq!(after[..4096], [0xab; 4096]);
    assert_eq!(after[4096..], data[4096..]);
    std::fs::remove_file(path).expect("clean up");
}

#[test]
fn a_disk_handed_over_open_is_checked_like_one_opened_here() {
    let path = image("handed", &[0; 4096]);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let disk = DiskFile::from_file(file, "disk0", rw()).expect("disk");
    assert_eq!(disk.len(), 4096);
    let dir = std::fs::File::open(std::env::temp_dir()).expect("dir");
    assert!(matches!(
        DiskFile::from_file(dir, "disk1", rw()),
        Err(DiskError::Unusable {
            reason: Unusable::Directory,
            ..
        })
    ));
    std::fs::remove_file(path).expect("clean up");
}
