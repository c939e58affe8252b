//! Who the jailed process is and what it may use: rlimits, a fixed host name, and then
//! no capabilities at all under a dedicated uid and gid.

use crate::{check, JailError, Limits};

/// `_LINUX_CAPABILITY_VERSION_3` (linux/capability.h): two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

pub(crate) fn set_hostname() -> Result<(), JailError> {
    let name = b"skiff-vmm";
    // SAFETY: the buffer and its length describe the name; the UTS namespace is our own.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
        .map_err(JailError::step("set the host name"))
}

pub(crate) fn set_limits(limits: &Limits) -> Result<(), JailError> {
    for (resource, value, what) in [
        (libc::RLIMIT_NOFILE, limits.nofile, "RLIMIT_NOFILE"),
        (libc::RLIMIT_NPROC, limits.nproc, "RLIMIT_NPROC"),
        (libc::RLIMIT_FSIZE, limits.fsize, "RLIMIT_FSIZE"),
    ] {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: a valid resource and a fully initialised limit.
        check(unsafe { libc::setrlimit(resource, &limit) }).map_err(JailError::step(what))?;
    }
    Ok(())
}

/// Empties the bounding set (while CAP_SETPCAP is still held), takes the uid and gid, then
/// clears the ambient and inheritable sets (the switch away from uid 0 already cleared the
/// permitted and effective ones) and sets no_new_privs, so no exec can give any back.
pub(crate) fn drop_to(uid: u32, gid: u32) -> Result<(), JailError> {
    for cap in 0.. {
        // SAFETY: PR_CAPBSET_DROP takes a capability number; EINVAL past the last one.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if ret < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) && cap > 0 {
                break;
            }
            return Err(JailError::step("empty the capability bounding set")(e));
        }
    }
    // SAFETY: an empty group list.
    check(unsafe { libc::setgroups(0, std::ptr::null()) })
        .map_err(JailError::step("drop supplementary groups"))?;
    // SAFETY: plain id-setting calls; the process is single-threaded here.
    check(unsafe { libc::setresgid(gid, gid, gid) }).map_err(JailError::step("setresgid"))?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(uid, uid, uid) }).map_err(JailError::step("setresuid"))?;
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointer.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })
    .map_err(JailError::step("clear the ambient capabilities"))?;
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a version-3 header and two data words, which these are.
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int })
        .map_err(JailError::step("clear the capability sets"))?;
    // SAFETY: PR_SET_NO_NEW_PRIVS takes no pointer.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .map_err(JailError::step("set no_new_privs"))?;
    Ok(())
}
