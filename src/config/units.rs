//! Unit-carrying config values: durations, byte sizes and byte rates.
//!
//! Invariant: every value here was written with an explicit unit (`5s`, `512KiB`, `100MiB/s`) or, for sizes only, as
//! a plain byte count, and `Display` writes it back in a form the same parser accepts (`parse(display(x)) == x`).

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A span of time written with units, such as `5s`, `250ms`, `2m` or `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

impl Duration {
    /// A duration of `secs` whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    /// A duration of `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Duration(std::time::Duration::from_millis(millis))
    }

    /// The value as a `std::time::Duration`, for timers and clients.
    pub const fn as_std(&self) -> std::time::Duration {
        self.0
    }

    /// Whether the duration is zero (never a useful interval or timeout).
    pub const fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl Deref for Duration {
    type Target = std::time::Duration;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(Duration)
            .map_err(|e| format!("invalid duration {s:?}: {e} (write e.g. 5s, 250ms, 2m, 1h30m)"))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            // humantime prints "0s" too, but say it explicitly so the round trip is obvious.
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UnitVisitor::<Duration>::new(
            "a duration with a unit, such as 5s, 250ms, 2m or 1h30m",
            None,
        ))
    }
}

/// A byte count: `1000` (bytes), binary `512KiB`/`1MiB`/`1GiB`/`1TiB`, or decimal `10kB`/`10KB`/`10MB`/`1GB`/`1TB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size in bytes.
    pub const fn bytes(&self) -> u64 {
        self.0
    }
}

/// Units accepted after a number, largest first so `Display` picks the most readable exact one.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("kB", 1_000),
];

/// Parses `<whole number>[ ]<unit>`; separate so `ByteRate` shares it without going through `ByteSize`'s messages.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits_end == 0 {
        return Err("expected a whole number followed by a unit".to_string());
    }
    let number: u64 = s[..digits_end].parse().map_err(|_| "number is too large".to_string())?;
    let unit = s[digits_end..].trim_start();
    let multiplier = match unit {
        "" | "B" => 1,
        "KB" => 1_000,
        _ if unit.starts_with('.') => {
            return Err("fractions are not supported: use a smaller unit (1536KiB, not 1.5MiB)".to_string())
        }
        _ => SIZE_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, m)| *m)
            .ok_or_else(|| format!("unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, kB, KB, MB, GB or TB)"))?,
    };
    number.checked_mul(multiplier).ok_or_else(|| "size is too large".to_string())
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_bytes(s).map(ByteSize).map_err(|e| format!("invalid size {s:?}: {e}"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n != 0 {
            if let Some((unit, m)) = SIZE_UNITS.iter().find(|(_, m)| n % m == 0) {
                return write!(f, "{}{unit}", n / m);
            }
        }
        write!(f, "{n}B")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UnitVisitor::<ByteSize>::new("a size such as 1000, 512KiB, 1MiB or 10MB", Some(ByteSize)))
    }
}

/// A bandwidth in bytes per second, written as a size followed by `/s`: `100MiB/s`, `4MiB/s`, `500KB/s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteRate(pub u64);

impl ByteRate {
    /// The rate in bytes per second.
    pub const fn bytes_per_second(&self) -> u64 {
        self.0
    }
}

impl FromStr for ByteRate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let size = s
            .trim()
            .strip_suffix("/s")
            .ok_or_else(|| format!("invalid rate {s:?}: expected a size per second, such as 100MiB/s"))?;
        parse_bytes(size).map(ByteRate).map_err(|e| format!("invalid rate {s:?}: {e}"))
    }
}

impl fmt::Display for ByteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", ByteSize(self.0))
    }
}

impl<'de> Deserialize<'de> for ByteRate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UnitVisitor::<ByteRate>::new("a rate such as 100MiB/s, 4MiB/s or 500KB/s", None))
    }
}

/// Deserializes a unit value from a string, or from a bare integer where that is unambiguous (byte counts).
struct UnitVisitor<T> {
    expecting: &'static str,
    from_integer: Option<fn(u64) -> T>,
}

impl<T> UnitVisitor<T> {
    fn new(expecting: &'static str, from_integer: Option<fn(u64) -> T>) -> Self {
        UnitVisitor { expecting, from_integer }
    }
}

impl<T> Visitor<'_> for UnitVisitor<T>
where
    T: FromStr<Err = String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        match self.from_integer {
            Some(from_integer) => Ok(from_integer(v)),
            // A bare number has no unit: "5" could mean seconds or milliseconds, so refuse to guess.
            None => Err(E::custom(format!("found the number {v} without a unit; expected {}", self.expecting))),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_humantime_forms() {
        assert_eq!("5s".parse::<Duration>().unwrap(), Duration::from_secs(5));
        assert_eq!("250ms".parse::<Duration>().unwrap(), Duration::from_millis(250));
        assert_eq!("2m".parse::<Duration>().unwrap(), Duration::from_secs(120));
        assert_eq!("1h30m".parse::<Duration>().unwrap(), Duration::from_secs(5400));
        assert_eq!("1h 30m".parse::<Duration>().unwrap(), Duration::from_secs(5400));
    }

    #[test]
    fn durations_need_units() {
        let err = "5".parse::<Duration>().unwrap_err();
        assert!(err.starts_with("invalid duration \"5\": "), "{err}");
        let err = "5 parsecs".parse::<Duration>().unwrap_err();
        assert!(err.contains("parsecs"), "{err}");
    }

    #[test]
    fn durations_display_round_trips() {
        for d in ["0s", "5s", "250ms", "2m", "1h 30m", "1s 500ms"] {
            let parsed: Duration = d.parse().unwrap();
            assert_eq!(parsed.to_string(), d);
            assert_eq!(parsed.to_string().parse::<Duration>().unwrap(), parsed);
        }
        assert_eq!(Duration::from_secs(5).as_std(), std::time::Duration::from_secs(5));
        assert_eq!(Duration::from_secs(5).as_secs(), 5, "Deref to std Duration");
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        let cases = [
            ("1000", 1000),
            ("0", 0),
            ("7B", 7),
            ("512KiB", 512 * 1024),
            ("1MiB", 1 << 20),
            ("2GiB", 2 << 30),
            ("1TiB", 1 << 40),
            ("10kB", 10_000),
            ("10KB", 10_000),
            ("10MB", 10_000_000),
            ("3GB", 3_000_000_000),
            ("10 MB", 10_000_000),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<ByteSize>().unwrap(), ByteSize(bytes), "{text}");
        }
    }

    #[test]
    fn sizes_reject_garbage() {
        for bad in ["", "MiB", "1.5MiB", "10mb", "12 parsecs", "-1", "99999999999TiB"] {
            let err = bad.parse::<ByteSize>().unwrap_err();
            assert!(err.starts_with("invalid size"), "{bad}: {err}");
        }
        assert!("1.5MiB".parse::<ByteSize>().unwrap_err().contains("1536KiB"));
    }

    #[test]
    fn sizes_display_round_trips() {
        for bytes in [0, 1, 999, 1000, 1024, 1536, 1 << 20, 10_000_000, 3 << 30, 123_456_789] {
            let shown = ByteSize(bytes).to_string();
            assert_eq!(shown.parse::<ByteSize>().unwrap(), ByteSize(bytes), "{shown}");
        }
        assert_eq!(ByteSize(512 * 1024).to_string(), "512KiB");
        assert_eq!(ByteSize(10_000_000).to_string(), "10MB");
    }

    #[test]
    fn rates_need_per_second() {
        assert_eq!("100MiB/s".parse::<ByteRate>().unwrap().bytes_per_second(), 100 << 20);
        assert_eq!("4MiB/s".parse::<ByteRate>().unwrap().bytes_per_second(), 4 << 20);
        assert_eq!("500KB/s".parse::<ByteRate>().unwrap().bytes_per_second(), 500_000);
        assert!("100MiB".parse::<ByteRate>().unwrap_err().contains("per second"));
        assert!("fast/s".parse::<ByteRate>().unwrap_err().starts_with("invalid rate"));
        assert_eq!(ByteRate(100 << 20).to_string(), "100MiB/s");
    }
}
