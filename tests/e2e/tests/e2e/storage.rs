//! Production storage (issue 19): host block devices as disks (loop and device-mapper
//! volumes), refusals of what cannot be a disk, discard and write-zeroes reaching a sparse
//! file, many requests in flight, I/O errors from a device-mapper `error` target (and a
//! flush that stays failed), many busy VMs whose control sockets keep answering.
//!
//! Loop devices are made with busybox's `losetup`, device-mapper volumes with Debian's
//! `dmsetup` and thin volumes with Debian's LVM (the emulated host has them, an lvm.conf
//! for a host without udev, and the `loop`, `dm-mod` and `dm-thin-pool` modules;
//! docs/testing.md).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use skiff_e2e::{make_ext4, value, GuestSpec, TestEnv, Vmm};

const MIB: u64 = 1 << 20;

/// Roots on LVM thin volumes, and discards reaching their pool.
#[path = "storage_thin.rs"]
mod thin;

/// Runs `program args`; panics with its output unless it succeeds; returns stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        // dmsetup makes its /dev/mapper nodes itself: no udev runs in the emulated host.
        .env("DM_DISABLE_UDEV", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A loop device, detached when dropped.
struct Loop(String);

impl Loop {
    /// `file` on the first free loop device (read-only with `ro`).
    fn attach(file: &Path, ro: bool) -> Loop {
        let dev = Loop::free();
        let file = file.to_string_lossy();
        let mut args = vec![];
        if ro {
            args.push("-r");
        }
        args.extend([dev.0.as_str(), &file]);
        run("losetup", &args);
        dev
    }

    /// The first free loop device, not attached to anything (its size is 0).
    fn free() -> Loop {
        Loop(run("losetup", &["-f"]))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).output();
    }
}

/// A device-mapper device, removed when dropped.
struct Mapped(String);

impl Mapped {
    fn create(name: &str, table: &str) -> Mapped {
        let _ = Command::new("dmsetup")
            .args(["remove", name])
            .env("DM_DISABLE_UDEV", "1")
            .output();
        run("dmsetup", &["create", name, "--table", table]);
        Mapped(format!("/dev/mapper/{name}"))
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        let name = self.0.trim_start_matches("/dev/mapper/");
        let _ = Command::new("dmsetup")
            .args(["remove", name])
            .env("DM_DISABLE_UDEV", "1")
            .output();
    }
}

/// 512-byte units the file system holds for `path`.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").blocks()
}

fn disk_arg(path: &str) -> String {
    format!("path={path}")
}

#[test]
fn roots_on_a_loop_device_and_a_device_mapper_volume() {
    let env = TestEnv::get();
    let image = env.rootfs_copy().expect("copy of the root image");
    let size = std::fs::metadata(&image).expect("stat").len();
    let lo = Loop::attach(&image, false);
    let guest = "echo size=$(blockdev --getsize64 /dev/vda); grep ' / ' /proc/mounts; \
                 echo granularity=$(cat /sys/block/vda/queue/discard_granularity); \
                 echo zeroes=$(cat /sys/block/vda/queue/write_zeroes_max_bytes); \
                 echo written > /root/on-device && sync && echo wrote=$?";
    // The loop device first: a device-mapper volume on it holds it exclusively (as a VM
    // would: see the refusals below).
    let mut linear = None;
    for step in 0..2 {
        let dev = match step {
            0 => lo.0.clone(),
            _ => {
                let table = format!("0 {} linear {} 0", size / 512, lo.0);
                let mapped = Mapped::create("skiff-e2e-linear", &table);
                let (busy, _) = refused(&disk_arg(&lo.0));
                let stderr = String::from_utf8_lossy(&busy.stderr);
                assert!(
                    stderr.contains("is in use"),
                    "a device under a volume must not be a disk\n{stderr}"
                );
                linear.insert(mapped).0.clone()
            }
        };
        let dev = &dev;
        let out = GuestSpec::new(Vmm::Skiff)
            .vmm_args(["--disk", &disk_arg(dev)])
            .cmdline("root=/dev/vda rw")
            .cmd(guest)
            .timeout(Duration::from_secs(120))
            .run_ok();
        let output = out.command_output();
        assert_eq!(
            value(&output, "size"),
            Some(size.to_string().as_str()),
            "{dev}: the guest's disk is the host device's size\n{out}"
        );
        assert!(
            output.contains("/dev/vda / ext4 rw"),
            "{dev}: root on the device\n{out}"
        );
        assert_ne!(value(&output, "granularity"), Some("0"), "{dev}\n{out}");
        assert_ne!(value(&output, "zeroes"), Some("0"), "{dev}\n{out}");
        assert_eq!(value(&output, "wrote"), Some("0"), "{dev}\n{out}");
    }
}

/// `skiff run --disk path=DISK` of a guest that must not start: its status, stderr, and
/// how long it took.
fn refused(disk: &str) -> (Output, Duration) {
    let env = TestEnv::get();
    let start = Instant::now();
    let out = GuestSpec::new(Vmm::Skiff)
        .vmm_args(["--disk", disk])
        .command(env)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("skiff runs");
    (out, start.elapsed())
}

#[test]
fn what_cannot_be_a_disk_is_refused_in_one_line_before_the_guest_starts() {
    let env = TestEnv::get();
    let dir = env.scratch("not-a-disk");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let fifo = env.scratch("fifo");
    run("mkfifo", &[&fifo.to_string_lossy()]);
    let backing = env.scratch("ro-device.raw");
    std::fs::write(&backing, vec![0u8; MIB as usize]).expect("image");
    let ro_device = Loop::attach(&backing, true);
    // The next free one, attached to nothing: 0 bytes.
    let empty_device = Loop::free();
    let cases: [(String, &str); 5] = [
        (empty_device.0.clone(), "is empty (0 bytes)"),
        ("/dev/null".into(), "is a character device"),
        (dir.to_string_lossy().into(), "is a directory"),
        (fifo.to_string_lossy().into(), "is a FIFO"),
        (ro_device.0.clone(), "is a read-only block device"),
    ];
    for (path, reason) in &cases {
        let (out, took) = refused(&disk_arg(path));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let console = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{path} was taken\n{stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{path}: one error line\n{stderr}");
        assert!(
            errors[0].contains(path.as_str()) && errors[0].contains(reason),
            "{path}: `{reason}` expected\n{stderr}"
        );
        assert!(
            !console.contains("Linux version"),
            "{path}: the guest started\n{console}"
        );
        assert!(took < Duration::from_secs(30), "{path}: {took:?}");
    }

    // The same through the daemon: each VM's start fails with the reason, in one line.
    let daemon = crate::daemon::Daemon::start_with(
        &env.scratch("storage-daemon"),
        None,
        &[
            "--disk-device-pattern",
            "/dev/loop[0-9]*",
            "--disk-device-pattern",
            "/dev/null",
        ],
    );
    for (i, (path, reason)) in cases[..4].iter().enumerate() {
        let spec = serde_json::json!({
            "name": format!("refused-{i}"),
            "kernel": env.kernel,
            "initrd": env.initrd,
            "memory": "64M",
            "disks": [{ "path": path }],
        });
        let body = serde_json::to_vec(&spec).expect("json");
        let answer = daemon
            .client()
            .blocking("POST", "/vms?start=true", Some(body))
            .expect("API");
        let message = answer.error_message();
        assert!(
            answer.status >= 400 && message.contains(path.as_str()) && message.contains(reason),
            "{path}: `{reason}` expected, got {}: {message}",
            answer.status
        );
        assert!(!message.contains('\n'), "{message}");
    }
    drop(daemon);
    let _ = std::fs::remove_file(&fifo);
    let _ = std::fs::remove_dir(&dir);
    drop(ro_device);
    let _ = std::fs::remove_file(&backing);
}

#[test]
fn discard_and_write_zeroes_give_a_sparse_file_its_space_back() {
    let env = TestEnv::get();
    // vda: ext4 on a sparse 512 MiB file; the guest fills half and deletes it.
    // It holds 32 MiB of files already, as a disk in use does: the blocks the guest's
    // journal and metadata take meanwhile are then a small part of what the file holds.
    let content = env.scratch("discard-content");
    std::fs::create_dir_all(&content).expect("mkdir");
    let old: Vec<u8> = (0..32 * MIB).map(|i| (i % 253) as u8 | 1).collect();
    std::fs::write(content.join("old-data"), old).expect("content");
    let fs_image = env.scratch("discard.ext4");
    make_ext4(&env.mke2fs, &content, &fs_image, 512).expect("mke2fs");
    let _ = std::fs::remove_dir_all(&content);
    let before = allocated(&fs_image);
    // vdb: 64 MiB of a pattern, every block allocated.
    let raw = env.scratch("zeroes.raw");
    std::fs::write(&raw, vec![0xaau8; 64 * MIB as usize]).expect("image");
    let raw_before = allocated(&raw);

    let out = GuestSpec::new(Vmm::Skiff)
        .memory_mib(256)
        .vmm_args([
            "--disk",
            &disk_arg(&fs_image.to_string_lossy()),
            "--disk",
            &disk_arg(&raw.to_string_lossy()),
        ])
        .cmd(
            "mkdir -p /mnt && mount -o noinit_itable /dev/vda /mnt && \
             dd if=/dev/zero of=/mnt/big bs=1M count=256 conv=fsync 2>/dev/null && echo filled=ok && \
             rm /mnt/big && sync && fstrim -v /mnt && umount /mnt && \
             skiff-guest-tool zero-range /dev/vdb 8 16 --punch && \
             skiff-guest-tool zero-range /dev/vdb 32 8",
        )
        .timeout(Duration::from_secs(300))
        .run_ok();
    let after = allocated(&fs_image);
    assert_eq!(value(&out.command_output(), "filled"), Some("ok"), "{out}");
    assert!(
        after.abs_diff(before) * 10 <= before,
        "allocated 512-byte blocks: {before} before the write, {after} after fstrim\n{out}"
    );

    let data = std::fs::read(&raw).expect("image");
    let range = |from: u64, to: u64| &data[(from * MIB) as usize..(to * MIB) as usize];
    assert!(range(8, 24).iter().all(|b| *b == 0), "punched range\n{out}");
    assert!(range(32, 40).iter().all(|b| *b == 0), "zeroed range\n{out}");
    assert!(
        range(0, 8)
            .iter()
            .chain(range(24, 32))
            .chain(range(40, 64))
            .all(|b| *b == 0xaa),
        "outside the ranges\n{out}"
    );
    // The punched range holds no data any more: its blocks went back to the host.
    let file = std::fs::File::open(&raw).expect("open");
    let next_data = seek_data(&file, 8 * MIB);
    assert!(
        next_data >= 24 * MIB,
        "data at {next_data} inside the punched range\n{out}"
    );
    assert!(allocated(&raw) + 16 * MIB / 512 <= raw_before, "{out}");
    for f in [&fs_image, &raw] {
        let _ = std::fs::remove_file(f);
    }
}

/// lseek(SEEK_DATA): the first offset at or after `from` that holds data.
fn seek_data(file: &std::fs::File, from: u64) -> u64 {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek on an open descriptor; no memory is involved.
    let at = unsafe { libc::lseek(file.as_raw_fd(), from as libc::off_t, libc::SEEK_DATA) };
    u64::try_from(at).unwrap_or(u64::MAX)
}

#[test]
fn io_errors_reach_the_guest_and_a_failed_flush_stays_failed() {
    let env = TestEnv::get();
    let backing = env.scratch("faulty.raw");
    std::fs::write(&backing, vec![0x11u8; 64 * MIB as usize]).expect("image");
    let lo = Loop::attach(&backing, false);
    // The first 32 MiB work; the second 32 MiB fail every read and write.
    let half = 32 * MIB / 512;
    let faulty = Mapped::create(
        "skiff-e2e-faulty",
        &format!("0 {half} linear {} 0\n{half} {half} error", lo.0),
    );
    let out = GuestSpec::new(Vmm::Skiff)
        .vmm_args(["--disk", &disk_arg(&faulty.0)])
        .cmd(
            "dd if=/dev/vda of=/dev/null bs=4096 count=1 skip=10000 iflag=direct 2>/dev/null; \
             echo bad_read=$?; \
             dd if=/dev/zero of=/dev/vda bs=4096 count=1 seek=9000 conv=fsync 2>/dev/null; \
             echo bad_flush=$?; \
             dd if=/dev/zero of=/dev/vda bs=4096 count=1 seek=10 conv=fsync 2>/dev/null; \
             echo next_flush=$?; \
             dd if=/dev/vda of=/dev/null bs=4096 count=1 skip=20 iflag=direct 2>/dev/null; \
             echo good_read=$?",
        )
        .timeout(Duration::from_secs(120))
        .run_ok();
    let output = out.command_output();
    assert_ne!(value(&output, "bad_read"), Some("0"), "{out}");
    assert_ne!(value(&output, "bad_flush"), Some("0"), "{out}");
    assert_ne!(
        value(&output, "next_flush"),
        Some("0"),
        "a flush after a failed one succeeded\n{out}"
    );
    assert_eq!(value(&output, "good_read"), Some("0"), "{out}");
    drop(faulty);
    drop(lo);
    let _ = std::fs::remove_file(&backing);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// A guest that runs one 3 s `iobench` of 4 KiB random reads per line it is sent (the
/// line is the thread count, so the queue depth), until it is sent `end`.
const QD_GUEST: &str = "echo QD-READY; while read -r t && [ \"$t\" != end ]; do \
     skiff-guest-tool iobench /dev/vda rand-read --mib 64 --block-kib 4 --seconds 3 --threads $t; \
     echo QD-DONE; done";

/// Runs one `iobench` at `depth` in `vm`; its IOPS.
fn qd_run(vm: &mut skiff_e2e::Vm, depth: u32) -> f64 {
    vm.send_line(&depth.to_string()).expect("console");
    let mut iops = None;
    loop {
        let line = vm
            .next_line(Duration::from_secs(120))
            .expect("iobench answers")
            .unwrap_or_else(|| panic!("the VMM ended during a QD{depth} run\n{}", vm.context()));
        if let Some(v) = line.trim().strip_prefix("iops=") {
            iops = v.parse().ok();
        }
        if line.contains("QD-DONE") {
            return iops.unwrap_or_else(|| panic!("no iops= from QD{depth}\n{}", vm.context()));
        }
    }
}

/// Deep queues run in parallel: QD32 against QD1 in one Skiff guest, alternated over
/// three rounds. The comparison with QEMU at the same depth is a speed target, measured
/// by `cargo xtask bench blk` beside QEMU (docs/benchmarks.md); run here, next to a QEMU
/// guest doing the same, it was also what most often brought the emulated host down
/// (docs/testing.md).
#[test]
#[ignore = "its guest dies (triple fault) or hangs as QD32 starts in the emulated host, in 3 of \
            the last 4 suite runs; cause open (docs/testing.md, issue 19): \
            cargo xtask e2e storage::random -- --ignored --nocapture"]
fn random_reads_at_queue_depth_32_beat_depth_1() {
    let env = TestEnv::get();
    let image = env.scratch("qd.raw");
    let data: Vec<u8> = (0..64 * MIB).map(|i| (i % 251) as u8).collect();
    std::fs::write(&image, data).expect("image");
    let rounds = 3;
    let mut vm = GuestSpec::new(Vmm::Skiff)
        .vmm_args(["--disk", &disk_arg(&image.to_string_lossy())])
        .cmd(QD_GUEST)
        .timeout(Duration::from_secs(600))
        .spawn()
        .expect("spawn Skiff");
    vm.wait_for("QD-READY", Duration::from_secs(300))
        .expect("the guest boots");
    let (mut qd1, mut qd32) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // The order swaps every round, so that drifting load falls on both alike.
        let depths = if round % 2 == 0 { [1, 32] } else { [32, 1] };
        for depth in depths {
            let iops = qd_run(&mut vm, depth);
            if depth == 1 { &mut qd1 } else { &mut qd32 }.push(iops);
        }
    }
    vm.send_line("end").expect("console");
    let rounds_text = format!("QD1 {qd1:?} QD32 {qd32:?}");
    let (m1, m32) = (median(qd1), median(qd32));
    eprintln!(
        "4 KiB random reads, IOPS (medians of {rounds} rounds): QD1 {m1:.0} QD32 {m32:.0} \
         ({:.2}x); rounds: {rounds_text}",
        m32 / m1
    );
    vm.wait(Duration::from_secs(120))
        .expect("the guest ends")
        .assert_success();
    assert!(
        m32 >= 1.5 * m1,
        "QD32 {m32:.0} IOPS is not 1.5x QD1 {m1:.0}: {rounds_text}"
    );
    let _ = std::fs::remove_file(&image);
}

/// Sends `stats` on the control socket at `socket`; how long the answer took.
fn stats_latency(socket: &Path) -> Result<Duration, String> {
    let start = Instant::now();
    let mut stream = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"{\"command\":\"stats\"}\n")
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if !line.contains("\"ok\"") && !line.contains("stats") {
        return Err(format!("answer: {line}"));
    }
    Ok(start.elapsed())
}

#[test]
#[ignore = "one of its 16 guests dies (triple fault) or hangs as their random I/O starts, in \
            each of the last five runs in the emulated host; cause open (docs/testing.md, \
            issue 19): cargo xtask e2e storage::sixteen -- --ignored --nocapture"]
fn sixteen_busy_vms_keep_their_control_sockets_answering() {
    const VMS: usize = 16;
    let env = TestEnv::get();
    let mut vms = Vec::new();
    let mut sockets: Vec<PathBuf> = Vec::new();
    let mut images = Vec::new();
    for i in 0..VMS {
        let image = env.scratch(&format!("busy-{i}.raw"));
        std::fs::write(&image, vec![i as u8; 16 * MIB as usize]).expect("image");
        let socket = env.scratch(&format!("busy-{i}.sock"));
        let vm = GuestSpec::new(Vmm::Skiff)
            .memory_mib(96)
            .vmm_args([
                "--disk".to_string(),
                disk_arg(&image.to_string_lossy()),
                "--control-socket".into(),
                socket.to_string_lossy().into_owned(),
                "--no-balloon".into(),
                "--sampling-period".into(),
                "0".into(),
            ])
            // Each waits for the word: all start their I/O together, and keep at it well
            // past the 20 s of questions below (the words reach them one after another).
            .cmd(
                "echo BUSY-READY; read x; \
                 skiff-guest-tool iobench /dev/vda rand-write --mib 16 --seconds 30 --threads 2 && \
                 skiff-guest-tool iobench /dev/vda rand-read --mib 16 --seconds 10 --threads 2",
            )
            .timeout(Duration::from_secs(600))
            .spawn()
            .expect("spawn");
        vms.push(vm);
        sockets.push(socket);
        images.push(image);
    }
    for vm in &mut vms {
        vm.wait_for("BUSY-READY", Duration::from_secs(400))
            .expect("every guest boots");
    }
    for vm in &mut vms {
        vm.send_line("go").expect("console");
    }
    // While they work: every socket, round after round, for 20 s; beside each, the same
    // exchange with a thread of this process (how long the host itself takes to answer).
    let reference = env.scratch("busy-reference.sock");
    let listener = std::os::unix::net::UnixListener::bind(&reference).expect("bind");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut line = String::new();
            let mut reader = BufReader::new(&stream);
            if reader.read_line(&mut line).is_ok() {
                let _ = (&stream).write_all(b"{\"ok\":true}\n");
            }
        }
    });
    // A VMM's stall: how much longer its answer took than this process's own exchanges
    // just before and after it (the emulated host as a whole stops for up to ~0.5 s now
    // and then, under TCG on a shared machine: that is no VMM's doing).
    let mut answers = Vec::new();
    let mut host = Vec::new();
    let mut stalls = Vec::new();
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        for (i, socket) in sockets.iter().enumerate() {
            let before = stats_latency(&reference).expect("reference");
            let took = stats_latency(socket)
                .unwrap_or_else(|e| panic!("VM {i}'s control socket: {e}\n{}", vms[i].context()));
            let after = stats_latency(&reference).expect("reference");
            stalls.push(took.saturating_sub(before.max(after)));
            answers.push(took);
            host.extend([before, after]);
        }
    }
    let summary = |v: &mut Vec<Duration>| {
        v.sort();
        let at = |q: usize| v.get((v.len() * q / 100).min(v.len() - 1)).copied();
        format!(
            "median {:?}, p99 {:?}, max {:?} ({} answers)",
            at(50),
            at(99),
            v.last(),
            v.len()
        )
    };
    let worst = stalls.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{VMS} busy VMs: control answers {}; this process's own socket {}; stalls beyond \
         the host's {}",
        summary(&mut answers),
        summary(&mut host),
        summary(&mut stalls)
    );
    // The VMMs' own account of slow answers (control.rs logs any over 250 ms).
    let mut slow = Vec::new();
    for (i, vm) in vms.into_iter().enumerate() {
        let out = vm.wait(Duration::from_secs(300)).expect("VM ends");
        out.assert_success();
        slow.extend(
            out.vmm_stderr
                .lines()
                .filter(|l| l.contains(" took "))
                .map(|l| format!("VM {i}: {l}")),
        );
    }
    eprintln!("slow answers the VMMs logged: {slow:#?}");
    assert!(
        worst <= Duration::from_secs(1),
        "a control socket stalled for {worst:?}; the VMMs logged: {slow:#?}"
    );
    for image in images {
        let _ = std::fs::remove_file(image);
    }
}
