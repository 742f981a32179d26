//! The scenario flags of `atbus sim` (and of the peer comparison, which takes the
//! same ones), as given on a command line, and their checked [`Scenario`].

use std::time::Duration;

use crate::{LinkConfig, Scenario, SizeRange};

/// A scenario as command-line flags spell it: `--path SPEC...`, `--messages`,
/// `--size N|MIN-MAX`, `--interval DUR`, `--streams`, `--echo`, `--seed`,
/// `--time-limit DUR`.
///
/// With the `clap` feature it is a [`clap::Args`], so every command taking a
/// scenario (`atbus sim`, the peer comparison) flattens this one definition: same
/// names, help, defaults and parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct ScenarioFlags {
    /// A path: comma-separated key=value (delay=30ms, jitter=5ms, loss=2%, burst=N,
    /// dup=0.1%, reorder=1%, corrupt=0.1%, mtu=1200, bw=20mbit, queue=64kb,
    /// down=2s-5s (repeatable), mtu_at=10s:1200 (the link's MTU from 10 s on;
    /// repeatable), pmtud=on (the endpoint starts at 548 and discovers the link's
    /// MTU, up to 1452)). Repeat for several paths. Default: one path, delay=25ms.
    #[cfg_attr(feature = "clap", arg(long = "path", value_name = "SPEC"))]
    pub paths: Vec<String>,
    /// Messages the client sends.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 100))]
    pub messages: u64,
    /// Message size in bytes: N, or MIN-MAX drawn uniformly.
    #[cfg_attr(
        feature = "clap",
        arg(long, default_value = "1000", value_name = "N|MIN-MAX")
    )]
    pub size: String,
    /// Time between two sends (us, ms, s); 0 sends everything at once.
    #[cfg_attr(
        feature = "clap",
        arg(long, default_value = "10ms", value_name = "DUR")
    )]
    pub interval: String,
    /// Streams the messages are spread over (round robin).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 1))]
    pub streams: u32,
    /// The receiver echoes each message; latency is the round trip.
    #[cfg_attr(feature = "clap", arg(long))]
    pub echo: bool,
    /// Seed of every random draw (payloads, links).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 1))]
    pub seed: u64,
    /// Virtual time after which the run stops.
    #[cfg_attr(
        feature = "clap",
        arg(long, default_value = "600s", value_name = "DUR")
    )]
    pub time_limit: String,
}

impl ScenarioFlags {
    /// The scenario, checked; the error says which flag is wrong and why.
    pub fn scenario(&self) -> Result<Scenario, String> {
        let paths = if self.paths.is_empty() {
            vec![LinkConfig::default()]
        } else {
            self.paths
                .iter()
                .map(|spec| {
                    spec.parse::<LinkConfig>()
                        .map_err(|err| format!("--path {spec:?}: {err}"))
                })
                .collect::<Result<_, _>>()?
        };
        let scenario = Scenario {
            paths,
            messages: self.messages,
            size: parse_size(&self.size)?,
            interval: parse_duration("interval", &self.interval)?,
            streams: self.streams,
            echo: self.echo,
            seed: self.seed,
            time_limit: parse_duration("time limit", &self.time_limit)?,
        };
        scenario.validate().map_err(|err| err.to_string())?;
        Ok(scenario)
    }
}

/// `N` or `MIN-MAX` bytes.
pub fn parse_size(value: &str) -> Result<SizeRange, String> {
    let number = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("invalid size {v:?}: expected N or MIN-MAX in bytes"))
    };
    let range = match value.split_once('-') {
        Some((min, max)) => SizeRange {
            min: number(min)?,
            max: number(max)?,
        },
        None => SizeRange::fixed(number(value)?),
    };
    if range.min > range.max {
        return Err(format!("invalid size {value:?}: MIN is above MAX"));
    }
    Ok(range)
}

/// `0`, or a number with `us`, `ms` or `s`; `what` names the flag in the error.
pub fn parse_duration(what: &str, value: &str) -> Result<Duration, String> {
    if value.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    crate::spec::parse_duration(value)
        .ok_or_else(|| format!("invalid {what} {value:?}: expected a number with us, ms or s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_or_say_why_not() {
        assert_eq!(parse_size("10-20"), Ok(SizeRange { min: 10, max: 20 }));
        assert_eq!(parse_size("7"), Ok(SizeRange::fixed(7)));
        assert!(
            parse_size("20-10")
                .unwrap_err()
                .contains("MIN is above MAX")
        );
        assert_eq!(parse_duration("x", "0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("x", "5ms"), Ok(Duration::from_millis(5)));
        assert!(
            parse_duration("interval", "5 parsecs")
                .unwrap_err()
                .contains("interval")
        );
    }
}
