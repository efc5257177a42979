//! Model parity against the official PyTorch code's outputs on small random-weight configs
//! (`ORFEAS_FIXTURES`, default `../shared/fixtures/public`; see its README). Configs come from
//! `fixtures.json`, weights go through our packer and streaming loader under their official
//! names, and every stage runs on the CPU backend and on wgpu (lavapipe in CI).

use burn::tensor::{Tensor, TensorData};
use orfeas_engine::mesh::{Field, marching_cubes};
use orfeas_engine::models::ForwardError;
use orfeas_engine::models::dinov2::{Dinov2Config, checkpoint_name, pixels_tensor, preprocess};
use orfeas_engine::models::hunyuan3d_dit::Hunyuan3dDitConfig;
use orfeas_engine::models::hunyuandit_plain::HunyuanDitPlainConfig;
use orfeas_engine::models::shape_vae::ShapeVaeConfig;
use orfeas_engine::pipeline::{GenerateOptions, Stage};
use orfeas_engine::sampler::{FlowMatchSchedule, sample};
use orfeas_engine::volume::{Grid, decode_dense};
use orfeas_engine::weights::apply_torch_weights;

mod fixtures;
use fixtures::*;

#[test]
fn parity_dinov2() {
    let (stage, config, size) = dinov2_stage();
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
        let model = apply_torch_weights(config.init(&device), weights, checkpoint_name)
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
    let (_, mut config, _) = dinov2_stage();
    config.num_hidden_layers -= 1;
    let device = orfeas_engine::device::cpu();
    let weights = load("dinov2.weights.safetensors", &device);
    let err = apply_torch_weights(config.init(&device), weights, checkpoint_name).unwrap_err();
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
        let vae = apply_torch_weights(
            config.init(&device).unwrap(),
            weights,
            orfeas_engine::models::shape_vae::checkpoint_name,
        )
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
            Ok::<_, std::convert::Infallible>((
                tensor(&v_cond[step.clone()]),
                tensor(&v_uncond[step]),
            ))
        },
        |i, x| {
            let diff = max_abs_diff(&values(x.clone()), &per_step[i * size..(i + 1) * size]);
            assert!(diff <= 1e-6, "latents after step {i} differ by {diff}");
        },
        || false,
    ))
    .unwrap()
    .expect("not stopped");
    assert_eq!(calls, schedule.steps() - 1, "the dt = 0 call is skipped");
    assert!(max_abs_diff(&values(out), &final_ref) <= 1e-6);
}

#[test]
fn parity_dit21() {
    let stage = stage("dit21");
    let config: HunyuanDitPlainConfig =
        serde_json::from_value(stage["config"]["params"].clone()).expect("the DiT params");
    let io = Io::read("dit21.io.safetensors");
    for (name, device) in devices() {
        let weights = load("dit21.weights.safetensors", &device);
        let mut model = apply_torch_weights(
            config.init(&device),
            weights,
            orfeas_engine::models::hunyuandit_plain::checkpoint_name,
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
            // Tokens routed to their top-k experts only (the default), and every expert on
            // every token weighted by zero where unchosen: both are the official output.
            let mut outputs = Vec::new();
            for routed in [true, false] {
                model.set_moe_routing(routed);
                let out = futures::executor::block_on(model.forward(
                    tensor(x.clone(), x_shape.clone()),
                    &t,
                    tensor(context.clone(), context_shape.clone()),
                ))
                .unwrap();
                let out = values(out);
                let diff = max_abs_diff(&out, &out_ref);
                let tol = tolerance(&stage, case, 5e-5);
                eprintln!(
                    "dit21 {case} on {name} (routed {routed}): max abs diff {diff:.2e} \
                     (tolerance {tol:.1e})"
                );
                assert!(
                    diff <= tol,
                    "{name}/{case}/routed {routed}: output differs by {diff}"
                );
                outputs.push(out);
            }
            let diff = max_abs_diff(&outputs[0], &outputs[1]);
            assert!(
                diff <= 1e-5,
                "{name}/{case}: routed and all-experts differ by {diff}"
            );
        }
    }
}

#[test]
fn parity_sampler() {
    // The pipeline's CFG sampler (DINOv2 tokens, the 2.1 DiT, all steps) from the reference's
    // initial noise, against the official loop's final latents.
    let stage = stage("sampler");
    let guidance = stage["config"]["guidance_scale"].as_f64().unwrap() as f32;
    let steps = stage["config"]["num_inference_steps"].as_u64().unwrap() as usize;
    let io = Io::read("sampler.io.safetensors");
    let (noise, noise_shape) = io.tensor("initial_noise");
    let (image, image_shape) = io.tensor("image_in");
    let (cond_ref, _) = io.tensor("cond");
    let (final_ref, _) = io.tensor("final_latents");
    for (name, device) in devices() {
        let model = shape_model("dit21", &device);
        let cond = model.condition(&image, image_shape[2], image_shape[3]);
        let diff = max_abs_diff(&values(cond.clone()), &cond_ref);
        assert!(diff <= 1e-4, "{name}: cond differs by {diff}");
        let dims: [usize; 3] = noise_shape.clone().try_into().unwrap();
        let noise = Tensor::<3>::from_data(TensorData::new(noise.clone(), dims), &device);
        let mut seen = Vec::new();
        let out = futures::executor::block_on(model.sample(
            cond,
            noise,
            steps,
            guidance,
            |d, t| seen.push((d, t)),
            || false,
        ))
        .unwrap();
        assert_eq!(seen, (1..=steps).map(|d| (d, steps)).collect::<Vec<_>>());
        let diff = max_abs_diff(&values(out), &final_ref);
        eprintln!("sampler on {name}: final latents max abs diff {diff:.2e} (tolerance 3e-4)");
        assert!(diff <= 3e-4, "{name}: final latents differ by {diff}");
    }
}

#[test]
fn image_to_field_to_mesh_end_to_end() {
    // The whole chain on fixture weights through the pipeline: image → DINOv2 → sampler with
    // the 2.1 DiT → ShapeVAE → field on the official grid → marching cubes, from the
    // reference's noise, against the official chain's field and mesh.
    let sampler = stage("sampler");
    let options = GenerateOptions {
        guidance: sampler["config"]["guidance_scale"].as_f64().unwrap() as f32,
        steps: Some(sampler["config"]["num_inference_steps"].as_u64().unwrap() as usize),
        resolution: stage("vae")["config"]["octree_resolution"]
            .as_u64()
            .unwrap() as usize,
        chunk: 4096,
        dense: true,
        ..Default::default()
    };
    let io = Io::read("sampler.io.safetensors");
    let (noise, noise_shape) = io.tensor("initial_noise");
    let (image, image_shape) = io.tensor("image_in");
    let (field_ref, _) = Io::read("vae.io.safetensors").tensor("field");
    let device = orfeas_engine::device::cpu();
    let model = shape_model("dit21", &device);
    let dims: [usize; 3] = noise_shape.try_into().unwrap();
    let grid = Grid::official(options.resolution);
    let run = || {
        futures::executor::block_on(async {
            let cond = model.condition(&image, image_shape[2], image_shape[3]);
            let noise = Tensor::<3>::from_data(TensorData::new(noise.clone(), dims), &device);
            let latents = model
                .sample(
                    cond,
                    noise,
                    options.steps.unwrap(),
                    options.guidance,
                    |_, _| {},
                    || false,
                )
                .await
                .unwrap();
            let kv = model.key_values(latents);
            decode_dense(grid, options.chunk, async |points| {
                model
                    .field_at(points, &kv)
                    .await
                    .expect("the field reads back")
            })
            .await
        })
    };
    let field = run();
    let diff = max_abs_diff(&field, &field_ref);
    let tol = tolerance(&stage("vae"), "field_chain", 1e-4);
    eprintln!("image → field: max abs diff {diff:.2e} (tolerance {tol:.1e})");
    assert!(diff <= tol, "the chain's field differs by {diff}");
    assert_eq!(run(), field, "deterministic for the same noise");
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
fn generation_is_deterministic_under_a_seed() {
    // ShapeModel::generate from a seed: the same seed gives the same surface, another seed
    // another one; progress reports every stage in order.
    let io = Io::read("sampler.io.safetensors");
    let (image, shape) = io.tensor("image_in");
    let device = orfeas_engine::device::cpu();
    let model = shape_model("dit21", &device);
    let options = GenerateOptions {
        steps: Some(4),
        resolution: 24,
        coarse_stride: 4,
        chunk: 1000,
        ..Default::default()
    };
    let generate = |seed: u64| {
        let mut stages = Vec::new();
        let options = GenerateOptions {
            seed,
            ..options.clone()
        };
        let surface = futures::executor::block_on(model.generate(
            &image,
            shape[2],
            shape[3],
            &options,
            |p| stages.push(p),
            || false,
        ))
        .expect("generation runs");
        (surface, stages)
    };
    let (a, stages) = generate(7);
    let (b, _) = generate(7);
    let (c, _) = generate(8);
    assert!(
        !a.mesh.triangles.is_empty(),
        "the fixture model's field crosses zero"
    );
    assert_eq!(
        a.mesh.positions, b.mesh.positions,
        "same seed, same surface"
    );
    assert_eq!(a.mesh.triangles, b.mesh.triangles);
    assert_ne!(
        a.mesh.positions, c.mesh.positions,
        "another seed, another surface"
    );
    assert_eq!(stages[0], Stage::Encoding);
    assert_eq!(stages[4], Stage::Sampling { done: 4, total: 4 });
    assert!(matches!(stages[5], Stage::Decoding { .. }));
    assert_eq!(*stages.last().unwrap(), Stage::Meshing);
    assert!(
        a.queries < 25usize.pow(3),
        "coarse-to-fine asks fewer than every point"
    );
    let (lo, hi) = a.mesh.bounds().unwrap();
    assert!(
        lo.iter().chain(&hi).all(|v| v.abs() <= 1.01),
        "inside the official box"
    );
}

#[test]
fn parity_dit20() {
    // Guidance-distilled sets give the guidance per sample in the io file (`{case}.guidance`);
    // the model gets exactly those values.
    let stage = stage("dit20");
    let config: Hunyuan3dDitConfig =
        serde_json::from_value(stage["config"]["params"].clone()).expect("the DiT params");
    let io = Io::read("dit20.io.safetensors");
    for (name, device) in devices() {
        let weights = load("dit20.weights.safetensors", &device);
        let model = apply_torch_weights(
            config.init(&device),
            weights,
            orfeas_engine::models::hunyuan3d_dit::checkpoint_name,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(model.guidance_embed(), config.guidance_embed);
        for case in ["pipe", "gen"] {
            let (x, x_shape) = io.tensor(&format!("{case}.x"));
            let (t, _) = io.tensor(&format!("{case}.t"));
            let (context, context_shape) = io.tensor(&format!("{case}.context"));
            let (out_ref, _) = io.tensor(&format!("{case}.out"));
            let tensor = |values: Vec<f32>, shape: Vec<usize>| {
                let dims: [usize; 3] = shape.try_into().unwrap();
                Tensor::<3>::from_data(TensorData::new(values, dims), &device)
            };
            let guidance = io.optional(&format!("{case}.guidance")).map(|(g, _)| g);
            assert_eq!(
                guidance.is_some(),
                config.guidance_embed,
                "{case}: the io file gives guidance exactly when the model embeds it"
            );
            let out = model
                .forward(
                    tensor(x, x_shape),
                    &t,
                    tensor(context, context_shape),
                    guidance.as_deref(),
                )
                .unwrap_or_else(|e| panic!("{name}/{case}: {e}"));
            let diff = max_abs_diff(&values(out), &out_ref);
            let tol = tolerance(&stage, case, 5e-5);
            eprintln!("dit20 {case} on {name}: max abs diff {diff:.2e} (tolerance {tol:.1e})");
            assert!(diff <= tol, "{name}/{case}: output differs by {diff}");
        }
    }
}

#[test]
fn a_guidance_distilled_dit_refuses_to_run_without_guidance() {
    // As the official model raises ValueError: a fast/turbo denoiser given no guidance scale.
    let stage = stage("dit20");
    let mut config: Hunyuan3dDitConfig =
        serde_json::from_value(stage["config"]["params"].clone()).unwrap();
    config.guidance_embed = true;
    let device = orfeas_engine::device::cpu();
    let model = config.init(&device);
    let x = Tensor::<3>::zeros([1, 4, config.in_channels], &device);
    let context = Tensor::<3>::zeros([1, 3, config.context_in_dim], &device);
    let err = model
        .forward(x.clone(), &[0.5], context.clone(), None)
        .unwrap_err();
    assert!(
        matches!(&err, ForwardError::Input(reason) if reason.contains("guidance")),
        "{err}"
    );
    let out = model
        .forward(x, &[0.5], context, Some(&[5.0]))
        .expect("runs with guidance");
    assert_eq!(out.dims(), [1, 4, config.in_channels]);
}

/// A file of `engine/tests/data/` (vectors committed with the script that made them).
fn committed(file: &str) -> Io {
    Io::open(&committed_path(file))
}

/// The committed vectors of Hugging Face's own `interpolate_pos_encoding` (transformers 4.46.0,
/// `scripts/dinov2_interpolation_vectors.py`).
fn interpolation_vectors() -> Io {
    committed("dinov2_interpolation.safetensors")
}

#[test]
fn dinov2_positions_interpolate_as_hugging_face_does() {
    // 2mini-turbo's case: DINOv2's 37 × 37 table resampled for 1022 px (73 × 73 patches).
    let io = interpolation_vectors();
    let (table, shape) = io.tensor("table.in");
    let (expected, expected_shape) = io.tensor("table.out");
    for (name, device) in devices() {
        let dims: [usize; 3] = shape.clone().try_into().unwrap();
        let table = Tensor::<3>::from_data(TensorData::new(table.clone(), dims), &device);
        let out = orfeas_engine::models::dinov2::interpolate_positions(table, 73);
        assert_eq!(out.dims().to_vec(), expected_shape);
        let diff = max_abs_diff(&values(out), &expected);
        eprintln!("position table 37² → 73² on {name}: max abs diff {diff:.2e}");
        assert!(
            diff <= 1e-5,
            "{name}: the resampled table differs by {diff}"
        );
    }
}

#[test]
fn dinov2_runs_at_other_sizes_than_its_table() {
    // A tiny Dinov2Model (table for 56 px) run by Hugging Face at 98 px (upsampled table) and
    // 42 px (downsampled): our resized model gives the same last hidden state.
    let io = interpolation_vectors();
    let st = io.safetensors();
    let config: Dinov2Config = serde_json::from_value(serde_json::json!({
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "patch_size": 14,
        "image_size": 56, "mlp_ratio": 4, "layer_norm_eps": 1e-6, "qkv_bias": true,
        "use_swiglu_ffn": false
    }))
    .unwrap();
    for (name, device) in devices() {
        for side in [98usize, 42] {
            let mut weights = orfeas_engine::weights::WeightSet::new();
            let tensors = st
                .tensors()
                .into_iter()
                .filter_map(|(n, view)| {
                    let n = n.strip_prefix("model.")?.to_string();
                    let stored = orfeas_engine::weights::StoredTensor::upload(
                        view.dtype(),
                        view.shape(),
                        view.data(),
                        &device,
                        burn::tensor::DType::F32,
                    )
                    .unwrap();
                    Some((n, stored))
                })
                .collect();
            weights.commit_shard("vectors", tensors);
            let model = apply_torch_weights(config.init(&device), weights, checkpoint_name)
                .unwrap_or_else(|e| panic!("{e}"))
                .resize_positions(side);
            let (pixels, _) = io.tensor(&format!("pixels.{side}"));
            let (expected, _) = io.tensor(&format!("hidden.{side}"));
            let out = model.forward(pixels_tensor(pixels, side, &device));
            let diff = max_abs_diff(&values(out), &expected);
            eprintln!("DINOv2 at {side} px over a 56 px table on {name}: max abs diff {diff:.2e}");
            assert!(diff <= 1e-4, "{name}/{side}: differs by {diff}");
        }
    }
}

#[test]
fn a_generation_stops_where_its_stop_check_says() {
    // The stop check is asked before every sampler step and every chunk of field queries; a
    // stop is `ShapeError::Stopped`, not a failure, wherever it comes.
    use orfeas_engine::pipeline::ShapeError;
    use std::cell::Cell;
    let io = Io::read("sampler.io.safetensors");
    let (image, shape) = io.tensor("image_in");
    let device = orfeas_engine::device::cpu();
    let model = shape_model("dit21", &device);
    let options = GenerateOptions {
        steps: Some(4),
        resolution: 24,
        coarse_stride: 4,
        chunk: 1000,
        ..Default::default()
    };
    // Stop after `checks` checks: 2 is inside the sampler (step 3 of 4 is not run), 5 is
    // inside decoding (4 steps checked, then the coarse grid's chunk; the next one stops).
    for (checks, sampled, decoded) in [(2, 2, false), (5, 4, true)] {
        let asked = Cell::new(0);
        let mut stages = Vec::new();
        let outcome = futures::executor::block_on(model.generate(
            &image,
            shape[2],
            shape[3],
            &options,
            |p| stages.push(p),
            || {
                asked.set(asked.get() + 1);
                asked.get() > checks
            },
        ));
        assert_eq!(
            outcome.err(),
            Some(ShapeError::Stopped),
            "after {checks} checks"
        );
        let done = stages
            .iter()
            .filter(|s| matches!(s, Stage::Sampling { .. }))
            .count();
        assert_eq!(done, sampled, "steps run before the stop: {stages:?}");
        assert_eq!(
            stages.iter().any(|s| matches!(s, Stage::Decoding { .. })),
            decoded,
            "{stages:?}"
        );
        assert!(!stages.contains(&Stage::Meshing), "{stages:?}");
    }
}

/// The committed vectors of the official multi-view conditioner (`DinoImageEncoderMV` and
/// `MVImageProcessorV2` of Hunyuan3D-2 on the fixtures' tiny DINOv2,
/// `scripts/mv_conditioner_vectors.py`).
fn mv_vectors() -> Io {
    committed("mv_conditioner.safetensors")
}

#[test]
fn the_multi_view_encoder_is_the_official_one() {
    use orfeas_engine::models::dinov2::{View, multi_view_tokens, view_embedding};
    let io = mv_vectors();
    let st = io.safetensors();
    // The view table, not in any checkpoint: computed.
    let (table, shape) = io.tensor("view_embed");
    let dim = shape[1];
    let ours: Vec<f32> = (0..4).flat_map(|i| view_embedding(dim, i)).collect();
    let diff = max_abs_diff(&ours, &table);
    assert!(diff <= 1e-6, "the view table differs by {diff}");
    // Given as {back, right, front}: sorted into the official order.
    let views: Vec<i64> = st
        .tensor("views")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let given = [View::Back, View::Right, View::Front];
    let mut sorted = given;
    sorted.sort();
    assert_eq!(
        views,
        sorted.iter().map(|v| v.index() as i64).collect::<Vec<_>>()
    );

    // Each view through our ImageProcessorV2 at the processor's size: the official images.
    let (images, image_shape) = io.tensor("images");
    let side = image_shape[2];
    let png = |name: &str| {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        orfeas_engine::input::decode_image(&bytes).unwrap()
    };
    let front = png("preprocess_input_0.png");
    let back = png("preprocess_input_1.png");
    let right = image::imageops::flip_horizontal(&front);
    let per_view = [
        (View::Back, &back),
        (View::Right, &right),
        (View::Front, &front),
    ];
    let mut inputs: Vec<(View, Vec<f32>)> = per_view
        .iter()
        .map(|(view, rgba)| {
            let input = orfeas_engine::recenter::shape_input(rgba, side).unwrap();
            (*view, input.image)
        })
        .collect();
    inputs.sort_by_key(|(view, _)| *view);
    let ours: Vec<f32> = inputs.iter().flat_map(|(_, image)| image.clone()).collect();
    let diff = max_abs_diff(&ours, &images);
    eprintln!("multi-view processor: max abs diff {diff:.2e}");
    assert!(
        diff <= 2.0 / 255.0 + 1e-6,
        "the processed views differ by {diff}"
    );

    // DINOv2 on each official image, then the view rows and the concatenation.
    let (stage, config, size) = dinov2_stage();
    let (expected, expected_shape) = io.tensor("tokens");
    let tol = tolerance(&stage, "last_hidden_state", 1e-4);
    let per_image = 3 * side * side;
    for (name, device) in devices() {
        let weights = load("dinov2.weights.safetensors", &device);
        let model = apply_torch_weights(config.init(&device), weights, checkpoint_name)
            .unwrap_or_else(|e| panic!("{e}"));
        // Handed over in the user's order: the encoder sorts them.
        let tokens = given
            .iter()
            .map(|view| {
                let at = sorted.iter().position(|v| v == view).unwrap();
                let image = &images[at * per_image..(at + 1) * per_image];
                let pixels = preprocess(image, side, side, size);
                (*view, model.forward(pixels_tensor(pixels, size, &device)))
            })
            .collect();
        let out = multi_view_tokens(tokens);
        assert_eq!(out.dims().to_vec(), expected_shape, "{name}");
        let diff = max_abs_diff(&values(out), &expected);
        eprintln!("multi-view encoder on {name}: max abs diff {diff:.2e} (tolerance {tol:.1e})");
        assert!(
            diff <= tol,
            "{name}: the multi-view tokens differ by {diff}"
        );
    }
}

/// The turbo (FlashVDM) shape decoder against the official classes (`ShapeVAE` with
/// `geo_decoder_downsample_ratio` 2, no `ln_post`; `FlashVDMVolumeDecoding` at R = 32 with
/// `min_resolution` 15: levels [15, 30]), from `scripts/turbo_vae_vectors.py`: the decoded
/// latents and the field with every latent, then FlashVDM's grid, point for point: the same
/// points asked (the levels' selection) and the same values (each group's own latents).
#[test]
fn the_turbo_decoder_and_flashvdm_are_the_official_ones() {
    use orfeas_engine::pipeline::flashvdm_top_k;
    use orfeas_engine::volume::FlashVdm;
    let turbo = Turbo::read();
    let io = &turbo.io;
    let levels: Vec<usize> = io
        .safetensors()
        .tensor("flashvdm_resolutions")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize)
        .collect();
    assert_eq!(
        turbo.settings.resolutions(turbo.resolution),
        levels,
        "FlashVDM's levels"
    );
    // The official defaults' levels, from the reference notes.
    assert_eq!(FlashVdm::default().resolutions(384), [95, 190, 380]);
    assert_eq!(FlashVdm::default().resolutions(256), [63, 126, 252]);
    let (decoded_ref, _) = io.tensor("decoded_latents");
    let (points, points_shape) = io.tensor("query_points");
    let (field_ref, _) = io.tensor("field");
    let (grid_ref, _) = io.tensor("flashvdm");
    let asked_ref = grid_ref.iter().filter(|v| !v.is_nan()).count();
    for (name, device) in devices() {
        let vae = turbo.vae(&device, burn::tensor::DType::F32);
        let (decoded, kv) = turbo.key_values(&vae, &device);
        let diff = max_abs_diff(&values(decoded), &decoded_ref);
        assert!(diff <= 1e-4, "{name}: decoded latents differ by {diff}");
        let dims: [usize; 3] = points_shape.clone().try_into().unwrap();
        let query = Tensor::<3>::from_data(TensorData::new(points.clone(), dims), &device);
        let field = values(vae.field(query, &kv));
        let diff = max_abs_diff(&field, &field_ref);
        eprintln!("turbo decoder on {name}: field max abs diff {diff:.2e}");
        assert!(diff <= 1e-4, "{name}: the field differs by {diff}");

        let latents = orfeas_engine::models::shape_vae::ShapeVae::latents(&kv);
        assert_eq!(flashvdm_top_k(latents), latents / 3);
        let grid = turbo.flashvdm(&vae, &kv, &device);
        assert_eq!(grid.resolutions, levels);
        let asked = grid.field.values.iter().filter(|v| !v.is_nan()).count();
        assert_eq!(asked, asked_ref, "{name}: points asked at the last level");
        let mut worst = 0f32;
        for (i, (ours, theirs)) in grid.field.values.iter().zip(&grid_ref).enumerate() {
            assert_eq!(
                ours.is_nan(),
                theirs.is_nan(),
                "{name}: point {i} asked by one side only"
            );
            if !ours.is_nan() {
                worst = worst.max((ours - theirs).abs());
            }
        }
        eprintln!(
            "flashvdm on {name}: {asked} points asked of {}, max abs diff {worst:.2e}",
            grid_ref.len()
        );
        assert!(worst <= 1e-4, "{name}: FlashVDM's grid differs by {worst}");
    }
}

/// Vertex colours through the one job (`ImageToMesh`) on the fixture model, CPU and wgpu:
/// one colour per vertex; rendered from the front, the mesh shows the photo where it covers
/// it (the mean colour error is printed, and is well below that of the same mesh coloured
/// from the photo with its channels rotated); with colour off the job gives none.
#[test]
fn the_job_colours_the_mesh_from_the_photo() {
    use orfeas_engine::mesh::colour::{colour_vertices, view_error};
    use orfeas_engine::pipeline::{ImageToMesh, Request, View};
    let bytes = std::fs::read(fixtures().join("preprocess_input_0.png")).unwrap();
    let photo = orfeas_engine::input::decode_image(&bytes).unwrap();
    let options = GenerateOptions {
        steps: Some(4),
        resolution: 48,
        seed: 8,
        ..GenerateOptions::default()
    };
    for (name, device) in devices() {
        let model = shape_model("dit21", &device);
        let job = ImageToMesh::new(&model, None, &device);
        let run = |options: &GenerateOptions| {
            let request = Request::new(photo.clone(), options.clone());
            futures::executor::block_on(job.run(&request, |_| {}, || false)).unwrap()
        };
        let generated = run(&options);
        let mesh = &generated.mesh;
        let colours = generated.colours.clone().expect("colours by default");
        assert_eq!(colours.len(), mesh.positions.len());
        let error = view_error(mesh, &colours, View::Front, &photo).unwrap();
        // A control: the same mesh coloured from the photo with its channels rotated.
        let mut rotated = photo.clone();
        for p in rotated.pixels_mut() {
            p.0 = [p[2], p[0], p[1], p[3]];
        }
        let wrong = colour_vertices(mesh, &[(View::Front, &rotated)]);
        let control = view_error(mesh, &wrong, View::Front, &photo).unwrap();
        eprintln!(
            "colours on {name}: {} faces, mean colour error from the front {error:.1} / 255 \
             (coloured from the photo with its channels rotated: {control:.1})",
            mesh.triangles.len()
        );
        assert!(error * 2.0 < control, "{error} vs {control}");
        let grey = run(&GenerateOptions {
            colour: false,
            ..options.clone()
        });
        assert!(grey.colours.is_none());
        assert_eq!(grey.mesh, generated.mesh, "colour does not touch the shape");
    }
}
