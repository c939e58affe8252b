//! A tap interface (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`), brought up and
//! optionally enslaved to a bridge. Needs CAP_NET_ADMIN.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::HDR_LEN;

/// `SIOCBRADDIF` (linux/sockios.h): enslave an interface (by index) to a bridge.
const SIOCBRADDIF: libc::c_ulong = 0x89a2;
/// Longest interface name (IFNAMSIZ less the NUL).
pub const MAX_IFNAME: usize = libc::IFNAMSIZ - 1;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("interface name `{0}` must be 1 to 15 bytes without `/`, whitespace or NUL")]
    Name(String),
    #[error("cannot open /dev/net/tun: {0}")]
    Open(io::Error),
    #[error("cannot create or attach to tap `{name}` (needs CAP_NET_ADMIN): {source}")]
    SetIff { name: String, source: io::Error },
    #[error("tap `{name}`: {what} failed: {source}")]
    Ioctl {
        name: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("cannot attach tap `{tap}` to bridge `{bridge}`: {source}")]
    Bridge {
        tap: String,
        bridge: String,
        source: io::Error,
    },
}

pub struct Tap {
    file: File,
    name: String,
}

/// An `ifreq` naming `name`, which [`check_name`] accepted.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(MAX_IFNAME)) {
        *dst = src as libc::c_char;
    }
    req
}

pub fn check_name(name: &str) -> Result<(), TapError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(TapError::Name(name.to_string()))
    }
}

/// An AF_INET datagram socket for interface ioctls.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Tap {
    /// Creates tap `name` (or attaches to an existing persistent one), non-blocking, with a
    /// 12-byte `virtio_net_hdr_v1` before each frame and no offloads (yet), and brings it up.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        check_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes an `ifreq`, which `req` is.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if ret < 0 {
            return Err(TapError::SetIff {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        let hdr_len = HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int, which `hdr_len` is.
        let ret = unsafe { libc::ioctl(tap.raw(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        tap.check(ret, "TUNSETVNETHDRSZ")?;
        // No offloads until the driver accepts them: complete, checksummed frames.
        tap.set_offload(0)?;
        tap.set_up()?;
        Ok(tap)
    }

    /// Which partial-checksum and GSO frames the tap may hand us (`TUN_F_*`), matching
    /// what the driver accepted (GUEST_CSUM, GUEST_TSO4/6).
    pub fn set_offload(&self, flags: libc::c_uint) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let ret =
            unsafe { libc::ioctl(self.raw(), libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
        self.check(ret, "TUNSETOFFLOAD")
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn raw(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn check(&self, ret: libc::c_int, what: &'static str) -> Result<(), TapError> {
        if ret < 0 {
            return Err(TapError::Ioctl {
                name: self.name.clone(),
                what,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn set_up(&self) -> Result<(), TapError> {
        let sock = control_socket().map_err(|source| TapError::Ioctl {
            name: self.name.clone(),
            what: "socket",
            source,
        })?;
        let mut req = ifreq(&self.name);
        // SAFETY: SIOCGIFFLAGS fills the flags of the `ifreq` we pass.
        let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
        self.check(ret, "SIOCGIFFLAGS")?;
        // SAFETY: SIOCGIFFLAGS set the `ifru_flags` member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as i16;
        // SAFETY: SIOCSIFFLAGS reads an `ifreq`, which `req` is.
        let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
        self.check(ret, "SIOCSIFFLAGS")
    }

    /// Enslaves the tap to the existing bridge `bridge`.
    pub fn attach_to_bridge(&self, bridge: &str) -> Result<(), TapError> {
        check_name(bridge)?;
        let err = |source| TapError::Bridge {
            tap: self.name.clone(),
            bridge: bridge.to_string(),
            source,
        };
        let sock = control_socket().map_err(err)?;
        let cname = std::ffi::CString::new(self.name.as_str())
            .map_err(|_| TapError::Name(self.name.clone()))?;
        // SAFETY: `cname` is a NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(err(io::Error::last_os_error()));
        }
        let mut req = ifreq(bridge);
        req.ifr_ifru.ifru_ifindex = index as libc::c_int;
        // SAFETY: SIOCBRADDIF reads an `ifreq` with the bridge name and the port's index.
        let ret = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDIF, &req) };
        if ret < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// One frame (with its virtio-net header) into `buf`; `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: read(2) writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(self.raw(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// One frame (with its virtio-net header) from `frame`.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: write(2) reads at most `frame.len()` bytes from `frame`.
        let n = unsafe { libc::write(self.raw(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert!(check_name("tap0").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a-very-long-name-0").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("a b").is_err());
    }
}
