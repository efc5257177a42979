//! The whole image-to-mesh job, written once for the app's worker, the server and the CLI:
//!
//! picture → cut-out (ISNet, [`crate::background`]) → shape input (recentre and crop, the
//! model's image processor) → the shape model ([`ShapeModel`]: DINOv2 → sampler with the DiT →
//! ShapeVAE → field → marching cubes) → the official clean-up ([`crate::mesh::cleanup`]) → a
//! mesh, which the caller writes in a [`crate::mesh::export::Format`].
//!
//! One policy for an opaque picture with no background removal at hand (none configured, or
//! the request turned it off): the whole picture is the object, and the result says so
//! ([`Note::WholePicture`]). A picture with transparency is its own cut-out.

mod options;
mod shape;

pub use options::*;
pub use shape::*;

use std::borrow::Cow;

use burn::tensor::Device;
use image::RgbaImage;
use serde::{Deserialize, Serialize};

use crate::background::{
    self, BackgroundError, has_alpha, remove_background as remove_background_of,
};
use crate::mesh::{Mesh, cleanup};
use crate::models::ForwardError;
use crate::models::isnet::IsNet;

/// Where a job is: declared with the other types the front-ends show (the worker sends it to
/// the UI as it is).
pub use orfeas_wire::Stage;

/// A view of the object, for the multi-view (2mv) models.
pub use crate::models::dinov2::View;

/// What the job did that its caller should know: with the picture's background, and with the
/// face budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Note {
    /// ISNet cut the object out.
    BackgroundRemoved,
    /// The picture had transparency: it is its own cut-out.
    TransparencyUsed,
    /// Opaque, and no background removal (none loaded, or turned off): the whole picture is
    /// the object.
    WholePicture,
    /// The clean-up stopped above the face budget: every further collapse would have opened
    /// or pinched the closed surface.
    FacesAboveBudget { budget: usize, kept: usize },
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Note::BackgroundRemoved => "background removed",
            Note::TransparencyUsed => "the picture's transparency is the cut-out",
            Note::WholePicture => "no background removal: the whole picture is taken as the object",
            Note::FacesAboveBudget { budget, kept } => {
                return write!(
                    f,
                    "kept {kept} faces of the {budget} asked for: fewer would open the closed surface"
                );
            }
        })
    }
}

/// Why a job gave no mesh: the first three are the request's (its knobs, its picture, what the
/// model made of it), the next two ours (the device, the networks), the last its caller's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerateError {
    /// A knob outside its range (the reason names it).
    #[error("{0}")]
    Options(String),
    /// The picture cannot be made into the model's input (e.g. nothing left after the cut-out).
    #[error("{0}")]
    Image(String),
    /// The field has no surface at level 0.
    #[error("the model's field has no surface at level 0 (nothing to mesh)")]
    NoSurface,
    #[error("background removal failed: {0}")]
    BackgroundRemoval(BackgroundError),
    /// The networks failed (a device error, a guidance-distilled model without guidance…).
    #[error(transparent)]
    Model(ForwardError),
    /// Stopped by its caller (cancelled, past a deadline, shutting down).
    #[error("{}", ShapeError::Stopped)]
    Stopped,
}

impl GenerateError {
    /// The request's fault (its knobs, its picture, a picture in which the model finds no
    /// surface), not the server's or the device's: a front-end answers it as bad input.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            GenerateError::Options(_) | GenerateError::Image(_) | GenerateError::NoSurface
        )
    }
}

/// A finished job.
#[derive(Debug, Clone)]
pub struct Generated {
    /// After the official clean-up.
    pub mesh: Mesh,
    /// One colour per vertex from the cut-out photos ([`crate::mesh::colour`]), unless
    /// turned off (`GenerateOptions::colour`).
    pub colours: Option<Vec<[u8; 3]>>,
    /// Faces marching cubes made, before the clean-up.
    pub raw_faces: usize,
    /// Field queries made.
    pub queries: usize,
    /// Sampler steps run.
    pub steps: usize,
    pub notes: Vec<Note>,
}

/// One job's request: the picture (decoded, within [`crate::input`]'s limits) and its knobs.
#[derive(Debug, Clone)]
pub struct Request {
    pub picture: RgbaImage,
    pub options: GenerateOptions,
    /// Cut the object out when the picture is opaque (the original studio's
    /// `remove_background`, on by default).
    pub remove_background: bool,
    /// ISNet's cut-out of this picture, made earlier (the app keeps the one it showed): used
    /// where the job would cut the picture out, instead of running ISNet again.
    pub cutout: Option<RgbaImage>,
    /// More views of the object, for a multi-view (2mv) model: `picture` is the front, these
    /// any of left, back and right; each is cut out as the front is.
    pub views: Vec<(View, RgbaImage)>,
}

impl Request {
    pub fn new(picture: RgbaImage, options: GenerateOptions) -> Self {
        Self {
            picture,
            options,
            remove_background: true,
            cutout: None,
            views: Vec::new(),
        }
    }
}

/// The networks a job runs on, on one device.
pub struct ImageToMesh<'a> {
    pub shape: &'a ShapeModel,
    /// ISNet, when one is loaded.
    pub background: Option<&'a IsNet>,
    pub background_options: background::Options,
    pub device: &'a Device,
}

/// One of the request's other views has no transparency (ISNet cuts it out when it can).
fn opaque_view(request: &Request) -> bool {
    request.views.iter().any(|(_, picture)| !has_alpha(picture))
}

impl<'a> ImageToMesh<'a> {
    pub fn new(shape: &'a ShapeModel, background: Option<&'a IsNet>, device: &'a Device) -> Self {
        Self {
            shape,
            background,
            background_options: background::Options::default(),
            device,
        }
    }

    /// Whether a picture of this request (the front or another view) would be cut out (so a
    /// caller can wait for ISNet, or say it will be used whole).
    pub fn wants_background_removal(request: &Request) -> bool {
        request.remove_background && (!has_alpha(&request.picture) || opaque_view(request))
    }

    /// ISNet would run for this request (not for pictures with transparency, a front whose
    /// cut-out came with it, or with background removal off or not loaded).
    fn runs_background_removal(&self, request: &Request) -> bool {
        let front = !has_alpha(&request.picture) && request.cutout.is_none();
        request.remove_background && self.background.is_some() && (front || opaque_view(request))
    }

    /// The cut-out the job would use (the picture itself, not a copy, when it is used as it
    /// is), and what it did to get it. The one policy for every front-end: a picture with
    /// transparency is its own cut-out; an opaque one is cut out (by the cut-out that came
    /// with the request, else by ISNet) when background removal is on and at hand, else used
    /// whole.
    pub async fn cut_out<'r>(
        &self,
        request: &'r Request,
    ) -> Result<(Cow<'r, RgbaImage>, Note), GenerateError> {
        self.cut_out_picture(
            &request.picture,
            request.cutout.as_ref(),
            request.remove_background,
        )
        .await
    }

    /// [`Self::cut_out`] for one picture (the front or another view).
    async fn cut_out_picture<'r>(
        &self,
        picture: &'r RgbaImage,
        made: Option<&'r RgbaImage>,
        remove_background: bool,
    ) -> Result<(Cow<'r, RgbaImage>, Note), GenerateError> {
        if has_alpha(picture) {
            return Ok((Cow::Borrowed(picture), Note::TransparencyUsed));
        }
        if let Some(cutout) = made.filter(|_| remove_background) {
            return Ok((Cow::Borrowed(cutout), Note::BackgroundRemoved));
        }
        match self.background.filter(|_| remove_background) {
            Some(isnet) => {
                remove_background_of(isnet, picture, self.device, &self.background_options)
                    .await
                    .map(|cutout| (Cow::Owned(cutout), Note::BackgroundRemoved))
                    .map_err(GenerateError::BackgroundRemoval)
            }
            None => Ok((Cow::Borrowed(picture), Note::WholePicture)),
        }
    }

    /// The whole job, reporting each stage; `should_stop` is asked before every sampler step
    /// and field chunk.
    pub async fn run(
        &self,
        request: &Request,
        mut on_stage: impl FnMut(Stage),
        should_stop: impl Fn() -> bool,
    ) -> Result<Generated, GenerateError> {
        request.options.validate().map_err(GenerateError::Options)?;
        // Views the model cannot take are refused before any work.
        check_views(
            self.shape.views,
            std::iter::once(View::Front).chain(request.views.iter().map(|(view, _)| *view)),
        )
        .map_err(|e| GenerateError::Options(e.to_string()))?;
        if self.runs_background_removal(request) {
            on_stage(Stage::RemovingBackground);
        }
        let (cutout, note) = self.cut_out(request).await?;
        let mut notes = vec![note];
        let mut cutouts = vec![(View::Front, cutout)];
        for (view, picture) in &request.views {
            let (cutout, note) = self
                .cut_out_picture(picture, None, request.remove_background)
                .await?;
            if !notes.contains(&note) {
                notes.push(note);
            }
            cutouts.push((*view, cutout));
        }
        let cutouts: Vec<(View, &RgbaImage)> = cutouts
            .iter()
            .map(|(view, c)| (*view, c.as_ref()))
            .collect();
        self.run_on_cutouts(&cutouts, notes, request, on_stage, should_stop)
            .await
    }

    /// The job from the cut-outs [`Self::cut_out`] chose (the front first).
    async fn run_on_cutouts(
        &self,
        cutouts: &[(View, &RgbaImage)],
        mut notes: Vec<Note>,
        request: &Request,
        mut on_stage: impl FnMut(Stage),
        should_stop: impl Fn() -> bool,
    ) -> Result<Generated, GenerateError> {
        let options = &request.options;
        options.validate().map_err(GenerateError::Options)?;
        if should_stop() {
            return Err(GenerateError::Stopped);
        }
        let mut inputs = Vec::with_capacity(cutouts.len());
        for (view, cutout) in cutouts {
            let input = self.shape.preprocess(cutout).map_err(|e| {
                GenerateError::Image(match view {
                    View::Front => e.to_string(),
                    other => format!("the {} view: {e}", other.name()),
                })
            })?;
            inputs.push((*view, input));
        }
        let size = inputs[0].1.size;
        let views: Vec<(View, &[f32])> = inputs
            .iter()
            .map(|(view, input)| (*view, input.image.as_slice()))
            .collect();
        let steps = self
            .shape
            .scheduler
            .schedule(options.steps.unwrap_or(self.shape.default_steps))
            .steps();
        let surface = self
            .shape
            .generate_views(&views, size, size, options, &mut on_stage, &should_stop)
            .await
            .map_err(|e| match e {
                ShapeError::Stopped => GenerateError::Stopped,
                ShapeError::Network(e) => GenerateError::Model(e),
                ShapeError::Views(e) => GenerateError::Options(e.to_string()),
            })?;
        let raw_faces = surface.mesh.triangles.len();
        if raw_faces == 0 {
            return Err(GenerateError::NoSurface);
        }
        on_stage(Stage::CleaningUp);
        let budget = request.options.faces;
        let mesh = cleanup::official(surface.mesh, budget);
        if budget > 0 && mesh.triangles.len() > budget {
            notes.push(Note::FacesAboveBudget {
                budget,
                kept: mesh.triangles.len(),
            });
        }
        // Each view's cut-out onto the surface it sees (the front, and a 2mv model's others).
        let colours = options
            .colour
            .then(|| crate::mesh::colour::colour_vertices(&mesh, cutouts));
        Ok(Generated {
            mesh,
            colours,
            raw_faces,
            queries: surface.queries,
            steps,
            notes,
        })
    }
}
