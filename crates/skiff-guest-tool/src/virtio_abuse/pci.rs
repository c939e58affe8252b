//! A PCI function taken from its kernel driver through sysfs: unbind, enable memory
//! decoding and bus mastering, walk the virtio capabilities in its configuration space,
//! and map the BAR regions they point to.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::map::Map;
use crate::error::{Error, Result};

const COMMAND: u64 = 0x04;
const COMMAND_MEMORY: u16 = 1 << 1;
const COMMAND_BUS_MASTER: u16 = 1 << 2;
const STATUS: usize = 0x06;
const STATUS_CAP_LIST: u16 = 1 << 4;
const CAP_POINTER: usize = 0x34;
const CAP_ID_VENDOR: u8 = 0x09;

// virtio_pci_cap.cfg_type (virtio 1.x §4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;

/// Where one virtio structure lives: BAR, offset, length.
#[derive(Clone, Copy, Debug)]
pub struct Location {
    pub bar: u8,
    pub offset: u32,
    pub length: u32,
}

/// The virtio structures a driver needs.
#[derive(Debug)]
pub struct Capabilities {
    pub common: Location,
    pub notify: Location,
    pub notify_multiplier: u32,
    pub isr: Location,
}

pub struct PciFunction {
    pub address: String,
    dir: PathBuf,
    config: File,
}

impl PciFunction {
    /// Opens `address` (`0000:00:01.0`), unbinding its driver if it has one.
    pub fn take(address: &str) -> Result<PciFunction> {
        let dir = PathBuf::from("/sys/bus/pci/devices").join(address);
        let fail = |what: &str, e: std::io::Error| {
            Error::runtime(format!("{what} {}: {e}", dir.display()))
        };
        if dir.join("driver").exists() {
            std::fs::write(dir.join("driver/unbind"), address)
                .map_err(|e| fail("unbind the driver of", e))?;
        }
        let config = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("config"))
            .map_err(|e| fail("open the configuration space of", e))?;
        let f = PciFunction {
            address: address.to_string(),
            dir,
            config,
        };
        let command = f.config_u16(COMMAND as usize)?;
        f.config
            .write_all_at(
                &(command | COMMAND_MEMORY | COMMAND_BUS_MASTER).to_le_bytes(),
                COMMAND,
            )
            .map_err(|e| Error::runtime(format!("enable {address}: {e}")))?;
        Ok(f)
    }

    fn config_bytes(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.config
            .read_exact_at(out, offset as u64)
            .map_err(|e| Error::runtime(format!("read config of {}: {e}", self.address)))
    }

    /// Writes `bytes` at `offset` of the configuration space (through the kernel, which
    /// passes the access on to the device).
    pub fn config_write(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        self.config
            .write_all_at(bytes, offset as u64)
            .map_err(|e| Error::runtime(format!("write config of {}: {e}", self.address)))
    }

    pub fn config_u8(&self, offset: usize) -> Result<u8> {
        let mut b = [0u8; 1];
        self.config_bytes(offset, &mut b)?;
        Ok(b[0])
    }

    pub fn config_u16(&self, offset: usize) -> Result<u16> {
        let mut b = [0u8; 2];
        self.config_bytes(offset, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub fn config_u32(&self, offset: usize) -> Result<u32> {
        let mut b = [0u8; 4];
        self.config_bytes(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// The offset of the first capability with ID `id`, if the function has one.
    pub fn find_capability(&self, id: u8) -> Result<Option<usize>> {
        if self.config_u16(STATUS)? & STATUS_CAP_LIST == 0 {
            return Ok(None);
        }
        let mut at = usize::from(self.config_u8(CAP_POINTER)? & !3);
        for _ in 0..64 {
            if at == 0 {
                break;
            }
            if self.config_u8(at)? == id {
                return Ok(Some(at));
            }
            at = usize::from(self.config_u8(at + 1)? & !3);
        }
        Ok(None)
    }

    /// The configuration-space offset of BAR register `bar`.
    pub fn bar_register(bar: u8) -> usize {
        0x10 + 4 * usize::from(bar)
    }

    /// Walks the capability list for the virtio structures.
    pub fn capabilities(&self) -> Result<Capabilities> {
        if self.config_u16(STATUS)? & STATUS_CAP_LIST == 0 {
            return Err(Error::runtime(format!(
                "{} has no capabilities",
                self.address
            )));
        }
        let (mut common, mut notify, mut isr) = (None, None, None);
        let mut multiplier = 0;
        let mut at = usize::from(self.config_u8(CAP_POINTER)? & !3);
        // A list longer than config space can hold is a loop.
        for _ in 0..64 {
            if at == 0 {
                break;
            }
            if self.config_u8(at)? == CAP_ID_VENDOR {
                let location = Location {
                    bar: self.config_u8(at + 4)?,
                    offset: self.config_u32(at + 8)?,
                    length: self.config_u32(at + 12)?,
                };
                match self.config_u8(at + 3)? {
                    CAP_COMMON => common = Some(location),
                    CAP_NOTIFY => {
                        notify = Some(location);
                        multiplier = self.config_u32(at + 16)?;
                    }
                    CAP_ISR => isr = Some(location),
                    _ => {}
                }
            }
            at = usize::from(self.config_u8(at + 1)? & !3);
        }
        let missing = |what| Error::runtime(format!("{} has no {what} capability", self.address));
        Ok(Capabilities {
            common: common.ok_or_else(|| missing("common configuration"))?,
            notify: notify.ok_or_else(|| missing("notification"))?,
            notify_multiplier: multiplier,
            isr: isr.ok_or_else(|| missing("ISR"))?,
        })
    }

    /// Maps BAR `bar` whole (its `resourceN` file).
    pub fn map_bar(&self, bar: u8) -> Result<Map> {
        let path = self.dir.join(format!("resource{bar}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::runtime(format!("open {}: {e}", path.display())))?;
        let len = file
            .metadata()
            .map_err(|e| Error::runtime(format!("stat {}: {e}", path.display())))?
            .len();
        let len = usize::try_from(len)
            .map_err(|_| Error::runtime(format!("{} is too large", path.display())))?;
        Map::file(&file, len, &path.display().to_string())
    }

    /// The guest-physical address of BAR `bar` (first field of its `resource` line).
    pub fn bar_address(&self, bar: u8) -> Result<u64> {
        let path = self.dir.join("resource");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::runtime(format!("read {}: {e}", path.display())))?;
        let line = text
            .lines()
            .nth(usize::from(bar))
            .ok_or_else(|| Error::runtime(format!("{} has no BAR {bar}", self.address)))?;
        let start = line.split_whitespace().next().unwrap_or("");
        u64::from_str_radix(start.trim_start_matches("0x"), 16)
            .map_err(|_| Error::runtime(format!("bad resource line {line:?}")))
    }
}
