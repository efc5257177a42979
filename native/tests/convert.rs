//! `orfeas convert` on a real torch-format checkpoint (a zip holding a protocol-2 pickle and raw
//! storages, as `torch.save` writes) built from the fixture weights under the official bundle
//! layout `{model, vae, conditioner}`, with a config.yaml made from the fixture configs; then
//! `orfeas generate` on the converted model.

use std::path::Path;

use burn::tensor::{DType, Tensor, TensorData};
use orfeas_engine::pipeline::{COMPONENTS, load_shape_model};
use orfeas_engine::weights::source::DirSource;
use safetensors::SafeTensors;

mod common;
use common::{Tensors, fixture_tensors, fixtures, orfeas, stage, text, write_bundle, write_config};

/// Write `parts` (bundle key → tensors named with that key as prefix) as a torch zip checkpoint,
/// as `torch.save` writes the official bundle.
fn write_checkpoint(path: &Path, parts: &[(&str, &Tensors)]) {
    let tensors: Vec<&(String, Vec<usize>, Vec<u8>)> = parts
        .iter()
        .flat_map(|(_, tensors)| tensors.iter())
        .collect();
    let entries: Vec<orfeas::synthetic::Entry> = tensors
        .iter()
        .map(|(name, shape, _)| orfeas::synthetic::Entry {
            name: name.clone(),
            shape: shape.clone(),
        })
        .collect();
    let mut next = tensors.iter();
    orfeas::synthetic::write_torch_zip(path, &entries, |_| {
        next.next().expect("one tensor per entry").2.clone()
    })
    .unwrap();
}

fn f32s(file: &str, name: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(fixtures().join(file)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(name).unwrap();
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (values, view.shape().to_vec())
}

#[test]
fn a_bundled_checkpoint_converts_loads_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, yaml, out) = (
        dir.path().join("model.fp16.ckpt"),
        dir.path().join("config.yaml"),
        dir.path().join("converted"),
    );
    let (dit, vae, dino) = (
        fixture_tensors("dit21.weights.safetensors"),
        fixture_tensors("vae.weights.safetensors"),
        fixture_tensors("dinov2.weights.safetensors"),
    );
    write_checkpoint(
        &ckpt,
        &[("model", &dit), ("vae", &vae), ("conditioner", &dino)],
    );
    write_config(
        &yaml,
        "hunyuandit.HunYuanDiTPlain",
        &stage("dit21")["config"]["params"],
    );
    let converted = orfeas(&[
        "convert",
        ckpt.to_str().unwrap(),
        "--config",
        yaml.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--shard-size",
        "16",
    ]);
    assert!(converted.status.success(), "{}", text(&converted));
    let said = text(&converted);
    assert!(said.contains("Hunyuan3D-2.1 (HunYuanDiTPlain)"), "{said}");
    for (component, count) in [
        ("conditioner", dino.len()),
        ("denoiser", dit.len()),
        ("vae", vae.len()),
    ] {
        assert!(
            said.contains(&format!("{component}: {count} tensors")),
            "{said}"
        );
        let verified = orfeas(&["verify", out.join(component).to_str().unwrap()]);
        assert!(verified.status.success(), "{}", text(&verified));
    }
    // The whole model folder verifies too, and a damaged shard is named with its part.
    let verified = orfeas(&["verify", out.to_str().unwrap()]);
    assert!(verified.status.success(), "{}", text(&verified));
    let index = std::fs::read(out.join("vae/model.safetensors.index.json")).unwrap();
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let shard = out
        .join("vae")
        .join(index["shards"][0]["file"].as_str().unwrap());
    let mut bytes = std::fs::read(&shard).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let original = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes).unwrap();
    let damaged = orfeas(&["verify", out.to_str().unwrap()]);
    assert!(!damaged.status.success());
    assert!(text(&damaged).contains("vae/model-"), "{}", text(&damaged));
    assert!(
        text(&damaged).contains("sha256 mismatch"),
        "{}",
        text(&damaged)
    );
    std::fs::write(&shard, original).unwrap();

    // The converted sets load through the engine and reproduce the official sampler.
    let device = orfeas_engine::device::cpu();
    let sources = COMPONENTS.map(|c| DirSource::new(out.join(c)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let model = runtime
        .block_on(load_shape_model(
            [&sources[0], &sources[1], &sources[2]],
            &device,
            DType::F32,
            |_, _| {},
        ))
        .expect("the converted model loads");
    let (image, image_shape) = f32s("sampler.io.safetensors", "image_in");
    let (noise, noise_shape) = f32s("sampler.io.safetensors", "initial_noise");
    let (final_ref, _) = f32s("sampler.io.safetensors", "final_latents");
    let sampler = stage("sampler")["config"].clone();
    let cond = model.condition(&image, image_shape[2], image_shape[3]);
    let dims: [usize; 3] = noise_shape.try_into().unwrap();
    let noise = Tensor::<3>::from_data(TensorData::new(noise, dims), &device);
    let latents = runtime
        .block_on(model.sample(
            cond,
            noise,
            sampler["num_inference_steps"].as_u64().unwrap() as usize,
            sampler["guidance_scale"].as_f64().unwrap() as f32,
            |_, _| {},
            || false,
        ))
        .unwrap();
    let ours = latents
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let diff = ours
        .iter()
        .zip(&final_ref)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        diff <= 3e-4,
        "converted model: final latents differ by {diff}"
    );

    // `orfeas generate` end to end: a mesh file that re-parses, the same for the same seed.
    let image = fixtures().join("preprocess_input_0.png");
    let generate = |output: &Path, seed: &str| {
        orfeas(&[
            "generate",
            image.to_str().unwrap(),
            "--model",
            out.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
            "--steps",
            "4",
            "--octree-resolution",
            "32",
            "--seed",
            seed,
        ])
    };
    let (a, b) = (dir.path().join("a.glb"), dir.path().join("b.glb"));
    let made = generate(&a, "7");
    assert!(made.status.success(), "{}", text(&made));
    assert!(text(&made).contains("wrote"), "{}", text(&made));
    let again = generate(&b, "7");
    assert!(again.status.success(), "{}", text(&again));
    let glb = std::fs::read(&a).unwrap();
    assert_eq!(glb, std::fs::read(&b).unwrap(), "same seed, same mesh");
    let gltf = gltf::Gltf::from_slice(&glb).expect("the GLB re-parses");
    let primitive = gltf.meshes().next().unwrap().primitives().next().unwrap();
    let faces = primitive.indices().unwrap().count() / 3;
    assert!(faces > 0, "a mesh with faces");
    let obj = dir.path().join("c.obj");
    assert!(generate(&obj, "8").status.success());
    let obj_text = std::fs::read_to_string(&obj).unwrap();
    assert!(obj_text.lines().any(|l| l.starts_with("f ")));
}

#[test]
fn the_variant_is_detected_and_a_mismatched_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, yaml) = (dir.path().join("m.ckpt"), dir.path().join("config.yaml"));
    let (dit, vae, dino) = (
        fixture_tensors("dit20.weights.safetensors"),
        fixture_tensors("vae.weights.safetensors"),
        fixture_tensors("dinov2.weights.safetensors"),
    );
    write_checkpoint(
        &ckpt,
        &[("model", &dit), ("vae", &vae), ("conditioner", &dino)],
    );
    let params = &stage("dit20")["config"]["params"];
    let run = |out: &str| {
        orfeas(&[
            "convert",
            ckpt.to_str().unwrap(),
            "--config",
            yaml.to_str().unwrap(),
            "-o",
            dir.path().join(out).to_str().unwrap(),
        ])
    };
    // 2.0-family weights with a 2.1 config: refused, naming both.
    write_config(&yaml, "hunyuandit.HunYuanDiTPlain", params);
    let refused = run("wrong");
    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(
        said.contains("HunYuanDiTPlain") && said.contains("Hunyuan3DDiT"),
        "{said}"
    );
    assert!(!dir.path().join("wrong").exists(), "nothing written");
    // With its own config it converts, named by its block count.
    write_config(&yaml, "hunyuan3ddit.Hunyuan3DDiT", params);
    let ok = run("right");
    assert!(ok.status.success(), "{}", text(&ok));
    let blocks = params["depth"].as_u64().unwrap();
    assert!(
        text(&ok).contains(&format!("Hunyuan3DDiT with {blocks} double blocks")),
        "{}",
        text(&ok)
    );
    // The safetensors repack (flat prefixed names) converts to the same shard sets.
    let repack = dir.path().join("model.fp16.safetensors");
    write_bundle(&repack, &[&dit, &vae, &dino]);
    let from_repack = orfeas(&[
        "convert",
        repack.to_str().unwrap(),
        "--config",
        yaml.to_str().unwrap(),
        "-o",
        dir.path().join("repacked").to_str().unwrap(),
    ]);
    assert!(from_repack.status.success(), "{}", text(&from_repack));
    for component in COMPONENTS {
        let index = |set: &str| {
            std::fs::read_to_string(
                dir.path()
                    .join(set)
                    .join(component)
                    .join(orfeas_engine::weights::INDEX_FILE),
            )
            .unwrap()
        };
        assert_eq!(
            index("right"),
            index("repacked"),
            "{component}: same shards, same hashes"
        );
    }
}

#[test]
fn broken_checkpoints_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("config.yaml");
    write_config(
        &yaml,
        "hunyuandit.HunYuanDiTPlain",
        &stage("dit21")["config"]["params"],
    );
    let convert = |ckpt: &Path| {
        orfeas(&[
            "convert",
            ckpt.to_str().unwrap(),
            "--config",
            yaml.to_str().unwrap(),
            "-o",
            dir.path().join("out").to_str().unwrap(),
        ])
    };
    // Not a checkpoint at all.
    let html = dir.path().join("page.ckpt");
    std::fs::write(&html, "<!doctype html><title>404</title>").unwrap();
    let out = convert(&html);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not a readable PyTorch checkpoint"),
        "{}",
        text(&out)
    );
    // Cut short.
    let (dit, vae, dino) = (
        fixture_tensors("dit21.weights.safetensors"),
        fixture_tensors("vae.weights.safetensors"),
        fixture_tensors("dinov2.weights.safetensors"),
    );
    let whole = dir.path().join("whole.ckpt");
    write_checkpoint(
        &whole,
        &[("model", &dit), ("vae", &vae), ("conditioner", &dino)],
    );
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.path().join("cut.ckpt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = convert(&cut);
    assert!(!out.status.success());
    assert!(text(&out).contains("cut.ckpt"), "{}", text(&out));
    // A bundle without its vae.
    let partial = dir.path().join("partial.ckpt");
    write_checkpoint(&partial, &[("model", &dit), ("conditioner", &dino)]);
    let out = convert(&partial);
    assert!(!out.status.success());
    assert!(text(&out).contains("no vae tensors"), "{}", text(&out));
    assert!(!dir.path().join("out").join("vae").exists());
}

#[test]
fn generate_in_f16_gives_the_f32_mesh() {
    // A user's command, in both precisions: `orfeas generate` on the converted fixture model
    // with the official settings (30 steps, octree 256) on the CPU backend, and on wgpu at
    // octree 64 (lavapipe is slow). The f16 mesh has the f32 one's face count within 2 %,
    // before and after clean-up.
    let dir = tempfile::tempdir().unwrap();
    let model = common::converted_fixture_model(&dir.path().join("model"));
    let image = fixtures().join("preprocess_input_0.png");
    let faces = |backend: &str, dtype: &str, octree: &str| {
        let output = dir.path().join(format!("{backend}-{dtype}.glb"));
        let run = orfeas(&[
            "generate",
            image.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
            "--octree-resolution",
            octree,
            "--backend",
            backend,
            "--dtype",
            dtype,
        ]);
        let said = text(&run);
        assert!(run.status.success(), "{backend}/{dtype}: {said}");
        // "wrote … (V vertices, F faces; R before clean-up)"
        let line = said
            .lines()
            .find(|l| l.starts_with("wrote"))
            .expect("a wrote line");
        let numbers: Vec<usize> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        let n = numbers.len();
        (numbers[n - 2], numbers[n - 1])
    };
    let mut runs = vec![("cpu", "256")];
    if orfeas_engine::device::gpu().is_some() {
        runs.push(("wgpu", "64"));
    } else {
        assert!(
            std::env::var_os("ORFEAS_ALLOW_SKIP").is_some(),
            "no wgpu adapter (install mesa-vulkan-drivers, or set ORFEAS_ALLOW_SKIP=1)"
        );
        eprintln!("SKIPPED on wgpu (ORFEAS_ALLOW_SKIP): no adapter");
    }
    for (backend, octree) in runs {
        let (f32_faces, f32_raw) = faces(backend, "f32", octree);
        let (f16_faces, f16_raw) = faces(backend, "f16", octree);
        eprintln!(
            "{backend}, octree {octree}: f32 {f32_raw} faces ({f32_faces} after clean-up), \
             f16 {f16_raw} ({f16_faces})"
        );
        for (a, b) in [(f32_raw, f16_raw), (f32_faces, f16_faces)] {
            let off = (a as f64 - b as f64).abs() / a as f64;
            assert!(off <= 0.02, "{backend}: f16 {b} faces vs f32 {a}");
        }
    }
}
