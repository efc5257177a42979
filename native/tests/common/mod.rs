//! Shared by the CLI tests: the fixture folder and running the `orfeas` binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// `ORFEAS_FIXTURES`, default `../shared/fixtures/public`.
pub fn fixtures() -> PathBuf {
    std::env::var_os("ORFEAS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/public")
        })
}

pub fn orfeas(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orfeas"))
        .args(args)
        .output()
        .expect("orfeas runs")
}

/// Everything the run printed, stdout then stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
