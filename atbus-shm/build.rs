//! Declares the `loom` cfg so that `--cfg loom` model-checking builds are not
//! reported as unexpected.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
