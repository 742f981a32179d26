//! The path SPEC syntax: `delay=30ms,jitter=5ms,loss=2%,burst=3,bw=20mbit,down=2s-5s`.
//!
//! A spec is comma-separated `key=value` items; the empty spec is the default
//! [`LinkConfig`]. Keys, with the field each sets:
//!
//! | key | field | value |
//! |---|---|---|
//! | `delay`, `jitter` | [`delay`](LinkConfig::delay), [`jitter`](LinkConfig::jitter) | duration: `us`, `ms` or `s`, decimals allowed (`1.5ms`) |
//! | `loss`, `dup`, `reorder`, `corrupt` | the probability of the same name | `2%` or `0.02` |
//! | `burst` | [`burst`](LinkConfig::burst) | mean burst length in datagrams, at least 1 (`3`, `2.5`) |
//! | `mtu` | [`mtu`](LinkConfig::mtu) | bytes (`1200`) |
//! | `bw` | [`bandwidth_bps`](LinkConfig::bandwidth_bps) | bits/s: `bps`, `kbit`, `mbit`, `gbit` (decimal; `kbps` … `gbps` too) or a bare number |
//! | `queue` | [`queue_bytes`](LinkConfig::queue_bytes) | bytes: `b`, `kb`, `mb` (binary: `1kb` = 1024) or a bare number |
//! | `down` | one window of [`outages`](LinkConfig::outages); may repeat | `START-END`, two durations (`2s-5s`) |
//! | `mtu_at` | one of [`mtu_changes`](LinkConfig::mtu_changes); may repeat | `TIME:BYTES`, from that instant on the link's MTU (`10s:1200`) |
//! | `pmtud` | [`pmtud`](LinkConfig::pmtud) | `on` or `off` |
//!
//! Units are case-insensitive. Every key but `down` and `mtu_at` may appear once.
//!
//! ```
//! use std::time::Duration;
//! use atbus_sim::LinkConfig;
//!
//! let config: LinkConfig = "delay=30ms,loss=2%,bw=20mbit,down=2s-5s".parse().unwrap();
//! assert_eq!(config.delay, Duration::from_millis(30));
//! assert_eq!(config.loss, 0.02);
//! assert_eq!(config.bandwidth_bps, Some(20_000_000));
//! assert_eq!(config.mtu, 1200); // not given: the default
//! assert_eq!(config.to_string().parse::<LinkConfig>().unwrap(), config);
//!
//! let err = "dealy=30ms".parse::<LinkConfig>().unwrap_err();
//! assert_eq!(err.to_string(), r#"unknown key "dealy" in path spec"#);
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

use crate::config::{ConfigError, LinkConfig};

/// Why a path SPEC string does not describe a link.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SpecError {
    /// Two commas in a row, or a comma at either end.
    #[error("empty item in path spec (two commas in a row, or a comma at an end)")]
    EmptyItem,
    /// An item is not `key=value`.
    #[error("item \"{0}\" in path spec is not key=value")]
    MissingEquals(String),
    /// The key is not one of the keys the spec knows.
    #[error("unknown key \"{0}\" in path spec")]
    UnknownKey(String),
    /// A key other than `down` appears twice.
    #[error("key \"{0}\" appears more than once in path spec")]
    RepeatedKey(String),
    /// A value does not parse for its key.
    #[error("bad value \"{value}\" for \"{key}\" in path spec: expected {expected}")]
    BadValue {
        /// The key.
        key: String,
        /// The value as written.
        value: String,
        /// What the key takes.
        expected: &'static str,
    },
    /// A `down=START-END` window does not end after it starts.
    #[error("outage \"{0}\" in path spec does not end after it starts")]
    EmptyOutage(String),
    /// Every item parsed but the values do not fit together.
    #[error("invalid path spec: {0}")]
    Invalid(#[from] ConfigError),
}

const DURATION: &str = "a duration such as 30ms, 1.5s or 250us";
const PROBABILITY: &str = "a probability such as 2% or 0.02, at most 100%";
const BURST: &str = "a mean burst length such as 3, at least 1";
const MTU: &str = "a number of bytes such as 1200";
const BANDWIDTH: &str = "a rate such as 20mbit, 500kbit or 1gbit";
const QUEUE: &str = "a size such as 64kb, 1mb or 1500";
const OUTAGE: &str = "a window START-END such as 2s-5s";
const SWITCH: &str = "on or off";
const MTU_AT: &str = "an instant and a number of bytes such as 10s:1200";

const KEYS: [&str; 13] = [
    "delay", "jitter", "loss", "burst", "dup", "reorder", "corrupt", "mtu", "bw", "queue", "down",
    "mtu_at", "pmtud",
];

/// Keys that may appear more than once.
const REPEATABLE: [&str; 2] = ["down", "mtu_at"];

impl FromStr for LinkConfig {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let mut config = LinkConfig::default();
        if spec.trim().is_empty() {
            return Ok(config);
        }
        let mut seen: Vec<&str> = Vec::new();
        for item in spec.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(SpecError::EmptyItem);
            }
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| SpecError::MissingEquals(item.to_owned()))?;
            let (key, value) = (key.trim(), value.trim());
            if !KEYS.contains(&key) {
                return Err(SpecError::UnknownKey(key.to_owned()));
            }
            if !REPEATABLE.contains(&key) {
                if seen.contains(&key) {
                    return Err(SpecError::RepeatedKey(key.to_owned()));
                }
                seen.push(key);
            }
            set(&mut config, key, value)?;
        }
        config.validate()?;
        Ok(config)
    }
}

/// Parses `value` into the field named by `key` (a member of [`KEYS`]).
fn set(config: &mut LinkConfig, key: &str, value: &str) -> Result<(), SpecError> {
    let bad = |expected| SpecError::BadValue {
        key: key.to_owned(),
        value: value.to_owned(),
        expected,
    };
    match key {
        "delay" => config.delay = duration(value).ok_or(bad(DURATION))?,
        "jitter" => config.jitter = duration(value).ok_or(bad(DURATION))?,
        "loss" => config.loss = probability(value).ok_or(bad(PROBABILITY))?,
        "dup" => config.dup = probability(value).ok_or(bad(PROBABILITY))?,
        "reorder" => config.reorder = probability(value).ok_or(bad(PROBABILITY))?,
        "corrupt" => config.corrupt = probability(value).ok_or(bad(PROBABILITY))?,
        "burst" => {
            let burst = fraction(value).filter(|n| *n >= 1.0 && n.is_finite());
            config.burst = Some(burst.ok_or(bad(BURST))?);
        }
        "mtu" => config.mtu = bytes(value).ok_or(bad(MTU))?,
        "mtu_at" => {
            let (at, mtu) = value.split_once(':').ok_or(bad(MTU_AT))?;
            let at = duration(at.trim()).ok_or(bad(MTU_AT))?;
            let mtu = bytes(mtu.trim()).ok_or(bad(MTU_AT))?;
            config.mtu_changes.push((at, mtu));
        }
        "bw" => {
            let (number, unit) = split_unit(value);
            let scale = match unit.as_str() {
                "" | "bps" | "bit" => 1,
                "kbit" | "kbps" => 1_000,
                "mbit" | "mbps" => 1_000_000,
                "gbit" | "gbps" => 1_000_000_000,
                _ => return Err(bad(BANDWIDTH)),
            };
            let bps = scaled(number, scale).and_then(|n| u64::try_from(n).ok());
            config.bandwidth_bps = Some(bps.filter(|&n| n > 0).ok_or(bad(BANDWIDTH))?);
        }
        "queue" => {
            let (number, unit) = split_unit(value);
            let scale = match unit.as_str() {
                "" | "b" => 1,
                "kb" | "kib" => 1 << 10,
                "mb" | "mib" => 1 << 20,
                _ => return Err(bad(QUEUE)),
            };
            let bytes = scaled(number, scale).and_then(|n| usize::try_from(n).ok());
            config.queue_bytes = bytes.ok_or(bad(QUEUE))?;
        }
        "down" => {
            let (start, end) = value.split_once('-').ok_or(bad(OUTAGE))?;
            let start = duration(start.trim()).ok_or(bad(OUTAGE))?;
            let end = duration(end.trim()).ok_or(bad(OUTAGE))?;
            if end <= start {
                return Err(SpecError::EmptyOutage(value.to_owned()));
            }
            config.outages.push((start, end));
        }
        "pmtud" => {
            config.pmtud = match value.to_ascii_lowercase().as_str() {
                "on" => true,
                "off" => false,
                _ => return Err(bad(SWITCH)),
            }
        }
        _ => return Err(SpecError::UnknownKey(key.to_owned())),
    }
    Ok(())
}

/// A positive number of bytes written in decimal digits only.
fn bytes(value: &str) -> Option<usize> {
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    value.parse::<usize>().ok().filter(|&n| digits && n > 0)
}

/// Splits `30ms` into `("30", "ms")`, the unit lower-cased.
fn split_unit(value: &str) -> (&str, String) {
    let at = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    (&value[..at], value[at..].trim().to_ascii_lowercase())
}

/// Whether `number` is `digits[.digits]`: no sign, no exponent, no `inf` or `NaN`.
fn is_decimal(number: &str) -> bool {
    let (whole, frac) = number.split_once('.').unwrap_or((number, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && digits(frac)
}

/// A decimal `digits[.digits]` times `scale`, rounded to the nearest integer; exact,
/// no floating point. `None` on bad syntax or overflow.
fn scaled(number: &str, scale: u128) -> Option<u128> {
    if !is_decimal(number) {
        return None;
    }
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let frac = frac.trim_end_matches('0');
    let mut mantissa: u128 = 0;
    for b in whole.bytes().chain(frac.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(u128::from(b - b'0'))?;
    }
    let divisor = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
    let product = mantissa.checked_mul(scale)?;
    Some(product / divisor + u128::from(product % divisor >= divisor.div_ceil(2)))
}

/// A duration with unit `us`, `ms` or `s`.
/// Parses a duration in the SPEC syntax: a decimal number with `us`, `ms` or `s`
/// (`250us`, `1.5ms`, `2s`).
pub fn parse_duration(value: &str) -> Option<Duration> {
    duration(value)
}

fn duration(value: &str) -> Option<Duration> {
    let (number, unit) = split_unit(value);
    let nanos_per_unit = match unit.as_str() {
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        _ => return None,
    };
    let nanos = scaled(number, nanos_per_unit)?;
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// A bare decimal fraction such as `0.02` or `3`.
fn fraction(value: &str) -> Option<f64> {
    if !is_decimal(value) {
        return None;
    }
    value.parse().ok()
}

/// `2%` or `0.02`, in `[0, 1]`.
fn probability(value: &str) -> Option<f64> {
    let p = match value.strip_suffix('%') {
        // Shift the decimal point in the text so that "0.1%" is exactly 0.001.
        Some(percent) if is_decimal(percent.trim()) => {
            format!("{}e-2", percent.trim()).parse().ok()?
        }
        Some(_) => return None,
        None => fraction(value)?,
    };
    (p <= 1.0).then_some(p)
}

/// Writes `value / unit` with as many decimals as needed to be exact.
fn write_decimal(f: &mut fmt::Formatter<'_>, value: u128, unit: u128, name: &str) -> fmt::Result {
    let whole = value / unit;
    let frac = value % unit;
    if frac == 0 {
        return write!(f, "{whole}{name}");
    }
    let width = unit.ilog10() as usize;
    let frac = format!("{frac:0width$}");
    write!(f, "{whole}.{}{name}", frac.trim_end_matches('0'))
}

fn write_duration(f: &mut fmt::Formatter<'_>, d: Duration) -> fmt::Result {
    let nanos = d.as_nanos();
    match nanos {
        n if n >= 1_000_000_000 => write_decimal(f, n, 1_000_000_000, "s"),
        n if n >= 1_000_000 => write_decimal(f, n, 1_000_000, "ms"),
        n => write_decimal(f, n, 1_000, "us"),
    }
}

/// Writes the spec that parses back to this config: `delay` and `mtu` always, every
/// other key only when it differs from the default.
impl fmt::Display for LinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let default = LinkConfig::default();
        f.write_str("delay=")?;
        write_duration(f, self.delay)?;
        if !self.jitter.is_zero() {
            f.write_str(",jitter=")?;
            write_duration(f, self.jitter)?;
        }
        for (key, p) in [
            ("loss", self.loss),
            ("dup", self.dup),
            ("reorder", self.reorder),
            ("corrupt", self.corrupt),
        ] {
            if p != 0.0 {
                write!(f, ",{key}={p}")?;
            }
        }
        if let Some(burst) = self.burst {
            write!(f, ",burst={burst}")?;
        }
        write!(f, ",mtu={}", self.mtu)?;
        if let Some(bps) = self.bandwidth_bps {
            let bps = u128::from(bps);
            f.write_str(",bw=")?;
            match bps {
                n if n >= 1_000_000_000 => write_decimal(f, n, 1_000_000_000, "gbit")?,
                n if n >= 1_000_000 => write_decimal(f, n, 1_000_000, "mbit")?,
                n if n >= 1_000 => write_decimal(f, n, 1_000, "kbit")?,
                n => write!(f, "{n}bps")?,
            }
        }
        if self.queue_bytes != default.queue_bytes {
            match self.queue_bytes {
                n if n != 0 && n % (1 << 20) == 0 => write!(f, ",queue={}mb", n >> 20)?,
                n if n != 0 && n % (1 << 10) == 0 => write!(f, ",queue={}kb", n >> 10)?,
                n => write!(f, ",queue={n}b")?,
            }
        }
        for &(start, end) in &self.outages {
            f.write_str(",down=")?;
            write_duration(f, start)?;
            f.write_str("-")?;
            write_duration(f, end)?;
        }
        for &(at, mtu) in &self.mtu_changes {
            f.write_str(",mtu_at=")?;
            write_duration(f, at)?;
            write!(f, ":{mtu}")?;
        }
        if self.pmtud {
            f.write_str(",pmtud=on")?;
        }
        Ok(())
    }
}
