//! Disk images for guests.

use std::path::Path;
use std::process::Command;

use crate::Error;

/// Builds an ext4 image of `size_mib` MiB at `image` holding the contents of `dir`
/// (`mke2fs -t ext4 -d DIR IMAGE SIZE`). `mke2fs` is the program to run: in tests,
/// `&TestEnv::get().mke2fs`.
pub fn make_ext4(mke2fs: &Path, dir: &Path, image: &Path, size_mib: u64) -> Result<(), Error> {
    let _ = std::fs::remove_file(image);
    let out = Command::new(mke2fs)
        .args(["-q", "-F", "-t", "ext4", "-E", "root_owner=0:0", "-d"])
        .arg(dir)
        .arg(image)
        .arg(format!("{size_mib}M"))
        .output()
        .map_err(|e| Error::io(format!("cannot run {}", mke2fs.display()), e))?;
    if !out.status.success() {
        return Err(Error::Tool {
            what: format!("mke2fs -d {} {}", dir.display(), image.display()),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}
