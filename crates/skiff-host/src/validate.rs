//! Turning a request body into a VM spec the daemon can run: every refusal names the field.

use std::path::Path;

use skiff_api::{SpecError, VmSpec};

use crate::error::HostError;

/// Unix socket paths are at most this long (sun_path holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Parses a JSON body: unknown fields and wrong types are refused with their path.
pub fn parse_spec(body: &[u8]) -> Result<VmSpec, HostError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let spec: VmSpec = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            HostError::Malformed(inner.to_string())
        } else if path == "." {
            // serde names unknown fields in its message ("unknown field `x`").
            HostError::invalid("spec", inner.to_string())
        } else {
            HostError::invalid(path, inner.to_string())
        }
    })?;
    Ok(spec)
}

/// Checks what the spec says against the host: a name, files that exist, a control socket
/// path that fits.
pub fn check_spec(spec: &VmSpec, state_dir: &Path) -> Result<String, HostError> {
    spec.validate().map_err(|e| match e {
        SpecError::Invalid { field, reason } => HostError::invalid(field, reason),
        SpecError::Parse(m) => HostError::invalid("spec", m),
    })?;
    let name = spec
        .name
        .clone()
        .ok_or_else(|| HostError::invalid("name", "a VM under the daemon needs a name"))?;
    must_be_file("kernel", &spec.kernel)?;
    if let Some(initrd) = &spec.initrd {
        must_be_file("initrd", initrd)?;
    }
    // A disk may be a block device; what it is, is checked on the open file at each start
    // (`disks`), each kind of refusal in its own words.
    for disk in &spec.disks {
        must_exist("disks.path", &disk.path).map(|_| ())?;
    }
    let socket = crate::store::Store::socket_path_for(state_dir, &name);
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(HostError::invalid(
            "name",
            format!(
                "too long: its control socket {} would exceed {MAX_SOCKET_PATH} bytes",
                socket.display()
            ),
        ));
    }
    Ok(name)
}

fn must_be_file(field: &str, path: &Path) -> Result<(), HostError> {
    if must_exist(field, path)?.is_file() {
        return Ok(());
    }
    Err(HostError::invalid(
        field,
        format!("{} is not a file", path.display()),
    ))
}

/// The metadata of `path`, which must be absolute.
fn must_exist(field: &str, path: &Path) -> Result<std::fs::Metadata, HostError> {
    if !path.is_absolute() {
        return Err(HostError::invalid(
            field,
            format!(
                "{} must be an absolute path (the daemon has its own working directory)",
                path.display()
            ),
        ));
    }
    std::fs::metadata(path)
        .map_err(|e| HostError::invalid(field, format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<impl std::fmt::Debug, HostError>) -> String {
        match result.expect_err("refused") {
            HostError::Invalid { field, reason } => format!("{field}: {reason}"),
            other => panic!("not a field error: {other}"),
        }
    }

    #[test]
    fn parse_errors_name_the_field() {
        assert!(matches!(
            parse_spec(b"{not json"),
            Err(HostError::Malformed(_))
        ));
        assert!(matches!(parse_spec(b""), Err(HostError::Malformed(_))));
        let unknown = field_of(parse_spec(br#"{"kernel":"/k","memory":"64M","colour":1}"#));
        assert!(unknown.contains("colour"), "{unknown}");
        let negative = field_of(parse_spec(br#"{"kernel":"/k","memory":-64}"#));
        assert!(negative.starts_with("memory"), "{negative}");
        let nested = field_of(parse_spec(
            br#"{"kernel":"/k","memory":"64M","cpu":{"shares":-1}}"#,
        ));
        assert!(nested.starts_with("cpu.shares"), "{nested}");
        let vcpus = field_of(parse_spec(
            br#"{"kernel":"/k","memory":"64M","vcpus":"two"}"#,
        ));
        assert!(vcpus.starts_with("vcpus"), "{vcpus}");
    }

    #[test]
    fn host_checks_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, b"k").expect("write");
        let spec = |json: String| parse_spec(json.as_bytes()).expect("parses");
        let k = kernel.display();
        let ok = spec(format!(r#"{{"name":"a","kernel":"{k}","memory":"64M"}}"#));
        assert_eq!(check_spec(&ok, dir.path()).expect("valid"), "a");
        let cases = [
            (format!(r#"{{"kernel":"{k}","memory":"64M"}}"#), "name"),
            (
                format!(r#"{{"name":"../x","kernel":"{k}","memory":"64M"}}"#),
                "name",
            ),
            (
                format!(
                    r#"{{"name":"{}","kernel":"{k}","memory":"64M"}}"#,
                    "n".repeat(64)
                ),
                "name",
            ),
            (
                r#"{"name":"a","kernel":"/no/such/kernel","memory":"64M"}"#.to_string(),
                "kernel",
            ),
            (
                r#"{"name":"a","kernel":"relative","memory":"64M"}"#.to_string(),
                "kernel",
            ),
            (
                format!(r#"{{"name":"a","kernel":"{k}","initrd":"/none","memory":"64M"}}"#),
                "initrd",
            ),
            (
                format!(r#"{{"name":"a","kernel":"{k}","memory":"1M"}}"#),
                "memory.size",
            ),
        ];
        let long_dir = dir.path().join("d".repeat(60));
        for (json, field) in cases {
            let err = field_of(check_spec(&spec(json.clone()), &long_dir));
            assert!(err.starts_with(field), "{json}: {err}");
        }
    }
}
