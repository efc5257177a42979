//! Model parity against the official PyTorch code's outputs on small random-weight configs
//! (`ORFEAS_FIXTURES`, default `../shared/fixtures/public`; see its README). Configs come from
//! `fixtures.json`, weights go through our packer and streaming loader under their official
//! names, and every stage runs on the CPU backend and on wgpu (lavapipe in CI).

use std::path::PathBuf;

use burn::tensor::{DType, Device, Tensor, TensorData};
use orfeas_engine::mesh::{Field, marching_cubes};
use orfeas_engine::models::dinov2::{
    CHECKPOINT_PREFIX, Dinov2Config, checkpoint_name, pixels_tensor, preprocess,
};
use orfeas_engine::models::dit20::Dit20Config;
use orfeas_engine::models::dit21::Dit21Config;
use orfeas_engine::models::shape_vae::ShapeVaeConfig;
use orfeas_engine::sampler::{FlowMatchSchedule, sample};
use orfeas_engine::volume::{Grid, decode_dense};
use orfeas_engine::weights::pack::{PackOptions, pack};
use orfeas_engine::weights::source::DirSource;
use orfeas_engine::weights::{WeightSet, apply_torch_weights, load_all};
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    std::env::var_os("ORFEAS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/public")
        })
}

fn stage(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("fixtures.json")).expect("fixtures.json");
    let all: serde_json::Value = serde_json::from_str(&text).expect("fixtures.json parses");
    all[name].clone()
}

/// Tolerance for an fp32 port: 30× the reference's own fp32-vs-fp64 difference, at least
/// `floor` (the README's suggested value).
fn tolerance(stage: &serde_json::Value, quantity: &str, floor: f32) -> f32 {
    let measured = stage["tol_fp32_vs_fp64"][quantity]["max_abs"]
        .as_f64()
        .unwrap_or(0.0) as f32;
    (measured * 30.0).max(floor)
}

/// The devices to check: the CPU backend always, wgpu when an adapter exists (required in CI).
fn devices() -> Vec<(&'static str, Device)> {
    let mut out = vec![("cpu", orfeas_engine::device::cpu())];
    match orfeas_engine::device::gpu() {
        Some(gpu) => out.push(("wgpu", gpu)),
        None => {
            assert!(
                std::env::var_os("ORFEAS_REQUIRE_GPU").is_none(),
                "ORFEAS_REQUIRE_GPU is set but wgpu found no adapter"
            );
            eprintln!("SKIPPED on wgpu: no adapter (install mesa-vulkan-drivers for lavapipe)");
        }
    }
    out
}

/// Pack a fixture weight file into our shard format and stream it back through the loader.
fn load(file: &str, device: &Device) -> WeightSet {
    let dir = tempfile::tempdir().unwrap();
    pack(
        &[fixtures().join(file)],
        dir.path(),
        &PackOptions {
            shard_size: 256 << 10,
            ..Default::default()
        },
        |_, _| {},
    )
    .expect("pack the fixture weights");
    let source = DirSource::new(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_, weights) = runtime
        .block_on(load_all(&source, device, DType::F32, |_| {}))
        .expect("load the packed weights");
    weights
}

struct Io(Vec<u8>);

impl Io {
    fn read(file: &str) -> Self {
        Self(std::fs::read(fixtures().join(file)).expect("fixture io file"))
    }

    fn tensor(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let view = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("{name} in the io file"));
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (values, view.shape().to_vec())
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "sizes");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn dinov2_name(path: &str) -> String {
    format!("{CHECKPOINT_PREFIX}{}", checkpoint_name(path))
}

#[test]
fn parity_dinov2() {
    let stage = stage("dinov2");
    let config: Dinov2Config =
        serde_json::from_value(stage["config"]["config"].clone()).expect("the HF config");
    let size = stage["config"]["encoder_kwargs"]["image_size"]
        .as_u64()
        .map_or(config.image_size, |s| s as usize);
    let io = Io::read("dinov2.io.safetensors");
    let (image, image_shape) = io.tensor("image_in");
    let (pixels_ref, _) = io.tensor("pixel_values");
    let (hidden_ref, hidden_shape) = io.tensor("last_hidden_state");

    // The transform is plain CPU code: the same on every backend.
    let pixels = preprocess(&image, image_shape[2], image_shape[3], size);
    let diff = max_abs_diff(&pixels, &pixels_ref);
    let tol = tolerance(&stage, "pixel_values", 1e-5);
    eprintln!("dinov2 transform: max abs diff {diff:.2e} (tolerance {tol:.1e})");
    assert!(diff <= tol, "transform differs by {diff}");

    let tol = tolerance(&stage, "last_hidden_state", 1e-4);
    for (name, device) in devices() {
        let weights = load("dinov2.weights.safetensors", &device);
        let model = apply_torch_weights(config.init(&device), weights, dinov2_name)
            .unwrap_or_else(|e| panic!("{e}"));
        let input = pixels_tensor(pixels_ref.clone(), size, &device);
        let states = model.hidden_states(input.clone());
        for (i, state) in states.into_iter().enumerate() {
            let (reference, _) = io.tensor(&format!("hidden_states.{i}"));
            let diff = max_abs_diff(&values(state), &reference);
            assert!(diff <= tol, "{name}: hidden state {i} differs by {diff}");
        }
        let out = model.forward(input);
        assert_eq!(out.dims().to_vec(), hidden_shape, "{name}: output shape");
        let diff = max_abs_diff(&values(out), &hidden_ref);
        eprintln!(
            "dinov2 on {name}: last_hidden_state max abs diff {diff:.2e} (tolerance {tol:.1e})"
        );
        assert!(diff <= tol, "{name}: last_hidden_state differs by {diff}");
        // And from the raw image, through the transform.
        let from_image = model.forward(pixels_tensor(pixels.clone(), size, &device));
        let diff = max_abs_diff(&values(from_image), &hidden_ref);
        assert!(
            diff <= tol * 2.0,
            "{name}: image → hidden state differs by {diff}"
        );
    }
}

#[test]
fn dinov2_names_a_wrong_checkpoint() {
    // A checkpoint with a layer the model does not have is refused, naming its tensors.
    let stage = stage("dinov2");
    let mut config: Dinov2Config =
        serde_json::from_value(stage["config"]["config"].clone()).unwrap();
    config.num_hidden_layers -= 1;
    let device = orfeas_engine::device::cpu();
    let weights = load("dinov2.weights.safetensors", &device);
    let err = apply_torch_weights(config.init(&device), weights, dinov2_name).unwrap_err();
    let last = config.num_hidden_layers;
    assert!(err.missing.is_empty() && err.mismatched.is_empty(), "{err}");
    assert!(
        err.unexpected
            .iter()
            .any(|n| n.contains(&format!("encoder.layer.{last}."))),
        "{err}"
    );
}

#[test]
fn parity_vae() {
    let stage = stage("vae");
    let config: ShapeVaeConfig =
        serde_json::from_value(stage["config"]["params"].clone()).expect("the ShapeVAE params");
    let resolution = stage["config"]["octree_resolution"]
        .as_u64()
        .expect("octree_resolution") as usize;
    let io = Io::read("vae.io.safetensors");
    let (latents, latents_shape) = io.tensor("latents_in");
    let (decoded_ref, _) = io.tensor("decoded_latents");
    let (points_ref, _) = io.tensor("query_points");
    let (field_ref, _) = io.tensor("field");
    let tol = tolerance(&stage, "field_same_latents", 5e-5);

    // Our grid is the official one, point for point.
    let grid = Grid::official(resolution);
    let n = grid.points_per_axis();
    for (index, point) in points_ref.chunks_exact(3).enumerate() {
        let ours = grid.point([index / (n * n), index / n % n, index % n]);
        assert_eq!(ours.as_slice(), point, "grid point {index}");
    }
    for (name, device) in devices() {
        let weights = load("vae.weights.safetensors", &device);
        let vae = apply_torch_weights(config.init(&device).unwrap(), weights, vae_name)
            .unwrap_or_else(|e| panic!("{e}"));
        let dims: [usize; 3] = latents_shape.clone().try_into().unwrap();
        let input = Tensor::<3>::from_data(TensorData::new(latents.clone(), dims), &device);
        let decoded = vae.decode_latents(input);
        let diff = max_abs_diff(&values(decoded.clone()), &decoded_ref);
        assert!(diff <= tol, "{name}: decoded latents differ by {diff}");
        let kv = vae.key_values(decoded);
        // Dense volume decoding in small chunks, through the engine's grid walker.
        let field = futures::executor::block_on(decode_dense(grid, 1000, async |points| {
            let flat: Vec<f32> = points.iter().flatten().copied().collect();
            let tensor =
                Tensor::<3>::from_data(TensorData::new(flat, [1, points.len(), 3]), &device);
            values(vae.field(tensor, &kv))
        }));
        let diff = max_abs_diff(&field, &field_ref);
        eprintln!("vae on {name}: field max abs diff {diff:.2e} (tolerance {tol:.1e})");
        assert!(diff <= tol, "{name}: field differs by {diff}");
        let inside = field.iter().filter(|v| **v > 0.0).count();
        let inside_ref = field_ref.iter().filter(|v| **v > 0.0).count();
        assert_eq!(
            inside, inside_ref,
            "{name}: same inside/outside on every grid point"
        );
    }
}

fn vae_name(path: &str) -> String {
    orfeas_engine::models::shape_vae::checkpoint_name(path)
}

#[test]
fn the_sampler_replays_the_official_loop() {
    // The official loop's own velocities, replayed: the schedule, the times the model is
    // given, the guidance and the Euler steps must reproduce its latents after every step.
    let stage = stage("sampler");
    let guidance = stage["config"]["guidance_scale"]
        .as_f64()
        .expect("guidance") as f32;
    let io = Io::read("sampler.io.safetensors");
    let (noise, noise_shape) = io.tensor("initial_noise");
    let (v_cond, _) = io.tensor("v_cond_per_step");
    let (v_uncond, _) = io.tensor("v_uncond_per_step");
    let (model_t, _) = io.tensor("model_t");
    let (sigmas, _) = io.tensor("sigmas");
    let (timesteps, _) = io.tensor("timesteps");
    let (per_step, _) = io.tensor("latents_per_step");
    let (final_ref, _) = io.tensor("final_latents");
    let schedule = FlowMatchSchedule::new(timesteps.len());
    assert_eq!(schedule.sigmas, sigmas);
    assert_eq!(schedule.timesteps, timesteps);
    let device = orfeas_engine::device::cpu();
    let dims: [usize; 3] = noise_shape.try_into().unwrap();
    let size = dims.iter().product::<usize>();
    let tensor =
        |values: &[f32]| Tensor::<3>::from_data(TensorData::new(values.to_vec(), dims), &device);
    let mut calls = 0;
    let out = futures::executor::block_on(sample(
        tensor(&noise),
        &schedule,
        guidance,
        async |_x, t| {
            assert_eq!(t, model_t[calls], "model time at step {calls}");
            let step = calls * size..(calls + 1) * size;
            calls += 1;
            (tensor(&v_cond[step.clone()]), tensor(&v_uncond[step]))
        },
        |i, x| {
            let diff = max_abs_diff(&values(x.clone()), &per_step[i * size..(i + 1) * size]);
            assert!(diff <= 1e-6, "latents after step {i} differ by {diff}");
        },
    ));
    assert_eq!(calls, schedule.steps() - 1, "the dt = 0 call is skipped");
    assert!(max_abs_diff(&values(out), &final_ref) <= 1e-6);
}

#[test]
fn parity_dit21() {
    let stage = stage("dit21");
    let config: Dit21Config =
        serde_json::from_value(stage["config"]["params"].clone()).expect("the DiT params");
    let io = Io::read("dit21.io.safetensors");
    for (name, device) in devices() {
        let weights = load("dit21.weights.safetensors", &device);
        let model = apply_torch_weights(
            config.init(&device),
            weights,
            orfeas_engine::models::dit21::checkpoint_name,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for case in ["cfg", "gen"] {
            let (x, x_shape) = io.tensor(&format!("{case}.x"));
            let (t, _) = io.tensor(&format!("{case}.t"));
            let (context, context_shape) = io.tensor(&format!("{case}.context"));
            let (out_ref, _) = io.tensor(&format!("{case}.out"));
            let tensor = |values: Vec<f32>, shape: Vec<usize>| {
                let dims: [usize; 3] = shape.try_into().unwrap();
                Tensor::<3>::from_data(TensorData::new(values, dims), &device)
            };
            let out = model.forward(tensor(x, x_shape), &t, tensor(context, context_shape));
            let diff = max_abs_diff(&values(out), &out_ref);
            let tol = tolerance(&stage, case, 5e-5);
            eprintln!("dit21 {case} on {name}: max abs diff {diff:.2e} (tolerance {tol:.1e})");
            assert!(diff <= tol, "{name}/{case}: output differs by {diff}");
        }
    }
}

/// DINOv2 with the fixture weights on `device`.
fn dinov2(device: &Device) -> (orfeas_engine::models::dinov2::Dinov2, usize) {
    let stage = stage("dinov2");
    let config: Dinov2Config = serde_json::from_value(stage["config"]["config"].clone()).unwrap();
    let size = stage["config"]["encoder_kwargs"]["image_size"]
        .as_u64()
        .map_or(config.image_size, |s| s as usize);
    let weights = load("dinov2.weights.safetensors", device);
    let model = apply_torch_weights(config.init(device), weights, dinov2_name).unwrap();
    (model, size)
}

/// The official CFG call: one batch of [x, x] at [t, t] with [cond, zeros], conditional first.
async fn sample_with_dit21(
    dit: &orfeas_engine::models::dit21::Dit21,
    noise: Tensor<3>,
    cond: Tensor<3>,
    steps: usize,
    guidance: f32,
) -> Tensor<3> {
    let uncond = cond.zeros_like();
    let context = Tensor::cat(vec![cond, uncond], 0);
    let schedule = FlowMatchSchedule::new(steps);
    sample(
        noise,
        &schedule,
        guidance,
        async |x, t| {
            let batch = x.dims()[0];
            let v = dit.forward(Tensor::cat(vec![x.clone(), x], 0), &[t, t], context.clone());
            let [_, n, c] = v.dims();
            (
                v.clone().slice([0..batch, 0..n, 0..c]),
                v.slice([batch..2 * batch, 0..n, 0..c]),
            )
        },
        |_, _| {},
    )
    .await
}

#[test]
fn parity_sampler() {
    let stage = stage("sampler");
    let guidance = stage["config"]["guidance_scale"].as_f64().unwrap() as f32;
    let steps = stage["config"]["num_inference_steps"].as_u64().unwrap() as usize;
    let dit_config: Dit21Config =
        serde_json::from_value(self::stage("dit21")["config"]["params"].clone()).unwrap();
    let io = Io::read("sampler.io.safetensors");
    let (noise, noise_shape) = io.tensor("initial_noise");
    let (image, image_shape) = io.tensor("image_in");
    let (cond_ref, _) = io.tensor("cond");
    let (final_ref, _) = io.tensor("final_latents");
    for (name, device) in devices() {
        let (encoder, size) = dinov2(&device);
        let pixels = preprocess(&image, image_shape[2], image_shape[3], size);
        let cond = encoder.forward(pixels_tensor(pixels, size, &device));
        let diff = max_abs_diff(&values(cond.clone()), &cond_ref);
        assert!(diff <= 1e-4, "{name}: cond differs by {diff}");
        let weights = load("dit21.weights.safetensors", &device);
        let dit = apply_torch_weights(
            dit_config.init(&device),
            weights,
            orfeas_engine::models::dit21::checkpoint_name,
        )
        .unwrap();
        let dims: [usize; 3] = noise_shape.clone().try_into().unwrap();
        let noise = Tensor::<3>::from_data(TensorData::new(noise.clone(), dims), &device);
        let out =
            futures::executor::block_on(sample_with_dit21(&dit, noise, cond, steps, guidance));
        let diff = max_abs_diff(&values(out), &final_ref);
        eprintln!("sampler on {name}: final latents max abs diff {diff:.2e} (tolerance 3e-4)");
        assert!(diff <= 3e-4, "{name}: final latents differ by {diff}");
    }
}

#[test]
fn image_to_field_to_mesh_end_to_end() {
    // The whole chain on fixture weights: image → DINOv2 → sampler with the 2.1 DiT → ShapeVAE
    // → field on the official grid → marching cubes, against the official chain's field.
    let sampler = stage("sampler");
    let guidance = sampler["config"]["guidance_scale"].as_f64().unwrap() as f32;
    let steps = sampler["config"]["num_inference_steps"].as_u64().unwrap() as usize;
    let vae_stage = stage("vae");
    let vae_config: ShapeVaeConfig =
        serde_json::from_value(vae_stage["config"]["params"].clone()).unwrap();
    let resolution = vae_stage["config"]["octree_resolution"].as_u64().unwrap() as usize;
    let dit_config: Dit21Config =
        serde_json::from_value(stage("dit21")["config"]["params"].clone()).unwrap();
    let io = Io::read("sampler.io.safetensors");
    let (noise, noise_shape) = io.tensor("initial_noise");
    let (image, image_shape) = io.tensor("image_in");
    let (field_ref, _) = Io::read("vae.io.safetensors").tensor("field");
    let device = orfeas_engine::device::cpu();
    let (encoder, size) = dinov2(&device);
    let dit = apply_torch_weights(
        dit_config.init(&device),
        load("dit21.weights.safetensors", &device),
        orfeas_engine::models::dit21::checkpoint_name,
    )
    .unwrap();
    let vae = apply_torch_weights(
        vae_config.init(&device).unwrap(),
        load("vae.weights.safetensors", &device),
        vae_name,
    )
    .unwrap();
    let dims: [usize; 3] = noise_shape.try_into().unwrap();
    let run = || {
        let pixels = preprocess(&image, image_shape[2], image_shape[3], size);
        let cond = encoder.forward(pixels_tensor(pixels, size, &device));
        let noise = Tensor::<3>::from_data(TensorData::new(noise.clone(), dims), &device);
        let latents =
            futures::executor::block_on(sample_with_dit21(&dit, noise, cond, steps, guidance));
        let kv = vae.key_values(vae.decode_latents(latents));
        futures::executor::block_on(decode_dense(
            Grid::official(resolution),
            4096,
            async |points| {
                let flat: Vec<f32> = points.iter().flatten().copied().collect();
                let tensor =
                    Tensor::<3>::from_data(TensorData::new(flat, [1, points.len(), 3]), &device);
                values(vae.field(tensor, &kv))
            },
        ))
    };
    let field = run();
    let diff = max_abs_diff(&field, &field_ref);
    let tol = tolerance(&vae_stage, "field_chain", 1e-4);
    eprintln!("image → field: max abs diff {diff:.2e} (tolerance {tol:.1e})");
    assert!(diff <= tol, "the chain's field differs by {diff}");
    assert_eq!(run(), field, "deterministic for the same noise");
    let grid = Grid::official(resolution);
    let ours = marching_cubes(Field {
        values: &field,
        dims: grid.dims(),
    });
    let theirs = marching_cubes(Field {
        values: &field_ref,
        dims: grid.dims(),
    });
    assert!(!ours.triangles.is_empty());
    assert_eq!(ours.positions.len(), theirs.positions.len());
    assert_eq!(ours.triangles.len(), theirs.triangles.len());
}

#[test]
fn parity_dit20() {
    let stage = stage("dit20");
    let config: Dit20Config =
        serde_json::from_value(stage["config"]["params"].clone()).expect("the DiT params");
    let guidance = stage["config"]["gen_guidance"].as_f64().map(|g| g as f32);
    let io = Io::read("dit20.io.safetensors");
    for (name, device) in devices() {
        let weights = load("dit20.weights.safetensors", &device);
        let model = apply_torch_weights(
            config.init(&device),
            weights,
            orfeas_engine::models::dit20::checkpoint_name,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for case in ["pipe", "gen"] {
            let (x, x_shape) = io.tensor(&format!("{case}.x"));
            let (t, _) = io.tensor(&format!("{case}.t"));
            let (context, context_shape) = io.tensor(&format!("{case}.context"));
            let (out_ref, _) = io.tensor(&format!("{case}.out"));
            let tensor = |values: Vec<f32>, shape: Vec<usize>| {
                let dims: [usize; 3] = shape.try_into().unwrap();
                Tensor::<3>::from_data(TensorData::new(values, dims), &device)
            };
            let guidance: Option<Vec<f32>> = guidance.map(|g| vec![g; t.len()]);
            let out = model.forward(
                tensor(x, x_shape),
                &t,
                tensor(context, context_shape),
                guidance.as_deref(),
            );
            let diff = max_abs_diff(&values(out), &out_ref);
            let tol = tolerance(&stage, case, 5e-5);
            eprintln!("dit20 {case} on {name}: max abs diff {diff:.2e} (tolerance {tol:.1e})");
            assert!(diff <= tol, "{name}/{case}: output differs by {diff}");
        }
    }
}
