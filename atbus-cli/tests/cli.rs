//! The `atbus` binary, run as a user would.

use std::path::PathBuf;
use std::process::Command;

fn atbus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_atbus"))
}

fn vector(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/vectors")
        .join(name)
}

#[test]
fn decode_prints_every_frame_and_fragment_of_a_vector() {
    let out = atbus()
        .arg("decode")
        .arg(vector("data_three_fragments.bin"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("frame 0:"), "{stdout}");
    assert!(stdout.contains(r#"data: b"hello ""#), "{stdout}");
    assert!(stdout.contains("packet_type: 100"), "{stdout}");
    assert!(!stdout.contains("frame 1:"), "{stdout}");
}

#[test]
fn decode_reports_a_corrupted_frame_and_fails() {
    let mut bytes = std::fs::read(vector("ack.bin")).unwrap();
    bytes[10] ^= 1;
    let path = std::env::temp_dir().join(format!("atbus-cli-corrupt-{}.bin", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let out = atbus().arg("decode").arg(&path).output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("checksum mismatch"));
}

#[test]
fn demo_says_plainly_that_it_is_not_available_yet() {
    let out = atbus().arg("demo").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not available yet"));
}
