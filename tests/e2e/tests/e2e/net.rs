//! virtio-net (issue 4): 32 MiB each way between a guest and the host over tap + bridge,
//! with matching SHA-256. The test builds the bridge in the host it runs on (in emulated
//! mode that is the emulated AMD-V host, so the 10.0.2.0/24 addresses never leave the
//! sandbox); `skiff run --nic` creates the tap and enslaves it to the bridge.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use skiff_e2e::{GuestSpec, Vmm, INIT_READY};

const BRIDGE: &str = "skbr0";
const TAP: &str = "sktap0";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
const GUEST_IP: &str = "10.0.2.15";
const MAC: &str = "52:54:00:12:34:56";
const MIB: usize = 32;
const TO_HOST_PORT: u16 = 5201;
/// `SIOCBRADDBR` (linux/sockios.h): create a bridge.
const SIOCBRADDBR: libc::c_ulong = 0x89a0;
/// `SIOCBRADDIF`: enslave an interface (by index) to a bridge.
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    req
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sockaddr_in` and `sockaddr` have the same size; any bytes are a valid
    // `sockaddr`.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn check(ret: libc::c_int, what: &str) -> io::Result<()> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// Creates bridge `bridge` (if missing) with `ip`/24 and brings it up (images.rs too).
pub(crate) fn set_up_bridge(bridge: &str, ip: Ipv4Addr) -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd, "socket")?;
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = CString::new(bridge).map_err(io::Error::other)?;
    // SAFETY: SIOCBRADDBR reads a NUL-terminated name, which `name` is.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDBR, name.as_ptr()) };
    if ret < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
        check(ret, "SIOCBRADDBR")?;
    }
    let mut req = ifreq(bridge);
    req.ifr_ifru.ifru_addr = sockaddr(ip);
    // SAFETY: SIOCSIFADDR reads an `ifreq` holding an AF_INET address.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR, &req) };
    check(ret, "SIOCSIFADDR")?;
    req.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::new(255, 255, 255, 0));
    // SAFETY: SIOCSIFNETMASK reads an `ifreq` holding an AF_INET mask.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFNETMASK, &req) };
    check(ret, "SIOCSIFNETMASK")?;
    set_link_up(&sock, bridge)
}

/// Deterministic, incompressible test data (xorshift64*).
fn fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of the `n`-th `key=` line of the guest's output.
fn value<'a>(output: &'a str, key: &str, n: usize) -> Option<&'a str> {
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .nth(n)
}

/// One guest's network setup and the measured crossing.
struct Crossing {
    to_host: Duration,
    to_guest: Duration,
    /// The virtio feature bits the guest's driver negotiated ("0101...", bit 0 first).
    features: String,
    guest_send_mib_s: String,
    guest_recv_mib_s: String,
}

/// Boots `spec` (whose NIC is on the bridge with `mac`), gives the guest `guest_ip`, and
/// moves MIB MiB guest -> host, then host -> guest, checking byte counts and SHA-256.
fn cross(spec: GuestSpec, guest_ip: &str, mac: &str, port: u16) -> Crossing {
    set_up_bridge(BRIDGE, HOST_IP).expect("bridge in the host (needs CAP_NET_ADMIN)");
    let listener = TcpListener::bind((HOST_IP, port)).expect("host listener");
    let (got_tx, got_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = listener.accept().and_then(|(mut stream, _)| {
            let start = Instant::now();
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0usize;
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                total += n;
            }
            Ok((hex(&hasher.finalize()), total, start.elapsed()))
        });
        let _ = got_tx.send(result);
    });

    let to_guest_port = port + 1;
    let cmd = format!(
        "ip link set eth0 up && ip addr add {guest_ip}/24 dev eth0 && \
         cat /sys/class/net/eth0/address && echo features=$(cat /sys/class/net/eth0/device/features) && \
         skiff-guest-tool net-send {HOST_IP} {port} {MIB} && \
         skiff-guest-tool net-recv {to_guest_port}"
    );
    let mut vm = spec
        .cmd(cmd)
        .timeout(Duration::from_secs(300))
        .spawn()
        .expect("spawn");
    vm.wait_for(INIT_READY, Duration::from_secs(120))
        .expect("guest boots");
    vm.wait_for(
        &format!("listening_port={to_guest_port}"),
        Duration::from_secs(240),
    )
    .expect("guest sent its data and listens");
    let (host_sha, host_bytes, to_host) = got_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("host receiver finished")
        .expect("host receiver");

    // Host -> guest.
    let mut stream = TcpStream::connect((guest_ip, to_guest_port)).expect("connect to guest");
    let start = Instant::now();
    let mut hasher = Sha256::new();
    let mut state = 0x5eed_u64;
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..(MIB << 20) / buf.len() {
        fill(&mut buf, &mut state);
        hasher.update(&buf);
        stream.write_all(&buf).expect("send to guest");
    }
    drop(stream);
    let sent_sha = hex(&hasher.finalize());
    let to_guest = start.elapsed();

    let out = vm.wait(Duration::from_secs(120)).expect("guest ends");
    let output = out.command_output();
    assert_eq!(out.guest_status, Some(0), "{out}");
    assert!(output.contains(mac), "guest MAC\n{out}");
    assert_eq!(host_bytes, MIB << 20, "{out}");
    assert_eq!(
        value(&output, "sha256", 0),
        Some(host_sha.as_str()),
        "guest -> host\n{out}"
    );
    assert_eq!(
        value(&output, "sha256", 1),
        Some(sent_sha.as_str()),
        "host -> guest\n{out}"
    );
    let field = |key, n| value(&output, key, n).unwrap_or("?").to_string();
    Crossing {
        to_host,
        to_guest,
        features: field("features", 0),
        guest_send_mib_s: field("throughput_mib_s", 0),
        guest_recv_mib_s: field("throughput_mib_s", 1),
    }
}

#[test]
fn tcp_32_mib_each_way_over_tap_and_bridge() {
    let spec = GuestSpec::new(Vmm::Skiff)
        .vmm_arg("--nic")
        .vmm_arg(format!("tap={TAP},bridge={BRIDGE},mac={MAC}"));
    let c = cross(spec, GUEST_IP, MAC, TO_HOST_PORT);
    // CSUM, GUEST_CSUM, GUEST_TSO4, HOST_TSO4 were offered and Linux takes them.
    for bit in [0, 1, 7, 11] {
        assert_eq!(
            c.features.as_bytes().get(bit),
            Some(&b'1'),
            "feature bit {bit}: {}",
            c.features
        );
    }
    eprintln!(
        "virtio-net: guest->host {MIB} MiB in {:.2} s (guest: {} MiB/s), host->guest in {:.2} s (guest: {} MiB/s)",
        c.to_host.as_secs_f64(),
        c.guest_send_mib_s,
        c.to_guest.as_secs_f64(),
        c.guest_recv_mib_s,
    );
}

/// A persistent tap `name` (as QEMU opens it with `script=no`), on the bridge and up.
fn persistent_tap_on_bridge(name: &str) -> io::Result<()> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads and writes an `ifreq`, which `req` is.
    let ret = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    check(ret, "TUNSETIFF")?;
    // SAFETY: TUNSETPERSIST takes its argument by value.
    let ret = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
    check(ret, "TUNSETPERSIST")?;
    drop(tun);
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd, "socket")?;
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let cname = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: `cname` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    let mut req = ifreq(BRIDGE);
    req.ifr_ifru.ifru_ifindex = index as libc::c_int;
    // SAFETY: SIOCBRADDIF reads an `ifreq` with the bridge name and the port's index.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDIF, &req) };
    if ret < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EBUSY) {
        check(ret, "SIOCBRADDIF")?;
    }
    set_link_up(&sock, name)
}

/// Sets IFF_UP on interface `name` through the control socket `sock`.
fn set_link_up(sock: &impl AsRawFd, name: &str) -> io::Result<()> {
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFFLAGS fills the flags of the `ifreq` we pass.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    check(ret, "SIOCGIFFLAGS")?;
    // SAFETY: SIOCGIFFLAGS set the `ifru_flags` member.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads an `ifreq`.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    check(ret, "SIOCSIFFLAGS")
}

fn qemu_nic(tap: &str, mac: &str, vhost: bool) -> GuestSpec {
    persistent_tap_on_bridge(tap).expect("QEMU's tap");
    let vhost = if vhost { "on" } else { "off" };
    GuestSpec::new(Vmm::Qemu).vmm_args([
        "-M".to_string(),
        "microvm,pcie=on".into(),
        "-netdev".into(),
        format!("tap,id=n0,ifname={tap},script=no,downscript=no,vhost={vhost}"),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={mac}"),
    ])
}

/// Skiff against QEMU (user-space virtio-net and vhost-net), interleaved, same guest and
/// transfer. Not part of the suite (about 30 s per guest in the emulated host):
/// `cargo xtask e2e net::bench -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn bench_throughput_against_qemu() {
    const ROUNDS: usize = 2;
    let configs: [(&str, &str, &str, u16); 3] = [
        ("skiff", "10.0.2.16", "52:54:00:12:34:60", 5211),
        ("qemu", "10.0.2.17", "52:54:00:12:34:61", 5213),
        ("qemu+vhost", "10.0.2.18", "52:54:00:12:34:62", 5215),
    ];
    let mut results: Vec<Vec<Crossing>> = configs.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (i, (name, ip, mac, port)) in configs.iter().enumerate() {
            let spec = match *name {
                "skiff" => GuestSpec::new(Vmm::Skiff)
                    .vmm_arg("--nic")
                    .vmm_arg(format!("tap=sktap1,bridge={BRIDGE},mac={mac}")),
                "qemu" => qemu_nic("qtap0", mac, false),
                _ => qemu_nic("qtap1", mac, true),
            };
            results[i].push(cross(spec, ip, mac, *port));
        }
    }
    for ((name, ..), runs) in configs.iter().zip(&results) {
        for c in runs {
            eprintln!(
                "bench net {name}: guest->host {MIB} MiB {:.2} s (guest {} MiB/s), host->guest {:.2} s (guest {} MiB/s)",
                c.to_host.as_secs_f64(),
                c.guest_send_mib_s,
                c.to_guest.as_secs_f64(),
                c.guest_recv_mib_s
            );
        }
    }
}
