//! The server's image-to-mesh pipeline over the models it loaded: background removal (ISNet,
//! when asked and the image is opaque) → the shape pre-processor → the shape model (conditioner,
//! sampler, VAE, surface) → the official clean-up → the mesh file. The networks are built once,
//! from the weights already on the device, the first time a job needs them.

use std::sync::{Arc, Mutex};

use burn::tensor::Device;
use orfeas_engine::background::{Options, has_alpha, remove_background};
use orfeas_engine::mesh::{cleanup, export};
use orfeas_engine::models::isnet::{IsNet, checkpoint_name};
use orfeas_engine::pipeline::{GenerateOptions, Progress, ShapeConfig, ShapeModel};
use orfeas_engine::weights::apply_torch_weights;

use super::jobs::{JobControl, JobInput, MeshFile, MeshFormat, Pipeline};
use super::models::Models;

struct Networks {
    shape: ShapeModel,
    isnet: Option<IsNet>,
}

pub struct ModelPipeline {
    models: Arc<Models>,
    device: Device,
    networks: Mutex<Option<Arc<Networks>>>,
}

impl ModelPipeline {
    pub fn new(models: Arc<Models>, device: Device) -> Self {
        Self {
            models,
            device,
            networks: Mutex::new(None),
        }
    }

    fn networks(&self) -> Result<Arc<Networks>, String> {
        // A job that panicked while building left nothing half-made behind: recover the lock.
        let mut cached = self
            .networks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(networks) = cached.as_ref() {
            return Ok(networks.clone());
        }
        let [conditioner, denoiser, vae] = self
            .models
            .shape_model()
            .ok_or("no shape-generation model under --models")?
            .map(|slot| slot.loaded().ok_or(format!("{} is not loaded", slot.id)));
        let (conditioner, denoiser, vae) = (conditioner?, denoiser?, vae?);
        let config = ShapeConfig::from_values(
            &conditioner.index.config,
            &denoiser.index.config,
            &vae.index.config,
        )?;
        let shape = ShapeModel::new(
            &config,
            conditioner.weights.clone(),
            denoiser.weights.clone(),
            vae.weights.clone(),
            &self.device,
        )?;
        let isnet = match self.models.isnet().and_then(|slot| slot.loaded()) {
            Some(loaded) => Some(
                apply_torch_weights(
                    IsNet::init(&self.device),
                    loaded.weights.clone(),
                    checkpoint_name,
                )
                .map_err(|e| format!("{} does not fit ISNet: {e}", loaded.index.model.id))?,
            ),
            None => None,
        };
        let networks = Arc::new(Networks { shape, isnet });
        *cached = Some(networks.clone());
        Ok(networks)
    }

    async fn generate(&self, input: JobInput, control: &JobControl) -> Result<MeshFile, String> {
        let networks = self.networks()?;
        let JobInput { image, params } = input;
        let image = if params.remove_background && !has_alpha(&image) {
            let isnet = networks
                .isnet
                .as_ref()
                .ok_or("no background-removal model is loaded (send remove_background=false)")?;
            remove_background(isnet, &image, &self.device, &Options::default())
                .await
                .map_err(|e| e.to_string())?
        } else {
            image
        };
        let input = networks
            .shape
            .preprocess(&image)
            .map_err(|e| e.to_string())?;
        let options = GenerateOptions {
            steps: params.steps.map(|s| s as usize),
            guidance: params.guidance,
            resolution: params.octree_resolution as usize,
            seed: params.seed,
            ..GenerateOptions::default()
        };
        let surface = networks
            .shape
            .generate_until(
                &input.image,
                input.size,
                input.size,
                &options,
                |progress| {
                    if let Progress::Sampling { done, total } = progress {
                        control.step(done as u32, total as u32);
                    }
                },
                || control.should_stop(),
            )
            .await?;
        if surface.mesh.triangles.is_empty() {
            return Err("the model's field has no surface at level 0 (nothing to mesh)".into());
        }
        let mesh = cleanup::official(surface.mesh, cleanup::MAX_FACES);
        let bytes = match params.format {
            MeshFormat::Glb => export::to_glb(&mesh),
            MeshFormat::Obj => export::to_obj(&mesh).into_bytes(),
            MeshFormat::Stl => export::to_stl(&mesh, 1.0),
        };
        Ok(MeshFile {
            format: params.format,
            bytes,
        })
    }
}

#[async_trait::async_trait]
impl Pipeline for ModelPipeline {
    fn unavailable(&self, input: &JobInput) -> Option<(String, String)> {
        if self.models.shape_model().is_none() {
            return Some((
                "(shape model)".into(),
                "no shape-generation model under --models: convert a checkpoint with \
                 `orfeas convert <ckpt> --config config.yaml -o <models>/<name>`"
                    .into(),
            ));
        }
        if input.params.remove_background
            && !has_alpha(&input.image)
            && self.models.isnet().is_none()
        {
            return Some((
                "isnet-medium".into(),
                "no background-removal model under --models (`orfeas convert-isnet` writes \
                 isnet-medium); send an image with transparency or remove_background=false"
                    .into(),
            ));
        }
        None
    }

    async fn run(&self, input: JobInput, control: &JobControl) -> Result<MeshFile, String> {
        // Generation is seconds to minutes of compute: it leaves the runtime's worker thread
        // (another takes over), so health stays fast while a job runs.
        let handle = tokio::runtime::Handle::current();
        match handle.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| handle.block_on(self.generate(input, control)))
            }
            // A single-threaded runtime cannot lend its thread: run on one of our own.
            _ => std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .map_err(|e| e.to_string())?
                            .block_on(self.generate(input, control))
                    })
                    .join()
                    .map_err(|_| "the generation thread panicked".to_string())?
            }),
        }
    }
}
