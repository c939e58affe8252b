//! A guest's root on an LVM thin volume (issue 19, "roots on devices"): a volume of an odd
//! size (4 KiB extents), made with Debian's LVM in the emulated host; the guest's disk is
//! exactly the host's size, and its fstrim gives the blocks of a deleted file back to the
//! thin pool.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use skiff_e2e::{value, GuestSpec, TestEnv, Vmm};

use super::{disk_arg, run, Loop, MIB};

/// An LVM thin volume: a volume group on a loop device over a sparse file, a thin pool
/// and one thin volume; all removed when dropped.
struct ThinVolume {
    vg: &'static str,
    /// `/dev/VG/LV`.
    path: String,
    pv: Loop,
    backing: PathBuf,
}

impl ThinVolume {
    /// Extents of 4 KiB (LVM's default is 4 MiB), so the volume can be any multiple of
    /// 4 KiB: `size` bytes, in a pool of `pool` bytes.
    fn create(vg: &'static str, size: u64, pool: u64) -> ThinVolume {
        let env = TestEnv::get();
        let backing = env.scratch("thin-pv.raw");
        let file = std::fs::File::create(&backing).expect("PV file");
        file.set_len(pool + 64 * MIB).expect("sparse PV file");
        let pv = Loop::attach(&backing, false);
        run("pvcreate", &["-q", &pv.0]);
        run("vgcreate", &["-q", "-s", "4k", vg, &pv.0]);
        let volume = ThinVolume {
            vg,
            path: format!("/dev/{vg}/root"),
            pv,
            backing,
        };
        let pool = format!("{}k", pool / 1024);
        run(
            "lvcreate",
            &["-q", "--type", "thin-pool", "-L", &pool, "-n", "pool", vg],
        );
        let size = format!("{}k", size / 1024);
        let pool_lv = format!("{vg}/pool");
        run(
            "lvcreate",
            &["-q", "--thin", "-V", &size, "-n", "root", &pool_lv],
        );
        volume
    }

    /// One `lvs` field of the pool, e.g. `data_percent`.
    fn pool_field(&self, field: &str) -> String {
        let pool = format!("{}/pool", self.vg);
        run(
            "lvs",
            &[
                "--noheadings",
                "--nosuffix",
                "--units",
                "b",
                "-o",
                field,
                &pool,
            ],
        )
    }

    /// The pool's data_percent, once it satisfies `settled` or after 30 s: dm-thin counts
    /// freed blocks at its next metadata commit (every second).
    fn data_percent(&self, settled: impl Fn(f64) -> bool) -> f64 {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.pool_field("data_percent");
            let percent: f64 = text
                .parse()
                .unwrap_or_else(|e| panic!("data_percent `{text}`: {e}"));
            if settled(percent) || Instant::now() > until {
                return percent;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for ThinVolume {
    fn drop(&mut self) {
        let lvm = |args: &[&str]| {
            let _ = Command::new(args[0])
                .args(&args[1..])
                .env("DM_DISABLE_UDEV", "1")
                .output();
        };
        lvm(&["vgremove", "-q", "-f", self.vg]);
        lvm(&["pvremove", "-q", &self.pv.0]);
        let _ = std::fs::remove_file(&self.backing);
    }
}

/// Puts the guest root file system (`SKIFF_ROOTFS`'s files) on `device` as an ext4 that
/// fills it: the image, mounted read-only, is `mke2fs -d`'s source.
fn root_file_system_on(device: &str) {
    let env = TestEnv::get();
    let image = Loop::attach(&env.rootfs, true);
    let dir = env.scratch("rootfs-files");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let dir_arg = dir.to_string_lossy();
    run("mount", &["-t", "ext4", "-o", "ro", &image.0, &dir_arg]);
    let made = Command::new(&env.mke2fs)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "skiff-root",
            "-E",
            // Inode tables and journal written now, not by the guest's ext4lazyinit
            // later: the pool's use at boot is then all the file system's own.
            "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0",
            "-d",
        ])
        .arg(&dir)
        .arg(device)
        .output();
    run("umount", &[&dir_arg]);
    let _ = std::fs::remove_dir(&dir);
    let made = made.expect("mke2fs runs");
    assert!(
        made.status.success(),
        "mke2fs -d on {device}: {}",
        String::from_utf8_lossy(&made.stderr)
    );
}

#[test]
fn root_on_an_lvm_thin_volume_of_an_odd_size_and_fstrim_returns_pool_space() {
    // 100 MiB + 4 KiB: a whole number of 4 KiB extents, but of no larger unit.
    const SIZE: u64 = 100 * MIB + 4096;
    const POOL: u64 = 128 * MIB;
    const FILL_MIB: u64 = 48;
    let thin = ThinVolume::create("skiffe2ethin", SIZE, POOL);
    let host_size: u64 = run("blockdev", &["--getsize64", &thin.path])
        .parse()
        .expect("blockdev --getsize64");
    assert_eq!(host_size, SIZE, "the thin volume's size on the host");
    let pool_bytes: u64 = thin.pool_field("lv_size").parse().expect("pool size");
    root_file_system_on(&thin.path);

    // The guest fills its root with FILL_MIB MiB, waits, deletes it and trims; the pool's
    // use is read at each pause.
    let mut vm = GuestSpec::new(Vmm::Skiff)
        .vmm_args(["--disk", &disk_arg(&thin.path)])
        .cmdline("root=/dev/vda rw")
        .cmd(format!(
            "echo sectors=$(cat /sys/block/vda/size); grep ' / ' /proc/mounts; \
             echo THIN-BOOTED; read x; \
             dd if=/dev/zero of=/filled bs=1M count={FILL_MIB} conv=fsync 2>/dev/null; \
             echo filled=$?; sync; echo THIN-FILLED; read x; \
             rm /filled && sync && fstrim -v /; echo trimmed=$?"
        ))
        .timeout(Duration::from_secs(300))
        .spawn()
        .expect("spawn");
    vm.wait_for("THIN-BOOTED", Duration::from_secs(240))
        .expect("the guest boots from the thin volume");
    let booted = thin.data_percent(|_| true);
    vm.send_line("go").expect("console");
    vm.wait_for("THIN-FILLED", Duration::from_secs(240))
        .expect("the guest fills its root");
    // What FILL_MIB MiB are of the pool, in percent.
    let fill = (FILL_MIB * MIB) as f64 * 100.0 / pool_bytes as f64;
    let filled = thin.data_percent(|p| p >= booted + 0.9 * fill);
    vm.send_line("go").expect("console");
    let out = vm.wait(Duration::from_secs(240)).expect("the guest ends");
    out.assert_success();
    let trimmed = thin.data_percent(|p| p <= booted + 0.1 * (filled - booted));
    eprintln!(
        "thin volume {} bytes (host and guest); pool {pool_bytes} bytes, data_percent \
         {booted:.2} booted, {filled:.2} after {FILL_MIB} MiB written, {trimmed:.2} after \
         rm + fstrim",
        host_size
    );

    let output = out.command_output();
    let sectors: u64 = value(&output, "sectors")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sectors=\n{out}"));
    assert_eq!(sectors * 512, host_size, "the guest's disk size\n{out}");
    assert!(
        output.contains("/dev/vda / ext4 rw"),
        "root on the thin volume\n{out}"
    );
    assert_eq!(value(&output, "filled"), Some("0"), "{out}");
    assert_eq!(value(&output, "trimmed"), Some("0"), "{out}");
    assert!(
        filled >= booted + 0.9 * fill,
        "{FILL_MIB} MiB ({fill:.2} % of the pool) written: data_percent {booted:.2} -> \
         {filled:.2}\n{out}"
    );
    assert!(
        trimmed <= booted + 0.1 * (filled - booted),
        "fstrim gave back too little: data_percent {booted:.2} booted, {filled:.2} filled, \
         {trimmed:.2} trimmed\n{out}"
    );
}
