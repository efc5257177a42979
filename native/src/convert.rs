//! `orfeas convert`: an official Hunyuan3D checkpoint → three fp16 shard sets.
//!
//! The input is the bundled checkpoint the official loader opens (`model.fp16.ckpt`, a torch
//! pickle `{model, vae, conditioner}`, parsed by pytorch-reader without running any pickle
//! code; or its safetensors repack with `model.`/`vae.`/`conditioner.` prefixes) and its
//! `config.yaml`. The output folder holds `conditioner/`, `denoiser/` and `vae/`, each a shard
//! set whose tensors keep their official names and whose index carries its part of the config
//! (the [`orfeas_engine::pipeline::ShapeConfig`] the engine reads back).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use orfeas_engine::models::{dinov2, hunyuan3d_dit, hunyuandit_plain, shape_vae};
use orfeas_engine::pipeline::{Architecture, COMPONENTS, ShapeConfig};
use orfeas_engine::weights::pack::{self, PackOptions, PackTensor};
use orfeas_engine::weights::{Precision, torch_layout};
use safetensors::Dtype;
use serde_json::{Value, json};

/// What the weights turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// `HunYuanDiTPlain` (2.1) or `Hunyuan3DDiT` (2.0 family).
    pub architecture: &'static str,
    /// A human name: "2.1", "2.0", "2mini", with "-fast" / "-turbo" for distilled ones.
    pub name: String,
}

pub struct Converted {
    pub variant: Variant,
    /// Per component: tensors and F16 bytes written.
    pub sets: Vec<(&'static str, usize, u64)>,
    /// Tensors of the checkpoint that image-to-3D does not use (the 2.1 VAE's encoder and
    /// `pre_kl`), left out.
    pub skipped: Vec<String>,
}

/// Every tensor of the checkpoint, named as the official bundle names them.
fn read_checkpoint(path: &Path) -> Result<Vec<PackTensor>> {
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    if is_safetensors {
        return pack::read_safetensors(path).map_err(anyhow::Error::msg);
    }
    let reader = pytorch_reader::PytorchReader::new(path).map_err(|e| {
        anyhow::anyhow!("{}: not a readable PyTorch checkpoint: {e}", path.display())
    })?;
    let origin = path.display().to_string();
    reader
        .into_tensors()
        .into_iter()
        .map(|(name, tensor)| {
            use pytorch_reader::DType as T;
            let dtype = match tensor.dtype() {
                T::F16 => Dtype::F16,
                T::BF16 => Dtype::BF16,
                T::F32 => Dtype::F32,
                T::F64 => Dtype::F64,
                T::I64 => Dtype::I64,
                T::I32 => Dtype::I32,
                T::I16 => Dtype::I16,
                T::I8 => Dtype::I8,
                T::U64 => Dtype::U64,
                T::U32 => Dtype::U32,
                T::U16 => Dtype::U16,
                T::U8 => Dtype::U8,
                T::Bool => Dtype::BOOL,
            };
            let shape = tensor.shape().to_vec();
            Ok(PackTensor {
                name,
                dtype,
                shape,
                origin: origin.clone(),
                read: Box::new(move || tensor.read()),
            })
        })
        .collect()
}

/// Which part of the bundle a tensor belongs to (its first name segment).
fn component_of(name: &str) -> Option<&'static str> {
    match name.split('.').next()? {
        "conditioner" => Some("conditioner"),
        "model" => Some("denoiser"),
        "vae" => Some("vae"),
        _ => None,
    }
}

/// Name the variant from the tensors, as the reference notes describe it.
fn detect(tensors: &[PackTensor], scheduler_is_consistency: bool) -> Result<Variant> {
    let has = |name: &str| tensors.iter().any(|t| t.name == name);
    let count = |prefix: &str| {
        tensors
            .iter()
            .filter_map(|t| t.name.strip_prefix(prefix)?.split('.').next()?.parse().ok())
            .map(|i: usize| i + 1)
            .max()
            .unwrap_or(0)
    };
    if has("model.x_embedder.weight") {
        return Ok(Variant {
            architecture: "HunYuanDiTPlain",
            name: "2.1".into(),
        });
    }
    let double = count("model.double_blocks.");
    if double == 0 {
        bail!(
            "the checkpoint's denoiser is neither HunYuanDiTPlain (no model.x_embedder.weight) \
             nor Hunyuan3DDiT (no model.double_blocks.*)"
        );
    }
    let distilled = tensors
        .iter()
        .any(|t| t.name.starts_with("model.guidance_in."));
    Ok(flux_variant(double, distilled, scheduler_is_consistency))
}

/// A `Hunyuan3DDiT` variant's name: 16 double blocks are 2.0, 8 are 2mini; guidance-distilled
/// ones are -fast, or -turbo with the consistency scheduler.
fn flux_variant(double: usize, distilled: bool, consistency: bool) -> Variant {
    let family = match double {
        16 => "2.0".to_string(),
        8 => "2mini".to_string(),
        n => format!("Hunyuan3DDiT with {n} double blocks"),
    };
    let suffix = match (distilled, consistency) {
        (false, _) => "",
        (true, false) => "-fast",
        (true, true) => "-turbo",
    };
    Variant {
        architecture: "Hunyuan3DDiT",
        name: format!("{family}{suffix}"),
    }
}

fn is_consistency(yaml: &Value) -> bool {
    yaml["scheduler"]["target"]
        .as_str()
        .is_some_and(|t| t.ends_with("ConsistencyFlowMatchEulerDiscreteScheduler"))
}

/// The variant a `config.yaml` describes (its model class, block count, guidance flag and
/// scheduler).
pub fn variant_from_config(yaml: &Value) -> Result<Variant> {
    let target = yaml["model"]["target"].as_str().unwrap_or_default();
    match target.rsplit('.').next().unwrap_or_default() {
        "HunYuanDiTPlain" => Ok(Variant {
            architecture: "HunYuanDiTPlain",
            name: "2.1".into(),
        }),
        "Hunyuan3DDiT" => {
            let params = &yaml["model"]["params"];
            let variant = flux_variant(
                params["depth"].as_u64().unwrap_or(16) as usize,
                params["guidance_embed"].as_bool().unwrap_or(false),
                is_consistency(yaml),
            );
            Ok(named_by_conditioner(variant, yaml))
        }
        _ => bail!(
            "config.yaml model.target: {target:?} is not a Hunyuan3D shape denoiser \
             (HunYuanDiTPlain or Hunyuan3DDiT)"
        ),
    }
}

/// The 2mv family is the 2.0 denoiser behind the multi-view encoder: a variant named from its
/// denoiser is renamed for the conditioner `config.yaml` gives it.
fn named_by_conditioner(mut variant: Variant, yaml: &Value) -> Variant {
    if encoder_type(yaml) == "DinoImageEncoderMV" {
        variant.name = variant.name.replacen("2.0", "2mv", 1);
    }
    variant
}

/// `conditioner.params.main_image_encoder.type` (`DinoImageEncoder` when absent).
fn encoder_type(yaml: &Value) -> &str {
    yaml["conditioner"]["params"]["main_image_encoder"]["type"]
        .as_str()
        .unwrap_or("DinoImageEncoder")
}

/// Tensors of the official bundles that image-to-3D never runs: the 2.1 VAE's point-cloud
/// encoder and its `pre_kl` projection (used to encode meshes, for training).
pub fn unused_by_image_to_3d(name: &str) -> bool {
    name.starts_with("vae.encoder.") || name.starts_with("vae.pre_kl.")
}

/// Names grouped by their first three segments, with counts: `vae.encoder.self_attn (96),
/// vae.pre_kl (2)`.
pub fn summarize(names: &[String]) -> String {
    let mut groups: Vec<(String, usize)> = Vec::new();
    for name in names {
        let key = name.split('.').take(3).collect::<Vec<_>>().join(".");
        let key = key
            .trim_end_matches(".weight")
            .trim_end_matches(".bias")
            .to_string();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => groups.push((key, 1)),
        }
    }
    groups
        .iter()
        .map(|(k, n)| format!("{k}.* ({n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `target`'s class must be one of `classes` (the official module paths vary: `hy3dshape.…`
/// in 2.1, `hy3dgen.shapegen.…` in 2.0).
fn expect_class(yaml: &Value, section: &str, classes: &[&str]) -> Result<String> {
    let target = yaml[section]["target"].as_str().unwrap_or_default();
    let class = target.rsplit('.').next().unwrap_or_default();
    if !classes.contains(&class) {
        bail!(
            "config.yaml {section}.target: {target:?} is not supported (only {})",
            classes.join(" or ")
        );
    }
    Ok(class.to_string())
}

/// Refuse any key of `map` outside `known`, naming it and its value.
fn only_known(map: &Value, what: &str, known: &[&str]) -> Result<()> {
    if let Some(map) = map.as_object()
        && let Some((key, value)) = map.iter().find(|(k, _)| !known.contains(&k.as_str()))
    {
        bail!("config.yaml {what}.{key}: {value} is not a setting orfeas knows");
    }
    Ok(())
}

/// The three index configs from the official `config.yaml`: every section the engine reads is
/// checked, and a value the engine does not implement is refused naming the field and value.
pub fn configs(yaml: &Value, variant: &Variant) -> Result<[Value; 3]> {
    let class = expect_class(yaml, "model", &["HunYuanDiTPlain", "Hunyuan3DDiT"])?;
    if class != variant.architecture {
        bail!(
            "config.yaml's model is {:?} but the weights are a {} ({})",
            yaml["model"]["target"].as_str().unwrap_or_default(),
            variant.architecture,
            variant.name
        );
    }
    expect_class(yaml, "vae", &["ShapeVAE"])?;
    expect_class(yaml, "conditioner", &["SingleImageEncoder"])?;
    let conditioner_params = &yaml["conditioner"]["params"];
    only_known(
        conditioner_params,
        "conditioner.params",
        &["main_image_encoder"],
    )?;
    let encoder = &conditioner_params["main_image_encoder"];
    only_known(
        encoder,
        "conditioner.params.main_image_encoder",
        &["type", "kwargs"],
    )?;
    let kwargs = &encoder["kwargs"];
    only_known(
        kwargs,
        "conditioner.params.main_image_encoder.kwargs",
        &[
            "config",
            "image_size",
            "use_cls_token",
            "version",
            "view_num",
        ],
    )?;
    let encoder_type = encoder_type(yaml);
    let multi_view = encoder_type == "DinoImageEncoderMV";
    if kwargs["config"].is_null() {
        bail!("config.yaml has no conditioner.params.main_image_encoder.kwargs.config");
    }
    let image_size = kwargs["image_size"]
        .as_u64()
        .context("config.yaml gives no conditioner.params.main_image_encoder.kwargs.image_size")?;
    let scheduler_class = expect_class(
        yaml,
        "scheduler",
        &[
            "FlowMatchEulerDiscreteScheduler",
            "ConsistencyFlowMatchEulerDiscreteScheduler",
        ],
    )?;
    let scheduler_params = &yaml["scheduler"]["params"];
    let train = scheduler_params["num_train_timesteps"]
        .as_u64()
        .unwrap_or(1000);
    if train != 1000 {
        bail!(
            "config.yaml scheduler.params.num_train_timesteps: {train} is not supported (only 1000)"
        );
    }
    let scheduler = if scheduler_class == "ConsistencyFlowMatchEulerDiscreteScheduler" {
        only_known(
            scheduler_params,
            "scheduler.params",
            &["num_train_timesteps", "pcm_timesteps"],
        )?;
        // The class default is 50; the turbo configs set 100.
        let pcm = scheduler_params["pcm_timesteps"].as_u64().unwrap_or(50);
        if pcm == 0 || 1000 % pcm != 0 {
            bail!("config.yaml scheduler.params.pcm_timesteps: {pcm} must divide 1000");
        }
        json!({"kind": "consistency", "pcm_timesteps": pcm})
    } else {
        only_known(
            scheduler_params,
            "scheduler.params",
            &["num_train_timesteps", "shift"],
        )?;
        let shift = scheduler_params["shift"].as_f64().unwrap_or(1.0);
        if shift != 1.0 {
            bail!("config.yaml scheduler.params.shift: {shift} is not supported (only 1.0)");
        }
        json!({"kind": "flow_match"})
    };
    // The multi-view encoder comes with the multi-view processor, and only with it: each
    // view goes through the same `ImageProcessorV2` steps.
    let processor = match yaml.get("image_processor") {
        None | Some(Value::Null) if multi_view => {
            bail!("config.yaml has no image_processor: DinoImageEncoderMV takes MVImageProcessorV2")
        }
        None | Some(Value::Null) => Value::Null,
        Some(_) => {
            let class = expect_class(
                yaml,
                "image_processor",
                &["ImageProcessorV2", "MVImageProcessorV2"],
            )?;
            if (class == "MVImageProcessorV2") != multi_view {
                bail!(
                    "config.yaml image_processor.target {class:?} does not go with \
                     conditioner.params.main_image_encoder.type {encoder_type:?} \
                     (DinoImageEncoderMV takes MVImageProcessorV2, DinoImageEncoder ImageProcessorV2)"
                );
            }
            yaml["image_processor"]["params"].clone()
        }
    };
    let mut conditioner = json!({
        "encoder": encoder_type,
        "config": kwargs["config"],
        "image_size": image_size,
        "use_cls_token": kwargs["use_cls_token"],
        "image_processor": processor,
    });
    if !kwargs["view_num"].is_null() {
        conditioner["view_num"] = kwargs["view_num"].clone();
    }
    let denoiser = json!({
        "architecture": variant.architecture,
        "params": yaml["model"]["params"],
        "scheduler": scheduler,
        "variant": variant.name,
    });
    let vae = json!({ "params": yaml["vae"]["params"] });
    ShapeConfig::from_values(&conditioner, &denoiser, &vae).map_err(anyhow::Error::msg)?;
    Ok([conditioner, denoiser, vae])
}

/// One tensor the engine expects from a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub name: String,
    pub shape: Vec<usize>,
}

/// Every tensor the engine loads for the model `config.yaml` describes, under the official
/// names and shapes (`conditioner.`, `model.`, `vae.` in that order); the parameters stay lazy,
/// so a full-size layout allocates nothing.
pub fn layout(yaml: &Value) -> Result<(Variant, Vec<Expected>)> {
    let variant = variant_from_config(yaml)?;
    let [conditioner, denoiser, vae] = configs(yaml, &variant)?;
    let config =
        ShapeConfig::from_values(&conditioner, &denoiser, &vae).map_err(anyhow::Error::msg)?;
    let device = burn::tensor::Device::flex();
    let mut out = Vec::new();
    let mut push = |list: Vec<(String, Vec<usize>)>| {
        out.extend(
            list.into_iter()
                .map(|(name, shape)| Expected { name, shape }),
        );
    };
    push(torch_layout(
        &config.conditioner.config.init(&device),
        dinov2::checkpoint_name,
    ));
    match &config.denoiser.architecture {
        Architecture::HunYuanDiTPlain { params } => push(torch_layout(
            &params.init(&device),
            hunyuandit_plain::checkpoint_name,
        )),
        Architecture::Hunyuan3DDiT { params } => push(torch_layout(
            &params.init(&device),
            hunyuan3d_dit::checkpoint_name,
        )),
    }
    push(torch_layout(
        &config
            .vae
            .params
            .init(&device)
            .map_err(anyhow::Error::msg)?,
        shape_vae::checkpoint_name,
    ));
    Ok((variant, out))
}

/// Check the checkpoint's tensors against the layout: every expected tensor present with its
/// shape and a float dtype; the others either unused by image-to-3D (returned, to skip and
/// list) or refused.
fn check_tensors(tensors: &[PackTensor], expected: &[Expected]) -> Result<Vec<String>> {
    use std::collections::HashMap;
    let by_name: HashMap<&str, &PackTensor> =
        tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let wanted: HashMap<&str, &Expected> = expected.iter().map(|e| (e.name.as_str(), e)).collect();
    let missing: Vec<&str> = expected
        .iter()
        .filter(|e| !by_name.contains_key(e.name.as_str()))
        .map(|e| e.name.as_str())
        .collect();
    let list = |names: &[&str]| {
        let mut s = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        if names.len() > 5 {
            s.push_str(&format!(" and {} more", names.len() - 5));
        }
        s
    };
    if !missing.is_empty() {
        bail!(
            "the checkpoint does not fit its config.yaml: {} tensors missing ({})",
            missing.len(),
            list(&missing)
        );
    }
    for e in expected {
        let t = by_name[e.name.as_str()];
        if t.shape != e.shape {
            bail!(
                "the checkpoint does not fit its config.yaml: {} is {:?}, the config makes {:?}",
                e.name,
                t.shape,
                e.shape
            );
        }
        if !orfeas_engine::weights::dtype::is_float(t.dtype) {
            bail!("{}: dtype {:?} is not a float", e.name, t.dtype);
        }
    }
    let extra: Vec<&str> = tensors
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !wanted.contains_key(n))
        .collect();
    let refused: Vec<&str> = extra
        .iter()
        .copied()
        .filter(|n| !unused_by_image_to_3d(n))
        .collect();
    if !refused.is_empty() {
        bail!(
            "the checkpoint does not fit its config.yaml: {} tensors the model does not have ({})",
            refused.len(),
            list(&refused)
        );
    }
    let mut skipped: Vec<String> = extra.into_iter().map(str::to_string).collect();
    skipped.sort();
    Ok(skipped)
}

/// Convert `checkpoint` with its `config_yaml` into shard sets under `out`; `on_bytes(done,
/// total)` follows the writing.
pub fn convert(
    checkpoint: &Path,
    config_yaml: &Path,
    out: &Path,
    shard_size: u64,
    precision: Precision,
    on_bytes: impl FnMut(u64, u64),
) -> Result<Converted> {
    convert_with_vae(
        checkpoint,
        config_yaml,
        None,
        out,
        shard_size,
        precision,
        on_bytes,
    )
}

/// A VAE shipped on its own (the turbo VAEs `enable_flashvdm()` swaps in:
/// `hunyuan3d-vae-v2-0-turbo/`, `hunyuan3d-vae-v2-mini-turbo/`): its checkpoint (the VAE's
/// own tensor names, without the bundle's `vae.`) and its config.yaml (`target`, `params`).
pub struct SeparateVae<'a> {
    pub checkpoint: &'a Path,
    pub config_yaml: &'a Path,
}

/// [`convert`], with the bundle's VAE replaced by `vae` when given (its tensors and its
/// config.yaml section), as the official `enable_flashvdm()` replaces it.
pub fn convert_with_vae(
    checkpoint: &Path,
    config_yaml: &Path,
    vae: Option<SeparateVae>,
    out: &Path,
    shard_size: u64,
    precision: Precision,
    mut on_bytes: impl FnMut(u64, u64),
) -> Result<Converted> {
    let read_yaml = |path: &Path| -> Result<Value> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        yaml_serde::from_str(&text).with_context(|| format!("{} is not valid YAML", path.display()))
    };
    let mut yaml = read_yaml(config_yaml)?;
    let mut tensors = read_checkpoint(checkpoint)?;
    if let Some(vae) = vae {
        let section = read_yaml(vae.config_yaml)?;
        let target = section["target"].as_str().unwrap_or_default();
        if !target.ends_with("ShapeVAE") || !section["params"].is_object() {
            bail!(
                "{}: not a VAE's config.yaml (expected target: ….ShapeVAE and its params, got \
                 target {target:?})",
                vae.config_yaml.display()
            );
        }
        yaml["vae"] = section;
        let own = read_checkpoint(vae.checkpoint)?;
        if let Some(other) = own
            .iter()
            .find(|t| matches!(component_of(&t.name), Some("denoiser" | "conditioner")))
        {
            bail!(
                "{}: {} is a whole model's tensor, not a VAE's (give the VAE's own checkpoint)",
                vae.checkpoint.display(),
                other.name
            );
        }
        tensors.retain(|t| !t.name.starts_with("vae."));
        tensors.extend(own.into_iter().map(|mut t| {
            if !t.name.starts_with("vae.") {
                t.name = format!("vae.{}", t.name);
            }
            t
        }));
    }
    for component in COMPONENTS {
        let prefix = match component {
            "denoiser" => "model.".to_string(),
            other => format!("{other}."),
        };
        if !tensors.iter().any(|t| t.name.starts_with(&prefix)) {
            bail!(
                "{}: no {component} tensors (names starting with {prefix:?})",
                checkpoint.display()
            );
        }
    }
    let variant = named_by_conditioner(detect(&tensors, is_consistency(&yaml))?, &yaml);
    let configs = configs(&yaml, &variant)?;
    // Everything is checked before anything is written: a refusal leaves no output.
    let (_, expected) = layout(&yaml)?;
    let skipped = check_tensors(&tensors, &expected)?;

    let mut parts: Vec<Vec<PackTensor>> = COMPONENTS.iter().map(|_| Vec::new()).collect();
    for tensor in tensors {
        if skipped.binary_search(&tensor.name).is_ok() {
            continue;
        }
        if let Some(c) = component_of(&tensor.name) {
            parts[COMPONENTS.iter().position(|&x| x == c).expect("known")].push(tensor);
        }
    }
    let total: u64 = parts
        .iter()
        .flatten()
        .map(|t| t.stored_len(precision))
        .sum();
    // The three sets are written beside `out` and swapped in together: a failed or concurrent
    // conversion never leaves an installed model that fails `verify`.
    let sets = orfeas_engine::weights::install::install(out, |staging| {
        write_sets(
            staging,
            parts,
            configs,
            &variant,
            (shard_size, precision),
            total,
            &mut on_bytes,
        )
    })?;
    Ok(Converted {
        variant,
        sets,
        skipped,
    })
}

/// The conditioner, denoiser and VAE shard sets, written into `out`.
fn write_sets(
    out: &Path,
    parts: Vec<Vec<PackTensor>>,
    configs: [Value; 3],
    variant: &Variant,
    (shard_size, precision): (u64, Precision),
    total: u64,
    on_bytes: &mut impl FnMut(u64, u64),
) -> Result<Vec<(&'static str, usize, u64)>> {
    let mut before = 0;
    let mut sets = Vec::new();
    for ((component, part), config) in COMPONENTS.iter().zip(parts).zip(configs) {
        let count = part.len();
        let dir: PathBuf = out.join(component);
        let index = pack::pack_tensors(
            part,
            &dir,
            &PackOptions {
                shard_size,
                model_id: format!("hunyuan3d-{}-{component}", variant.name),
                version: "1".into(),
                config,
                precision,
            },
            |done, _| on_bytes(before + done, total),
        )
        .map_err(|e| anyhow::anyhow!("{component}: {e}"))?;
        before += index.total_bytes();
        sets.push((*component, count, index.total_bytes()));
    }
    Ok(sets)
}
