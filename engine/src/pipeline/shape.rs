//! The shape model: one shape generation, as the official pipeline runs it: a pre-processed image → DINOv2
//! tokens → the flow-matching sampler with the DiT (CFG against all-zero tokens, or the
//! guidance embedding for the distilled variants) → ShapeVAE → the field on the official grid
//! → marching cubes.
//!
//! A model is three shard sets (conditioner, denoiser, vae; `orfeas convert` writes them from
//! an official checkpoint); each set's index carries its part of the official `config.yaml`
//! ([`ShapeConfig`]), and the tensors keep their official names.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::device::{ReadbackError, read_f32};
use crate::mesh::marching_cubes::scale_to_bounds;
use crate::mesh::{Field, Mesh, marching_cubes, marching_cubes_sparse};
use crate::models::ForwardError;
use crate::models::dinov2::{self, Dinov2, Dinov2Config, View};
use crate::models::hunyuan3d_dit::{self, Hunyuan3dDit, Hunyuan3dDitConfig};
use crate::models::hunyuandit_plain::{self, HunyuanDitPlain, HunyuanDitPlainConfig};
use crate::models::shape_vae::{self, KeyValues, ShapeVae, ShapeVaeConfig};
use crate::sampler::{FlowMatchSchedule, initial_noise, sample};
use crate::volume::{FlashVdm, Grid, Group, decode_coarse_to_fine, decode_dense, decode_flashvdm};

use super::Stage;
use super::options::{DEFAULT_STEPS, GenerateOptions, TURBO_STEPS};
use crate::weights::{
    LoadError, LoadProgress, ShardSource, WeightSet, apply_torch_weights, load_all,
};

/// The conditioner set's config: the encoder class, the Hugging Face `Dinov2Config`, the side
/// the transform resizes to and whether the CLS token is kept (the official
/// `main_image_encoder.{type, kwargs}`), and the image processor's params.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionerConfig {
    /// The official `main_image_encoder.type`: `DinoImageEncoder`, or `DinoImageEncoderMV`
    /// (the 2mv family: several views of one object).
    #[serde(default = "dino_image_encoder")]
    pub encoder: String,
    /// `DinoImageEncoderMV`'s `view_num`: the rows of its view table (4, the official default).
    #[serde(default)]
    pub view_num: Option<usize>,
    pub config: Dinov2Config,
    pub image_size: usize,
    #[serde(default)]
    pub use_cls_token: Option<bool>,
    #[serde(default)]
    pub image_processor: Option<ImageProcessorConfig>,
}

fn dino_image_encoder() -> String {
    "DinoImageEncoder".into()
}

/// The official `ImageProcessorV2` params.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageProcessorConfig {
    #[serde(default = "processor_size")]
    pub size: usize,
    #[serde(default = "border_ratio")]
    pub border_ratio: f64,
}

fn processor_size() -> usize {
    crate::recenter::SIZE
}
fn border_ratio() -> f64 {
    crate::recenter::BORDER_RATIO
}

impl Default for ImageProcessorConfig {
    fn default() -> Self {
        Self {
            size: processor_size(),
            border_ratio: border_ratio(),
        }
    }
}

impl ConditionerConfig {
    /// The multi-view encoder's view table size (`view_num`, the official default 4); `None`
    /// for the single-image encoder.
    pub fn view_table(&self) -> Option<usize> {
        (self.encoder == "DinoImageEncoderMV").then(|| self.view_num.unwrap_or(View::ALL.len()))
    }

    pub fn validate(&self) -> Result<(), String> {
        match (self.encoder.as_str(), self.view_table()) {
            ("DinoImageEncoder", _) if self.view_num.is_some() => {
                return Err("conditioner view_num: only DinoImageEncoderMV has views".into());
            }
            ("DinoImageEncoder", _) => {}
            ("DinoImageEncoderMV", Some(views)) => {
                if !(1..=View::ALL.len()).contains(&views) {
                    return Err(format!(
                        "conditioner main_image_encoder.kwargs.view_num: {views} is not \
                         supported (1 to 4: front, left, back, right)"
                    ));
                }
            }
            (other, _) => {
                return Err(format!(
                    "conditioner main_image_encoder.type: {other:?} is not supported (only \
                     \"DinoImageEncoder\" and \"DinoImageEncoderMV\"; CLIP encoders are not \
                     implemented)"
                ));
            }
        }
        self.config.validate()?;
        let patch = self.config.patch_size;
        if self.image_size == 0 || !self.image_size.is_multiple_of(patch) {
            return Err(format!(
                "conditioner image_size: {} is not a multiple of the patch size {patch}",
                self.image_size
            ));
        }
        let processor = self.image_processor.unwrap_or_default();
        if processor.size < 16 || !(0.0..1.0).contains(&processor.border_ratio) {
            return Err(format!(
                "image_processor size {} / border_ratio {}: out of range",
                processor.size, processor.border_ratio
            ));
        }
        Ok(())
    }
}

/// The denoiser set's config: the official `model` target and params, the scheduler, and the
/// variant's name (what the converter detected).
#[derive(Debug, Clone, Deserialize)]
pub struct DenoiserConfig {
    #[serde(flatten)]
    pub architecture: Architecture,
    #[serde(default)]
    pub scheduler: Scheduler,
    #[serde(default)]
    pub variant: Option<String>,
}

impl DenoiserConfig {
    pub fn validate(&self) -> Result<(), String> {
        match &self.architecture {
            Architecture::HunYuanDiTPlain { params } => params.validate(),
            Architecture::Hunyuan3DDiT { params } => params.validate(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "architecture", deny_unknown_fields)]
pub enum Architecture {
    /// 2.1.
    HunYuanDiTPlain { params: HunyuanDitPlainConfig },
    /// 2.0, 2mini, fast, turbo.
    Hunyuan3DDiT { params: Hunyuan3dDitConfig },
}

/// The official scheduler classes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scheduler {
    /// `FlowMatchEulerDiscreteScheduler`.
    #[default]
    FlowMatch,
    /// `ConsistencyFlowMatchEulerDiscreteScheduler` (turbo).
    Consistency { pcm_timesteps: usize },
}

impl Scheduler {
    pub fn schedule(&self, steps: usize) -> FlowMatchSchedule {
        match *self {
            Scheduler::FlowMatch => FlowMatchSchedule::new(steps),
            Scheduler::Consistency { pcm_timesteps } => {
                FlowMatchSchedule::consistency(steps, pcm_timesteps)
            }
        }
    }
}

/// The vae set's config: the official `vae.params`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeConfig {
    pub params: ShapeVaeConfig,
}

/// The three sets' configs.
#[derive(Debug, Clone)]
pub struct ShapeConfig {
    pub conditioner: ConditionerConfig,
    pub denoiser: DenoiserConfig,
    pub vae: VaeConfig,
}

impl ShapeConfig {
    /// The configs as the three shard-set indexes store them, checked: a field the engine
    /// does not know or a value it does not implement is refused, naming both.
    pub fn from_values(
        conditioner: &serde_json::Value,
        denoiser: &serde_json::Value,
        vae: &serde_json::Value,
    ) -> Result<Self, ShapeBuildError> {
        fn parse<T: serde::de::DeserializeOwned>(
            part: &'static str,
            value: &serde_json::Value,
        ) -> Result<T, ShapeBuildError> {
            T::deserialize(value).map_err(|e| ShapeBuildError::config(part, e))
        }
        let config = Self {
            conditioner: parse("conditioner", conditioner)?,
            denoiser: parse("denoiser", denoiser)?,
            vae: parse("vae", vae)?,
        };
        config
            .conditioner
            .validate()
            .map_err(|e| ShapeBuildError::config("conditioner", e))?;
        config
            .denoiser
            .validate()
            .map_err(|e| ShapeBuildError::config("denoiser", e))?;
        config
            .vae
            .params
            .validate()
            .map_err(|e| ShapeBuildError::config("vae", e))?;
        Ok(config)
    }

    /// The sampler steps the variant is meant for: the turbo checkpoints' consistency ladder
    /// was distilled for 5 (the official demos' setting), the others run 30.
    pub fn default_steps(&self) -> usize {
        match self.denoiser.scheduler {
            Scheduler::Consistency { .. } => TURBO_STEPS,
            Scheduler::FlowMatch => DEFAULT_STEPS,
        }
    }
}

/// Why a shape model could not be built from its three sets; each names the set (`part`:
/// conditioner, denoiser or vae) at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeBuildError {
    /// A set's config: a field the engine does not know, or a value it does not implement.
    #[error("the {part} config: {reason}")]
    Config { part: &'static str, reason: String },
    /// A set's weights do not fit its network (a tensor missing, left over, or of another
    /// shape).
    #[error("{part}: {reason}")]
    Weights { part: &'static str, reason: String },
    /// The sets do not fit each other.
    #[error("{0}")]
    Mismatch(String),
    /// A set could not be loaded.
    #[error("{part}: {source}")]
    Load {
        part: &'static str,
        #[source]
        source: LoadError,
    },
}

impl ShapeBuildError {
    fn config(part: &'static str, reason: impl std::fmt::Display) -> Self {
        ShapeBuildError::Config {
            part,
            reason: reason.to_string(),
        }
    }

    fn weights(part: &'static str, reason: impl std::fmt::Display) -> Self {
        ShapeBuildError::Weights {
            part,
            reason: reason.to_string(),
        }
    }
}

/// Views a model cannot take, named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ViewError {
    #[error("no picture given")]
    None,
    #[error("the {0} view is given twice")]
    Twice(&'static str),
    #[error("a {0} view needs a multi-view (2mv) model; this one takes one picture, the front")]
    SingleImageModel(&'static str),
    #[error("the {0} view is beyond this model's {1} views")]
    BeyondTable(&'static str, usize),
}

/// `views` are distinct, and ones a model with this view table (`None`: a single-image
/// model, which takes the front alone) takes.
pub fn check_views(
    table: Option<usize>,
    views: impl IntoIterator<Item = View>,
) -> Result<(), ViewError> {
    let mut seen = Vec::new();
    for view in views {
        if seen.contains(&view) {
            return Err(ViewError::Twice(view.name()));
        }
        match table {
            None if view != View::Front => return Err(ViewError::SingleImageModel(view.name())),
            Some(rows) if view.index() >= rows => {
                return Err(ViewError::BeyondTable(view.name(), rows));
            }
            _ => {}
        }
        seen.push(view);
    }
    if seen.is_empty() {
        return Err(ViewError::None);
    }
    Ok(())
}

/// Why the shape model gave no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShapeError {
    /// Its stop check said stop (a cancelled job, a deadline, a shutdown: the caller knows
    /// which).
    #[error("stopped before it finished")]
    Stopped,
    /// The networks or the device failed (e.g. a lost device, a read-back that failed).
    #[error(transparent)]
    Network(#[from] ForwardError),
    /// Views this model cannot take.
    #[error(transparent)]
    Views(#[from] ViewError),
}

impl From<ReadbackError> for ShapeError {
    fn from(error: ReadbackError) -> Self {
        ShapeError::Network(error.into())
    }
}

/// The sub-folders of a converted model, one shard set each.
pub const COMPONENTS: [&str; 3] = ["conditioner", "denoiser", "vae"];

pub enum Denoiser {
    Plain(Box<HunyuanDitPlain>),
    Flux(Box<Hunyuan3dDit>),
}

impl Denoiser {
    /// Guidance-distilled variants take the guidance scale as an input and need no CFG batch.
    pub fn guidance_distilled(&self) -> bool {
        matches!(self, Denoiser::Flux(dit) if dit.guidance_embed())
    }

    /// The velocity in f32 (the sampler's latents stay f32 whatever the network computes in).
    pub async fn forward(
        &self,
        x: Tensor<3>,
        t: &[f32],
        context: Tensor<3>,
        guidance: Option<&[f32]>,
    ) -> Result<Tensor<3>, ForwardError> {
        let v = match self {
            Denoiser::Plain(dit) => dit.forward(x, t, context).await?,
            Denoiser::Flux(dit) => dit.forward(x, t, context, guidance)?,
        };
        Ok(v.cast(DType::F32))
    }
}

/// The generated surface before meshing.
pub struct Surface {
    pub grid: Grid,
    pub mesh: Mesh,
    /// Field queries made (dense: every grid point).
    pub queries: usize,
}

/// Latents each FlashVDM group keeps, of `latents` (the official processor's rule: 1024 of the
/// 2.0 VAE's 3072, 256 of 2mini's 512, otherwise a third).
pub fn flashvdm_top_k(latents: usize) -> usize {
    match latents {
        3072 => 1024,
        512 => 256,
        m => (m / 3).max(1),
    }
}

/// The indices of the `k` largest values, largest first (ties: the lower index first).
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    let by_value = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    if k < order.len() {
        order.select_nth_unstable_by(k, by_value);
        order.truncate(k);
    }
    order.sort_by(by_value);
    order
}

/// Query points as the decoder's input `[1, n, 3]`, in f32.
fn points_tensor(points: &[[f32; 3]], device: &Device) -> Tensor<3> {
    let flat: Vec<f32> = points.iter().flatten().copied().collect();
    Tensor::from_data(
        TensorData::new(flat, [1, points.len(), 3]),
        (device, DType::F32),
    )
}

/// The field at `points` laid out as FlashVDM's `groups`: each group's queries attend
/// only to the latents its sampled queries score highest (per head: the official count,
/// [`flashvdm_top_k`]). The scores are read back and ranked here: burn's sort is a
/// blocking read-back, which a browser cannot do.
pub async fn field_selected(
    vae: &ShapeVae,
    kv: &KeyValues,
    points: &[[f32; 3]],
    groups: &[Group],
    device: &Device,
) -> Result<Vec<f32>, ReadbackError> {
    let device = device.clone();
    let queries = vae.queries(points_tensor(points, &device));
    let [_, heads, _, _] = queries.q.dims();
    // Each group's mean sampled query (the mean of its scores is the score of the mean).
    let mut means = Vec::with_capacity(groups.len());
    let mut start = 0;
    for group in groups {
        let sampled: Vec<i64> = (start..start + group.len)
            .step_by(group.stride.max(1))
            .map(|i| i as i64)
            .collect();
        let rows =
            Tensor::<1, Int>::from_data(TensorData::new(sampled.clone(), [sampled.len()]), &device);
        means.push(queries.q.clone().select(2, rows).mean_dim(2));
        start += group.len;
    }
    let scores = read_f32(
        vae.selection_scores(Tensor::cat(means, 2), kv),
        "FlashVDM's scores",
    )
    .await?;
    let latents = ShapeVae::latents(kv);
    let keep = flashvdm_top_k(latents);
    let mut attended = Vec::with_capacity(groups.len());
    let mut start = 0;
    for (g, group) in groups.iter().enumerate() {
        let mut selected = Vec::with_capacity(heads * keep);
        for h in 0..heads {
            let row = &scores[(h * groups.len() + g) * latents..][..latents];
            selected.extend(top_k(row, keep).into_iter().map(|i| i as i64));
        }
        let selected =
            Tensor::<3, Int>::from_data(TensorData::new(selected, [1, heads, keep]), &device);
        let q = queries.q.clone().narrow(2, start, group.len);
        attended.push(vae.attend_selected(q, kv, selected));
        start += group.len;
    }
    read_f32(
        vae.field_from(queries, Tensor::cat(attended, 1)),
        "the field",
    )
    .await
}

/// The three networks of a shape model, on one device.
pub struct ShapeModel {
    pub encoder: Dinov2,
    pub encoder_size: usize,
    /// Keep DINOv2's CLS token in the image tokens (`use_cls_token`).
    pub use_cls_token: bool,
    /// The multi-view encoder's view table size (`DinoImageEncoderMV`); `None`: one image.
    pub views: Option<usize>,
    pub image_processor: ImageProcessorConfig,
    pub default_steps: usize,
    pub denoiser: Denoiser,
    pub scheduler: Scheduler,
    pub vae: ShapeVae,
    pub num_latents: usize,
    pub latent_channels: usize,
}

impl ShapeModel {
    /// Build the networks and move the loaded weights into them (official names).
    pub fn new(
        config: &ShapeConfig,
        conditioner: WeightSet,
        denoiser: WeightSet,
        vae: WeightSet,
        device: &Device,
    ) -> Result<Self, ShapeBuildError> {
        let encoder_config = &config.conditioner.config;
        // An encoder size other than the position table's (2mini-turbo's 1022 over DINOv2's
        // 518) resamples the table once, as Hugging Face does on every call.
        let encoder = apply_torch_weights(
            encoder_config.init(device),
            conditioner,
            dinov2::checkpoint_name,
        )
        .map_err(|e| ShapeBuildError::weights("conditioner", e))?
        .resize_positions(config.conditioner.image_size);
        let (model, channels) = match &config.denoiser.architecture {
            Architecture::HunYuanDiTPlain { params } => (
                Denoiser::Plain(Box::new(
                    apply_torch_weights(
                        params.init(device),
                        denoiser,
                        hunyuandit_plain::checkpoint_name,
                    )
                    .map_err(|e| ShapeBuildError::weights("denoiser", e))?,
                )),
                params.in_channels,
            ),
            Architecture::Hunyuan3DDiT { params } => (
                Denoiser::Flux(Box::new(
                    apply_torch_weights(
                        params.init(device),
                        denoiser,
                        hunyuan3d_dit::checkpoint_name,
                    )
                    .map_err(|e| ShapeBuildError::weights("denoiser", e))?,
                )),
                params.in_channels,
            ),
        };
        let vae_params = &config.vae.params;
        if vae_params.embed_dim != channels {
            return Err(ShapeBuildError::Mismatch(format!(
                "the denoiser makes {channels}-channel latents, the vae decodes {}",
                vae_params.embed_dim
            )));
        }
        let vae_network = vae_params
            .init(device)
            .map_err(|e| ShapeBuildError::config("vae", e))?;
        let vae = apply_torch_weights(vae_network, vae, shape_vae::checkpoint_name)
            .map_err(|e| ShapeBuildError::weights("vae", e))?;
        Ok(Self {
            encoder,
            encoder_size: config.conditioner.image_size,
            use_cls_token: config.conditioner.use_cls_token.unwrap_or(true),
            views: config.conditioner.view_table(),
            image_processor: config.conditioner.image_processor.unwrap_or_default(),
            default_steps: config.default_steps(),
            denoiser: model,
            scheduler: config.denoiser.scheduler,
            vae,
            num_latents: vae_params.num_latents,
            latent_channels: channels,
        })
    }

    /// The float dtype the networks compute in (the loader's choice).
    pub fn dtype(&self) -> DType {
        self.vae.dtype()
    }

    /// The official `ImageProcessorV2` with this model's params (`image_processor.size`:
    /// 512, or 1022 for 2mini-turbo) on an RGBA cut-out.
    pub fn preprocess(
        &self,
        rgba: &image::RgbaImage,
    ) -> Result<crate::recenter::ShapeInput, crate::recenter::RecenterError> {
        crate::recenter::shape_input_with(
            rgba,
            self.image_processor.size,
            self.image_processor.border_ratio,
        )
    }

    /// Image tokens for a pre-processed RGB image `[3, height, width]` in [-1, 1].
    pub fn condition(&self, image: &[f32], height: usize, width: usize) -> Tensor<3> {
        let device = self.device();
        let pixels = dinov2::preprocess(image, height, width, self.encoder_size);
        let tokens =
            self.encoder
                .forward(dinov2::pixels_tensor(pixels, self.encoder_size, &device));
        if self.use_cls_token {
            tokens
        } else {
            let [b, n, d] = tokens.dims();
            tokens.slice([0..b, 1..n, 0..d])
        }
    }

    /// Image tokens for views of one object, each pre-processed `[3, height, width]` in
    /// [-1, 1]: one image (the front) for a single-image model; for a multi-view model
    /// (`DinoImageEncoderMV`) any set of distinct views its table has, each through DINOv2,
    /// with its view row, in the official order (a single picture is its front view, as the
    /// official pipeline takes `{"front": image}`).
    pub fn condition_views(
        &self,
        views: &[(View, &[f32])],
        height: usize,
        width: usize,
    ) -> Result<Tensor<3>, ViewError> {
        check_views(self.views, views.iter().map(|(view, _)| *view))?;
        if self.views.is_none() {
            return Ok(self.condition(views[0].1, height, width));
        }
        Ok(dinov2::multi_view_tokens(
            views
                .iter()
                .map(|(view, image)| (*view, self.condition(image, height, width)))
                .collect(),
        ))
    }

    fn device(&self) -> Device {
        self.vae.post_kl.weight.val().device()
    }

    /// The seeded initial latents `[1, num_latents, channels]`, f32.
    pub fn noise(&self, seed: u64) -> Tensor<3> {
        let dims = [1, self.num_latents, self.latent_channels];
        let values = initial_noise(seed, dims.iter().product());
        Tensor::from_data(TensorData::new(values, dims), (&self.device(), DType::F32))
    }

    /// Run the sampler from `noise` given image tokens `cond` (batch 1); `on_step(done,
    /// total)` after every step; `should_stop` checked before every step. The latents and
    /// the Euler update stay f32; the denoiser sees them in its own dtype.
    pub async fn sample(
        &self,
        cond: Tensor<3>,
        noise: Tensor<3>,
        steps: usize,
        guidance: f32,
        mut on_step: impl FnMut(usize, usize),
        should_stop: impl Fn() -> bool,
    ) -> Result<Tensor<3>, ShapeError> {
        let schedule = self.scheduler.schedule(steps);
        let total = schedule.steps();
        let report = |i: usize, _: &Tensor<3>| on_step(i + 1, total);
        let noise = noise.cast(DType::F32);
        if self.denoiser.guidance_distilled() {
            // The pipeline passes the scale through the guidance embedding and skips CFG.
            return sample(
                noise,
                &schedule,
                1.0,
                async |x, t| {
                    let v = self
                        .denoiser
                        .forward(x, &[t], cond.clone(), Some(&[guidance]))
                        .await?;
                    finished(&v).await;
                    Ok::<_, ForwardError>((v.clone(), v))
                },
                report,
                should_stop,
            )
            .await?
            .ok_or(ShapeError::Stopped);
        }
        // The official CFG batch: [x, x] at [t, t] with [cond, zeros], conditional first.
        let context = Tensor::cat(vec![cond.clone(), cond.zeros_like()], 0);
        sample(
            noise,
            &schedule,
            guidance,
            async |x, t| {
                let v = self
                    .denoiser
                    .forward(
                        Tensor::cat(vec![x.clone(), x], 0),
                        &[t, t],
                        context.clone(),
                        None,
                    )
                    .await?;
                finished(&v).await;
                let [_, n, c] = v.dims();
                Ok::<_, ForwardError>((
                    v.clone().slice([0..1, 0..n, 0..c]),
                    v.slice([1..2, 0..n, 0..c]),
                ))
            },
            report,
            should_stop,
        )
        .await?
        .ok_or(ShapeError::Stopped)
    }

    /// The decoded latents' keys and values, computed once for every field query.
    pub fn key_values(&self, latents: Tensor<3>) -> KeyValues {
        self.vae.key_values(self.vae.decode_latents(latents))
    }

    /// The field (positive inside) at `points`; an error when the device cannot hand it back
    /// (e.g. it was lost).
    pub async fn field_at(
        &self,
        points: &[[f32; 3]],
        kv: &KeyValues,
    ) -> Result<Vec<f32>, ReadbackError> {
        let points = points_tensor(points, &self.device());
        read_f32(self.vae.field(points, kv), "the field").await
    }

    /// The field at `points` laid out as FlashVDM's `groups` ([`field_selected`]).
    pub async fn field_selected(
        &self,
        points: &[[f32; 3]],
        groups: &[Group],
        kv: &KeyValues,
    ) -> Result<Vec<f32>, ReadbackError> {
        field_selected(&self.vae, kv, points, groups, &self.device()).await
    }

    /// Decode the surface on the official grid (dense or coarse-to-fine) and extract it with
    /// marching cubes in the official bounds; `should_stop` checked before every chunk of
    /// queries.
    pub async fn surface(
        &self,
        kv: &KeyValues,
        options: &GenerateOptions,
        mut on_progress: impl FnMut(Stage),
        should_stop: impl Fn() -> bool,
    ) -> Result<Surface, ShapeError> {
        let grid = Grid::official(options.resolution);
        let mut queries = 0;
        // After a failed read-back (the device is gone) or a stop, the remaining queries are
        // not sent; the error is returned once decoding stops.
        let mut failure = None;
        let query = async |points: &[[f32; 3]]| {
            queries += points.len();
            on_progress(Stage::Decoding { queries });
            if failure.is_none() && should_stop() {
                failure = Some(ShapeError::Stopped);
            }
            if failure.is_none() {
                match self.field_at(points, kv).await {
                    Ok(values) => return values,
                    Err(e) => failure = Some(ShapeError::from(e)),
                }
            }
            vec![f32::NAN; points.len()]
        };
        if options.flashvdm {
            let settings = FlashVdm {
                chunk: options.chunk,
                ..FlashVdm::default()
            };
            let mut selected = async |points: &[[f32; 3]], groups: &[Group]| {
                queries += points.len();
                on_progress(Stage::Decoding { queries });
                if failure.is_none() && should_stop() {
                    failure = Some(ShapeError::Stopped);
                }
                if failure.is_none() {
                    match self.field_selected(points, groups, kv).await {
                        Ok(values) => return values,
                        Err(e) => failure = Some(ShapeError::from(e)),
                    }
                }
                vec![f32::NAN; points.len()]
            };
            let decoded = decode_flashvdm(options.resolution, settings, &mut selected).await;
            if let Some(e) = failure {
                return Err(e);
            }
            on_progress(Stage::Meshing);
            let mut mesh = marching_cubes_sparse(&decoded.field);
            // As the official mesher: scaled by the asked resolution's grid, not the last
            // level's (R = 384 decodes at 380: the mesh comes out 1 % small, as theirs).
            let bounds = grid.bounds as f32;
            scale_to_bounds(&mut mesh, grid.dims(), [-bounds; 3], [bounds; 3]);
            return Ok(Surface {
                grid,
                mesh,
                queries,
            });
        }
        let mut mesh = if options.dense {
            let values = decode_dense(grid, options.chunk, query).await;
            if let Some(e) = failure {
                return Err(e);
            }
            on_progress(Stage::Meshing);
            marching_cubes(Field {
                values: &values,
                dims: grid.dims(),
            })
        } else {
            let decoded =
                decode_coarse_to_fine(grid, options.refinement(), options.chunk, query).await;
            if let Some(e) = failure {
                return Err(e);
            }
            on_progress(Stage::Meshing);
            marching_cubes_sparse(&decoded.field)
        };
        let bounds = grid.bounds as f32;
        scale_to_bounds(&mut mesh, grid.dims(), [-bounds; 3], [bounds; 3]);
        Ok(Surface {
            grid,
            mesh,
            queries,
        })
    }

    /// The whole generation for a pre-processed image `[3, height, width]` in [-1, 1],
    /// checking `should_stop` at every sampler step and decoding chunk.
    pub async fn generate(
        &self,
        image: &[f32],
        height: usize,
        width: usize,
        options: &GenerateOptions,
        on_progress: impl FnMut(Stage),
        should_stop: impl Fn() -> bool,
    ) -> Result<Surface, ShapeError> {
        self.generate_views(
            &[(View::Front, image)],
            height,
            width,
            options,
            on_progress,
            should_stop,
        )
        .await
    }

    /// [`Self::generate`] from views of one object ([`Self::condition_views`]).
    pub async fn generate_views(
        &self,
        views: &[(View, &[f32])],
        height: usize,
        width: usize,
        options: &GenerateOptions,
        mut on_progress: impl FnMut(Stage),
        should_stop: impl Fn() -> bool,
    ) -> Result<Surface, ShapeError> {
        on_progress(Stage::Encoding);
        let cond = self.condition_views(views, height, width)?;
        let latents = self
            .sample(
                cond,
                self.noise(options.seed),
                options.steps.unwrap_or(self.default_steps),
                options.guidance,
                |done, total| on_progress(Stage::Sampling { done, total }),
                &should_stop,
            )
            .await?;
        let kv = self.key_values(latents);
        self.surface(&kv, options, on_progress, should_stop).await
    }
}

/// Wait until the device has computed `v` (a one-value read-back): a device that queues work
/// lazily (wgpu) would otherwise report every sampler step at once and spend the time later,
/// which makes progress and its estimate dishonest. A failed read-back (a lost device) shows
/// up in the next one, where the job reads its result.
async fn finished(v: &Tensor<3>) {
    let _ = crate::device::computed(v).await;
}

/// Stream a converted model's three shard sets (in [`COMPONENTS`] order) onto `device` and
/// build the networks; `on_progress(component, progress)` follows each set's loader.
pub async fn load_shape_model<S: ShardSource + ?Sized>(
    sources: [&S; 3],
    device: &Device,
    dtype: DType,
    on_progress: impl FnMut(&str, &LoadProgress),
) -> Result<ShapeModel, ShapeBuildError> {
    let (config, [conditioner, denoiser, vae]) =
        load_shape_parts(sources, device, dtype, on_progress).await?;
    ShapeModel::new(&config, conditioner, denoiser, vae, device)
}

impl ShapeModel {
    /// The model from its three loaded sets, each with its index's `config` (in
    /// [`COMPONENTS`] order): how the server and the app build it from the sets they hold.
    pub fn from_parts(
        parts: [(&serde_json::Value, WeightSet); 3],
        device: &Device,
    ) -> Result<Self, ShapeBuildError> {
        let [(c, conditioner), (d, denoiser), (v, vae)] = parts;
        let config = ShapeConfig::from_values(c, d, v)?;
        ShapeModel::new(&config, conditioner, denoiser, vae, device)
    }
}

/// The three sets of [`load_shape_model`] on the device and the config they give, before the
/// networks take them (what they weigh there can still be read: [`WeightSet::device_bytes`]).
pub async fn load_shape_parts<S: ShardSource + ?Sized>(
    sources: [&S; 3],
    device: &Device,
    dtype: DType,
    mut on_progress: impl FnMut(&str, &LoadProgress),
) -> Result<(ShapeConfig, [WeightSet; 3]), ShapeBuildError> {
    let mut configs = Vec::new();
    let mut weights = Vec::new();
    for (&component, source) in COMPONENTS.iter().zip(sources) {
        let (index, set) = load_all(source, device, dtype, |p| on_progress(component, p))
            .await
            .map_err(|source| ShapeBuildError::Load {
                part: component,
                source,
            })?;
        configs.push(index.config);
        weights.push(set);
    }
    let config = ShapeConfig::from_values(&configs[0], &configs[1], &configs[2])?;
    let sets = weights.try_into().expect("one set per component");
    Ok((config, sets))
}
