//! One progress display for every command (indicatif).

use indicatif::{ProgressBar, ProgressStyle};
use orfeas_engine::weights::LoadProgress;

pub fn bytes_bar(total: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

/// Mirror loader progress events onto a bar.
pub fn show_load(bar: &ProgressBar, p: &LoadProgress) {
    bar.set_prefix(p.model.clone());
    bar.set_length(p.bytes_total);
    bar.set_position(p.bytes_done);
    let phase = p.phase.name();
    bar.set_message(format!(
        "{phase} shard {}/{} tensors {}/{}{}",
        p.shards_done,
        p.shards_total,
        p.tensors_done,
        p.tensors_total,
        if p.from_cache { " (local)" } else { "" }
    ));
}
