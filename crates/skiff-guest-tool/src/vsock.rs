//! AF_VSOCK line echo server and client, on raw libc sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::error::{last_os_error, Context, Error, Result};
use crate::output::{event, kv};

/// Longest line the echo server accepts before giving up on a connection.
const MAX_LINE: usize = 1 << 20;

fn socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the returned descriptor is checked before use.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_os_error(
            "create AF_VSOCK socket (is the vsock driver loaded?)",
        ));
    }
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data for which all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

/// `SO_VM_SOCKETS_CONNECT_TIMEOUT` (linux/vm_sockets.h; the libc crate does not export it).
/// Set at socket level `AF_VSOCK` with a `struct timeval`; the kernel default is 2 seconds.
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;

/// Let `connect` on `fd` wait up to `timeout` (instead of the kernel's 2 s default).
fn set_connect_timeout(fd: &OwnedFd, timeout: Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    // SAFETY: `tv` is a valid timeval that outlives the call, and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::AF_VSOCK,
            SO_VM_SOCKETS_CONNECT_TIMEOUT,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(last_os_error("set vsock connect timeout"));
    }
    Ok(())
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

/// Serve one connection: echo each line (newline-terminated; a last unterminated line is echoed
/// with a newline added) until EOF.
fn echo_connection(stream: UnixStream) -> std::io::Result<u64> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let mut lines = 0u64;
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(lines);
        }
        if line.last() != Some(&b'\n') {
            if line.len() >= MAX_LINE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "line too long",
                ));
            }
            line.push(b'\n');
        }
        writer.write_all(&line)?;
        lines += 1;
    }
}

/// Listen on vsock `port` (any CID) and echo lines back; prints vsock_listening_port, then an
/// `accepted cid=.. port=..` line per connection (and `closed ...` when `once`).
pub fn echo(port: u32, once: bool) -> Result<()> {
    let fd = socket()?;
    let addr = sockaddr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `addr` is a valid sockaddr_vm of ADDR_LEN bytes that outlives the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            ADDR_LEN,
        )
    };
    if rc != 0 {
        return Err(last_os_error(&format!("bind vsock port {port}")));
    }
    // SAFETY: listen(2) on a socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
        return Err(last_os_error(&format!("listen on vsock port {port}")));
    }
    kv("vsock_listening_port", port)?;
    loop {
        let mut peer = sockaddr(0, 0);
        let mut len = ADDR_LEN;
        // SAFETY: `peer`/`len` are valid for writes of a sockaddr_vm and outlive the call.
        let cfd = unsafe {
            libc::accept4(
                fd.as_raw_fd(),
                (&mut peer as *mut libc::sockaddr_vm).cast(),
                &mut len,
                libc::SOCK_CLOEXEC,
            )
        };
        if cfd < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::runtime(format!(
                "accept on vsock port {port}: {err}"
            )));
        }
        // SAFETY: `cfd` is a fresh, valid descriptor that nothing else owns.
        let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(cfd) });
        let (pcid, pport) = (peer.svm_cid, peer.svm_port);
        event("accepted", &[("cid", &pcid), ("port", &pport)])?;
        if once {
            let lines =
                echo_connection(stream).context(|| format!("echo to cid {pcid} port {pport}"))?;
            return event("closed", &[("cid", &pcid), ("lines", &lines)]);
        }
        std::thread::spawn(move || {
            if let Err(e) = echo_connection(stream) {
                eprintln!("skiff-guest-tool: echo to cid {pcid} port {pport}: {e}");
            }
        });
    }
}

/// Connect to `cid:port`, send `message` plus a newline, print the reply line and round trip.
pub fn send(cid: u32, port: u32, message: &str, timeout: f64) -> Result<()> {
    let fd = socket()?;
    let timeout = Duration::from_secs_f64(timeout.max(0.001));
    set_connect_timeout(&fd, timeout)?;
    let addr = sockaddr(cid, port);
    let start = Instant::now();
    loop {
        // SAFETY: `addr` is a valid sockaddr_vm of ADDR_LEN bytes that outlives the call.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_vm).cast(),
                ADDR_LEN,
            )
        };
        if rc == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::runtime(format!("connect vsock {cid}:{port}: {err}")));
        }
    }
    let stream = UnixStream::from(fd);
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .context(|| "set vsock timeouts")?;
    let mut writer = &stream;
    writer
        .write_all(format!("{message}\n").as_bytes())
        .context(|| format!("send to vsock {cid}:{port}"))?;
    let mut reply = Vec::new();
    BufReader::new(&stream)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut reply)
        .context(|| format!("read reply from vsock {cid}:{port}"))?;
    let rtt = start.elapsed();
    if reply.is_empty() {
        return Err(Error::runtime(format!(
            "vsock {cid}:{port} closed the connection without replying"
        )));
    }
    if reply.last() == Some(&b'\n') {
        reply.pop();
    }
    kv("reply", String::from_utf8_lossy(&reply))?;
    kv("rtt_us", rtt.as_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_connection_echoes_lines() {
        let pair = UnixStream::pair();
        assert!(pair.is_ok());
        if let Ok((a, b)) = pair {
            let server = std::thread::spawn(move || echo_connection(b));
            let mut w = &a;
            assert!(w.write_all(b"hello\nworld").is_ok());
            assert!(a.shutdown(std::net::Shutdown::Write).is_ok());
            let mut out = String::new();
            assert!((&a).read_to_string(&mut out).is_ok());
            assert_eq!(out, "hello\nworld\n");
            assert!(matches!(server.join().ok(), Some(Ok(2))));
        }
    }

    #[test]
    fn sockaddr_fields() {
        let a = sockaddr(3, 1024);
        assert_eq!(a.svm_family, libc::AF_VSOCK as libc::sa_family_t);
        assert_eq!((a.svm_cid, a.svm_port), (3, 1024));
    }
}
