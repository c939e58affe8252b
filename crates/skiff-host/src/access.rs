//! Who may reach the API over TCP: the bearer token's file (the daemon's and the CLI's), which
//! must be readable by its owner alone, and the address `skiff host --listen` may use in
//! clear text: loopback only (docs/security.md, "A malicious API client").

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cannot read the token file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "the token file {path} is readable by group or others (mode {mode:03o}): \
         `chmod 600 {path}` and choose a new token"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("the token in {0} is shorter than {MIN_TOKEN_LEN} characters")]
    Short(PathBuf),
    #[error(
        "--listen {0}: the API would travel in clear text beyond this host (the bearer token \
         included); listen on a loopback address (127.0.0.1, ::1) and reach it through an SSH \
         tunnel or a TLS proxy"
    )]
    NotLoopback(SocketAddr),
}

/// The token in `path` (its first line, trimmed). Refused if the file's mode lets group or
/// others read or write it, or if the token is shorter than [`MIN_TOKEN_LEN`].
pub fn read_token_file(path: &Path) -> Result<String, AccessError> {
    let read = |source| AccessError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mode = file.metadata().map_err(read)?.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(AccessError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = io::read_to_string(file).map_err(read)?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.len() < MIN_TOKEN_LEN {
        return Err(AccessError::Short(path.to_path_buf()));
    }
    Ok(token.to_string())
}

/// Whether the API may listen on `addr` in clear text: loopback addresses only.
pub fn check_listen(addr: SocketAddr) -> Result<(), AccessError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(AccessError::NotLoopback(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef-token\nignored\n").expect("write");
        for mode in [0o644, 0o640, 0o604, 0o620, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = read_token_file(&path).expect_err("exposed");
            assert!(
                matches!(err, AccessError::Exposed { .. }),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(
                read_token_file(&path).expect("private"),
                "0123456789abcdef-token"
            );
        }
        std::fs::write(&path, "short\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(read_token_file(&path), Err(AccessError::Short(_))));
        assert!(matches!(
            read_token_file(&dir.path().join("none")),
            Err(AccessError::Read { .. })
        ));
    }

    #[test]
    fn only_loopback_listens_in_clear_text() {
        for ok in ["127.0.0.1:7000", "[::1]:7000", "127.0.0.2:1"] {
            assert!(check_listen(ok.parse().expect("addr")).is_ok(), "{ok}");
        }
        for refused in ["0.0.0.0:7000", "10.0.0.5:7000", "[::]:7000"] {
            let err = check_listen(refused.parse().expect("addr")).expect_err(refused);
            assert!(err.to_string().contains("clear text"), "{err}");
        }
    }
}
