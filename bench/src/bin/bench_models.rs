//! Shape-model benchmark at the official sizes. `--preset` builds a variant's real architecture
//! (its widths, heads, token counts, latents and DINOv2 size, from the same `config.yaml` the
//! synthetic checkpoints use) with random weights, and times each stage: the conditioner, one
//! DiT step (with its CFG batch where the variant uses one), the VAE's keys/values, the field
//! for one 8000-point chunk and marching cubes at octree 256; with the peak memory (process
//! peak RSS on the CPU backend, the device pool's reservation on wgpu) and the largest
//! activation of the stage. `--depth N` below the real depth builds N layers per network and
//! prints the per-layer figure and its extrapolation to the real depth, stated as such.
//! Lines end with `ratio=` where a peer ran in the same process: the 2.1 MoE routed ÷ every
//! expert on every token, attention's FLOP rate ÷ a plain matmul's of the same work, and on
//! wgpu the fused attention kernel's time ÷ the sliced path's.
//! Without `--preset`: the fixtures' tiny configs, every stage on both backends.
//!
//! `cargo run -p orfeas --bin bench-models -- --preset 2.1 --depth 2 [--backend cpu|wgpu]
//!  [--dtype f32|f16] [--reps 1] [--octree 256] [--quant q8|q4] [--volume]`

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Device, Distribution, Tensor};
use clap::{Parser, ValueEnum};
use orfeas::synthetic::Variant;
use orfeas_engine::mesh::marching_cubes::{Field, marching_cubes};
use orfeas_engine::models::{
    attend, buffer_budget, flash_attention, largest_activation_bytes, reset_largest_intermediate,
    set_flash_attention,
};
use orfeas_engine::pipeline::{Architecture, Denoiser, ShapeConfig, ShapeModel};
use orfeas_engine::volume::Grid;
use orfeas_engine::weights::quant::quantize_module;
use serde_json::Value;

#[derive(Parser)]
#[command(about = "Per-stage time and memory of the shape model at the official sizes")]
struct Args {
    /// The official variant to build (random weights); none: the fixtures' tiny configs.
    #[arg(long, value_enum)]
    preset: Option<Variant>,
    /// Layers per network (DINOv2, DiT blocks, VAE decoder) when below the real depth; the 2.0
    /// family's DiT gets N double- and 2N single-stream blocks (the official 1 : 2).
    #[arg(long)]
    depth: Option<usize>,
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Precision,
    /// Timed runs per stage after one warm-up (the best is printed).
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Marching cubes' octree resolution (the official default 256).
    #[arg(long, default_value_t = 256)]
    octree: usize,
    /// Field queries per chunk (the official num_chunks 8000).
    #[arg(long, default_value_t = 8000)]
    chunk: usize,
    /// Every stage with attention over query slices instead of the fused kernel (wgpu), to
    /// time whole stages both ways; the self-attention lines still compare the two, the
    /// cross-attention line runs as the stages do.
    #[arg(long)]
    sliced_attention: bool,
    /// After the DiT step with float weights, quantize the DiT's projections (q8 or q4, as a
    /// quantized shard set stores them) and time the step again: `ratio=` quantized ÷ float.
    #[arg(long)]
    quant: Option<orfeas_engine::weights::Precision>,
    /// Only the DiT step (and its quantized peers): the context is random, of the
    /// conditioner's output shape, so that a full-depth step is measured without the
    /// conditioner's full-depth runs.
    #[arg(long)]
    dit_only: bool,
    /// With `--quant`: time only the engine's default product for that precision and backend
    /// instead of both (burn's quantized matmul and dequantizing before the product).
    #[arg(long)]
    default_product_only: bool,
    /// Also decode the whole volume at `--octree` from the same latents both ways: the
    /// engine's coarse-to-fine and FlashVDM (the official enable_flashvdm): time, queries,
    /// faces, the distance between the two meshes, and `ratio=` FlashVDM ÷ coarse-to-fine.
    #[arg(long)]
    volume: bool,
    /// No untimed first run on wgpu (its kernels then compile inside the timed run: seconds,
    /// against minutes for a full-depth step).
    #[arg(long)]
    no_warm_up: bool,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Backend {
    Cpu,
    Wgpu,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Precision {
    F32,
    F16,
}

/// One stage's measurement.
struct Measured {
    seconds: f64,
    /// Process peak RSS (CPU backend) or device pool reservation (wgpu), bytes.
    peak: Option<u64>,
    largest: usize,
}

/// Whether stages run once untimed first: on wgpu the first run compiles the kernels; the CPU
/// backend has nothing to compile, and at real sizes a second run costs minutes.
static WARM_UP: AtomicBool = AtomicBool::new(true);

/// Runs `f` once to warm up (see [`WARM_UP`]), then `reps` times, and keeps the best time,
/// the peak memory and the largest activation of the timed runs.
fn measure<T>(device: &Device, reps: usize, mut f: impl FnMut() -> T) -> (Measured, T) {
    let mut out = WARM_UP.load(Ordering::Relaxed).then(&mut f);
    let mut best = f64::INFINITY;
    let mut peak = None;
    let mut largest = 0;
    for _ in 0..reps.max(1) {
        drop(out.take());
        device.memory_cleanup();
        reset_peak_rss();
        reset_largest_intermediate();
        let started = Instant::now();
        out = Some(f());
        best = best.min(started.elapsed().as_secs_f64());
        largest = largest.max(largest_activation_bytes());
        let now = match device.memory_pool_usage() {
            Some(usage) => Some(usage.bytes_reserved),
            None => peak_rss(),
        };
        peak = peak.max(now);
    }
    let measured = Measured {
        seconds: best,
        peak,
        largest,
    };
    (measured, out.expect("at least one run"))
}

/// Resets the kernel's peak-RSS counter (VmHWM) of this process (Linux ≥ 4.0).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Casts every float parameter to `dtype` (random weights are made in f32).
struct CastTo(DType);

impl ModuleMapper for CastTo {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

/// The real layer counts of the three networks, and those built.
#[derive(Clone, Copy)]
struct Depths {
    encoder: (usize, usize),
    dit: (usize, usize),
    /// The 2.1 DiT's MoE blocks, real and built.
    moe: (usize, usize),
    vae: (usize, usize),
}

/// `variant`'s official config, with at most `depth` layers per network.
fn preset(variant: Variant, depth: Option<usize>) -> Result<(ShapeConfig, Depths)> {
    let yaml: Value = yaml_serde::from_str(&variant.config_yaml(false))?;
    let detected = orfeas::convert::variant_from_config(&yaml)?;
    let [conditioner, denoiser, vae] = orfeas::convert::configs(&yaml, &detected)?;
    let mut config =
        ShapeConfig::from_values(&conditioner, &denoiser, &vae).map_err(anyhow::Error::msg)?;
    let cut = |real: usize| depth.map_or(real, |d| d.clamp(1, real));
    let encoder = &mut config.conditioner.config.num_hidden_layers;
    let encoder_depths = (*encoder, cut(*encoder));
    *encoder = encoder_depths.1;
    let (dit_depths, moe_depths) = match &mut config.denoiser.architecture {
        Architecture::HunYuanDiTPlain { params } => {
            let real = (params.depth, params.num_moe_layers);
            params.depth = cut(real.0);
            // Keep the real share of MoE blocks (6 of 21), at least one when any is cut.
            params.num_moe_layers = ((real.1 * params.depth) as f64 / real.0 as f64)
                .round()
                .max(1.0) as usize;
            ((real.0, params.depth), (real.1, params.num_moe_layers))
        }
        Architecture::Hunyuan3DDiT { params } => {
            let real = params.depth;
            params.depth = cut(real);
            params.depth_single_blocks = params.depth_single_blocks * params.depth / real;
            ((real, params.depth), (0, 0))
        }
    };
    let layers = &mut config.vae.params.num_decoder_layers;
    let vae_depths = (*layers, cut(*layers));
    *layers = vae_depths.1;
    let depths = Depths {
        encoder: encoder_depths,
        dit: dit_depths,
        moe: moe_depths,
        vae: vae_depths,
    };
    Ok((config, depths))
}

/// The networks of `config` with random weights, in `dtype`.
fn build(config: &ShapeConfig, dtype: DType, device: &Device) -> Result<ShapeModel> {
    let mut cast = CastTo(dtype);
    let encoder = config
        .conditioner
        .config
        .init(device)
        .resize_positions(config.conditioner.image_size)
        .map(&mut cast);
    let (denoiser, channels) = match &config.denoiser.architecture {
        Architecture::HunYuanDiTPlain { params } => (
            Denoiser::Plain(Box::new(params.init(device).map(&mut cast))),
            params.in_channels,
        ),
        Architecture::Hunyuan3DDiT { params } => (
            Denoiser::Flux(Box::new(params.init(device).map(&mut cast))),
            params.in_channels,
        ),
    };
    let vae = config
        .vae
        .params
        .init(device)
        .map_err(anyhow::Error::msg)?
        .map(&mut cast);
    Ok(ShapeModel {
        encoder,
        encoder_size: config.conditioner.image_size,
        use_cls_token: config.conditioner.use_cls_token.unwrap_or(true),
        views: None,
        image_processor: config.conditioner.image_processor.unwrap_or_default(),
        default_steps: config.default_steps(),
        denoiser,
        scheduler: config.denoiser.scheduler,
        vae,
        num_latents: config.vae.params.num_latents,
        latent_channels: channels,
    })
}

/// Prints one stage: time, memory, largest activation, and with fewer layers than the real
/// model the per-layer time and its extrapolation.
fn report(stage: &str, what: &str, m: &Measured, layers: Option<(usize, usize)>, tail: &str) {
    let peak = m.peak.map_or("n/a".into(), gib);
    let mut line = format!(
        "{stage:<22} {:>9.3} s | peak {peak} | largest {} | {what}",
        m.seconds,
        mib(m.largest)
    );
    if let Some((real, built)) = layers
        && built < real
    {
        let per_layer = m.seconds / built as f64;
        line.push_str(&format!(
            " | {built} of {real} layers: {per_layer:.3} s per layer → {:.1} s at {real} \
             (extrapolated)",
            per_layer * real as f64
        ));
    }
    if !tail.is_empty() {
        line.push_str(" | ");
        line.push_str(tail);
    }
    println!("{line}");
}

/// One MLP input projection at the DiT's size (`x` `[batch, tokens, width]` times a
/// `[width, 4·width]` weight) with float weights and with `precision` weights through each
/// product: the kernels alone, without the rest of the step.
fn projection_products(
    device: &Device,
    reps: usize,
    precision: orfeas_engine::weights::Precision,
    dtype: DType,
    [batch, tokens, width]: [usize; 3],
) {
    use burn::tensor::TensorData;
    use orfeas_engine::models::{QuantizedProducts, fused_product, set_quantized_products};
    use orfeas_engine::weights::quant;
    let out = 4 * width;
    let x = Tensor::<3>::random(
        [batch, tokens, width],
        Distribution::Normal(0.0, 1.0),
        device,
    )
    .cast(dtype);
    let rows = Tensor::<2>::random([out, width], Distribution::Normal(0.0, 0.05), device);
    let values: Vec<f32> = rows
        .clone()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 values");
    let float = rows.cast(dtype).transpose();
    let block = quant::block_for(width).expect("a block divides the width");
    let bytes = quant::quantize(&values, [out, width], precision, block);
    // As the loader uploads it for this compute dtype, then `[in, out]` as a linear layer's.
    let info = quant::QuantInfo::new(precision, block, vec![out, width]);
    let (bytes, scheme) = quant::for_compute(&info, precision, &bytes, dtype);
    let quantized = Tensor::<2>::from_data(
        TensorData::from_bytes_vec(bytes, [out, width], DType::QFloat(scheme)),
        device,
    )
    .transpose();
    let product = |weight: &Tensor<2>| {
        let weight = orfeas_engine::models::product_weight(weight.clone(), dtype);
        sync(&x.clone().matmul(weight.unsqueeze::<3>()));
    };
    let (f, ()) = measure(device, reps, || product(&float));
    let what = format!("{batch} × {tokens} × {width} · {width} × {out}");
    report(
        "projection",
        &format!("{what}, {dtype:?} weights"),
        &f,
        None,
        "",
    );
    for (products, how) in [
        (QuantizedProducts::Fused, "through burn's quantized matmul"),
        (QuantizedProducts::Dequantized, "dequantized just before it"),
    ] {
        set_quantized_products(products);
        let value = quant::scheme(precision, block).value;
        if products == QuantizedProducts::Fused && !fused_product(value, device) {
            continue;
        }
        let (q, ()) = measure(device, reps, || product(&quantized));
        report(
            "projection",
            &format!("{what}, {precision} weights {how}"),
            &q,
            None,
            &format!("ratio={:.3} (÷ {dtype:?} weights)", q.seconds / f.seconds),
        );
    }
    set_quantized_products(QuantizedProducts::Measured);
}

/// Waits for the device to finish `t` (a bare `into_data` returns before: native reads are
/// lazy until the bytes are touched).
fn sync<const D: usize>(t: &Tensor<D>) {
    futures::executor::block_on(orfeas_engine::device::computed(t)).expect("the device computes");
}

fn bench_preset(args: &Args, variant: Variant) -> Result<()> {
    let device = match args.backend {
        Backend::Cpu => orfeas_engine::device::cpu(),
        Backend::Wgpu => orfeas_engine::device::gpu().context("no wgpu adapter")?,
    };
    let dtype = match args.dtype {
        Precision::F32 => DType::F32,
        Precision::F16 => DType::F16,
    };
    if dtype == DType::F16 && !device.supports_dtype(DType::F16) {
        bail!("this device has no f16 support");
    }
    let (config, depths) = preset(variant, args.depth)?;
    let started = Instant::now();
    let mut model = build(&config, dtype, &device)?;
    let backend = match args.backend {
        Backend::Cpu => "cpu (flex)",
        Backend::Wgpu => "wgpu",
    };
    println!(
        "Hunyuan3D-{} at its official sizes (random weights), {backend}, {:?}; best of {}{}; \
         buffer budget {}; built in {:.1} s",
        variant.name(),
        dtype,
        args.reps,
        if WARM_UP.load(Ordering::Relaxed) {
            " after a warm-up"
        } else {
            ""
        },
        mib(buffer_budget()),
        started.elapsed().as_secs_f64()
    );
    let reps = args.reps;

    // Conditioner: DINOv2 on one image at the encoder's size.
    let side = config.conditioner.image_size;
    let image: Vec<f32> = (0..3 * side * side)
        .map(|i| ((i % 97) as f32 / 48.0) - 1.0)
        .collect();
    let cond = if args.dit_only {
        let encoder = &config.conditioner.config;
        let patches = (side / encoder.patch_size).pow(2);
        let tokens = patches + usize::from(config.conditioner.use_cls_token != Some(false));
        Tensor::<3>::random(
            [1, tokens, encoder.hidden_size],
            Distribution::Normal(0.0, 1.0),
            &device,
        )
        .cast(dtype)
    } else {
        let (m, cond) = measure(&device, reps, || {
            let cond = model.condition(&image, side, side);
            sync(&cond);
            cond
        });
        let [_, tokens, _] = cond.dims();
        let encoder = &config.conditioner.config;
        report(
            "conditioner",
            &format!(
                "DINOv2 width {} at {side} px → {tokens} tokens",
                encoder.hidden_size
            ),
            &m,
            Some(depths.encoder),
            "",
        );
        cond
    };
    let [_, tokens, _] = cond.dims();

    // One DiT step: the CFG batch [x, x] with [cond, zeros], or batch 1 with the guidance
    // input for guidance-distilled variants.
    let distilled = model.denoiser.guidance_distilled();
    let batch = if distilled { 1 } else { 2 };
    let latents = config.vae.params.num_latents;
    let x = Tensor::<3>::random(
        [batch, latents, model.latent_channels],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let context = if distilled {
        cond.clone()
    } else {
        Tensor::cat(vec![cond.clone(), cond.zeros_like()], 0)
    };
    let t = vec![0.5; batch];
    let guidance = distilled.then(|| vec![5.0; batch]);
    let step = |model: &ShapeModel| {
        let v = futures::executor::block_on(model.denoiser.forward(
            x.clone(),
            &t,
            context.clone(),
            guidance.as_deref(),
        ))
        .expect("a DiT step");
        sync(&v);
    };
    let (m, ()) = measure(&device, reps, || step(&model));
    let (dit_name, width, heads, self_tokens) = match &config.denoiser.architecture {
        Architecture::HunYuanDiTPlain { params } => (
            format!(
                "HunYuanDiTPlain width {}, {} of {} blocks MoE ({} of {} in the real model: \
                 the extrapolation keeps this mix; {} experts, top {})",
                params.hidden_size,
                depths.moe.1,
                depths.dit.1,
                depths.moe.0,
                depths.dit.0,
                params.num_experts,
                params.moe_top_k
            ),
            params.hidden_size,
            params.num_heads,
            latents + 1,
        ),
        Architecture::Hunyuan3DDiT { params } => (
            format!(
                "Hunyuan3DDiT width {}, {} double + {} single blocks",
                params.hidden_size, params.depth, params.depth_single_blocks
            ),
            params.hidden_size,
            params.num_heads,
            latents + tokens,
        ),
    };
    let mut tail = String::new();
    if let Denoiser::Plain(dit) = &mut model.denoiser {
        dit.set_moe_routing(false);
        let (all, ()) = measure(&device, reps, || step(&model));
        if let Denoiser::Plain(dit) = &mut model.denoiser {
            dit.set_moe_routing(true);
        }
        tail = format!(
            "every expert on every token: {:.3} s; ratio={:.3} (MoE routed ÷ all experts)",
            all.seconds,
            m.seconds / all.seconds
        );
    }
    let step_seconds = m.seconds;
    report(
        "DiT step",
        &format!("{dit_name}, batch {batch} × {latents} latents, {tokens} image tokens"),
        &m,
        Some(depths.dit),
        &tail,
    );
    if let Some(precision) = args.quant {
        let in_use = |device: &Device| {
            device.memory_cleanup();
            device.memory_pool_usage().map(|u| u.bytes_in_use)
        };
        let before = in_use(&device);
        let started = Instant::now();
        model.denoiser = match model.denoiser {
            Denoiser::Plain(dit) => Denoiser::Plain(Box::new(quantize_module(
                *dit,
                precision,
                orfeas_engine::models::hunyuandit_plain::checkpoint_name,
            ))),
            Denoiser::Flux(dit) => Denoiser::Flux(Box::new(quantize_module(
                *dit,
                precision,
                orfeas_engine::models::hunyuan3d_dit::checkpoint_name,
            ))),
        };
        let quantized_in = started.elapsed().as_secs_f64();
        let after = in_use(&device);
        // Both ways a quantized weight meets its product, side by side; the engine's default
        // for this precision and backend is the one `fused_product` names.
        use orfeas_engine::models::{QuantizedProducts, fused_product, set_quantized_products};
        let value = orfeas_engine::weights::quant::scheme(precision, 32).value;
        let default_fused = fused_product(value, &device);
        let mut timed = Vec::new();
        for products in [QuantizedProducts::Fused, QuantizedProducts::Dequantized] {
            set_quantized_products(products);
            let is_default = (products == QuantizedProducts::Fused) == default_fused;
            if args.default_product_only && !is_default {
                continue;
            }
            if products == QuantizedProducts::Fused && !fused_product(value, &device) {
                println!(
                    "{:<22} not run | {precision} through burn's quantized matmul: this device's \
                     workgroup memory is too small for it",
                    "DiT step"
                );
                continue;
            }
            let (q, ()) = measure(&device, reps, || step(&model));
            timed.push((products, q.seconds));
            let memory = match (before, after) {
                (Some(before), Some(after)) => format!(
                    "; device memory in use after loading {} → {} (ratio={:.3})",
                    gib(before),
                    gib(after),
                    after as f64 / before as f64
                ),
                _ => String::new(),
            };
            let (how, default) = match products {
                QuantizedProducts::Fused => ("through burn's quantized matmul", default_fused),
                _ => (
                    "each weight dequantized just before its product",
                    !default_fused,
                ),
            };
            report(
                "DiT step",
                &format!(
                    "{precision} projections (quantized in {quantized_in:.1} s), {how}{}",
                    if default {
                        " (the engine's default here)"
                    } else {
                        ""
                    }
                ),
                &q,
                Some(depths.dit),
                &format!(
                    "ratio={:.3} ({precision} ÷ {dtype:?} weights, same backend, same run){memory}",
                    q.seconds / step_seconds
                ),
            );
        }
        set_quantized_products(QuantizedProducts::Measured);
        if let [(_, fused), (_, dequantized)] = timed[..] {
            println!(
                "{:<22} {precision}: dequantized before each product ÷ burn's quantized matmul | \
                 ratio={:.3}",
                "DiT step",
                dequantized / fused
            );
        }
        projection_products(&device, reps, precision, dtype, [batch, self_tokens, width]);
    }

    if args.dit_only {
        return Ok(());
    }

    // Attention at the DiT's size: the share of the step, and its FLOP rate against a plain
    // matmul doing the same multiply-adds (what a compute-bound kernel would reach).
    let head_dim = width / heads;
    let qkv = |n: usize| {
        Tensor::<4>::random(
            [batch, heads, n, head_dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        )
        .cast(dtype)
    };
    let (q, k) = (qkv(self_tokens), qkv(self_tokens));
    let whole_run = flash_attention();
    set_flash_attention(true);
    let (m, ()) = measure(&device, reps, || {
        sync(&attend(q.clone(), k.clone(), k.clone()))
    });
    // On the GPU `attend` is the fused kernel; its peer is the sliced path (scores per query
    // slice within the budget, softmax in f32), what every attention ran before it.
    let sliced = (args.backend == Backend::Wgpu).then(|| {
        set_flash_attention(false);
        let (sliced, ()) = measure(&device, reps, || {
            sync(&attend(q.clone(), k.clone(), k.clone()))
        });
        sliced
    });
    set_flash_attention(whole_run);
    let flops = 4.0 * (batch * heads * self_tokens * self_tokens * head_dim) as f64;
    let a = Tensor::<3>::random(
        [batch * heads, self_tokens, head_dim],
        Distribution::Normal(0.0, 1.0),
        &device,
    )
    .cast(dtype);
    let b = a.clone().swap_dims(1, 2);
    // As many heads at a time as keep their scores within one binding (wgpu refuses more).
    let heads_at_once =
        (buffer_budget() / (self_tokens * self_tokens * dtype.size())).clamp(1, batch * heads);
    let (mm, ()) = measure(&device, reps, || {
        // q·kᵀ's multiply-adds twice over, as attention's two matmuls do, without the
        // scores' f32 softmax and query slicing.
        for start in (0..batch * heads).step_by(heads_at_once) {
            let len = heads_at_once.min(batch * heads - start);
            let scores = a
                .clone()
                .narrow(0, start, len)
                .matmul(b.clone().narrow(0, start, len));
            // Each slice read back: its work done before the next is queued, as attention's.
            sync(&scores.matmul(a.clone().narrow(0, start, len)));
        }
    });
    let blocks_built = depths.dit.1;
    let calls = match &config.denoiser.architecture {
        Architecture::HunYuanDiTPlain { .. } => blocks_built,
        Architecture::Hunyuan3DDiT { params } => params.depth + params.depth_single_blocks,
    };
    report(
        "attention (self)",
        &format!(
            "{batch} × {heads} heads × {self_tokens}² × {head_dim}: {:.1} GFLOP, {:.1} GFLOP/s; \
             {calls} per step = {:.0} % of the step",
            flops / 1e9,
            flops / m.seconds / 1e9,
            100.0 * calls as f64 * m.seconds / step_seconds
        ),
        &m,
        None,
        &format!(
            "plain matmuls of the same work: {:.3} s; ratio={:.3} (attention FLOP rate ÷ \
             matmul's)",
            mm.seconds,
            mm.seconds / m.seconds
        ),
    );
    if let Some(sliced) = sliced {
        report(
            "attention (sliced)",
            &format!(
                "the same attention with its scores built per query slice: {:.1} GFLOP/s",
                flops / sliced.seconds / 1e9
            ),
            &sliced,
            None,
            &format!(
                "fused kernel {:.3} s; ratio={:.3} (fused ÷ sliced time)",
                m.seconds,
                m.seconds / sliced.seconds
            ),
        );
    }
    if let Architecture::HunYuanDiTPlain { .. } = &config.denoiser.architecture {
        let kc = qkv(tokens);
        let (m, ()) = measure(&device, reps, || {
            sync(&attend(q.clone(), kc.clone(), kc.clone()))
        });
        let flops = 4.0 * (batch * heads * self_tokens * tokens * head_dim) as f64;
        report(
            "attention (cross)",
            &format!(
                "{batch} × {heads} heads × {self_tokens} × {tokens} × {head_dim}: {:.1} GFLOP, \
                 {:.1} GFLOP/s; {calls} per step = {:.0} % of the step",
                flops / 1e9,
                flops / m.seconds / 1e9,
                100.0 * calls as f64 * m.seconds / step_seconds
            ),
            &m,
            None,
            "",
        );
    }

    // The VAE: latents → decoded → keys/values, then one chunk of field queries.
    let noise = model.noise(1);
    let one_point = [[0.0f32; 3]];
    let (m, kv) = measure(&device, reps, || {
        let kv = model.key_values(noise.clone());
        // One query waits for the keys/values (a lazy device would queue them otherwise).
        futures::executor::block_on(model.field_at(&one_point, &kv)).expect("the field");
        kv
    });
    let vae = &config.vae.params;
    report(
        "VAE keys/values",
        &format!("width {}, {latents} latents", vae.width),
        &m,
        Some(depths.vae),
        "",
    );
    let points: Vec<[f32; 3]> = (0..args.chunk)
        .map(|i| {
            let t = i as f32 / args.chunk as f32;
            [t * 2.0 - 1.0, (t * 37.0).sin(), (t * 11.0).cos()]
        })
        .collect();
    let (m, _) = measure(&device, reps, || {
        futures::executor::block_on(model.field_at(&points, &kv)).expect("the field")
    });
    let grid = Grid::official(args.octree);
    let dims = grid.dims();
    let total: usize = dims.iter().product();
    report(
        "field chunk",
        &format!(
            "{} points (dense octree {} = {total} points ≈ {:.0} chunks)",
            args.chunk,
            args.octree,
            total as f64 / args.chunk as f64
        ),
        &m,
        None,
        "",
    );

    if args.volume {
        compare_volume_decoding(&model, &kv, args, &device)?;
    }

    // Marching cubes on the CPU over the whole dense grid (a sphere-like field).
    let values: Vec<f32> = (0..total)
        .map(|i| {
            let [x, y, z] = grid.point([
                i / (dims[1] * dims[2]),
                (i / dims[2]) % dims[1],
                i % dims[2],
            ]);
            0.6 - (x * x + y * y + z * z).sqrt() + 0.05 * (7.0 * x).sin() * (5.0 * y).cos()
        })
        .collect();
    let cpu = orfeas_engine::device::cpu();
    let (m, mesh) = measure(&cpu, reps, || {
        marching_cubes(Field {
            values: &values,
            dims,
        })
    });
    report(
        "marching cubes",
        &format!(
            "octree {}: {} vertices, {} triangles (CPU)",
            args.octree,
            mesh.positions.len(),
            mesh.triangles.len()
        ),
        &m,
        None,
        "",
    );
    Ok(())
}

/// The whole volume from one set of latents, coarse-to-fine and FlashVDM, side by side.
fn compare_volume_decoding(
    model: &ShapeModel,
    kv: &orfeas_engine::models::shape_vae::KeyValues,
    args: &Args,
    device: &Device,
) -> Result<()> {
    let decode = |flashvdm: bool| {
        let options = orfeas_engine::pipeline::GenerateOptions {
            resolution: args.octree,
            chunk: args.chunk,
            flashvdm,
            ..Default::default()
        };
        futures::executor::block_on(model.surface(kv, &options, |_| {}, || false))
            .expect("the volume decodes")
    };
    let (coarse_m, coarse) = measure(device, args.reps, || decode(false));
    let (flash_m, flash) = measure(device, args.reps, || decode(true));
    let line = |surface: &orfeas_engine::pipeline::Surface| {
        format!(
            "octree {}: {} queries, {} faces",
            args.octree,
            surface.queries,
            surface.mesh.triangles.len()
        )
    };
    report("volume coarse-to-fine", &line(&coarse), &coarse_m, None, "");
    let agreement = match orfeas_engine::mesh::distance::surface_distance(&coarse.mesh, &flash.mesh)
    {
        Some(d) => format!(
            "; meshes apart by {:.3} % mean, {:.3} % Hausdorff of the box",
            d.mean / 2.02 * 100.0,
            d.max / 2.02 * 100.0
        ),
        None => "; no surface to compare (random weights)".into(),
    };
    report(
        "volume FlashVDM",
        &line(&flash),
        &flash_m,
        None,
        &format!(
            "ratio={:.3} (FlashVDM ÷ coarse-to-fine time){agreement}",
            flash_m.seconds / coarse_m.seconds
        ),
    );
    Ok(())
}

/// The fixtures' tiny configs on both backends (what the parity tests run).
fn bench_fixtures(args: &Args) -> Result<()> {
    let dir =
        std::env::var("ORFEAS_FIXTURES").unwrap_or_else(|_| "../shared/fixtures/public".into());
    let text = std::fs::read_to_string(format!("{dir}/fixtures.json"))
        .with_context(|| format!("{dir}/fixtures.json (set ORFEAS_FIXTURES)"))?;
    let all: Value = serde_json::from_str(&text)?;
    let conditioner = serde_json::json!({
        "config": all["dinov2"]["config"]["config"],
        "image_size": all["dinov2"]["config"]["config"]["image_size"],
    });
    let denoiser = serde_json::json!({
        "architecture": "HunYuanDiTPlain",
        "params": all["dit21"]["config"]["params"],
    });
    let vae = serde_json::json!({"params": all["vae"]["config"]["params"]});
    let config =
        ShapeConfig::from_values(&conditioner, &denoiser, &vae).map_err(anyhow::Error::msg)?;
    let mut devices = vec![("cpu", orfeas_engine::device::cpu())];
    match orfeas_engine::device::gpu() {
        Some(gpu) => devices.push(("wgpu", gpu)),
        None => eprintln!("no wgpu adapter: CPU only"),
    }
    println!(
        "fixture (tiny) configs, f32, best of {} after a warm-up",
        args.reps
    );
    for (backend, device) in &devices {
        let model = build(&config, DType::F32, device)?;
        let side = config.conditioner.image_size;
        let image = vec![0.25; 3 * side * side];
        let (m, cond) = measure(device, args.reps, || {
            let cond = model.condition(&image, side, side);
            sync(&cond);
            cond
        });
        report("conditioner", backend, &m, None, "");
        let (m, latents) = measure(device, args.reps, || {
            let latents = futures::executor::block_on(model.sample(
                cond.clone(),
                model.noise(1),
                2,
                5.0,
                |_, _| {},
                || false,
            ))
            .expect("sampling");
            sync(&latents);
            latents
        });
        report("DiT step", backend, &m, None, "");
        let (m, _) = measure(device, args.reps, || {
            let kv = model.key_values(latents.clone());
            futures::executor::block_on(model.field_at(&[[0.0; 3]], &kv)).expect("the field")
        });
        report("VAE keys/values", backend, &m, None, "");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.sliced_attention {
        set_flash_attention(false);
    }
    WARM_UP.store(
        !args.no_warm_up && (args.preset.is_none() || args.backend == Backend::Wgpu),
        Ordering::Relaxed,
    );
    match args.preset {
        Some(variant) => bench_preset(&args, variant),
        None => bench_fixtures(&args),
    }
}
