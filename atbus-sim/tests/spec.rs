//! The path SPEC syntax: every key and unit, defaults, errors, and the Display round
//! trip.

use std::time::Duration;

use atbus_sim::{ConfigError, LinkConfig, SpecError};
use proptest::prelude::*;

fn parse(spec: &str) -> LinkConfig {
    spec.parse()
        .unwrap_or_else(|e| panic!("{spec:?} should parse: {e}"))
}

fn parse_err(spec: &str) -> SpecError {
    match spec.parse::<LinkConfig>() {
        Ok(config) => panic!("{spec:?} should not parse, got {config:?}"),
        Err(err) => err,
    }
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn unspecified_keys_take_the_defaults() {
    let defaults = LinkConfig::default();
    assert_eq!(defaults.delay, 25 * MS);
    assert_eq!(defaults.mtu, 1200);
    assert_eq!(defaults.queue_bytes, 64 * 1024);
    assert_eq!(defaults.bandwidth_bps, None);
    assert_eq!(parse(""), defaults);
    assert_eq!(parse("  "), defaults);
    assert_eq!(parse("delay=25ms"), defaults);
    let config = parse("loss=1%");
    assert_eq!(
        config,
        LinkConfig {
            loss: 0.01,
            ..defaults
        }
    );
}

#[test]
fn full_example_sets_every_field() {
    let config = parse(
        "delay=30ms,jitter=5ms,loss=2%,burst=3,dup=0.1%,reorder=1%,corrupt=0.1%,\
         mtu=1200,bw=20mbit,queue=64kb,down=2s-5s,mtu_at=3s:1000,pmtud=on",
    );
    let expected = LinkConfig {
        delay: 30 * MS,
        jitter: 5 * MS,
        loss: 0.02,
        burst: Some(3.0),
        dup: 0.001,
        reorder: 0.01,
        corrupt: 0.001,
        mtu: 1200,
        bandwidth_bps: Some(20_000_000),
        queue_bytes: 65536,
        outages: vec![(Duration::from_secs(2), Duration::from_secs(5))],
        mtu_changes: vec![(Duration::from_secs(3), 1000)],
        pmtud: true,
    };
    assert_eq!(config, expected);
}

#[test]
fn durations_take_us_ms_and_s_with_decimals() {
    let delay = |s: &str| parse(&format!("delay={s}")).delay;
    assert_eq!(delay("250us"), Duration::from_micros(250));
    assert_eq!(delay("1.5ms"), Duration::from_micros(1500));
    assert_eq!(delay("2s"), Duration::from_secs(2));
    assert_eq!(delay("0.25s"), 250 * MS);
    assert_eq!(
        delay("0.0015us"),
        Duration::from_nanos(2),
        "rounds to the nanosecond"
    );
    assert_eq!(delay("0ms"), Duration::ZERO);
    assert_eq!(delay("10MS"), 10 * MS, "units are case-insensitive");
    assert_eq!(parse("jitter=7ms").jitter, 7 * MS);
}

#[test]
fn probabilities_take_percent_or_a_fraction() {
    assert_eq!(parse("loss=2%").loss, 0.02);
    assert_eq!(parse("loss=0.02").loss, 0.02);
    assert_eq!(parse("dup=0.1%").dup, 0.001, "exact, not 0.1 / 100");
    assert_eq!(parse("reorder=100%").reorder, 1.0);
    assert_eq!(parse("corrupt=1").corrupt, 1.0);
    assert_eq!(parse("corrupt=0").corrupt, 0.0);
    assert_eq!(parse("loss=20%,burst=2.5").burst, Some(2.5));
}

#[test]
fn bandwidth_takes_decimal_bit_rates() {
    let bw = |s: &str| parse(&format!("bw={s}")).bandwidth_bps;
    assert_eq!(bw("20mbit"), Some(20_000_000));
    assert_eq!(bw("20mbps"), Some(20_000_000));
    assert_eq!(bw("1.5Mbit"), Some(1_500_000));
    assert_eq!(bw("500kbit"), Some(500_000));
    assert_eq!(bw("64kbps"), Some(64_000));
    assert_eq!(bw("1gbit"), Some(1_000_000_000));
    assert_eq!(bw("2.5gbps"), Some(2_500_000_000));
    assert_eq!(bw("9600bps"), Some(9600));
    assert_eq!(bw("9600"), Some(9600));
}

#[test]
fn queue_and_mtu_take_binary_sizes_and_bytes() {
    let queue = |s: &str| parse(&format!("bw=1mbit,queue={s}")).queue_bytes;
    assert_eq!(queue("64kb"), 65536);
    assert_eq!(queue("1mb"), 1 << 20);
    assert_eq!(queue("1.5kb"), 1536);
    assert_eq!(queue("1500b"), 1500);
    assert_eq!(queue("1500"), 1500);
    assert_eq!(parse("mtu=1400").mtu, 1400);
    assert_eq!(parse("mtu=1").mtu, 1);
}

#[test]
fn down_may_repeat_and_pmtud_is_a_switch() {
    let config = parse("down=2s-5s, down=7.5s-8s ,down=100ms-200ms");
    assert_eq!(
        config.outages,
        vec![
            (Duration::from_secs(2), Duration::from_secs(5)),
            (Duration::from_millis(7500), Duration::from_secs(8)),
            (100 * MS, 200 * MS),
        ]
    );
    assert!(parse("pmtud=on").pmtud);
    let config = parse("mtu=1400,mtu_at=10s:1200,mtu_at=2.5s:9000");
    assert_eq!(
        config.mtu_changes,
        vec![(Duration::from_secs(10), 1200), (2500 * MS, 9000)]
    );
    assert_eq!(config.mtu_at(Duration::ZERO), 1400);
    assert_eq!(config.mtu_at(2500 * MS), 9000);
    assert_eq!(config.mtu_at(Duration::from_secs(11)), 1200);
    for bad in [
        "mtu_at=10s",
        "mtu_at=10s:0",
        "mtu_at=x:1200",
        "mtu_at=1s:12a",
    ] {
        assert!(
            matches!(
                parse_err(bad),
                SpecError::BadValue { ref key, .. } if key == "mtu_at"
            ),
            "{bad}"
        );
    }
    assert!(!parse("pmtud=off").pmtud);
    assert!(!parse("").pmtud);
}

#[test]
fn each_bad_item_is_a_typed_error_naming_it() {
    let cases: &[(&str, &str)] = &[
        ("dealy=30ms", r#"unknown key "dealy" in path spec"#),
        ("=3", r#"unknown key "" in path spec"#),
        (
            "delay30ms",
            r#"item "delay30ms" in path spec is not key=value"#,
        ),
        ("delay=30ms,,loss=1%", "empty item"),
        ("delay=30ms,", "empty item"),
        (
            "delay=30ms,delay=20ms",
            r#"key "delay" appears more than once"#,
        ),
        ("delay=30", r#"bad value "30" for "delay""#),
        ("delay=30xs", r#"bad value "30xs" for "delay""#),
        ("delay=-3ms", r#"bad value "-3ms" for "delay""#),
        ("jitter=1.ms", r#"bad value "1.ms" for "jitter""#),
        ("jitter=.5ms", r#"bad value ".5ms" for "jitter""#),
        (
            "delay=99999999999999999999999s",
            r#"bad value "99999999999999999999999s""#,
        ),
        ("loss=2%%", r#"bad value "2%%" for "loss""#),
        ("loss=abc", r#"bad value "abc" for "loss""#),
        ("loss=1e-3", r#"bad value "1e-3" for "loss""#),
        ("dup=150%", r#"bad value "150%" for "dup""#),
        ("reorder=1.5", r#"bad value "1.5" for "reorder""#),
        ("corrupt=NaN", r#"bad value "NaN" for "corrupt""#),
        ("burst=0.5", r#"bad value "0.5" for "burst""#),
        ("mtu=0", r#"bad value "0" for "mtu""#),
        ("mtu=1.5", r#"bad value "1.5" for "mtu""#),
        ("mtu=+5", r#"bad value "+5" for "mtu""#),
        ("bw=20mbyte", r#"bad value "20mbyte" for "bw""#),
        ("bw=0mbit", r#"bad value "0mbit" for "bw""#),
        ("queue=1gb", r#"bad value "1gb" for "queue""#),
        ("down=2s", r#"bad value "2s" for "down""#),
        ("down=2s-5", r#"bad value "2s-5" for "down""#),
        (
            "down=5s-2s",
            r#"outage "5s-2s" in path spec does not end after it starts"#,
        ),
        ("down=2s-2s", r#"outage "2s-2s""#),
        ("pmtud=yes", r#"bad value "yes" for "pmtud""#),
        (
            "loss=90%,burst=2",
            "invalid path spec: loss 0.9 cannot be reached",
        ),
    ];
    for (spec, message) in cases {
        let err = parse_err(spec).to_string();
        assert!(
            err.contains(message),
            "{spec:?}: {err:?} should contain {message:?}"
        );
    }
    assert_eq!(
        parse_err("dealy=1ms"),
        SpecError::UnknownKey("dealy".into())
    );
    assert!(matches!(
        parse_err("loss=100%,burst=3"),
        SpecError::Invalid(ConfigError::LossTooHighForBurst { .. })
    ));
}

#[test]
fn display_writes_a_spec_that_parses_back() {
    for spec in [
        "",
        "delay=30ms,jitter=5ms,loss=2%,burst=3,dup=0.1%,reorder=1%,corrupt=0.1%,mtu=1200,\
         bw=20mbit,queue=64kb,down=2s-5s,down=6s-6.5s,pmtud=on",
        "delay=0us,jitter=0.001us,bw=1bps,queue=0",
        "delay=1.000000001s,bw=1.234567gbit,queue=1000,loss=0.1234567%",
        "delay=3ms,burst=1,queue=3mb,bw=999kbit,down=0s-1us",
    ] {
        let config = parse(spec);
        let written = config.to_string();
        assert_eq!(
            parse(&written),
            config,
            "{spec:?} was written as {written:?}"
        );
    }
    for tiny in [1e-40, f64::MIN_POSITIVE, 5e-324] {
        let config = LinkConfig {
            dup: tiny,
            ..LinkConfig::default()
        };
        assert_eq!(parse(&config.to_string()), config, "dup={tiny:e}");
    }
    assert_eq!(
        parse("delay=1.5ms,loss=2%,bw=20mbit,down=2s-5s").to_string(),
        "delay=1.5ms,loss=0.02,mtu=1200,bw=20mbit,down=2s-5s"
    );
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..10_000_000_000_000).prop_map(Duration::from_nanos),
        (0u64..100_000).prop_map(Duration::from_millis),
    ]
}

fn probability() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(1.0),
        0.0..=1.0f64,
        (0u32..=1000).prop_map(|n| f64::from(n) / 1000.0)
    ]
}

fn valid_config() -> impl Strategy<Value = LinkConfig> {
    (
        (
            duration(),
            duration(),
            probability(),
            prop::option::of(1.0..50.0f64),
        ),
        (probability(), probability(), probability(), 1usize..100_000),
        (
            prop::option::of(1u64..u64::MAX),
            0usize..10_000_000,
            any::<bool>(),
        ),
        prop::collection::vec((duration(), duration()), 0..3),
        prop::collection::vec((duration(), 1usize..100_000), 0..3),
    )
        .prop_map(
            |(
                (delay, jitter, loss, burst),
                (dup, reorder, corrupt, mtu),
                rest,
                windows,
                mtu_changes,
            )| {
                let (bandwidth_bps, queue_bytes, pmtud) = rest;
                let loss = match burst {
                    Some(n) => loss.min(n / (n + 1.0)),
                    None => loss,
                };
                let outages = windows
                    .into_iter()
                    .map(|(start, length)| (start, start + length + Duration::from_nanos(1)))
                    .collect();
                LinkConfig {
                    delay,
                    jitter,
                    loss,
                    burst,
                    dup,
                    reorder,
                    corrupt,
                    mtu,
                    bandwidth_bps,
                    queue_bytes,
                    outages,
                    mtu_changes,
                    pmtud,
                }
            },
        )
}

proptest! {
    #[test]
    fn any_valid_config_round_trips_through_display(config in valid_config()) {
        prop_assert!(config.validate().is_ok());
        let written = config.to_string();
        prop_assert_eq!(written.parse::<LinkConfig>(), Ok(config), "{}", written);
    }

    #[test]
    fn arbitrary_text_never_panics(spec in "\\PC{0,64}") {
        let _ = spec.parse::<LinkConfig>();
    }

    #[test]
    fn spec_like_text_never_panics(
        items in prop::collection::vec(
            "(delay|jitter|loss|burst|dup|reorder|corrupt|mtu|bw|queue|down|pmtud|x)?=?[0-9.%-]{0,12}(us|ms|s|kb|mb|kbit|gbit|bps|on|%)?",
            0..6,
        )
    ) {
        let _ = items.join(",").parse::<LinkConfig>();
    }
}
