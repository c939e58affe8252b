//! `skiff run --jail DIR --uid U --gid G`: the VMM runs jailed (crates/skiff-jail), and this
//! process stays outside as its supervisor. Here: what goes into the jail and where the
//! VM finds it there, and the supervisor's side.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use skiff_api::VmSpec;
use skiff_jail::{Device, JailFile, JailSpec, Limits, JAIL_RUN_DIR};
use skiff_vmm::pci::IO_DEPTH;

#[derive(Args, Clone, Debug, Default)]
pub struct JailArgs {
    /// Run the VMM jailed: its own namespaces, DIR as its root (holding only its kernel,
    /// initrd, disks, device nodes and sockets), uid/gid from --uid/--gid, no capabilities.
    #[arg(long, value_name = "DIR", requires_all = ["uid", "gid"])]
    pub jail: Option<PathBuf>,
    /// The jailed VMM's uid (not 0; a dedicated one per VM is best).
    #[arg(long, value_name = "UID", requires = "jail")]
    pub uid: Option<u32>,
    /// The jailed VMM's gid (not 0).
    #[arg(long, value_name = "GID", requires = "jail")]
    pub gid: Option<u32>,
}

/// Open descriptors: vCPUs, eventfds (an irqfd per MSI-X vector, an ioeventfd per queue),
/// disks, taps, sockets: a few hundred at most.
const NOFILE: u64 = 1024;
/// Threads beyond the vCPUs: device workers and service threads, with room to spare.
const SERVICE_THREADS: u64 = 32;
/// Files the VMM writes besides its disks (a console log): up to this size.
pub const MIN_FSIZE: u64 = 1 << 30;

/// A jailed VM: the jail, the spec as the VMM sees it inside, and its control socket.
#[derive(Debug)]
pub struct Plan {
    pub jail: JailSpec,
    /// The spec with the jail's paths (`/kernel`, `/initrd`); disks keep their host paths
    /// (opened before the jail).
    pub spec: VmSpec,
    pub control_socket: Option<ControlSocket>,
}

/// The control socket lives in the jail's `run/`; the path asked for becomes a symlink to it
/// (unless it is that very path), so clients use the path they asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct ControlSocket {
    pub requested: PathBuf,
    pub on_host: PathBuf,
    pub in_jail: PathBuf,
}

pub fn plan(
    spec: &VmSpec,
    dir: &Path,
    uid: u32,
    gid: u32,
    control_socket: Option<&Path>,
) -> Result<Plan> {
    if !dir.is_absolute() {
        bail!("--jail {}: give an absolute path", dir.display());
    }
    let mut jailed = spec.clone();
    let mut files = Vec::new();
    let mut add = |source: &Path, name: String, writable: bool| -> Result<PathBuf> {
        let source = std::fs::canonicalize(source)
            .with_context(|| format!("cannot find {}", source.display()))?;
        files.push(JailFile {
            source,
            name: name.clone(),
            writable,
        });
        Ok(Path::new("/").join(name))
    };
    jailed.kernel = add(&spec.kernel, "kernel".into(), false)?;
    if let Some(initrd) = &spec.initrd {
        jailed.initrd = Some(add(initrd, "initrd".into(), false)?);
    }
    // Disks are not put in the jail: the jailer opens them before entering it
    // (run.rs), and a block device's node would not open on the jail's nodev mounts.
    let mut devices = vec![Device::Kvm, Device::Urandom];
    if spec.vsock.is_some() {
        devices.push(Device::VhostVsock);
    }
    let control_socket = control_socket
        .map(|requested| {
            let name = requested
                .file_name()
                .with_context(|| format!("control socket {}", requested.display()))?;
            Ok::<_, anyhow::Error>(ControlSocket {
                requested: requested.to_path_buf(),
                on_host: dir.join(JAIL_RUN_DIR).join(name),
                in_jail: Path::new("/").join(JAIL_RUN_DIR).join(name),
            })
        })
        .transpose()?;
    Ok(Plan {
        jail: JailSpec {
            dir: dir.to_path_buf(),
            uid,
            gid,
            files,
            devices,
            limits: Limits {
                nofile: NOFILE,
                nproc: u64::from(spec.vcpus)
                    + SERVICE_THREADS
                    + (spec.disks.len() * IO_DEPTH) as u64,
                // Raised to the largest disk once they are open (run.rs).
                fsize: MIN_FSIZE,
            },
        },
        spec: jailed,
        control_socket,
    })
}

/// The supervisor: links the control socket, waits for the jailed VMM (forwarding
/// termination signals), cleans the jail directory, and returns the VMM's exit status.
pub fn supervise(child: libc::pid_t, plan: &Plan) -> u8 {
    let link = plan
        .control_socket
        .as_ref()
        .filter(|s| s.requested != s.on_host);
    if let Some(socket) = link {
        let _ = std::fs::remove_file(&socket.requested);
        if let Err(e) = std::os::unix::fs::symlink(&socket.on_host, &socket.requested) {
            log::warn!(
                "cannot link {} to the jail's control socket {}: {e}",
                socket.requested.display(),
                socket.on_host.display()
            );
        }
    }
    let status = skiff_jail::supervise(child);
    if let Some(socket) = link {
        let _ = std::fs::remove_file(&socket.requested);
    }
    if let Err(e) = skiff_jail::clean(&plan.jail) {
        log::warn!("cannot clean the jail {}: {e}", plan.jail.dir.display());
    }
    u8::try_from(status).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_go_to_the_jail_root_and_the_socket_to_run() {
        let dir = std::env::temp_dir().join(format!("skiff-jail-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let kernel = dir.join("vmlinuz");
        let disk = dir.join("root.img");
        std::fs::write(&kernel, b"k").expect("kernel");
        std::fs::write(&disk, vec![0u8; 4096]).expect("disk");
        let toml = format!(
            "kernel = \"{}\"\nmemory = \"64M\"\nvcpus = 2\ndisks = [{{ path = \"{}\" }}, {{ path = \"{}\", read_only = true }}]\nvsock = {{ cid = 9 }}\n",
            kernel.display(),
            disk.display(),
            kernel.display()
        );
        let spec = VmSpec::from_toml(&toml).expect("spec");
        let jail_dir = Path::new("/srv/jail/vm1");
        let plan = plan(
            &spec,
            jail_dir,
            1000,
            1000,
            Some(Path::new("/tmp/vm1.sock")),
        )
        .expect("plan");
        assert_eq!(plan.spec.kernel, Path::new("/kernel"));
        assert_eq!(plan.spec.disks[0].path, disk, "opened before the jail");
        let names: Vec<_> = plan
            .jail
            .files
            .iter()
            .map(|f| (f.name.as_str(), f.writable))
            .collect();
        assert_eq!(names, [("kernel", false)]);
        assert!(plan.jail.devices.contains(&Device::VhostVsock));
        assert_eq!(
            plan.jail.limits.nproc,
            2 + SERVICE_THREADS + 2 * IO_DEPTH as u64
        );
        assert_eq!(plan.jail.limits.fsize, MIN_FSIZE);
        assert_eq!(
            plan.control_socket,
            Some(ControlSocket {
                requested: "/tmp/vm1.sock".into(),
                on_host: "/srv/jail/vm1/run/vm1.sock".into(),
                in_jail: "/run/vm1.sock".into(),
            })
        );
        assert!(super::plan(&spec, Path::new("relative"), 1, 1, None).is_err());
        std::fs::remove_dir_all(&dir).expect("clean");
    }
}
