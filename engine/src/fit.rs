//! Whether a model fits the device, decided from its indexes before a byte of weights is
//! fetched: the index records the model's bytes per dtype and its largest tensor; the device
//! says whether it computes in f16 (`shader-f16`), its largest buffer and how much memory the
//! models may take. A refusal says what is missing and which official model would fit.

use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use crate::weights::{Precision, ShardIndex};

/// What a model needs on the device, from its shard sets' indexes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Footprint {
    /// Float weight bytes when they stay f16 on the device.
    pub weights_f16: u64,
    /// Quantized weight bytes as stored (f16 scales); a device computing in f32 widens the
    /// scales (see [`crate::weights::quant::for_compute`]).
    #[serde(default)]
    pub weights_quantized: u64,
    /// Elements of the largest tensor (one GPU buffer each); 0 when not recorded.
    pub largest_tensor_elements: u64,
    pub largest_tensor: String,
}

impl Footprint {
    pub fn weights(&self, dtype: DType) -> u64 {
        // f32 scales: a block of 32 q4 values takes 20 bytes instead of 18 (q8: 36 for 34), so
        // 10/9 bounds both (blocks of 8 or 16 occur only in layers too narrow to matter).
        let quantized = if dtype == DType::F16 {
            self.weights_quantized
        } else {
            self.weights_quantized.div_ceil(9) * 10
        };
        self.weights_f16 / 2 * dtype.size() as u64 + quantized
    }

    /// The footprint of several shard sets loaded together (a shape model's three).
    pub fn of(indexes: &[&ShardIndex]) -> Self {
        let mut out = Footprint {
            weights_f16: 0,
            weights_quantized: 0,
            largest_tensor_elements: 0,
            largest_tensor: String::new(),
        };
        for index in indexes {
            let own = index.footprint();
            out.weights_f16 += own.weights_f16;
            out.weights_quantized += own.weights_quantized;
            if own.largest_tensor_elements > out.largest_tensor_elements {
                out.largest_tensor_elements = own.largest_tensor_elements;
                out.largest_tensor = own.largest_tensor;
            }
        }
        out
    }
}

/// What the device offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// Computes in f16 (a GPU with `shader-f16`, or the CPU backend).
    pub f16: bool,
    /// Bytes of memory the weights may take.
    pub memory: u64,
    /// Where `memory` comes from ("host memory", "assumed: WebGPU does not report GPU memory;
    /// set gpu_memory_gib", …), for the message.
    pub memory_source: String,
    /// The largest single buffer.
    pub max_buffer_size: u64,
}

/// The weights may take this share of the memory; the rest is for activations (a few
/// buffer-budget slices), the other models and the browser.
pub const WEIGHT_SHARE: f64 = 0.9;

/// The official shape models' weights (what image-to-3D loads, f16 bytes), for "what would
/// fit" (measured from the real layouts: `orfeas synthesize` / `tests/real_layouts.rs`).
pub const OFFICIAL_MODELS: &[(&str, u64)] = &[
    ("Hunyuan3D-2.1", 7_138_680_450),
    ("Hunyuan3D-2.0 (-fast, -turbo)", 4_930_561_666),
    ("Hunyuan3D-2mini (-fast, -turbo)", 3_822_405_250),
];

/// Bytes in GiB, or MiB below one GiB.
fn gib(bytes: u64) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.1} GiB")
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

impl Capacity {
    /// The dtype models run in here by default: f16 where the device computes in it.
    pub fn preferred_dtype(&self) -> DType {
        if self.f16 { DType::F16 } else { DType::F32 }
    }
}

/// How the fit check and its refusals name a shape model: its folder and, when its indexes
/// state one, the official variant ("hunyuan3d (Hunyuan3D-2.1)"). One rule for the server,
/// the CLI and the app.
pub fn model_name(folder: &str, indexes: &[&crate::weights::ShardIndex]) -> String {
    match indexes.iter().find_map(|i| i.config["variant"].as_str()) {
        Some(variant) => format!("{folder} (Hunyuan3D-{variant})"),
        None => folder.to_string(),
    }
}

/// Whether `name` (with `footprint`) fits a device with `capacity` in `dtype`; why not when it
/// does not, and which official model would.
pub fn check(
    name: &str,
    footprint: &Footprint,
    capacity: &Capacity,
    dtype: DType,
) -> Result<(), String> {
    let precision = match (dtype, capacity.f16) {
        (DType::F32, false) => {
            "f32 (this GPU has no shader-f16, so the weights cannot stay f16)".to_string()
        }
        (DType::F32, true) => "f32 (f16 would halve it)".to_string(),
        _ => "f16".to_string(),
    };
    let largest = footprint.largest_tensor_elements * dtype.size() as u64;
    if largest > capacity.max_buffer_size {
        return Err(format!(
            "{name}: its largest tensor ({}, {}) is over this GPU's largest buffer ({})",
            footprint.largest_tensor,
            gib(largest),
            gib(capacity.max_buffer_size)
        ));
    }
    let needs = footprint.weights(dtype);
    let room = (capacity.memory as f64 * WEIGHT_SHARE) as u64;
    if needs <= room {
        return Ok(());
    }
    let fitting: Vec<String> = OFFICIAL_MODELS
        .iter()
        .map(|(model, f16)| (model, f16 / 2 * dtype.size() as u64))
        .filter(|(_, bytes)| *bytes <= room)
        .map(|(model, bytes)| format!("{model} ({})", gib(bytes)))
        .collect();
    let instead = if fitting.is_empty() {
        "no official Hunyuan3D model fits".to_string()
    } else {
        format!("would fit: {}", fitting.join(", "))
    };
    Err(format!(
        "{name} does not fit: it needs {} of memory in {precision}, and {} is available for \
         weights ({}% of {}, {}); {instead}",
        gib(needs),
        gib(room),
        (WEIGHT_SHARE * 100.0).round(),
        gib(capacity.memory),
        capacity.memory_source
    ))
}

/// A model installed at several precisions lives in sibling folders: `<name>` (what
/// `orfeas convert` wrote, usually f16) beside `<name>-q8` and `<name>-q4` (what
/// `orfeas quantize` or `convert --quant` wrote). The model's name, and the precision the
/// folder's name states when it states one (the index says what the folder really holds).
pub fn precision_of_folder(folder: &str) -> (&str, Option<Precision>) {
    if let Some((name, suffix)) = folder.rsplit_once('-')
        && !name.is_empty()
        && let Ok(precision) = suffix.parse::<Precision>()
    {
        return (name, Some(precision));
    }
    (folder, None)
}

/// One installed precision of a model, as the default choice sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Installed {
    pub precision: Precision,
    /// Its download: the shard files of its sets.
    pub bytes: u64,
    /// It passes [`check`] on this device.
    pub fits: bool,
}

/// What to load when nobody chose a precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefer {
    /// The smallest download that fits: the browser fetches every byte before the first mesh.
    Smallest,
    /// The finest precision that fits: a server reads its own disk, where size costs memory
    /// only.
    Finest,
}

/// The index of the installed precision to load by default: by `prefer` among those that fit;
/// when none fits, the smallest (whose refusal then says what is missing).
pub fn choose(installed: &[Installed], prefer: Prefer) -> Option<usize> {
    let fitting = installed.iter().enumerate().filter(|(_, i)| i.fits);
    let best = match prefer {
        Prefer::Smallest => fitting.min_by_key(|(_, i)| i.bytes).map(|(n, _)| n),
        Prefer::Finest => fitting
            .min_by_key(|(_, i)| (std::cmp::Reverse(i.precision.bits()), i.bytes))
            .map(|(n, _)| n),
    };
    best.or_else(|| {
        installed
            .iter()
            .enumerate()
            .min_by_key(|(_, i)| i.bytes)
            .map(|(n, _)| n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_21() -> Footprint {
        Footprint {
            weights_f16: 7_138_680_450,
            weights_quantized: 0,
            largest_tensor_elements: 8192 * 2048,
            largest_tensor: "model.blocks.15.moe.experts.0.net.0.proj.weight".into(),
        }
    }

    fn gpu(f16: bool, memory_gib: u64) -> Capacity {
        Capacity {
            f16,
            memory: memory_gib << 30,
            memory_source: "assumed".into(),
            max_buffer_size: 256 << 20,
        }
    }

    #[test]
    fn without_shader_f16_the_big_model_is_refused_naming_what_fits() {
        let no_f16 = gpu(false, 12);
        let err = check(
            "Hunyuan3D-2.1",
            &model_21(),
            &no_f16,
            no_f16.preferred_dtype(),
        )
        .unwrap_err();
        assert!(
            err.contains("13.3 GiB") && err.contains("shader-f16"),
            "{err}"
        );
        assert!(err.contains("2mini"), "{err}");
        assert!(!err.contains("would fit: Hunyuan3D-2.1"), "{err}");
        let f16 = gpu(true, 12);
        assert_eq!(f16.preferred_dtype(), DType::F16);
        assert_eq!(
            check("Hunyuan3D-2.1", &model_21(), &f16, DType::F16),
            Ok(())
        );
        let err = check("Hunyuan3D-2.1", &model_21(), &f16, DType::F32).unwrap_err();
        assert!(err.contains("f16 would halve it"), "{err}");
    }

    #[test]
    fn a_tensor_over_the_largest_buffer_is_refused() {
        let mut small = gpu(true, 64);
        small.max_buffer_size = 16 << 20;
        let err = check("m", &model_21(), &small, DType::F16).unwrap_err();
        assert!(
            err.contains("largest tensor") && err.contains("moe.experts"),
            "{err}"
        );
    }

    #[test]
    fn a_model_is_named_by_its_folder_and_the_variant_its_indexes_state() {
        let index = |config: serde_json::Value| -> crate::weights::ShardIndex {
            serde_json::from_value(serde_json::json!({
                "metadata": {"total_size": 0, "format": "orfeas-shards/1"},
                "weight_map": {},
                "model": {"id": "m", "version": "1"},
                "config": config,
                "shards": [],
            }))
            .expect("an index")
        };
        let plain = index(serde_json::json!({}));
        let stated = index(serde_json::json!({"variant": "2.1"}));
        assert_eq!(
            model_name("hunyuan3d", &[&plain, &stated]),
            "hunyuan3d (Hunyuan3D-2.1)"
        );
        assert_eq!(model_name("hunyuan3d-q4", &[&plain]), "hunyuan3d-q4");
    }

    #[test]
    fn a_folder_names_its_model_and_precision() {
        assert_eq!(precision_of_folder("hunyuan3d"), ("hunyuan3d", None));
        assert_eq!(
            precision_of_folder("hunyuan3d-q4"),
            ("hunyuan3d", Some(Precision::Q4))
        );
        assert_eq!(
            precision_of_folder("h3d-2mini-q8"),
            ("h3d-2mini", Some(Precision::Q8))
        );
        assert_eq!(precision_of_folder("h3d-2mini"), ("h3d-2mini", None));
        assert_eq!(precision_of_folder("-q4"), ("-q4", None));
    }

    #[test]
    fn the_default_precision_is_the_smallest_or_finest_that_fits() {
        let set = |precision, bytes, fits| Installed {
            precision,
            bytes,
            fits,
        };
        let all = [
            set(Precision::F16, 3800, true),
            set(Precision::Q8, 2000, true),
            set(Precision::Q4, 1100, true),
        ];
        assert_eq!(choose(&all, Prefer::Smallest), Some(2));
        assert_eq!(choose(&all, Prefer::Finest), Some(0));
        let small_gpu = [
            set(Precision::F16, 3800, false),
            set(Precision::Q8, 2000, true),
            set(Precision::Q4, 1100, true),
        ];
        assert_eq!(choose(&small_gpu, Prefer::Finest), Some(1));
        let none_fits = [
            set(Precision::F16, 3800, false),
            set(Precision::Q4, 1100, false),
        ];
        assert_eq!(choose(&none_fits, Prefer::Finest), Some(1));
        assert_eq!(choose(&[], Prefer::Smallest), None);
    }
}
