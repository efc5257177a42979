//! One shape generation, as the official pipeline runs it: a pre-processed image → DINOv2
//! tokens → the flow-matching sampler with the DiT (CFG against all-zero tokens, or the
//! guidance embedding for the distilled variants) → ShapeVAE → the field on the official grid
//! → marching cubes.
//!
//! A model is three shard sets (conditioner, denoiser, vae; `orfeas convert` writes them from
//! an official checkpoint); each set's index carries its part of the official `config.yaml`
//! ([`ShapeConfig`]), and the tensors keep their official names.

use burn::tensor::{DType, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::mesh::marching_cubes::scale_to_bounds;
use crate::mesh::{Field, Mesh, marching_cubes, marching_cubes_sparse};
use crate::models::dinov2::{self, Dinov2, Dinov2Config};
use crate::models::dit20::{self, Dit20, Dit20Config};
use crate::models::dit21::{self, Dit21, Dit21Config};
use crate::models::shape_vae::{self, KeyValues, ShapeVae, ShapeVaeConfig};
use crate::sampler::{FlowMatchSchedule, initial_noise, sample};
use crate::volume::{Grid, Refinement, decode_coarse_to_fine, decode_dense};
use crate::weights::{LoadProgress, ShardSource, WeightSet, apply_torch_weights, load_all};

/// The conditioner set's config: the Hugging Face `Dinov2Config` and the side the transform
/// resizes to (the official `main_image_encoder.kwargs`).
#[derive(Debug, Clone, Deserialize)]
pub struct ConditionerConfig {
    pub config: Dinov2Config,
    pub image_size: usize,
}

/// The denoiser set's config: the official `model` target and params, and the scheduler.
#[derive(Debug, Clone, Deserialize)]
pub struct DenoiserConfig {
    #[serde(flatten)]
    pub architecture: Architecture,
    #[serde(default)]
    pub scheduler: Scheduler,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "architecture")]
pub enum Architecture {
    /// 2.1.
    HunYuanDiTPlain { params: Dit21Config },
    /// 2.0, 2mini, fast, turbo.
    Hunyuan3DDiT { params: Dit20Config },
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
    /// The configs as the three shard-set indexes store them.
    pub fn from_values(
        conditioner: &serde_json::Value,
        denoiser: &serde_json::Value,
        vae: &serde_json::Value,
    ) -> Result<Self, String> {
        fn parse<T: serde::de::DeserializeOwned>(
            part: &str,
            value: &serde_json::Value,
        ) -> Result<T, String> {
            T::deserialize(value).map_err(|e| format!("the {part} config: {e}"))
        }
        Ok(Self {
            conditioner: parse("conditioner", conditioner)?,
            denoiser: parse("denoiser", denoiser)?,
            vae: parse("vae", vae)?,
        })
    }
}

/// The sub-folders of a converted model, one shard set each.
pub const COMPONENTS: [&str; 3] = ["conditioner", "denoiser", "vae"];

/// Knobs of one generation (the original studio's parameters; its defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateOptions {
    pub steps: usize,
    pub guidance: f32,
    /// Octree resolution: the grid has `resolution + 1` points per axis.
    pub resolution: usize,
    pub seed: u64,
    /// Field queries per decoder call (the official `num_chunks`).
    pub chunk: usize,
    /// Query every grid point (as the official decoder) instead of coarse-to-fine.
    pub dense: bool,
    /// Fine cells per coarse cell for coarse-to-fine decoding; 0 picks `R / 64` (1 to 4), so
    /// the coarse grid always has at least 64 cells a side and features smaller than a coarse
    /// cell are rare.
    pub coarse_stride: usize,
}

impl GenerateOptions {
    pub fn refinement(&self) -> Refinement {
        let stride = match self.coarse_stride {
            0 => (self.resolution / 64).clamp(1, 4),
            s => s,
        };
        Refinement {
            stride,
            ..Refinement::default()
        }
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            steps: 30,
            guidance: 5.0,
            resolution: 256,
            seed: 1234,
            chunk: 8000,
            dense: false,
            coarse_stride: 0,
        }
    }
}

/// Where a generation is, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Encoding,
    /// `done` of `total` sampler steps finished.
    Sampling {
        done: usize,
        total: usize,
    },
    /// Field queries made so far.
    Decoding {
        queries: usize,
    },
    Meshing,
}

pub enum Denoiser {
    Plain(Box<Dit21>),
    Flux(Box<Dit20>),
}

impl Denoiser {
    /// Guidance-distilled variants take the guidance scale as an input and need no CFG batch.
    pub fn guidance_distilled(&self) -> bool {
        matches!(self, Denoiser::Flux(dit) if dit.guidance_in.is_some())
    }

    pub fn forward(
        &self,
        x: Tensor<3>,
        t: &[f32],
        context: Tensor<3>,
        guidance: Option<&[f32]>,
    ) -> Tensor<3> {
        match self {
            Denoiser::Plain(dit) => dit.forward(x, t, context),
            Denoiser::Flux(dit) => dit.forward(x, t, context, guidance),
        }
    }
}

/// The generated surface before meshing.
pub struct Surface {
    pub grid: Grid,
    pub mesh: Mesh,
    /// Field queries made (dense: every grid point).
    pub queries: usize,
}

/// The three networks of a shape model, on one device.
pub struct ShapeModel {
    pub encoder: Dinov2,
    pub encoder_size: usize,
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
    ) -> Result<Self, String> {
        let encoder_config = &config.conditioner.config;
        if encoder_config.image_size != config.conditioner.image_size {
            return Err(format!(
                "the conditioner resizes to {} but its position embeddings are for {}; \
                 interpolating them is not supported yet",
                config.conditioner.image_size, encoder_config.image_size
            ));
        }
        let encoder = apply_torch_weights(
            encoder_config.init(device),
            conditioner,
            dinov2::checkpoint_name,
        )
        .map_err(|e| format!("conditioner: {e}"))?;
        let (model, channels) = match &config.denoiser.architecture {
            Architecture::HunYuanDiTPlain { params } => (
                Denoiser::Plain(Box::new(
                    apply_torch_weights(params.init(device), denoiser, dit21::checkpoint_name)
                        .map_err(|e| format!("denoiser: {e}"))?,
                )),
                params.in_channels,
            ),
            Architecture::Hunyuan3DDiT { params } => (
                Denoiser::Flux(Box::new(
                    apply_torch_weights(params.init(device), denoiser, dit20::checkpoint_name)
                        .map_err(|e| format!("denoiser: {e}"))?,
                )),
                params.in_channels,
            ),
        };
        let vae_params = &config.vae.params;
        if vae_params.embed_dim != channels {
            return Err(format!(
                "the denoiser makes {channels}-channel latents, the vae decodes {}",
                vae_params.embed_dim
            ));
        }
        let vae = apply_torch_weights(vae_params.init(device)?, vae, shape_vae::checkpoint_name)
            .map_err(|e| format!("vae: {e}"))?;
        Ok(Self {
            encoder,
            encoder_size: config.conditioner.image_size,
            denoiser: model,
            scheduler: config.denoiser.scheduler,
            vae,
            num_latents: vae_params.num_latents,
            latent_channels: channels,
        })
    }

    /// Image tokens for a pre-processed RGB image `[3, height, width]` in [-1, 1].
    pub fn condition(&self, image: &[f32], height: usize, width: usize) -> Tensor<3> {
        let device = self.device();
        let pixels = dinov2::preprocess(image, height, width, self.encoder_size);
        self.encoder
            .forward(dinov2::pixels_tensor(pixels, self.encoder_size, &device))
    }

    fn device(&self) -> Device {
        self.vae.post_kl.weight.val().device()
    }

    /// The seeded initial latents `[1, num_latents, channels]`.
    pub fn noise(&self, seed: u64) -> Tensor<3> {
        let dims = [1, self.num_latents, self.latent_channels];
        let values = initial_noise(seed, dims.iter().product());
        Tensor::from_data(TensorData::new(values, dims), &self.device())
    }

    /// Run the sampler from `noise` given image tokens `cond` (batch 1); `on_step(done,
    /// total)` after every step.
    pub async fn sample(
        &self,
        cond: Tensor<3>,
        noise: Tensor<3>,
        steps: usize,
        guidance: f32,
        mut on_step: impl FnMut(usize, usize),
    ) -> Tensor<3> {
        let schedule = self.scheduler.schedule(steps);
        let total = schedule.steps();
        let report = |i: usize, _: &Tensor<3>| on_step(i + 1, total);
        if self.denoiser.guidance_distilled() {
            // The pipeline passes the scale through the guidance embedding and skips CFG.
            return sample(
                noise,
                &schedule,
                1.0,
                async |x, t| {
                    let v = self
                        .denoiser
                        .forward(x, &[t], cond.clone(), Some(&[guidance]));
                    (v.clone(), v)
                },
                report,
            )
            .await;
        }
        // The official CFG batch: [x, x] at [t, t] with [cond, zeros], conditional first.
        let context = Tensor::cat(vec![cond.clone(), cond.zeros_like()], 0);
        sample(
            noise,
            &schedule,
            guidance,
            async |x, t| {
                let v = self.denoiser.forward(
                    Tensor::cat(vec![x.clone(), x], 0),
                    &[t, t],
                    context.clone(),
                    None,
                );
                let [_, n, c] = v.dims();
                (
                    v.clone().slice([0..1, 0..n, 0..c]),
                    v.slice([1..2, 0..n, 0..c]),
                )
            },
            report,
        )
        .await
    }

    /// The decoded latents' keys and values, computed once for every field query.
    pub fn key_values(&self, latents: Tensor<3>) -> KeyValues {
        self.vae.key_values(self.vae.decode_latents(latents))
    }

    /// The field (positive inside) at `points`; an error when the device cannot hand it back
    /// (e.g. it was lost).
    pub async fn field_at(&self, points: &[[f32; 3]], kv: &KeyValues) -> Result<Vec<f32>, String> {
        let flat: Vec<f32> = points.iter().flatten().copied().collect();
        let tensor =
            Tensor::<3>::from_data(TensorData::new(flat, [1, points.len(), 3]), &self.device());
        let data = self
            .vae
            .field(tensor, kv)
            .into_data_async()
            .await
            .map_err(|e| format!("reading the field back from the device failed: {e:?}"))?;
        data.convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| format!("the field is not f32: {e:?}"))
    }

    /// Decode the surface on the official grid (dense or coarse-to-fine) and extract it with
    /// marching cubes in the official bounds.
    pub async fn surface(
        &self,
        kv: &KeyValues,
        options: &GenerateOptions,
        mut on_progress: impl FnMut(Progress),
    ) -> Result<Surface, String> {
        let grid = Grid::official(options.resolution);
        let mut queries = 0;
        // After a failed read-back the remaining queries are not sent (the device is gone);
        // the error is returned once decoding stops.
        let mut failure = None;
        let query = async |points: &[[f32; 3]]| {
            queries += points.len();
            on_progress(Progress::Decoding { queries });
            if failure.is_none() {
                match self.field_at(points, kv).await {
                    Ok(values) => return values,
                    Err(e) => failure = Some(e),
                }
            }
            vec![f32::NAN; points.len()]
        };
        let mut mesh = if options.dense {
            let values = decode_dense(grid, options.chunk, query).await;
            if let Some(e) = failure {
                return Err(e);
            }
            on_progress(Progress::Meshing);
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
            on_progress(Progress::Meshing);
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

    /// The whole generation for a pre-processed image `[3, height, width]` in [-1, 1].
    pub async fn generate(
        &self,
        image: &[f32],
        height: usize,
        width: usize,
        options: &GenerateOptions,
        mut on_progress: impl FnMut(Progress),
    ) -> Result<Surface, String> {
        on_progress(Progress::Encoding);
        let cond = self.condition(image, height, width);
        let latents = self
            .sample(
                cond,
                self.noise(options.seed),
                options.steps,
                options.guidance,
                |done, total| on_progress(Progress::Sampling { done, total }),
            )
            .await;
        let kv = self.key_values(latents);
        self.surface(&kv, options, on_progress).await
    }
}

/// Stream a converted model's three shard sets (in [`COMPONENTS`] order) onto `device` and
/// build the networks; `on_progress(component, progress)` follows each set's loader.
pub async fn load_shape_model<S: ShardSource + ?Sized>(
    sources: [&S; 3],
    device: &Device,
    dtype: DType,
    mut on_progress: impl FnMut(&str, &LoadProgress),
) -> Result<ShapeModel, String> {
    let mut configs = Vec::new();
    let mut weights = Vec::new();
    for (component, source) in COMPONENTS.iter().zip(sources) {
        let (index, set) = load_all(source, device, dtype, |p| on_progress(component, p))
            .await
            .map_err(|e| format!("{component}: {e}"))?;
        configs.push(index.config);
        weights.push(set);
    }
    let config = ShapeConfig::from_values(&configs[0], &configs[1], &configs[2])?;
    let vae = weights.pop().expect("three sets");
    let denoiser = weights.pop().expect("three sets");
    let conditioner = weights.pop().expect("three sets");
    ShapeModel::new(&config, conditioner, denoiser, vae, device)
}
