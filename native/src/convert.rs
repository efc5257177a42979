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
use orfeas_engine::pipeline::{COMPONENTS, ShapeConfig};
use orfeas_engine::weights::pack::{self, PackOptions, PackTensor};
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
    /// Tensors in the checkpoint that belong to none of the three parts.
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
    let family = match double {
        16 => "2.0".to_string(),
        8 => "2mini".to_string(),
        n => format!("Hunyuan3DDiT with {n} double blocks"),
    };
    let distilled = tensors
        .iter()
        .any(|t| t.name.starts_with("model.guidance_in."));
    let suffix = match (distilled, scheduler_is_consistency) {
        (false, _) => "",
        (true, false) => "-fast",
        (true, true) => "-turbo",
    };
    Ok(Variant {
        architecture: "Hunyuan3DDiT",
        name: format!("{family}{suffix}"),
    })
}

/// The three index configs from the official `config.yaml`.
fn configs(yaml: &Value, variant: &Variant) -> Result<[Value; 3]> {
    let target = yaml["model"]["target"].as_str().unwrap_or_default();
    let class = target.rsplit('.').next().unwrap_or_default();
    if class != variant.architecture {
        bail!(
            "config.yaml's model is {target:?} but the weights are a {} ({})",
            variant.architecture,
            variant.name
        );
    }
    let encoder = &yaml["conditioner"]["params"]["main_image_encoder"];
    let kwargs = &encoder["kwargs"];
    if kwargs["config"].is_null() {
        bail!("config.yaml has no conditioner.params.main_image_encoder.kwargs.config");
    }
    let image_size = kwargs["image_size"]
        .as_u64()
        .or_else(|| kwargs["config"]["image_size"].as_u64())
        .context("config.yaml gives no conditioner image_size")?;
    let scheduler_target = yaml["scheduler"]["target"].as_str().unwrap_or_default();
    let scheduler = if scheduler_target.ends_with("ConsistencyFlowMatchEulerDiscreteScheduler") {
        // The class default is 50; the turbo configs set 100.
        let pcm = yaml["scheduler"]["params"]["pcm_timesteps"]
            .as_u64()
            .unwrap_or(50);
        json!({"kind": "consistency", "pcm_timesteps": pcm})
    } else {
        json!({"kind": "flow_match"})
    };
    let conditioner = json!({
        "config": kwargs["config"],
        "image_size": image_size,
        "use_cls_token": kwargs["use_cls_token"],
        "image_processor": yaml["image_processor"]["params"],
    });
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

/// Convert `checkpoint` with its `config_yaml` into shard sets under `out`; `on_bytes(done,
/// total)` follows the writing.
pub fn convert(
    checkpoint: &Path,
    config_yaml: &Path,
    out: &Path,
    shard_size: u64,
    mut on_bytes: impl FnMut(u64, u64),
) -> Result<Converted> {
    let text = std::fs::read_to_string(config_yaml)
        .with_context(|| format!("reading {}", config_yaml.display()))?;
    let yaml: Value = yaml_serde::from_str(&text)
        .with_context(|| format!("{} is not valid YAML", config_yaml.display()))?;
    let tensors = read_checkpoint(checkpoint)?;
    let consistency = yaml["scheduler"]["target"]
        .as_str()
        .is_some_and(|t| t.ends_with("ConsistencyFlowMatchEulerDiscreteScheduler"));
    let variant = detect(&tensors, consistency)?;
    let configs = configs(&yaml, &variant)?;

    let mut parts: Vec<Vec<PackTensor>> = COMPONENTS.iter().map(|_| Vec::new()).collect();
    let mut skipped = Vec::new();
    for tensor in tensors {
        match component_of(&tensor.name) {
            Some(c) => parts[COMPONENTS.iter().position(|&x| x == c).expect("known")].push(tensor),
            None => skipped.push(tensor.name),
        }
    }
    skipped.sort();
    for (component, part) in COMPONENTS.iter().zip(&parts) {
        if part.is_empty() {
            bail!(
                "{}: no {component} tensors (names starting with {:?})",
                checkpoint.display(),
                match *component {
                    "denoiser" => "model.",
                    other => other,
                }
            );
        }
    }
    let total: u64 = parts
        .iter()
        .flatten()
        .map(|t| t.shape.iter().product::<usize>() as u64 * 2)
        .sum();
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
            },
            |done, _| on_bytes(before + done, total),
        )
        .map_err(|e| anyhow::anyhow!("{component}: {e}"))?;
        before += index.total_bytes();
        sets.push((*component, count, index.total_bytes()));
    }
    Ok(Converted {
        variant,
        sets,
        skipped,
    })
}
