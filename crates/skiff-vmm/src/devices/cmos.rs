//! The CMOS real-time clock (MC146818) at ports 0x70/0x71: the wall-clock time in BCD,
//! 24-hour mode, no alarms or periodic interrupts, and 128 bytes of NVRAM. Without it Linux
//! waits seconds for a clock that never ticks.

use super::PortDevice;

const REG_SECONDS: usize = 0x00;
const REG_MINUTES: usize = 0x02;
const REG_HOURS: usize = 0x04;
const REG_WEEKDAY: usize = 0x06;
const REG_DAY: usize = 0x07;
const REG_MONTH: usize = 0x08;
const REG_YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
const REG_CENTURY: usize = 0x32;

/// 32.768 kHz time base, 1024 Hz rate; update-in-progress never set.
const REG_A_DEFAULT: u8 = 0x26;
/// 24-hour mode, BCD.
const REG_B_24H: u8 = 0x02;
const REG_B_BINARY: u8 = 0x04;
/// Valid RAM and time.
const REG_D_VALID: u8 = 0x80;

pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    clock: fn() -> i64,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::with_clock(unix_now)
    }
}

impl Cmos {
    fn with_clock(clock: fn() -> i64) -> Self {
        let mut nvram = [0u8; 128];
        nvram[REG_A] = REG_A_DEFAULT;
        nvram[REG_B] = REG_B_24H;
        nvram[REG_D] = REG_D_VALID;
        Cmos {
            index: 0,
            nvram,
            clock,
        }
    }

    fn read_register(&self, reg: usize) -> u8 {
        let time = || civil_time((self.clock)());
        let encode = |v: u32| {
            if self.nvram[REG_B] & REG_B_BINARY != 0 {
                v as u8
            } else {
                to_bcd(v)
            }
        };
        match reg {
            REG_SECONDS => encode(time().second),
            REG_MINUTES => encode(time().minute),
            REG_HOURS => encode(time().hour),
            REG_WEEKDAY => encode(time().weekday),
            REG_DAY => encode(time().day),
            REG_MONTH => encode(time().month),
            REG_YEAR => encode(time().year % 100),
            REG_CENTURY => encode(time().year / 100),
            REG_C => 0, // no interrupt flags, ever
            _ => self.nvram[reg],
        }
    }
}

impl PortDevice for Cmos {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        let value = match offset {
            0 => self.index,
            _ => self.read_register(usize::from(self.index & 0x7f)),
        };
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            0 => self.index = value & 0x7f, // bit 7 masks NMIs; nothing to mask here
            _ => {
                let reg = usize::from(self.index);
                match reg {
                    // Guests may set the format bits of B; time writes are ignored: the
                    // guest's clock is the host's.
                    REG_B => self.nvram[reg] = value & (REG_B_24H | REG_B_BINARY),
                    REG_A | REG_C | REG_D | REG_SECONDS..=REG_YEAR | REG_CENTURY => {}
                    _ => self.nvram[reg] = value,
                }
            }
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn to_bcd(v: u32) -> u8 {
    (((v / 10) << 4) | (v % 10)) as u8
}

#[derive(Debug, PartialEq, Eq)]
struct CivilTime {
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 1 = Sunday, as the RTC counts.
    weekday: u32,
}

/// UTC calendar time from Unix seconds (days-from-civil inverse, proleptic Gregorian).
fn civil_time(unix: i64) -> CivilTime {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
    CivilTime {
        year,
        month,
        day,
        hour: secs / 3600,
        minute: secs / 60 % 60,
        second: secs % 60,
        weekday: ((days + 4).rem_euclid(7) + 1) as u32, // 1970-01-01 was a Thursday
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(cmos: &mut Cmos, reg: u8) -> u8 {
        cmos.write(0, &[reg]);
        let mut v = [0u8];
        cmos.read(1, &mut v);
        v[0]
    }

    #[test]
    fn civil_time_of_known_instants() {
        assert_eq!(
            civil_time(0),
            CivilTime {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
                weekday: 5
            }
        );
        // 2026-11-26 05:33:52 UTC, a Thursday.
        let t = civil_time(1_795_671_232);
        assert_eq!((t.year, t.month, t.day), (2026, 11, 26));
        assert_eq!((t.hour, t.minute, t.second, t.weekday), (5, 33, 52, 5));
        // A leap day.
        let leap = civil_time(951_782_400);
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
    }

    #[test]
    fn registers_read_bcd_time_and_keep_nvram() {
        let mut cmos = Cmos::with_clock(|| 1_795_671_232);
        assert_eq!(read(&mut cmos, REG_SECONDS as u8), 0x52);
        assert_eq!(read(&mut cmos, REG_HOURS as u8), 0x05);
        assert_eq!(read(&mut cmos, REG_YEAR as u8), 0x26);
        assert_eq!(read(&mut cmos, REG_CENTURY as u8), 0x20);
        assert_eq!(
            read(&mut cmos, REG_A as u8) & 0x80,
            0,
            "never update-in-progress"
        );
        cmos.write(0, &[0x40]);
        cmos.write(1, &[0x5a]);
        assert_eq!(read(&mut cmos, 0x40), 0x5a);
        // Binary mode on request.
        cmos.write(0, &[REG_B as u8]);
        cmos.write(1, &[REG_B_24H | REG_B_BINARY]);
        assert_eq!(read(&mut cmos, REG_SECONDS as u8), 52);
    }
}
