//! The contract between `cargo xtask e2e` and the tests: environment variables.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::Error;

/// Paths the tests use, from the environment `cargo xtask e2e` sets (in both modes).
#[derive(Debug, Clone)]
pub struct TestEnv {
    /// `SKIFF_BIN`: the `skiff` binary (may not exist while the VMM is being written).
    pub skiff_bin: PathBuf,
    /// `SKIFF_KERNEL`: the guest kernel as a bzImage.
    pub kernel: PathBuf,
    /// `SKIFF_VMLINUX`: the same kernel as an ELF with a PVH entry note.
    pub vmlinux: PathBuf,
    /// `SKIFF_INITRD`: the guest initramfs (busybox, virtio modules, `/init`).
    pub initrd: PathBuf,
    /// `SKIFF_ROOTFS`: an ext4 root file system (label `skiff-root`) whose /sbin/init is
    /// the same init; read-only for tests: boot a copy ([`TestEnv::rootfs_copy`]).
    pub rootfs: PathBuf,
    /// `SKIFF_QEMU`: `qemu-system-x86_64`, the reference VMM.
    pub qemu: PathBuf,
    /// `SKIFF_QEMU_DATADIR`: QEMU's firmware directory (for `-L`).
    pub qemu_datadir: PathBuf,
    /// `SKIFF_MKE2FS`: `mke2fs` from e2fsprogs, to build ext4 disk images.
    pub mke2fs: PathBuf,
    /// `SKIFF_QEMU_IMG`: `qemu-img` from qemu-utils, to make and check qcow2 images.
    pub qemu_img: PathBuf,
    /// `SKIFF_E2E_TMP`: a scratch directory for disk images, sockets and the like.
    pub tmp: PathBuf,
    /// `SKIFF_E2E_SKIFF_ARGS` (optional): whitespace-separated arguments added to every
    /// `skiff run` of the tests, e.g. `--seccomp=log` to run a test under other settings.
    pub skiff_extra_args: Vec<String>,
    /// `SKIFF_E2E_JAIL=UID:GID` (optional): every `skiff run` of the tests is jailed
    /// (`--jail DIR --uid UID --gid GID`, a fresh DIR each), its disk images given to UID.
    pub jail: Option<(u32, u32)>,
    /// `SKIFF_TEST_IMAGE` (optional): the Debian test image (`cargo xtask test-image`, a
    /// compressed qcow2), set when the selected tests include `images::debian*`.
    pub test_image: Option<PathBuf>,
    /// `SKIFF_E2E_EMULATED=1`: the tests run inside the emulated AMD-V host (QEMU's TCG),
    /// whose nested virtualization now and then kills a guest with a triple fault.
    pub emulated: bool,
}

static ENV: OnceLock<Result<TestEnv, Error>> = OnceLock::new();

fn var(name: &'static str) -> Result<PathBuf, Error> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .ok_or(Error::Env { var: name })
}

fn jail_ids() -> Result<Option<(u32, u32)>, Error> {
    let Ok(value) = std::env::var("SKIFF_E2E_JAIL") else {
        return Ok(None);
    };
    value
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
        .map(Some)
        .ok_or(Error::Env {
            var: "SKIFF_E2E_JAIL (UID:GID)",
        })
}

impl TestEnv {
    /// Reads the environment (once per process).
    pub fn try_get() -> Result<&'static TestEnv, Error> {
        crate::retry::report_panics_at_once();
        ENV.get_or_init(|| {
            let env = TestEnv {
                skiff_bin: var("SKIFF_BIN")?,
                kernel: var("SKIFF_KERNEL")?,
                vmlinux: var("SKIFF_VMLINUX")?,
                initrd: var("SKIFF_INITRD")?,
                rootfs: var("SKIFF_ROOTFS")?,
                qemu: var("SKIFF_QEMU")?,
                qemu_datadir: var("SKIFF_QEMU_DATADIR")?,
                mke2fs: var("SKIFF_MKE2FS")?,
                qemu_img: var("SKIFF_QEMU_IMG")?,
                tmp: var("SKIFF_E2E_TMP")?,
                skiff_extra_args: std::env::var("SKIFF_E2E_SKIFF_ARGS")
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
                jail: jail_ids()?,
                test_image: var("SKIFF_TEST_IMAGE").ok(),
                emulated: std::env::var("SKIFF_E2E_EMULATED").is_ok_and(|v| v == "1"),
            };
            std::fs::create_dir_all(&env.tmp)
                .map_err(|e| Error::io(format!("cannot create {}", env.tmp.display()), e))?;
            Ok(env)
        })
        .as_ref()
        .map_err(Clone::clone)
    }

    /// Like [`TestEnv::try_get`], but panics with the reason: tests call this.
    pub fn get() -> &'static TestEnv {
        match Self::try_get() {
            Ok(env) => env,
            Err(err) => panic!("{err}"),
        }
    }

    /// The directories holding the guest files and scratch space: `skiff host --image-dir`
    /// for daemons under test, whose VMs' files must be in their image directories.
    pub fn image_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = [&self.kernel, &self.vmlinux, &self.initrd, &self.rootfs]
            .into_iter()
            .chain(&self.test_image)
            .filter_map(|f| f.parent().map(PathBuf::from))
            .chain(std::iter::once(self.tmp.clone()))
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// A private copy of the root file-system image under `SKIFF_E2E_TMP`, to boot with
    /// `--disk path=COPY` and `root=/dev/vda`.
    pub fn rootfs_copy(&self) -> Result<PathBuf, Error> {
        let copy = self.scratch("rootfs.ext4");
        std::fs::copy(&self.rootfs, &copy).map_err(|e| {
            Error::io(
                format!(
                    "cannot copy {} to {}",
                    self.rootfs.display(),
                    copy.display()
                ),
                e,
            )
        })?;
        Ok(copy)
    }

    /// A fresh scratch path under `SKIFF_E2E_TMP` (unique per call, not created).
    pub fn scratch(&self, name: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{}-{n}-{name}", std::process::id()))
    }
}
