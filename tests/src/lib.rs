//! End-to-end test support: a real HTTP server for the built web app and its model shards,
//! with faults to inject per shard ([`server`]); a real Chromium driven over WebDriver
//! ([`browser`]); small generated shard sets ([`model`]).

pub mod browser;
pub mod model;
pub mod server;

use std::path::PathBuf;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The shared fixtures: `$ORFEAS_FIXTURES` or `<repo>/../shared/fixtures/public`.
pub fn fixtures_dir() -> PathBuf {
    let dir = std::env::var_os("ORFEAS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/fixtures/public"));
    // Canonical, as WebDriver wants for uploads.
    dir.canonicalize().unwrap_or(dir)
}

/// The trunk-built app: `$ORFEAS_DIST` or `<repo>/dist`.
pub fn dist_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("ORFEAS_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("dist"));
    anyhow::ensure!(
        dir.join("index.html").is_file() && dir.join("orfeas-worker_bg.wasm").is_file(),
        "no built web app in {} (run `trunk build --release` first; scripts/test.sh does)",
        dir.display()
    );
    Ok(dir)
}
