//! The UI's own wording of sizes and load progress (the figures shared with the worker are in
//! [`orfeas_app::text`]).

use orfeas_app::protocol::{LoadProgress, Phase};
use orfeas_app::text::fixed;

/// "88.0 MB".
pub fn megabytes(bytes: u64) -> String {
    format!("{} MB", fixed(bytes as f64 / 1e6, 1))
}

/// A download's size as a person reads it: "88.0 MB", "1.09 GB".
pub fn download_size(bytes: u64) -> String {
    if bytes >= 1_000_000_000 {
        format!("{} GB", fixed(bytes as f64 / 1e9, 2))
    } else {
        megabytes(bytes)
    }
}

/// "12.3 / 88.0 MB (14 %) · 5.2 MB/s · ETA 13 s · fetch · from cache"
pub fn progress_line(p: &LoadProgress) -> String {
    let mut parts = vec![format!(
        "{} / {} ({} %)",
        megabytes(p.bytes_done),
        megabytes(p.bytes_total),
        fixed(p.fraction() * 100.0, 0)
    )];
    if p.bytes_per_sec > 0.0 && p.phase != Phase::Ready {
        parts.push(format!("{} MB/s", fixed(p.bytes_per_sec / 1e6, 1)));
    }
    if let Some(eta) = p.eta_s.filter(|_| p.phase != Phase::Ready) {
        parts.push(format!("ETA {} s", fixed(eta.ceil(), 0)));
    }
    parts.push(p.phase.to_string());
    if p.from_cache {
        parts.push("from cache".into());
    }
    parts.join(" · ")
}
