//! Loads the rules of `rules.rs` with Debian's `nft` (`nft -f -`, one atomic transaction) and
//! reads a network's anti-spoofing counter (`nft -j`).

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft (Debian's nftables package): {0}")]
    Spawn(std::io::Error),
    #[error("nft refused the rules: {0}")]
    Refused(String),
    #[error("nft's answer is not the JSON expected: {0}")]
    Answer(String),
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        return Err(NftError::Refused(format!("{} ({first})", out.status)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Loads a script in one transaction: all of it or none.
pub fn load(script: &str) -> Result<(), NftError> {
    nft(&["-f", "-"], Some(script)).map(drop)
}

/// Removes a network's anti-spoofing counter once no rule uses it; a missing one is fine.
pub fn remove_counter(name: &str) {
    let _ = nft(&["delete", "counter", "bridge", "skiff", name], None);
}

/// Packets counted by the named counter of `bridge skiff`.
pub fn counter_packets(name: &str) -> Result<u64, NftError> {
    let out = nft(&["-j", "list", "counter", "bridge", "skiff", name], None)?;
    packets_in(&out).ok_or_else(|| NftError::Answer(out.chars().take(200).collect()))
}

/// The `packets` of the first counter object in `nft -j` output.
fn packets_in(json: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    value
        .get("nftables")?
        .as_array()?
        .iter()
        .find_map(|o| o.get("counter")?.get("packets")?.as_u64())
}

#[cfg(test)]
mod tests {
    #[test]
    fn counter_packets_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"counter": {"family": "bridge", "name": "spoof_1", "table": "skiff", "handle": 3,
            "packets": 17, "bytes": 1020}}]}"#;
        assert_eq!(super::packets_in(json), Some(17));
        assert_eq!(super::packets_in(r#"{"nftables": []}"#), None);
        assert_eq!(super::packets_in("not json"), None);
    }
}
