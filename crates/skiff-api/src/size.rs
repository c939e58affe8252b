//! Human-friendly byte sizes: `256M`, `1.5G`, `512MiB`, or a bare number of MiB.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// A size in bytes. Parsed from strings with binary suffixes (`K`, `M`, `G`, `T`, optionally
/// followed by `iB` or `B`); a bare number means MiB, as with QEMU's `-m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error("`{0}` is not a size (use e.g. 256M, 1G, 1.5G or a number of MiB)")]
    Invalid(String),
    #[error("`{0}` is too large")]
    Overflow(String),
}

impl ByteSize {
    pub const fn from_mib(mib: u64) -> Self {
        ByteSize(mib * MIB)
    }

    pub const fn bytes(self) -> u64 {
        self.0
    }

    pub const fn mib(self) -> u64 {
        self.0 / MIB
    }
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(text: &str) -> Result<Self, SizeError> {
        let s = text.trim();
        if s.is_empty() {
            return Err(SizeError::Empty);
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(split);
        let multiplier = match suffix.trim().to_ascii_lowercase().as_str() {
            "" => MIB,
            "b" => 1,
            "k" | "kb" | "kib" => KIB,
            "m" | "mb" | "mib" => MIB,
            "g" | "gb" | "gib" => 1024 * MIB,
            "t" | "tb" | "tib" => 1024 * 1024 * MIB,
            _ => return Err(SizeError::Invalid(text.to_string())),
        };
        let bytes =
            parse_scaled(number, multiplier).ok_or_else(|| SizeError::Invalid(text.to_string()))?;
        bytes
            .map(ByteSize)
            .ok_or_else(|| SizeError::Overflow(text.to_string()))
    }
}

/// `number × multiplier` for a decimal `number` with an optional fraction, exactly when the
/// result is a whole number of bytes. `None` for a malformed number, `Some(None)` on overflow.
fn parse_scaled(number: &str, multiplier: u64) -> Option<Option<u64>> {
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !whole.chars().all(|c| c.is_ascii_digit()) || !fraction.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut value = whole.checked_mul(u128::from(multiplier))?;
    if !fraction.is_empty() {
        let digits = u32::try_from(fraction.len()).ok()?;
        let scale = 10u128.checked_pow(digits)?;
        let numerator = fraction
            .parse::<u128>()
            .ok()?
            .checked_mul(u128::from(multiplier))?;
        if numerator % scale != 0 {
            return None; // not a whole number of bytes
        }
        value = value.checked_add(numerator / scale)?;
    }
    Some(u64::try_from(value).ok())
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, scale) in [
            ("T", 1024 * 1024 * MIB),
            ("G", 1024 * MIB),
            ("M", MIB),
            ("K", KIB),
        ] {
            if b >= scale && b.is_multiple_of(scale) {
                return write!(f, "{}{}", b / scale, unit);
            }
        }
        write!(f, "{b}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"256M\" or \"1G\", or a number of MiB")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                v.checked_mul(MIB)
                    .map(ByteSize)
                    .ok_or_else(|| E::custom(format!("{v} MiB is too large")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("size must not be negative (got {v})"))),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
                if v < 0.0 {
                    return Err(E::custom(format!("size must not be negative (got {v})")));
                }
                v.to_string().parse().map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                if v.trim_start().starts_with('-') {
                    return Err(E::custom(format!("size must not be negative (got {v})")));
                }
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes_and_bare_mib() {
        assert_eq!("256M".parse(), Ok(ByteSize::from_mib(256)));
        assert_eq!("256MiB".parse(), Ok(ByteSize::from_mib(256)));
        assert_eq!("1G".parse(), Ok(ByteSize::from_mib(1024)));
        assert_eq!("1.5G".parse(), Ok(ByteSize::from_mib(1536)));
        assert_eq!("300".parse(), Ok(ByteSize::from_mib(300)));
        assert_eq!("4096B".parse(), Ok(ByteSize(4096)));
        assert_eq!("64k".parse(), Ok(ByteSize(64 * 1024)));
    }

    #[test]
    fn rejects_garbage_negative_and_fractional_bytes() {
        assert!("".parse::<ByteSize>().is_err());
        assert!("abc".parse::<ByteSize>().is_err());
        assert!("12Q".parse::<ByteSize>().is_err());
        assert!("-5M".parse::<ByteSize>().is_err());
        assert!("1.1B".parse::<ByteSize>().is_err());
        assert!(".".parse::<ByteSize>().is_err());
        assert!(matches!(
            "99999999999999T".parse::<ByteSize>(),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        assert_eq!(ByteSize::from_mib(1024).to_string(), "1G");
        assert_eq!(ByteSize::from_mib(1536).to_string(), "1536M");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }
}
