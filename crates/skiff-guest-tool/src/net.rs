//! `net-send` and `net-recv`: TCP transfer of the deterministic stream.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::datagen::MIB;
use crate::error::{Context, Error, Result};
use crate::fileio::{digest_reader, generate};
use crate::output::{f2, kv};

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s <= 0.0 {
        0.0
    } else {
        bytes as f64 / MIB as f64 / s
    }
}

/// Connect to `host:port` (IP literal or name), trying each address with `timeout`.
fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .context(|| format!("resolve {host}"))?
        .collect();
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => Error::runtime(format!("connect {host}:{port}: {e}")),
        None => Error::runtime(format!("resolve {host}: no addresses")),
    })
}

/// Send `mib` MiB of the stream with `seed` to `host:port`; prints sha256, bytes,
/// throughput_mib_s.
pub fn send(host: &str, port: u16, mib: u64, seed: u64, timeout: f64) -> Result<()> {
    let bytes = mib
        .checked_mul(MIB)
        .ok_or_else(|| Error::usage(format!("size {mib} MiB is too large")))?;
    let timeout = Duration::from_secs_f64(timeout.max(0.001));
    let mut stream = connect(host, port, timeout)?;
    stream
        .set_write_timeout(Some(timeout))
        .context(|| "set socket write timeout")?;
    let start = Instant::now();
    let digest = generate(seed, bytes, |chunk| {
        stream
            .write_all(chunk)
            .context(|| format!("send to {host}:{port}"))
    })?;
    stream
        .shutdown(Shutdown::Write)
        .context(|| format!("shutdown connection to {host}:{port}"))?;
    let elapsed = start.elapsed();
    kv("sha256", &digest.sha256)?;
    kv("bytes", digest.bytes)?;
    kv("throughput_mib_s", f2(mib_per_s(digest.bytes, elapsed)))
}

/// Accept one connection on `bind:port`, hash it to EOF; prints listening_port first, then
/// peer, sha256, bytes, throughput_mib_s.
pub fn recv(bind: &str, port: u16) -> Result<()> {
    let listener =
        TcpListener::bind((bind, port)).context(|| format!("listen on {bind}:{port}"))?;
    let local = listener
        .local_addr()
        .context(|| "query listening address")?;
    kv("listening_port", local.port())?;
    let (stream, peer) = listener.accept().context(|| "accept")?;
    drop(listener);
    let start = Instant::now();
    let digest = digest_reader(&stream, &format!("from {peer}"))?;
    let elapsed = start.elapsed();
    kv("peer", peer)?;
    kv("sha256", &digest.sha256)?;
    kv("bytes", digest.bytes)?;
    kv("throughput_mib_s", f2(mib_per_s(digest.bytes, elapsed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate() {
        assert_eq!(mib_per_s(2 * MIB, Duration::from_secs(2)), 1.0);
        assert_eq!(mib_per_s(1, Duration::ZERO), 0.0);
    }

    #[test]
    fn connect_refused_is_one_line() {
        // Bind then drop to find a port that is (almost certainly) closed.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port());
        if let Ok(port) = port {
            let e = connect("127.0.0.1", port, Duration::from_secs(1)).err();
            assert!(e.is_some_and(|e| e.to_string().starts_with("connect 127.0.0.1:")));
        }
    }
}
