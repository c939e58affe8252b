//! vsock (issue 4): host and guest talk over AF_VSOCK through vhost-vsock, both ways: the
//! guest connects to a host echo server (CID 2), reloads its vsock driver (device reset and
//! re-activation of vhost) and connects again, then the host connects to the guest's echo
//! server at the guest's CID.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use skiff_e2e::{GuestSpec, Vmm, INIT_READY};

const GUEST_CID: u32 = 42;
const HOST_PORT: u32 = 5000;
const GUEST_PORT: u32 = 1234;

fn vsock_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: `sockaddr_vm` is plain old data; all-zero is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

fn listen(port: u32) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let fd = vsock_socket()?;
    let a = addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `a` is a valid sockaddr_vm of ADDR_LEN bytes.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&a as *const libc::sockaddr_vm).cast(),
            ADDR_LEN,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on a bound socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 1) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn accept(listener: &OwnedFd) -> io::Result<UnixStream> {
    use std::os::fd::AsRawFd;
    // SAFETY: accept(2) without a peer address; the result is checked.
    let fd = unsafe {
        libc::accept(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns. A connected stream socket
    // works with UnixStream's read/write (plain read(2)/write(2)).
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn connect(cid: u32, port: u32) -> io::Result<UnixStream> {
    use std::os::fd::AsRawFd;
    let fd = vsock_socket()?;
    let a = addr(cid, port);
    // SAFETY: `a` is a valid sockaddr_vm of ADDR_LEN bytes.
    if unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&a as *const libc::sockaddr_vm).cast(),
            ADDR_LEN,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

fn echo_one_line(stream: UnixStream) -> io::Result<String> {
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    (&stream).write_all(line.as_bytes())?;
    Ok(line.trim_end().to_string())
}

#[test]
fn echo_both_ways_between_host_and_guest() {
    let listener = listen(HOST_PORT).expect("host vsock listener (vsock module loaded?)");
    let (got_tx, got_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..2 {
            if got_tx
                .send(accept(&listener).and_then(echo_one_line))
                .is_err()
            {
                return;
            }
        }
    });
    // Between the two sends the guest unloads and reloads its vsock driver: the device is
    // reset (vhost stopped) and activated again (vhost set up again).
    let cmd = format!(
        "skiff-guest-tool vsock-send 2 {HOST_PORT} hello-from-guest && \
         m=$(grep '/vmw_vsock_virtio_transport\\.ko' /etc/skiff/modules) && \
         rmmod vmw_vsock_virtio_transport && insmod /lib/modules/$m && \
         skiff-guest-tool vsock-send 2 {HOST_PORT} again-after-reset && \
         skiff-guest-tool vsock-echo {GUEST_PORT} --once"
    );
    let mut vm = GuestSpec::new(Vmm::Skiff)
        .vmm_arg("--vsock")
        .vmm_arg(format!("cid={GUEST_CID}"))
        .cmd(cmd)
        .timeout(Duration::from_secs(180))
        .spawn()
        .expect("spawn");
    vm.wait_for(INIT_READY, Duration::from_secs(120))
        .expect("guest boots");
    vm.wait_for(
        &format!("vsock_listening_port={GUEST_PORT}"),
        Duration::from_secs(60),
    )
    .expect("guest echo server listens");
    let from_guest = got_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("host echo server finished")
        .expect("host echo server");
    assert_eq!(from_guest, "hello-from-guest");
    let again = got_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("host echo server finished")
        .expect("host echo server");
    assert_eq!(again, "again-after-reset");

    let start = Instant::now();
    let stream = connect(GUEST_CID, GUEST_PORT).expect("connect to the guest");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    (&stream).write_all(b"hello-from-host\n").expect("send");
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .expect("echo from the guest");
    let rtt = start.elapsed();
    drop(stream);
    assert_eq!(reply.trim_end(), "hello-from-host");

    let out = vm.wait(Duration::from_secs(60)).expect("guest ends");
    assert_eq!(out.guest_status, Some(0), "{out}");
    let output = out.command_output();
    assert!(output.contains("reply=hello-from-guest"), "{out}");
    assert!(output.contains("reply=again-after-reset"), "{out}");
    eprintln!(
        "vsock: host->guest connect + echo {:.1} ms",
        rtt.as_secs_f64() * 1e3
    );
}
