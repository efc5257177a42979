//! Real-layout checkpoints with synthetic weights: each official Hunyuan3D variant's bundle
//! (`{model, vae, conditioner}` under the official tensor names and shapes, the 2.1 VAE's
//! encoder and `pre_kl` included) and its `config.yaml` with the real configs' fields and
//! values, filled with seeded random F16 weights; written as a torch `.ckpt` (the zip pickle
//! `torch.save` writes) or as the safetensors repack. At full size they are what a user
//! downloads (2.1: 7.4 GB); reduced, the same layouts at small depth and width for tests.
//!
//! The layouts are what `orfeas convert` expects (`convert::layout`: our modules under the
//! loader's naming) plus the 2.1 encoder's tensors, which image-to-3D does not use; the tests
//! compare them with the official classes' `state_dict()` (`tests/data/official_layouts.json`,
//! written by `scripts/official_layouts.py`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use orfeas_engine::models::shape_vae;
use serde_json::Value;

/// The official variants (the Hugging Face subfolders a user downloads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// `tencent/Hunyuan3D-2.1/hunyuan3d-dit-v2-1`.
    #[value(name = "2.1")]
    V21,
    /// `tencent/Hunyuan3D-2/hunyuan3d-dit-v2-0`.
    #[value(name = "2.0")]
    V20,
    /// `hunyuan3d-dit-v2-0-fast` (guidance-distilled).
    #[value(name = "2.0-fast")]
    V20Fast,
    /// `hunyuan3d-dit-v2-0-turbo` (guidance- and step-distilled).
    #[value(name = "2.0-turbo")]
    V20Turbo,
    /// `tencent/Hunyuan3D-2mini/hunyuan3d-dit-v2-mini`.
    #[value(name = "2mini")]
    Mini,
    /// `hunyuan3d-dit-v2-mini-fast`.
    #[value(name = "2mini-fast")]
    MiniFast,
    /// `hunyuan3d-dit-v2-mini-turbo` (DINOv2 at 1022 px).
    #[value(name = "2mini-turbo")]
    MiniTurbo,
    /// `tencent/Hunyuan3D-2mv/hunyuan3d-dit-v2-mv`: several views of one object (the 2.0
    /// denoiser; `DinoImageEncoderMV`, `MVImageProcessorV2`).
    #[value(name = "2mv")]
    Mv,
    /// `hunyuan3d-dit-v2-mv-fast`.
    #[value(name = "2mv-fast")]
    MvFast,
    /// `hunyuan3d-dit-v2-mv-turbo`.
    #[value(name = "2mv-turbo")]
    MvTurbo,
}

impl Variant {
    pub const ALL: [Variant; 10] = [
        Variant::V21,
        Variant::V20,
        Variant::V20Fast,
        Variant::V20Turbo,
        Variant::Mini,
        Variant::MiniFast,
        Variant::MiniTurbo,
        Variant::Mv,
        Variant::MvFast,
        Variant::MvTurbo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::V21 => "2.1",
            Variant::V20 => "2.0",
            Variant::V20Fast => "2.0-fast",
            Variant::V20Turbo => "2.0-turbo",
            Variant::Mini => "2mini",
            Variant::MiniFast => "2mini-fast",
            Variant::MiniTurbo => "2mini-turbo",
            Variant::Mv => "2mv",
            Variant::MvFast => "2mv-fast",
            Variant::MvTurbo => "2mv-turbo",
        }
    }

    /// The Hugging Face repository and subfolder of the official checkpoint.
    pub fn source(self) -> &'static str {
        match self {
            Variant::V21 => "tencent/Hunyuan3D-2.1/hunyuan3d-dit-v2-1",
            Variant::V20 => "tencent/Hunyuan3D-2/hunyuan3d-dit-v2-0",
            Variant::V20Fast => "tencent/Hunyuan3D-2/hunyuan3d-dit-v2-0-fast",
            Variant::V20Turbo => "tencent/Hunyuan3D-2/hunyuan3d-dit-v2-0-turbo",
            Variant::Mini => "tencent/Hunyuan3D-2mini/hunyuan3d-dit-v2-mini",
            Variant::MiniFast => "tencent/Hunyuan3D-2mini/hunyuan3d-dit-v2-mini-fast",
            Variant::MiniTurbo => "tencent/Hunyuan3D-2mini/hunyuan3d-dit-v2-mini-turbo",
            Variant::Mv => "tencent/Hunyuan3D-2mv/hunyuan3d-dit-v2-mv",
            Variant::MvFast => "tencent/Hunyuan3D-2mv/hunyuan3d-dit-v2-mv-fast",
            Variant::MvTurbo => "tencent/Hunyuan3D-2mv/hunyuan3d-dit-v2-mv-turbo",
        }
    }

    fn mini(self) -> bool {
        matches!(self, Variant::Mini | Variant::MiniFast | Variant::MiniTurbo)
    }

    /// Several views of one object (the 2mv family).
    pub fn multi_view(self) -> bool {
        matches!(self, Variant::Mv | Variant::MvFast | Variant::MvTurbo)
    }

    fn guidance_embed(self) -> bool {
        !matches!(
            self,
            Variant::V21 | Variant::V20 | Variant::Mini | Variant::Mv
        )
    }

    fn turbo(self) -> bool {
        matches!(
            self,
            Variant::V20Turbo | Variant::MiniTurbo | Variant::MvTurbo
        )
    }

    /// The variant's `config.yaml`: at full size the real values; reduced, the same fields
    /// with small depths and widths (image sizes stay real).
    pub fn config_yaml(self, reduced: bool) -> String {
        if self == Variant::V21 {
            return config_21(reduced);
        }
        config_20_family(self, reduced)
    }
}

/// The 2.1 config as `hunyuan3d-dit-v2-1/config.yaml` ships it.
fn config_21(reduced: bool) -> String {
    let (latents, channels, hidden, context, depth, heads, moe, experts) = if reduced {
        (256, 16, 128, 64, 3, 2, 1, 4)
    } else {
        (4096, 64, 2048, 1024, 21, 16, 6, 8)
    };
    let (vae_heads, vae_width, enc_layers, dec_layers, pc) = if reduced {
        (4, 64, 1, 1, 1024)
    } else {
        (16, 1024, 8, 16, 81920)
    };
    let (dino_hidden, dino_heads, dino_layers) = if reduced {
        (context, 4, 1)
    } else {
        (1024, 16, 24)
    };
    format!(
        r#"model:
  target: hy3dshape.models.denoisers.hunyuandit.HunYuanDiTPlain
  params:
    input_size: &num_latents {latents}
    in_channels: {channels}
    hidden_size: {hidden}
    context_dim: {context}
    depth: {depth}
    num_heads: {heads}
    qk_norm: true
    text_len: 1370
    with_decoupled_ca: false
    use_attention_pooling: false
    qk_norm_type: 'rms'
    qkv_bias: false
    use_pos_emb: false
    num_moe_layers: {moe}
    num_experts: {experts}
    moe_top_k: 2
vae:
  target: hy3dshape.models.autoencoders.ShapeVAE
  params:
    num_latents: *num_latents
    embed_dim: {channels}
    num_freqs: 8
    include_pi: false
    heads: {vae_heads}
    width: {vae_width}
    num_encoder_layers: {enc_layers}
    num_decoder_layers: {dec_layers}
    qkv_bias: false
    qk_norm: true
    scale_factor: 1.0039506158752403
    geo_decoder_mlp_expand_ratio: 4
    geo_decoder_downsample_ratio: 1
    geo_decoder_ln_post: true
    point_feats: 4
    pc_size: {pc}
    pc_sharpedge_size: 0
conditioner:
  target: hy3dshape.models.conditioner.SingleImageEncoder
  params:
    main_image_encoder:
        type: DinoImageEncoder # dino large
        kwargs:
            config:
              attention_probs_dropout_prob: 0.0
              drop_path_rate: 0.0
              hidden_act: gelu
              hidden_dropout_prob: 0.0
              hidden_size: {dino_hidden}
              image_size: 518
              initializer_range: 0.02
              layer_norm_eps: 1.e-6
              layerscale_value: 1.0
              mlp_ratio: 4
              model_type: dinov2
              num_attention_heads: {dino_heads}
              num_channels: 3
              num_hidden_layers: {dino_layers}
              patch_size: 14
              qkv_bias: true
              torch_dtype: float32
              use_swiglu_ffn: false
            image_size: 518
            use_cls_token: true
scheduler:
  target: hy3dshape.schedulers.FlowMatchEulerDiscreteScheduler
  params:
    num_train_timesteps: 1000
image_processor:
  target: hy3dshape.preprocessors.ImageProcessorV2
  params:
    size: 512
    border_ratio: 0.15
pipeline:
  target: hy3dshape.pipelines.Hunyuan3DDiTFlowMatchingPipeline
"#
    )
}

/// The 2.0 family's configs (`hy3dgen.shapegen` targets, DINOv2-giant).
fn config_20_family(variant: Variant, reduced: bool) -> String {
    let (depth, single) = match (variant.mini(), reduced) {
        (false, false) => (16, 32),
        (true, false) => (8, 16),
        (false, true) => (2, 2),
        (true, true) => (1, 2),
    };
    let latents = match (variant.mini(), reduced) {
        (false, false) => 3072,
        (true, false) => 512,
        (_, true) => 256,
    };
    let scale_factor = if variant.mini() {
        "1.0188137142395404"
    } else {
        "0.9990943042622529"
    };
    let (channels, hidden, heads, axes) = if reduced {
        (16, 128, 2, 64)
    } else {
        (64, 1024, 16, 64)
    };
    let (vae_heads, vae_width, dec_layers) = if reduced { (4, 64, 1) } else { (16, 1024, 16) };
    let (dino_hidden, dino_heads, dino_layers) = if reduced { (64, 4, 1) } else { (1536, 24, 40) };
    // 2mini-turbo runs its image processor and DINOv2 at 1022 px over the 518 px table.
    let size = if variant == Variant::MiniTurbo {
        1022
    } else {
        512
    };
    let encoder_size = if variant == Variant::MiniTurbo {
        1022
    } else {
        518
    };
    let guidance = variant.guidance_embed();
    // The 2mv family: the multi-view encoder (four views' table) and processor.
    let (encoder, views, processor) = if variant.multi_view() {
        (
            "DinoImageEncoderMV",
            "\n        view_num: 4",
            "MVImageProcessorV2",
        )
    } else {
        ("DinoImageEncoder", "", "ImageProcessorV2")
    };
    let scheduler = if variant.turbo() {
        "  target: hy3dgen.shapegen.schedulers.ConsistencyFlowMatchEulerDiscreteScheduler\n  params:\n    num_train_timesteps: 1000\n    pcm_timesteps: 100"
    } else {
        "  target: hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler\n  params:\n    num_train_timesteps: 1000"
    };
    format!(
        r#"model:
  target: hy3dgen.shapegen.models.Hunyuan3DDiT
  params:
    in_channels: {channels}
    context_in_dim: {dino_hidden}
    hidden_size: {hidden}
    mlp_ratio: 4.0
    num_heads: {heads}
    depth: {depth}
    depth_single_blocks: {single}
    axes_dim: [ {axes} ]
    theta: 10000
    qkv_bias: true
    guidance_embed: {guidance}

vae:
  target: hy3dgen.shapegen.models.ShapeVAE
  params:
    num_latents: {latents}
    embed_dim: {channels}
    num_freqs: 8
    include_pi: false
    heads: {vae_heads}
    width: {vae_width}
    num_decoder_layers: {dec_layers}
    qkv_bias: false
    qk_norm: true
    scale_factor: {scale_factor}

conditioner:
  target: hy3dgen.shapegen.models.SingleImageEncoder
  params:
    main_image_encoder:
      type: {encoder} # dino giant
      kwargs:
        config:
          attention_probs_dropout_prob: 0.0
          drop_path_rate: 0.0
          hidden_act: gelu
          hidden_dropout_prob: 0.0
          hidden_size: {dino_hidden}
          image_size: 518
          initializer_range: 0.02
          layer_norm_eps: 1.e-6
          layerscale_value: 1.0
          mlp_ratio: 4
          model_type: dinov2
          num_attention_heads: {dino_heads}
          num_channels: 3
          num_hidden_layers: {dino_layers}
          patch_size: 14
          qkv_bias: true
          torch_dtype: float32
          use_swiglu_ffn: true
        image_size: {encoder_size}
        use_cls_token: true{views}

scheduler:
{scheduler}

image_processor:
  target: hy3dgen.shapegen.preprocessors.{processor}
  params:
    size: {size}
    border_ratio: 0.15

pipeline:
  target: hy3dgen.shapegen.pipelines.Hunyuan3DDiTFlowMatchingPipeline
"#
    )
}

pub use crate::convert::Expected as Entry;

/// The bundle's tensors for `config_yaml` as the official checkpoint ships them: what the
/// engine loads (`convert::layout`), plus, for 2.1, the VAE's encoder and `pre_kl`.
pub fn layout(config_yaml: &str) -> Result<Vec<Entry>> {
    let yaml: Value = yaml_serde::from_str(config_yaml).context("config.yaml")?;
    let (variant, mut out) = crate::convert::layout(&yaml)?;
    if variant.architecture == "HunYuanDiTPlain" {
        let params: shape_vae::ShapeVaeConfig =
            serde_json::from_value(yaml["vae"]["params"].clone()).context("vae.params")?;
        out.extend(vae_encoder_layout(&params));
    }
    Ok(out)
}

fn numel(entry: &Entry) -> usize {
    entry.shape.iter().product()
}

/// The official `PointCrossAttentionEncoder` and `pre_kl` tensors (not used by image-to-3D;
/// the 2.1 bundle ships them).
fn vae_encoder_layout(params: &shape_vae::ShapeVaeConfig) -> Vec<Entry> {
    let w = params.width;
    let head = w / params.heads;
    let inputs = params.fourier_dims() + params.point_feats;
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| out.push(Entry { name, shape });
    let linear = |add: &mut dyn FnMut(String, Vec<usize>), name: &str, i: usize, o: usize, bias| {
        add(format!("vae.{name}.weight"), vec![o, i]);
        if bias {
            add(format!("vae.{name}.bias"), vec![o]);
        }
    };
    let norm = |add: &mut dyn FnMut(String, Vec<usize>), name: &str, d: usize| {
        add(format!("vae.{name}.weight"), vec![d]);
        add(format!("vae.{name}.bias"), vec![d]);
    };
    let qk = |add: &mut dyn FnMut(String, Vec<usize>), at: &str| {
        if params.qk_norm {
            norm(add, &format!("{at}.attention.q_norm"), head);
            norm(add, &format!("{at}.attention.k_norm"), head);
        }
    };
    let mlp = |add: &mut dyn FnMut(String, Vec<usize>), at: &str| {
        linear(add, &format!("{at}.mlp.c_fc"), w, 4 * w, true);
        linear(add, &format!("{at}.mlp.c_proj"), 4 * w, w, true);
    };
    linear(&mut add, "encoder.input_proj", inputs, w, true);
    let cross = "encoder.cross_attn";
    linear(
        &mut add,
        &format!("{cross}.attn.c_q"),
        w,
        w,
        params.qkv_bias,
    );
    linear(
        &mut add,
        &format!("{cross}.attn.c_kv"),
        w,
        2 * w,
        params.qkv_bias,
    );
    linear(&mut add, &format!("{cross}.attn.c_proj"), w, w, true);
    qk(&mut add, &format!("{cross}.attn"));
    for ln in ["ln_1", "ln_2", "ln_3"] {
        norm(&mut add, &format!("{cross}.{ln}"), w);
    }
    mlp(&mut add, cross);
    for i in 0..params.num_encoder_layers {
        let block = format!("encoder.self_attn.resblocks.{i}");
        linear(
            &mut add,
            &format!("{block}.attn.c_qkv"),
            w,
            3 * w,
            params.qkv_bias,
        );
        linear(&mut add, &format!("{block}.attn.c_proj"), w, w, true);
        qk(&mut add, &format!("{block}.attn"));
        norm(&mut add, &format!("{block}.ln_1"), w);
        mlp(&mut add, &block);
        norm(&mut add, &format!("{block}.ln_2"), w);
    }
    if params.use_ln_post {
        norm(&mut add, "encoder.ln_post", w);
    }
    linear(&mut add, "pre_kl", w, 2 * params.embed_dim, true);
    out
}

/// Seeded random F16 values for one tensor, drawn as the fixtures' weights are: a matrix
/// N(0, 1/fan_in), a norm's weight 1 + 0.1·N, a bias 0.05·N, embeddings 0.5·N, the MoE gates
/// 1.5·N/√d; so a forward pass stays in range.
fn values(entry: &Entry, seed: u64) -> Vec<u8> {
    let mut hash = seed ^ 0x9e37_79b9_7f4a_7c15;
    for b in entry.name.bytes() {
        hash = (hash ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let last = entry.name.rsplit('.').next().unwrap_or_default();
    let is_norm = entry.name.contains("norm") || entry.name.contains(".ln_");
    let (mean, std) = if entry.name.ends_with("position_embeddings")
        || entry.name.ends_with("cls_token")
        || entry.name.ends_with("mask_token")
    {
        (0.0, 0.5)
    } else if entry.name.ends_with("lambda1") {
        (0.5, 0.2)
    } else if entry.name.ends_with("moe.gate.weight") {
        (0.0, 1.5 / (entry.shape[1] as f32).sqrt())
    } else if last == "bias" {
        (0.0, if is_norm { 0.1 } else { 0.05 })
    } else if entry.shape.len() == 1 {
        (1.0, 0.1)
    } else {
        let fan_in: usize = entry.shape[1..].iter().product();
        (0.0, 1.0 / (fan_in as f32).sqrt())
    };
    orfeas_engine::weights::dtype::normal_f16(hash, numel(entry), mean, std)
}

/// The checkpoint file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `model.fp16.ckpt`: a torch zip pickle, as `torch.save` writes the official bundle.
    Ckpt,
    /// `model.fp16.safetensors`: the repack with `conditioner.`/`model.`/`vae.` prefixes.
    Safetensors,
}

impl Format {
    pub fn file_name(self) -> &'static str {
        match self {
            Format::Ckpt => "model.fp16.ckpt",
            Format::Safetensors => "model.fp16.safetensors",
        }
    }
}

/// Write `variant`'s `config.yaml` and its checkpoint in `format` into `dir`; returns the
/// checkpoint's path and its tensors. One tensor is in memory at a time.
pub fn write(
    variant: Variant,
    reduced: bool,
    format: Format,
    dir: &Path,
    seed: u64,
    mut on_bytes: impl FnMut(u64, u64),
) -> Result<(PathBuf, Vec<Entry>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let yaml = variant.config_yaml(reduced);
    std::fs::write(dir.join("config.yaml"), &yaml)?;
    let entries = layout(&yaml)?;
    let path = dir.join(format.file_name());
    let total: u64 = entries.iter().map(|e| numel(e) as u64 * 2).sum();
    match format {
        Format::Safetensors => write_safetensors(&path, &entries, seed, total, &mut on_bytes)?,
        Format::Ckpt => {
            let mut done = 0u64;
            write_torch_zip(&path, &entries, |entry| {
                let bytes = values(entry, seed);
                done += bytes.len() as u64;
                on_bytes(done, total);
                bytes
            })?
        }
    }
    Ok((path, entries))
}

/// `entries` as a safetensors file of seeded random F16 values, drawn as [`write`] draws them
/// (e.g. a VAE shipped on its own, under its own tensor names).
pub fn write_entries(path: &Path, entries: &[Entry], seed: u64) -> Result<()> {
    let total = entries.iter().map(|e| numel(e) as u64 * 2).sum();
    write_safetensors(path, entries, seed, total, &mut |_, _| {})
}

fn write_safetensors(
    path: &Path,
    entries: &[Entry],
    seed: u64,
    total: u64,
    on_bytes: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    struct Lazy<'a> {
        entry: &'a Entry,
        seed: u64,
    }
    impl safetensors::View for Lazy<'_> {
        fn dtype(&self) -> safetensors::Dtype {
            safetensors::Dtype::F16
        }
        fn shape(&self) -> &[usize] {
            &self.entry.shape
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            values(self.entry, self.seed).into()
        }
        fn data_len(&self) -> usize {
            numel(self.entry) * 2
        }
    }
    let views = entries
        .iter()
        .map(|entry| (entry.name.clone(), Lazy { entry, seed }));
    safetensors::serialize_to_file(views, None, path)
        .with_context(|| format!("writing {}", path.display()))?;
    on_bytes(total, total);
    Ok(())
}

/// Pickle protocol 2 as `torch.save` writes a dict of state dicts: `collections.OrderedDict`
/// built by REDUCE, each tensor `_rebuild_tensor_v2(persistent storage, 0, shape, stride,
/// False, OrderedDict())`, the `_metadata` attribute set by BUILD.
struct Pickle(Vec<u8>);

impl Pickle {
    fn string(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend((s.len() as u32).to_le_bytes());
        self.0.extend(s.as_bytes());
    }
    fn int(&mut self, v: usize) {
        if v < 256 {
            self.0.extend([b'K', v as u8]);
        } else {
            self.0.push(b'J');
            self.0.extend((v as i32).to_le_bytes());
        }
    }
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0.extend(format!("{module}\n{name}\n").as_bytes());
    }
    fn ints(&mut self, values: &[usize]) {
        self.0.push(b'(');
        for &v in values {
            self.int(v);
        }
        self.0.push(b't');
    }
    fn ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.0.extend(b")R");
    }
    fn tensor(&mut self, key: &str, shape: &[usize]) {
        let numel: usize = shape.iter().product();
        let mut stride = vec![1; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1];
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.0.extend(b"((");
        self.string("storage");
        self.global("torch", "HalfStorage");
        self.string(key);
        self.string("cpu");
        self.int(numel);
        self.0.extend(b"tQ");
        self.int(0);
        self.ints(shape);
        self.ints(&stride);
        self.0.push(0x89); // NEWFALSE
        self.ordered_dict();
        self.0.extend(b"tR");
    }
}

/// Write `entries` (bundle names: `model.`, `vae.`, `conditioner.` prefixes) as the torch zip
/// checkpoint `torch.save` makes of the official bundle, each tensor's F16 bytes from `data`
/// (called once per tensor, in order: one tensor is in memory at a time).
pub fn write_torch_zip(
    path: &Path,
    entries: &[Entry],
    mut data: impl FnMut(&Entry) -> Vec<u8>,
) -> Result<()> {
    let stem = "archive";
    let mut pickle = Pickle(vec![0x80, 2, b'}', b'(']);
    for part in ["model", "vae", "conditioner"] {
        let prefix = format!("{part}.");
        pickle.string(part);
        pickle.ordered_dict();
        pickle.0.push(b'(');
        for (key, entry) in entries.iter().enumerate() {
            if let Some(inner) = entry.name.strip_prefix(&prefix) {
                pickle.string(inner);
                pickle.tensor(&key.to_string(), &entry.shape);
            }
        }
        pickle.0.push(b'u');
        // state_dict()'s `_metadata` (module versions), set by BUILD as torch.save does.
        pickle.0.push(b'}');
        pickle.string("_metadata");
        pickle.ordered_dict();
        pickle.0.extend(b"sb");
    }
    pickle.0.extend(b"u.");
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let stored = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    let entry = |zip: &mut zip::ZipWriter<_>, name: &str, bytes: &[u8]| -> Result<()> {
        zip.start_file(format!("{stem}/{name}"), stored)?;
        zip.write_all(bytes)?;
        Ok(())
    };
    entry(&mut zip, "data.pkl", &pickle.0)?;
    entry(&mut zip, "byteorder", b"little")?;
    for (key, tensor) in entries.iter().enumerate() {
        entry(&mut zip, &format!("data/{key}"), &data(tensor))?;
    }
    entry(&mut zip, "version", b"3\n")?;
    zip.finish()?.flush()?;
    Ok(())
}

/// Bytes of the bundle's tensors in f16, and of those image-to-3D loads (the 2.1 VAE encoder
/// excluded).
pub fn sizes(entries: &[Entry]) -> (u64, u64) {
    let all: u64 = entries.iter().map(|e| numel(e) as u64 * 2).sum();
    let used: u64 = entries
        .iter()
        .filter(|e| !crate::convert::unused_by_image_to_3d(&e.name))
        .map(|e| numel(e) as u64 * 2)
        .sum();
    (all, used)
}
