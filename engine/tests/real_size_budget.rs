//! Every network at the official widths and token counts (depth reduced to keep it
//! affordable; random weights) under WebGPU's default 128 MiB storage binding: the largest
//! activation any op makes (projections, concatenations, attention scores and their f32
//! copies, recorded as they are made) stays within it. Run in f32 on the CPU backend: every
//! f16 activation is at most its f32 counterpart (the f32 islands are counted here too).
//! (A binary of its own: the budget and the recorder are process-wide.)

use burn::tensor::{Device, Distribution, Tensor};
use orfeas_engine::models::dinov2::Dinov2Config;
use orfeas_engine::models::hunyuan3d_dit::Hunyuan3dDitConfig;
use orfeas_engine::models::hunyuandit_plain::HunyuanDitPlainConfig;
use orfeas_engine::models::shape_vae::ShapeVaeConfig;
use orfeas_engine::models::{
    DEFAULT_BUFFER_BUDGET, largest_activation_bytes, reset_largest_intermediate, set_buffer_budget,
};

const MIB: f64 = (1 << 20) as f64;

fn measure(what: &str, run: impl FnOnce()) -> usize {
    reset_largest_intermediate();
    let started = std::time::Instant::now();
    run();
    let largest = largest_activation_bytes();
    eprintln!(
        "{what}: largest activation {:.2} MiB ({:.0} s)",
        largest as f64 / MIB,
        started.elapsed().as_secs_f64()
    );
    assert!(
        largest <= DEFAULT_BUFFER_BUDGET,
        "{what}: {largest} B is over one 128 MiB binding"
    );
    largest
}

fn random(dims: [usize; 3], device: &Device) -> Tensor<3> {
    Tensor::random(dims, Distribution::Normal(0.0, 1.0), device)
}

fn dinov2(json: serde_json::Value) -> Dinov2Config {
    serde_json::from_value(json).unwrap()
}

#[test]
fn the_official_sizes_stay_within_one_binding() {
    set_buffer_budget(DEFAULT_BUFFER_BUDGET);
    let device = orfeas_engine::device::cpu();
    let sync = |t: Tensor<3>| {
        let _ = t.into_data();
    };
    // DINOv2-L at 518 px (2.1), DINOv2-g at 518 px (2.0) and at 1022 px over its 518 px
    // table (2mini-turbo: 5330 tokens).
    let large = dinov2(serde_json::json!({
        "hidden_size": 1024, "num_hidden_layers": 1, "num_attention_heads": 16,
        "patch_size": 14, "image_size": 518, "use_swiglu_ffn": false
    }));
    let giant = dinov2(serde_json::json!({
        "hidden_size": 1536, "num_hidden_layers": 1, "num_attention_heads": 24,
        "patch_size": 14, "image_size": 518, "use_swiglu_ffn": true
    }));
    for (what, config, side) in [
        ("DINOv2-L 518 px", &large, 518),
        ("DINOv2-g 518 px", &giant, 518),
        ("DINOv2-g 1022 px", &giant, 1022),
    ] {
        let model = config.init(&device).resize_positions(side);
        let pixels = Tensor::<4>::random([1, 3, side, side], Distribution::Default, &device);
        measure(what, || sync(model.forward(pixels)));
    }

    // The 2.1 DiT: width 2048, 4096 latents + the timestep token, 1370 image tokens, the CFG
    // batch of 2; three blocks give a skip (U-Net join) and a MoE block (one routed expert:
    // the tensors are the same size with eight, and each costs a full-width MLP here).
    let dit21: HunyuanDitPlainConfig = serde_json::from_value(serde_json::json!({
        "input_size": 4096, "in_channels": 64, "hidden_size": 2048, "context_dim": 1024,
        "depth": 3, "num_heads": 16, "qk_norm": true, "text_len": 1370,
        "with_decoupled_ca": false, "use_attention_pooling": false, "qk_norm_type": "rms",
        "qkv_bias": false, "use_pos_emb": false, "num_moe_layers": 1, "num_experts": 1,
        "moe_top_k": 1
    }))
    .unwrap();
    let model = dit21.init(&device);
    let x = random([2, 4096, 64], &device);
    let context = random([2, 1370, 1024], &device);
    measure("2.1 DiT step (CFG batch 2)", || {
        sync(futures::executor::block_on(model.forward(x, &[0.5, 0.5], context)).unwrap())
    });

    // The 2.0 DiT (3072 latents) and 2mini-turbo's (512 latents, 5330 image tokens): one
    // double- and one single-stream block each.
    for (what, latents, tokens, guidance) in [
        ("2.0 DiT step (CFG batch 2)", 3072, 1370, false),
        ("2mini-turbo DiT step (batch 2)", 512, 5330, true),
    ] {
        let config: Hunyuan3dDitConfig = serde_json::from_value(serde_json::json!({
            "in_channels": 64, "context_in_dim": 1536, "hidden_size": 1024, "mlp_ratio": 4.0,
            "num_heads": 16, "depth": 1, "depth_single_blocks": 1, "axes_dim": [64],
            "theta": 10000, "qkv_bias": true, "guidance_embed": guidance
        }))
        .unwrap();
        let model = config.init(&device);
        let x = random([2, latents, 64], &device);
        let context = random([2, tokens, 1536], &device);
        let g = [5.0, 5.0];
        measure(what, || {
            sync(
                model
                    .forward(x, &[0.5, 0.5], context, guidance.then_some(&g[..]))
                    .unwrap(),
            )
        });
    }

    // The VAE: 4096 latents at width 1024 decoded (one block), their keys/values, and one
    // chunk of the official 8000 field queries.
    let vae: ShapeVaeConfig = serde_json::from_value(serde_json::json!({
        "num_latents": 4096, "embed_dim": 64, "num_freqs": 8, "include_pi": false,
        "heads": 16, "width": 1024, "num_decoder_layers": 1, "qkv_bias": false,
        "qk_norm": true, "scale_factor": 1.0039506158752403
    }))
    .unwrap();
    let model = vae.init(&device).unwrap();
    let latents = random([1, 4096, 64], &device);
    let mut kv = None;
    measure("VAE latents → keys/values", || {
        kv = Some(model.key_values(model.decode_latents(latents)))
    });
    let points = Tensor::<3>::random([1, 8000, 3], Distribution::Uniform(-1.0, 1.0), &device);
    let kv = kv.unwrap();
    measure("VAE field, 8000 queries", || {
        let _ = model.field(points, &kv).into_data();
    });
}
