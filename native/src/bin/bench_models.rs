//! Shape-model benchmark: per-stage time on the CPU backend and on wgpu, for the fixtures'
//! tiny configs and for a synthetic mid-size config (randomly initialised: timing only), and
//! the largest attention-score / MLP-hidden tensor each stage creates, against the buffer
//! budget (WebGPU's default 128 MiB storage binding).
//!
//! `cargo run -p orfeas --bin bench-models -- [--width 512] [--depth 8] [--latents 1024]
//!  [--queries 8192] [--reps 1]`

use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::Device;
use orfeas_engine::models::dinov2::Dinov2Config;
use orfeas_engine::models::dit21::Dit21Config;
use orfeas_engine::models::shape_vae::ShapeVaeConfig;
use orfeas_engine::models::{
    buffer_budget, largest_intermediate_bytes, reset_largest_intermediate,
};
use orfeas_engine::pipeline::{Denoiser, Scheduler, ShapeModel};
use serde_json::Value;

struct Configs {
    name: String,
    dinov2: Dinov2Config,
    dit: Dit21Config,
    vae: ShapeVaeConfig,
}

fn tiny() -> Result<Configs> {
    let dir =
        std::env::var("ORFEAS_FIXTURES").unwrap_or_else(|_| "../shared/fixtures/public".into());
    let text = std::fs::read_to_string(format!("{dir}/fixtures.json"))
        .with_context(|| format!("{dir}/fixtures.json (set ORFEAS_FIXTURES)"))?;
    let all: Value = serde_json::from_str(&text)?;
    Ok(Configs {
        name: "fixture (tiny)".into(),
        dinov2: serde_json::from_value(all["dinov2"]["config"]["config"].clone())?,
        dit: serde_json::from_value(all["dit21"]["config"]["params"].clone())?,
        vae: serde_json::from_value(all["vae"]["config"]["params"].clone())?,
    })
}

fn mid(width: usize, depth: usize, latents: usize) -> Result<Configs> {
    let heads = width / 64;
    Ok(Configs {
        name: format!("synthetic: width {width}, depth {depth}, {latents} latents"),
        dinov2: serde_json::from_value(serde_json::json!({
            "hidden_size": width, "num_hidden_layers": depth, "num_attention_heads": heads,
            "patch_size": 14, "image_size": 224,
        }))?,
        dit: serde_json::from_value(serde_json::json!({
            "in_channels": 64, "hidden_size": width, "context_dim": width, "depth": depth,
            "num_heads": heads, "num_moe_layers": 2, "num_experts": 4, "moe_top_k": 2,
            "qk_norm": true, "qkv_bias": false, "use_attention_pooling": false,
        }))?,
        vae: serde_json::from_value(serde_json::json!({
            "num_latents": latents, "embed_dim": 64, "width": width, "heads": heads,
            "num_decoder_layers": depth, "num_freqs": 8, "scale_factor": 1.0,
            "qk_norm": true, "qkv_bias": false, "include_pi": false,
        }))?,
    })
}

fn build(configs: &Configs, device: &Device) -> Result<ShapeModel> {
    Ok(ShapeModel {
        encoder: configs.dinov2.init(device),
        encoder_size: configs.dinov2.image_size,
        use_cls_token: true,
        image_processor: Default::default(),
        default_steps: orfeas_engine::pipeline::DEFAULT_STEPS,
        denoiser: Denoiser::Plain(Box::new(configs.dit.init(device))),
        scheduler: Scheduler::FlowMatch,
        vae: configs.vae.init(device).map_err(anyhow::Error::msg)?,
        num_latents: configs.vae.num_latents,
        latent_channels: configs.dit.in_channels,
    })
}

/// Best of `reps` timed runs after one warm-up (shader compilation on wgpu), and the largest
/// intermediate of a run.
fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, usize, T) {
    let mut out = f();
    let mut best = f64::INFINITY;
    let mut largest = 0;
    for _ in 0..reps.max(1) {
        reset_largest_intermediate();
        let started = Instant::now();
        out = f();
        best = best.min(started.elapsed().as_secs_f64());
        largest = largest.max(largest_intermediate_bytes());
    }
    (best, largest, out)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn bench(
    configs: &Configs,
    backend: &str,
    device: &Device,
    queries: usize,
    reps: usize,
) -> Result<()> {
    let model = build(configs, device)?;
    let side = 512;
    let image: Vec<f32> = (0..3 * side * side)
        .map(|i| ((i % 97) as f32 / 48.0) - 1.0)
        .collect();
    let points: Vec<[f32; 3]> = (0..queries)
        .map(|i| {
            let t = i as f32 / queries as f32;
            [t * 2.0 - 1.0, (t * 37.0).sin(), (t * 11.0).cos()]
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let (encode, encode_mem, cond) = time(reps, || {
        let cond = model.condition(&image, side, side);
        let _ = cond.to_data();
        cond
    });
    // steps = 2: sigmas [0, 1, 1], so exactly one CFG model call (the dt = 0 one is skipped).
    let (step, step_mem, latents) = time(reps, || {
        let latents =
            runtime.block_on(model.sample(cond.clone(), model.noise(1), 2, 5.0, |_, _| {}));
        let _ = latents.to_data();
        latents
    });
    let (decode, decode_mem, kv) = time(reps, || {
        let kv = model.key_values(latents.clone());
        let _ = runtime
            .block_on(model.field_at(&points[..1], &kv))
            .expect("field");
        kv
    });
    let (field, field_mem, _) = time(reps, || {
        runtime
            .block_on(model.field_at(&points, &kv))
            .expect("field")
    });
    let row = |stage: &str, secs: f64, mem: usize| {
        println!(
            "| {} | {backend} | {stage} | {:.3} | {:.2} |",
            configs.name,
            secs,
            mib(mem)
        );
    };
    row("DINOv2 encode", encode, encode_mem);
    row("DiT step (CFG batch 2)", step, step_mem);
    row("VAE latents → keys/values", decode, decode_mem);
    row(&format!("VAE field, {queries} points"), field, field_mem);
    Ok(())
}

fn main() -> Result<()> {
    let (mut width, mut depth, mut latents, mut queries, mut reps) = (512, 8, 1024, 8192, 1);
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value: usize = pair.get(1).context("a flag without a value")?.parse()?;
        match pair[0].as_str() {
            "--width" => width = value,
            "--depth" => depth = value,
            "--latents" => latents = value,
            "--queries" => queries = value,
            "--reps" => reps = value,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    println!(
        "buffer budget {:.0} MiB; best of {reps} after a warm-up; seconds; largest = the biggest \
         attention-score or MLP-hidden tensor of the stage",
        mib(buffer_budget())
    );
    println!("| config | backend | stage | seconds | largest (MiB) |");
    println!("|---|---|---|---|---|");
    let mut devices = vec![("cpu", orfeas_engine::device::cpu())];
    match orfeas_engine::device::gpu() {
        Some(gpu) => devices.push(("wgpu", gpu)),
        None => eprintln!("no wgpu adapter: CPU only"),
    }
    for configs in [tiny()?, mid(width, depth, latents)?] {
        for (backend, device) in &devices {
            bench(&configs, backend, device, queries, reps)?;
        }
    }
    Ok(())
}
