//! The server's jobs run the engine's image-to-mesh job ([`ImageToMesh`]) over the models it
//! loaded, and write the mesh in the requested format. The networks are built once, from the
//! weights already on the device, the first time a job needs them.

use std::sync::{Arc, Mutex};

use burn::tensor::Device;
use orfeas_engine::models::isnet::IsNet;
use orfeas_engine::pipeline::{ImageToMesh, Request, ShapeModel, Stage};

use super::jobs::{JobControl, JobError, JobInput, MeshFile, Pipeline};
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
        let shape = ShapeModel::from_parts(
            [&conditioner, &denoiser, &vae].map(|m| (&m.index.config, m.weights.clone())),
            &self.device,
        )
        .map_err(|e| e.to_string())?;
        let isnet = match self.models.isnet().and_then(|slot| slot.loaded()) {
            Some(loaded) => Some(
                IsNet::from_weights(loaded.weights.clone(), &self.device)
                    .map_err(|e| format!("{} does not fit ISNet: {e}", loaded.index.model.id))?,
            ),
            None => None,
        };
        let networks = Arc::new(Networks { shape, isnet });
        *cached = Some(networks.clone());
        Ok(networks)
    }

    async fn generate(&self, input: JobInput, control: &JobControl) -> Result<MeshFile, JobError> {
        let networks = self.networks()?;
        let JobInput {
            image,
            views,
            params,
        } = input;
        let job = ImageToMesh::new(&networks.shape, networks.isnet.as_ref(), &self.device);
        let request = Request {
            remove_background: params.remove_background,
            views,
            ..Request::new(image, params.options)
        };
        let on_stage = |stage| {
            if let Stage::Sampling { done, total } = stage {
                control.step(done as u32, total as u32);
            }
        };
        let generated = job
            .run(&request, on_stage, || control.should_stop())
            .await?;
        Ok(MeshFile {
            format: params.format,
            bytes: params
                .format
                .encode(&generated.mesh, generated.colours.as_deref()),
            notes: generated.notes.iter().map(ToString::to_string).collect(),
        })
    }
}

#[async_trait::async_trait]
impl Pipeline for ModelPipeline {
    fn unavailable(&self, _input: &JobInput) -> Option<(String, String)> {
        if self.models.shape_model().is_none() {
            return Some((
                "(shape model)".into(),
                "no shape-generation model under --models: convert a checkpoint with \
                 `orfeas convert <ckpt> --config config.yaml -o <models>/<name>`"
                    .into(),
            ));
        }
        None
    }

    fn ready(&self) -> bool {
        self.models.shape_model().is_some() && self.models.not_ready().is_none()
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "models_status": self.models.aggregate().name(),
            "shape_models": self.models.shapes.iter().map(|s| s.describe()).collect::<Vec<_>>(),
            "processor": self.models.processor(),
        })
    }

    async fn run(&self, input: JobInput, control: &JobControl) -> Result<MeshFile, JobError> {
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
                            .map_err(|e| JobError::Internal(e.to_string()))?
                            .block_on(self.generate(input, control))
                    })
                    .join()
                    .map_err(|_| JobError::Internal("the generation thread panicked".into()))?
            }),
        }
    }
}
