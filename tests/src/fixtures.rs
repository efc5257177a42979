//! The public fixture set (`ORFEAS_FIXTURES`, default `<repo>/../shared/fixtures/public`): the
//! official code's outputs on small random-weight configs, read the same way by the engine's,
//! the CLI's and the browser's tests; and the fixture shape model converted as a user's
//! checkpoint would be.

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{Value, json};

/// The fixture folder (canonical, as WebDriver wants for uploads).
pub fn dir() -> PathBuf {
    let dir = std::env::var_os("ORFEAS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("../shared/fixtures/public"));
    dir.canonicalize().unwrap_or(dir)
}

/// One stage's entry of `fixtures.json` (its config, tolerances, file names).
pub fn stage(name: &str) -> Value {
    let path = dir().join("fixtures.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (set ORFEAS_FIXTURES?)", path.display()));
    let all: Value = serde_json::from_str(&text).expect("fixtures.json parses");
    all[name].clone()
}

/// A fixture weight file's tensors: (official name, shape, F16 bytes), sorted by name.
pub type Tensors = Vec<(String, Vec<usize>, Vec<u8>)>;

pub fn tensors(file: &str) -> Tensors {
    let path = dir().join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("a fixture weight file parses");
    let mut out: Tensors = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), Dtype::F16, "{name}");
            (name, view.shape().to_vec(), view.data().to_vec())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The official safetensors repack of a checkpoint: every part's tensors, flat, F16, under
/// their prefixed names (`model.`, `vae.`, `conditioner.`, as the fixture files have them).
pub fn write_bundle(path: &Path, parts: &[&Tensors]) {
    let views: Vec<(String, TensorView)> = parts
        .iter()
        .copied()
        .flatten()
        .map(|(name, shape, bytes)| {
            let view = TensorView::new(Dtype::F16, shape.clone(), bytes);
            (name.clone(), view.expect("a valid tensor"))
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("the bundle is written");
}

/// The official `config.yaml` (as a value) for the fixture configs with denoiser `class`
/// (e.g. `hunyuandit.HunYuanDiTPlain`) and its `params`.
pub fn official_config(class: &str, params: &Value) -> Value {
    let dinov2 = stage("dinov2");
    json!({
        "model": {"target": format!("hy3dshape.models.denoisers.{class}"), "params": params},
        "vae": {
            "target": "hy3dshape.models.autoencoders.ShapeVAE",
            "params": stage("vae")["config"]["params"],
        },
        "conditioner": {
            "target": "hy3dshape.models.conditioner.SingleImageEncoder",
            "params": {"main_image_encoder": {"type": "DinoImageEncoder", "kwargs": {
                "config": dinov2["config"]["config"],
                "image_size": dinov2["config"]["encoder_kwargs"]["image_size"],
                "use_cls_token": true,
            }}},
        },
        "scheduler": {
            "target": "hy3dshape.schedulers.FlowMatchEulerDiscreteScheduler",
            "params": {"num_train_timesteps": 1000},
        },
        "image_processor": {
            "target": "hy3dshape.preprocessors.ImageProcessorV2",
            "params": {"size": 512, "border_ratio": 0.15},
        },
    })
}

/// The fixture shape model (the 2.1 DiT, VAE and DINOv2 test weights) converted by `orfeas
/// convert`'s code into `out` (`conditioner/`, `denoiser/`, `vae/`), as a user's checkpoint
/// would be.
pub fn converted_shape_model(out: &Path) -> anyhow::Result<()> {
    converted_shape_model_at(out, orfeas_engine::weights::Precision::F16)
}

/// As [`converted_shape_model`], written at `precision` (`orfeas convert --quant`).
pub fn converted_shape_model_at(
    out: &Path,
    precision: orfeas_engine::weights::Precision,
) -> anyhow::Result<()> {
    let config = official_config(
        "hunyuandit.HunYuanDiTPlain",
        &stage("dit21")["config"]["params"],
    );
    convert_fixtures(out, precision, &config)
}

/// [`converted_shape_model`] behind the official multi-view encoder (`DinoImageEncoderMV`
/// with a four-view table, `MVImageProcessorV2`), as the 2mv family's `config.yaml` sets it:
/// the same tensors (the view table is not a weight), a model that takes up to four views.
pub fn converted_multi_view_shape_model(out: &Path) -> anyhow::Result<()> {
    let mut config = official_config(
        "hunyuandit.HunYuanDiTPlain",
        &stage("dit21")["config"]["params"],
    );
    let encoder = &mut config["conditioner"]["params"]["main_image_encoder"];
    encoder["type"] = json!("DinoImageEncoderMV");
    encoder["kwargs"]["view_num"] = json!(4);
    config["image_processor"]["target"] = json!("hy3dshape.preprocessors.MVImageProcessorV2");
    convert_fixtures(out, orfeas_engine::weights::Precision::F16, &config)
}

/// The fixture tensors as one official bundle with `config` beside it, converted into `out`.
fn convert_fixtures(
    out: &Path,
    precision: orfeas_engine::weights::Precision,
    config: &Value,
) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let bundle = scratch.path().join("model.fp16.safetensors");
    let parts = ["dit21", "vae", "dinov2"].map(|s| tensors(&format!("{s}.weights.safetensors")));
    write_bundle(&bundle, &[&parts[0], &parts[1], &parts[2]]);
    let yaml = scratch.path().join("config.yaml");
    // JSON is YAML.
    std::fs::write(&yaml, serde_json::to_vec_pretty(config)?)?;
    orfeas::convert::convert(&bundle, &yaml, out, 16 << 20, precision, |_, _| {})?;
    Ok(())
}

/// The f16 shard set in `f16` written again at `precision` into `out` (the model's id, version
/// and config kept), as `orfeas quantize` does: its index.
pub fn requantized(
    f16: &Path,
    out: &Path,
    precision: orfeas_engine::weights::Precision,
) -> anyhow::Result<orfeas_engine::weights::ShardIndex> {
    use orfeas_engine::weights::pack::{PackOptions, pack};
    let index = orfeas_engine::weights::ShardIndex::from_json(&std::fs::read(
        f16.join(orfeas_engine::weights::INDEX_FILE),
    )?)?;
    let options = PackOptions {
        model_id: index.model.id.clone(),
        version: index.model.version.clone(),
        config: index.config.clone(),
        precision,
        ..Default::default()
    };
    Ok(pack(&[f16.to_path_buf()], out, &options, |_, _| {})?)
}

/// The ISNet weights the set-up converted (`ORFEAS_ISNET` or the default folder). Absent, the
/// calling test fails, unless `ORFEAS_ALLOW_SKIP` asks for a skip (`None`, with a SKIPPED note).
pub fn isnet_weights() -> Option<PathBuf> {
    let dir = orfeas::remove_bg::default_isnet_dir();
    if dir.join(orfeas_engine::weights::INDEX_FILE).is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("ORFEAS_ALLOW_SKIP").is_some(),
        "no converted ISNet weights at {} (run scripts/setup.sh, or set ORFEAS_ALLOW_SKIP=1)",
        dir.display()
    );
    eprintln!(
        "SKIPPED (ORFEAS_ALLOW_SKIP): no ISNet weights at {}",
        dir.display()
    );
    None
}
