//! Every official Hunyuan3D variant's checkpoint layout, with synthetic weights (`orfeas
//! synthesize`): the layouts equal the official classes' `state_dict()`s at full and reduced
//! size; each variant converts from its torch `.ckpt` and its safetensors repack to the same
//! shard sets, loads, and runs in f32 and f16; what the engine does not implement is refused
//! naming the field and value, with nothing written; a checkpoint `torch.save` wrote from the
//! official classes converts and its weights come through.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{DType, Tensor, TensorData};
use orfeas::synthetic::{Format, Variant, layout};
use orfeas_engine::pipeline::{COMPONENTS, ShapeModel, View, load_shape_model};
use orfeas_engine::weights::source::DirSource;

mod common;
use common::{orfeas, text};

fn official_layouts() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/official_layouts.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("official_layouts.json")).unwrap()
}

#[test]
fn quantized_sizes_meet_the_targets() {
    // What a visitor downloads and a GPU holds for each official variant at full size: the
    // tensors image-to-3D loads, stored as the writers store them at each precision.
    use orfeas_engine::weights::Precision;
    use orfeas_engine::weights::quant::stored_len;
    let gb = |bytes: u64| bytes as f64 / 1e9;
    for variant in Variant::ALL {
        let entries = layout(&variant.config_yaml(false)).unwrap();
        let used: Vec<_> = entries
            .iter()
            .filter(|e| !orfeas::convert::unused_by_image_to_3d(&e.name))
            .collect();
        let [f16, q8, q4] = [Precision::F16, Precision::Q8, Precision::Q4].map(|p| {
            used.iter()
                .map(|e| stored_len(&e.name, &e.shape, p))
                .sum::<u64>()
        });
        assert_eq!(
            f16,
            orfeas::synthetic::sizes(&entries).1,
            "{}",
            variant.name()
        );
        eprintln!(
            "Hunyuan3D-{}: f16 {:.2} GB, q8 {:.2} GB (ratio={:.3} of f16), q4 {:.2} GB \
             (ratio={:.3})",
            variant.name(),
            gb(f16),
            gb(q8),
            q8 as f64 / f16 as f64,
            gb(q4),
            q4 as f64 / f16 as f64
        );
        assert!(
            q8 as f64 <= 0.55 * f16 as f64,
            "{}: q8 is {:.3} of f16",
            variant.name(),
            q8 as f64 / f16 as f64
        );
        let target = match variant.name() {
            "2.1" => Some(2.3),
            "2mini-turbo" => Some(1.2),
            _ => None,
        };
        if let Some(target) = target {
            assert!(
                gb(q4) <= target,
                "{}: q4 is {:.2} GB, the target {target} GB",
                variant.name(),
                gb(q4)
            );
        }
    }
}

#[test]
fn synthetic_layouts_are_the_official_ones() {
    // The official classes' state_dict()s at full and reduced size: a digest of the sorted
    // `name:shape` lines (and, reduced, the whole list for a readable difference).
    use sha2::Digest;
    let official = official_layouts();
    for variant in Variant::ALL {
        for reduced in [false, true] {
            let scale = if reduced { "reduced" } else { "full" };
            let what = format!("{}/{scale}", variant.name());
            let entries =
                layout(&variant.config_yaml(reduced)).unwrap_or_else(|e| panic!("{what}: {e}"));
            let ours: BTreeMap<String, Vec<usize>> = entries
                .iter()
                .map(|e| (e.name.clone(), e.shape.clone()))
                .collect();
            assert_eq!(ours.len(), entries.len(), "{what}: no name twice");
            let theirs = &official[variant.name()][scale];
            if let Some(list) = theirs.get("layout") {
                let theirs: BTreeMap<String, Vec<usize>> =
                    serde_json::from_value(list.clone()).unwrap();
                let only_ours: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
                let only_theirs: Vec<_> =
                    theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
                assert!(
                    only_ours.is_empty() && only_theirs.is_empty(),
                    "{what}: only ours {only_ours:?}, only official {only_theirs:?}"
                );
                for (name, shape) in &ours {
                    assert_eq!(shape, &theirs[name], "{what}: {name}");
                }
            }
            let lines: String = ours
                .iter()
                .map(|(name, shape)| {
                    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
                    format!("{name}:{}\n", dims.join(","))
                })
                .collect();
            let digest = hex::encode(sha2::Sha256::digest(lines.as_bytes()));
            assert_eq!(
                theirs["tensors"].as_u64(),
                Some(ours.len() as u64),
                "{what}: tensor count"
            );
            assert_eq!(
                theirs["sha256"].as_str(),
                Some(digest.as_str()),
                "{what}: names and shapes"
            );
            if !reduced {
                let (all, used) = orfeas::synthetic::sizes(&entries);
                eprintln!(
                    "{}: {} tensors, {all} bytes in f16 ({used} used by image-to-3D)",
                    variant.name(),
                    ours.len()
                );
            }
        }
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn convert(checkpoint: &Path, config: &Path, out: &Path) -> std::process::Output {
    orfeas(&[
        "convert",
        checkpoint.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ])
}

fn load(dir: &Path, device: &burn::tensor::Device, dtype: DType) -> ShapeModel {
    let sources = COMPONENTS.map(|c| DirSource::new(dir.join(c)));
    block_on(load_shape_model(
        [&sources[0], &sources[1], &sources[2]],
        device,
        dtype,
        |_, _| {},
    ))
    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Encode a grey disc, sample a few steps and query the field: everything finite.
fn runs(model: &ShapeModel, what: &str) {
    let size = model.image_processor.size;
    let mut rgba = image::RgbaImage::new(96, 96);
    for (x, y, px) in rgba.enumerate_pixels_mut() {
        let inside = (x as i32 - 48).pow(2) + (y as i32 - 48).pow(2) < 30 * 30;
        *px = image::Rgba([180, 120, 60, if inside { 255 } else { 0 }]);
    }
    let input = model.preprocess(&rgba).expect("the disc is an object");
    assert_eq!(
        input.size, size,
        "{what}: the config's image_processor.size"
    );
    // A multi-view model takes several views (the disc and its mirror image stand in for
    // the front, back and left): the views' tokens side by side, the front's alone otherwise.
    let mirrored = image::imageops::flip_horizontal(&rgba);
    let back = model
        .preprocess(&mirrored)
        .expect("the mirrored disc is an object");
    let views: Vec<(View, &[f32])> = match model.views {
        Some(_) => vec![
            (View::Back, &back.image),
            (View::Front, &input.image),
            (View::Left, &back.image),
        ],
        None => vec![(View::Front, &input.image)],
    };
    block_on(async {
        let single = model.condition(&input.image, input.size, input.size);
        let cond = model
            .condition_views(&views, input.size, input.size)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let [_, tokens, width] = single.dims();
        assert_eq!(
            cond.dims(),
            [1, views.len() * tokens, width],
            "{what}: the views' tokens side by side"
        );
        if model.views.is_none() {
            let other = model.condition_views(&[(View::Back, &input.image)], size, size);
            assert!(
                other.is_err_and(|e| e.to_string().contains("multi-view (2mv) model")),
                "{what}: a single-image model refuses a back view"
            );
        }
        let latents = model
            .sample(cond, model.noise(3), 2, 5.0, |_, _| {}, || false)
            .await
            .unwrap();
        let kv = model.key_values(latents.clone());
        let field = model
            .field_at(&[[0.0, 0.0, 0.0], [0.5, -0.25, 0.9]], &kv)
            .await
            .expect("the field reads back");
        let latents: Vec<f32> = latents
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(
            latents.iter().all(|v| v.is_finite()),
            "{what}: latents finite"
        );
        assert!(
            field.iter().all(|v| v.is_finite()),
            "{what}: field finite: {field:?}"
        );
    });
}

#[test]
fn every_variant_converts_loads_and_runs() {
    let cpu = orfeas_engine::device::cpu();
    let gpu = orfeas_engine::device::gpu();
    for variant in Variant::ALL {
        let work = tempfile::tempdir().unwrap();
        let mut converted = Vec::new();
        for format in [Format::Ckpt, Format::Safetensors] {
            let (checkpoint, _) = orfeas::synthetic::write(
                variant,
                true,
                format,
                &work.path().join("src"),
                7,
                |_, _| {},
            )
            .unwrap();
            let out = work.path().join(format!("{format:?}"));
            let run = convert(&checkpoint, &work.path().join("src/config.yaml"), &out);
            let said = text(&run);
            assert!(
                run.status.success(),
                "{} {format:?}: {said}",
                variant.name()
            );
            if variant == Variant::V21 {
                assert!(
                    said.contains("skipped")
                        && said.contains("vae.encoder")
                        && said.contains("vae.pre_kl"),
                    "2.1 lists the encoder tensors it leaves out: {said}"
                );
            } else {
                assert!(!said.contains("skipped"), "{}: {said}", variant.name());
            }
            converted.push(out);
        }
        for component in COMPONENTS {
            let index = |dir: &Path| {
                std::fs::read_to_string(
                    dir.join(component).join(orfeas_engine::weights::INDEX_FILE),
                )
                .unwrap()
            };
            assert_eq!(
                index(&converted[0]),
                index(&converted[1]),
                "{} {component}: the .ckpt and the repack give the same shard sets",
                variant.name()
            );
        }
        for dtype in [DType::F32, DType::F16] {
            let model = load(&converted[0], &cpu, dtype);
            assert_eq!(model.dtype(), dtype);
            let turbo = matches!(
                variant,
                Variant::V20Turbo | Variant::MiniTurbo | Variant::MvTurbo
            );
            assert_eq!(
                model.views,
                variant.multi_view().then_some(4),
                "{}: the multi-view encoder's table",
                variant.name()
            );
            assert_eq!(
                model.default_steps,
                if turbo { 5 } else { 30 },
                "{}",
                variant.name()
            );
            runs(&model, &format!("{} {dtype:?} on cpu", variant.name()));
        }
        // The real user's path: f16 on the GPU, with 2mini-turbo (1022 px, interpolated
        // positions, guidance embedding, consistency ladder) and 2mv-turbo (three views).
        if matches!(variant, Variant::MiniTurbo | Variant::MvTurbo)
            && let Some(gpu) = &gpu
        {
            let model = load(&converted[0], gpu, DType::F16);
            runs(&model, &format!("{} F16 on wgpu", variant.name()));
        }
    }
}

/// Write `variant`'s reduced config with `edit` applied, next to a checkpoint that fits the
/// unedited config; converting must fail naming `expect` and write nothing.
fn refused(variant: Variant, edit: &dyn Fn(&mut serde_json::Value), expect: &[&str]) {
    let work = tempfile::tempdir().unwrap();
    let (checkpoint, _) = orfeas::synthetic::write(
        variant,
        true,
        Format::Safetensors,
        work.path(),
        1,
        |_, _| {},
    )
    .unwrap();
    let mut yaml: serde_json::Value = yaml_serde::from_str(&variant.config_yaml(true)).unwrap();
    edit(&mut yaml);
    let config = work.path().join("edited.yaml");
    std::fs::write(&config, yaml_serde::to_string(&yaml).unwrap()).unwrap();
    let out = work.path().join("out");
    let run = convert(&checkpoint, &config, &out);
    let said = text(&run);
    assert!(!run.status.success(), "{expect:?} was accepted: {said}");
    for word in expect {
        assert!(said.contains(word), "the refusal names {word:?}: {said}");
    }
    assert!(!out.exists(), "nothing written on refusal");
}

#[test]
fn config_values_the_engine_does_not_implement_are_refused() {
    refused(
        Variant::V21,
        &|y| y["model"]["params"]["with_decoupled_ca"] = true.into(),
        &["with_decoupled_ca", "true"],
    );
    refused(
        Variant::V21,
        &|y| y["model"]["params"]["qk_norm_type"] = "layer".into(),
        &["qk_norm_type", "layer"],
    );
    refused(
        Variant::V21,
        &|y| y["model"]["params"]["use_attention_pooling"] = true.into(),
        &["use_attention_pooling", "true"],
    );
    refused(
        Variant::V21,
        &|y| y["model"]["params"]["guidance_cond_proj_dim"] = 256.into(),
        &["guidance_cond_proj_dim", "256"],
    );
    refused(
        Variant::V21,
        &|y| y["model"]["params"]["norm_type"] = "rms".into(),
        &["norm_type", "rms"],
    );
    // The multi-view encoder without the multi-view processor, and the other way round.
    refused(
        Variant::V20,
        &|y| y["conditioner"]["params"]["main_image_encoder"]["type"] = "DinoImageEncoderMV".into(),
        &[
            "main_image_encoder.type",
            "DinoImageEncoderMV",
            "MVImageProcessorV2",
        ],
    );
    refused(
        Variant::Mv,
        &|y| y["conditioner"]["params"]["main_image_encoder"]["kwargs"]["view_num"] = 6.into(),
        &["view_num", "6"],
    );
    refused(
        Variant::V20,
        &|y| y["conditioner"]["params"]["main_image_encoder"]["type"] = "CLIPImageEncoder".into(),
        &["main_image_encoder.type", "CLIPImageEncoder"],
    );
    refused(
        Variant::V20,
        &|y| y["vae"]["params"]["geo_decoder_downsample_ratio"] = 3.into(),
        &["geo_decoder_downsample_ratio", "3", "must divide width"],
    );
    refused(
        Variant::V20,
        &|y| y["model"]["params"]["rope_scaling"] = 2.into(),
        &["rope_scaling"],
    );
    refused(
        Variant::Mini,
        &|y| y["scheduler"]["params"]["shift"] = 3.0.into(),
        &["shift", "3"],
    );
    refused(
        Variant::Mini,
        &|y| {
            y["image_processor"]["target"] =
                "hy3dgen.shapegen.preprocessors.MVImageProcessorV2".into()
        },
        &["image_processor", "MVImageProcessorV2"],
    );
    refused(
        Variant::V21,
        &|y| {
            y["conditioner"]["params"]["main_image_encoder"]["kwargs"]["config"]["hidden_act"] =
                "relu".into()
        },
        &["hidden_act", "relu"],
    );
    // A config that does not describe the tensors (the guidance embedding absent from it).
    refused(
        Variant::V20Fast,
        &|y| y["model"]["params"]["guidance_embed"] = false.into(),
        &["guidance_in"],
    );
}

#[test]
fn a_checkpoint_saved_by_the_official_classes_converts() {
    // `torch.save` of the official hy3dshape modules' fp16 state dicts (OrderedDicts with
    // `_metadata`, the VAE encoder included), as the real model.fp16.ckpt is written.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/official_tiny");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("tiny");
    let run = convert(
        &data.join("model.fp16.ckpt"),
        &data.join("config.yaml"),
        &out,
    );
    let said = text(&run);
    assert!(run.status.success(), "{said}");
    assert!(said.contains("vae.encoder"), "{said}");
    // The DiT's weights came through: its output on the stored input matches the official
    // module's (f32 run of the same fp16 weights).
    let reference = std::fs::read(data.join("reference.safetensors")).unwrap();
    let reference = safetensors::SafeTensors::deserialize(&reference).unwrap();
    let get = |name: &str| {
        let view = reference.tensor(name).unwrap();
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (values, view.shape().to_vec())
    };
    let cpu = orfeas_engine::device::cpu();
    let model = load(&out, &cpu, DType::F32);
    let tensor = |(values, shape): (Vec<f32>, Vec<usize>)| {
        let dims: [usize; 3] = shape.try_into().unwrap();
        Tensor::<3>::from_data(TensorData::new(values, dims), &cpu)
    };
    let (t, _) = get("t");
    let out = futures::executor::block_on(model.denoiser.forward(
        tensor(get("x")),
        &t,
        tensor(get("context")),
        None,
    ))
    .unwrap();
    let ours: Vec<f32> = out
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let (theirs, _) = get("out");
    let diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("official torch.save checkpoint: DiT output within {diff:.2e}");
    assert!(diff < 1e-4, "the converted DiT differs by {diff}");
}

/// `orfeas generate --view`: a 2mv model (reduced, synthetic weights) makes a mesh from a
/// front and a back view; a single-image model refuses the back view by name, before it
/// runs; a view name that is none is refused by the CLI; and the server runs the same views
/// (JSON `image` and `back`) to a mesh.
#[test]
fn a_2mv_model_generates_from_views_through_the_cli() {
    let work = tempfile::tempdir().unwrap();
    let front = common::fixtures().join("preprocess_input_0.png");
    let back = common::fixtures().join("preprocess_input_1.png");
    let mut models = Vec::new();
    for variant in [Variant::Mv, Variant::V20] {
        let src = work.path().join(variant.name());
        let (checkpoint, _) =
            orfeas::synthetic::write(variant, true, Format::Safetensors, &src, 5, |_, _| {})
                .unwrap();
        let out = work.path().join(format!("{}-model", variant.name()));
        let run = convert(&checkpoint, &src.join("config.yaml"), &out);
        assert!(run.status.success(), "{}", text(&run));
        models.push(out);
    }
    let generate = |model: &Path, views: &[String], output: &Path| {
        let mut args = vec![
            "generate".to_string(),
            "--model".into(),
            model.display().to_string(),
            "-o".into(),
            output.display().to_string(),
            "--steps".into(),
            "2".into(),
            "--octree-resolution".into(),
            "32".into(),
            "--backend".into(),
            "cpu".into(),
        ];
        for view in views {
            args.push("--view".into());
            args.push(view.clone());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        orfeas(&args)
    };
    let views = [
        format!("back={}", back.display()),
        format!("front={}", front.display()),
    ];
    let glb = work.path().join("views.glb");
    let run = generate(&models[0], &views, &glb);
    let said = text(&run);
    // The synthetic weights (seed 5) find a surface at these settings.
    assert!(run.status.success(), "2mv with two views: {said}");
    assert!(glb.is_file(), "{said}");
    let glb2 = work.path().join("single.glb");
    let run = generate(&models[1], &views, &glb2);
    let said = text(&run);
    assert!(
        !run.status.success(),
        "a 2.0 model took a back view: {said}"
    );
    assert!(
        said.contains("back view needs a multi-view (2mv) model"),
        "{said}"
    );
    assert!(!glb2.exists());
    let run = generate(&models[0], &[format!("top={}", front.display())], &glb2);
    let said = text(&run);
    assert!(
        !run.status.success() && said.contains("\"top\" is not a view"),
        "{said}"
    );

    // The same views through the server: the 2mv job runs them to a mesh.
    let served = tempfile::tempdir().unwrap();
    std::fs::rename(&models[0], served.path().join("hunyuan3d")).unwrap();
    let server = common::Server::start(served.path(), &["--backend", "cpu"]);
    block_on(async {
        let client = common::client();
        common::wait_ready(&client, &server).await;
        let request = serde_json::json!({
            "image": common::b64(&std::fs::read(&front).unwrap()),
            "back": common::b64(&std::fs::read(&back).unwrap()),
            "steps": 2, "octree_resolution": 32,
        });
        let (status, _) = common::finished_job(&client, &server, &request).await;
        assert_eq!(status["status"], "done", "{status}");
    });
}

/// A turbo VAE shipped on its own (as `hunyuan3d-vae-v2-0-turbo/`: its own config.yaml and
/// checkpoint under the VAE's own names) swapped into a 2.0 bundle by `convert --vae`, as the
/// official `enable_flashvdm()` swaps it: the converted VAE set has the turbo geometry decoder
/// (`latents_proj`, no `ln_post`), and `generate --flashvdm` decodes with it to a mesh; a whole
/// bundle given as the VAE, and a config that is not a VAE's, are refused by name.
#[test]
fn a_separate_turbo_vae_converts_and_generates_with_flashvdm_through_the_cli() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("2.0-turbo");
    let (checkpoint, _) = orfeas::synthetic::write(
        Variant::V20Turbo,
        true,
        Format::Safetensors,
        &src,
        5,
        |_, _| {},
    )
    .unwrap();
    let config = src.join("config.yaml");
    let mut yaml: serde_json::Value =
        yaml_serde::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    // The turbo VAE: the same VAE with the lighter geometry decoder.
    let mut vae = yaml["vae"].clone();
    vae["params"]["geo_decoder_downsample_ratio"] = 2.into();
    vae["params"]["geo_decoder_ln_post"] = false.into();
    yaml["vae"] = vae.clone();
    let (_, entries) = orfeas::convert::layout(&yaml).unwrap();
    let own: Vec<orfeas::synthetic::Entry> = entries
        .into_iter()
        .filter_map(|mut e| {
            e.name = e.name.strip_prefix("vae.")?.to_string();
            Some(e)
        })
        .collect();
    assert!(
        own.iter()
            .any(|e| e.name == "geo_decoder.latents_proj.weight")
    );
    assert!(
        !own.iter()
            .any(|e| e.name.starts_with("geo_decoder.ln_post"))
    );
    let turbo_dir = work.path().join("hunyuan3d-vae-v2-0-turbo");
    std::fs::create_dir_all(&turbo_dir).unwrap();
    let turbo = turbo_dir.join("model.fp16.safetensors");
    orfeas::synthetic::write_entries(&turbo, &own, 9).unwrap();
    let turbo_yaml = turbo_dir.join("config.yaml");
    std::fs::write(&turbo_yaml, serde_json::to_vec_pretty(&vae).unwrap()).unwrap();

    let out = work.path().join("model");
    let convert_with = |vae: &Path, vae_config: &Path, out: &Path| {
        orfeas(&[
            "convert",
            checkpoint.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--vae",
            vae.to_str().unwrap(),
            "--vae-config",
            vae_config.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
    };
    let run = convert_with(&turbo, &turbo_yaml, &out);
    assert!(run.status.success(), "{}", text(&run));
    let index = orfeas_engine::weights::ShardIndex::from_json(
        &std::fs::read(out.join("vae").join(orfeas_engine::weights::INDEX_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(
        index.config["params"]["geo_decoder_downsample_ratio"], 2,
        "{}",
        index.config
    );
    assert!(
        index
            .weight_map
            .contains_key("vae.geo_decoder.latents_proj.weight")
    );

    let front = common::fixtures().join("preprocess_input_0.png");
    let glb = work.path().join("turbo.glb");
    let run = orfeas(&[
        "generate",
        front.to_str().unwrap(),
        "--model",
        out.to_str().unwrap(),
        "-o",
        glb.to_str().unwrap(),
        "--steps",
        "2",
        "--octree-resolution",
        "64",
        "--flashvdm",
        "--backend",
        "cpu",
    ]);
    let said = text(&run);
    assert!(run.status.success(), "turbo VAE with FlashVDM: {said}");
    assert!(glb.is_file(), "{said}");

    // Refused by name, nothing written: a whole bundle as the VAE, a config that is not a
    // VAE's.
    let refused = work.path().join("refused");
    let run = convert_with(&checkpoint, &turbo_yaml, &refused);
    let said = text(&run);
    assert!(
        !run.status.success() && said.contains("not a VAE's"),
        "{said}"
    );
    let run = convert_with(&turbo, &config, &refused);
    let said = text(&run);
    assert!(
        !run.status.success() && said.contains("not a VAE's config.yaml"),
        "{said}"
    );
    assert!(!refused.exists());
}
