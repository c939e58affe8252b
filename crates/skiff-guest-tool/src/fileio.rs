//! `write-file` and `verify-file`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::datagen::{fill_stream, SplitMix64, MIB};
use crate::error::{Context, Result};
use crate::output::hex;

/// Buffer size for file and network I/O.
pub const CHUNK: usize = 1 << 20;

/// SHA-256 and length of some data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digested {
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Number of bytes hashed.
    pub bytes: u64,
}

/// SHA-256 of a byte string, hex encoded.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Produce `bytes` bytes of the deterministic stream with `seed`, in chunks of at most `CHUNK`
/// bytes (all multiples of 8 except possibly the last), handing each to `sink`. Returns the
/// SHA-256 of everything produced.
pub fn generate(
    seed: u64,
    bytes: u64,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<Digested> {
    let mut rng = SplitMix64::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        let chunk = &mut buf[..n];
        fill_stream(&mut rng, chunk);
        hasher.update(&*chunk);
        sink(chunk)?;
        left -= n as u64;
    }
    Ok(Digested {
        sha256: hex(&hasher.finalize()),
        bytes,
    })
}

/// Hash everything `reader` yields until EOF.
pub fn digest_reader(mut reader: impl Read, what: &str) -> Result<Digested> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context(|| format!("read {what}")),
        };
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(Digested {
        sha256: hex(&hasher.finalize()),
        bytes,
    })
}

/// The directory holding `path` (for fsync after creating a file in it).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Write `mib` MiB of the deterministic stream to `path`, fsync the file and its directory.
pub fn write_file(path: &Path, mib: u64, seed: u64) -> Result<Digested> {
    let shown = path.display();
    let bytes = mib
        .checked_mul(MIB)
        .ok_or_else(|| crate::error::Error::usage(format!("size {mib} MiB is too large")))?;
    let mut file = File::create(path).context(|| format!("create {shown}"))?;
    let digest = generate(seed, bytes, |chunk| {
        file.write_all(chunk).context(|| format!("write {shown}"))
    })?;
    file.sync_all().context(|| format!("fsync {shown}"))?;
    drop(file);
    let dir = parent_dir(path);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .context(|| format!("fsync directory {}", dir.display()))?;
    Ok(digest)
}

/// SHA-256 and size of the file at `path`.
pub fn verify_file(path: &Path) -> Result<Digested> {
    let shown = path.display().to_string();
    let file = File::open(path).context(|| format!("open {shown}"))?;
    digest_reader(file, &shown)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_vectors() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn generate_matches_reader_and_is_deterministic() {
        let mut all = Vec::new();
        let d = generate(7, 3 * CHUNK as u64 + 13, |c| {
            all.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        assert_eq!(d.bytes, all.len() as u64);
        assert_eq!(d.sha256, sha256_hex(&all));
        assert_eq!(digest_reader(&all[..], "mem").unwrap(), d);
        let again = generate(7, 3 * CHUNK as u64 + 13, |_| Ok(())).unwrap();
        assert_eq!(again, d);
        let other = generate(8, 3 * CHUNK as u64 + 13, |_| Ok(())).unwrap();
        assert_ne!(other.sha256, d.sha256);
        // First bytes are the first SplitMix64 output, little-endian.
        let mut r = SplitMix64::new(7);
        assert_eq!(&all[..8], &r.next_u64().to_le_bytes());
    }

    #[test]
    fn write_then_verify() {
        let dir =
            std::env::temp_dir().join(format!("skiff-guest-tool-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data");
        let w = write_file(&path, 2, 11).unwrap();
        assert_eq!(w.bytes, 2 << 20);
        let v = verify_file(&path).unwrap();
        assert_eq!(v, w);
        let e = verify_file(&dir.join("missing")).unwrap_err();
        assert!(e.to_string().starts_with("open "));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parent_of_bare_name_is_cwd() {
        assert_eq!(parent_dir(Path::new("x")), PathBuf::from("."));
        assert_eq!(parent_dir(Path::new("/a/x")), PathBuf::from("/a"));
    }
}
