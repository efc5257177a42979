//! `orfeas generate`: an image and a converted model folder → a mesh file, natively.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::DType;
use orfeas_engine::fit::{Capacity, Footprint};
use orfeas_engine::weights::ShardIndex;

use crate::compute::Compute;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use orfeas_engine::input::decode_image;
use orfeas_engine::mesh::{Mesh, cleanup, export};
use orfeas_engine::pipeline::{COMPONENTS, GenerateOptions, Progress, load_shape_model};
use orfeas_engine::weights::source::DirSource;

use crate::progress::{bytes_bar, show_load};

/// The mesh formats we write, by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Glb,
    Obj,
    Stl,
    Ply,
}

impl Format {
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        Ok(match ext.as_deref() {
            Some("glb") => Format::Glb,
            Some("obj") => Format::Obj,
            Some("stl") => Format::Stl,
            Some("ply") => Format::Ply,
            _ => bail!(
                "{}: the output must end in .glb, .obj, .stl or .ply",
                path.display()
            ),
        })
    }

    pub fn encode(self, mesh: &Mesh) -> Vec<u8> {
        match self {
            Format::Glb => export::to_glb(mesh),
            Format::Obj => export::to_obj(mesh).into_bytes(),
            Format::Stl => export::to_stl(mesh, 1.0),
            Format::Ply => export::to_ply(mesh),
        }
    }
}

pub struct GenerateArgs {
    pub image: PathBuf,
    pub model: PathBuf,
    pub output: PathBuf,
    pub options: GenerateOptions,
    /// Reduce to at most this many faces (the reference's 40 000); 0 keeps every face.
    pub max_faces: usize,
    /// ISNet weights, used when the image has no transparency and they exist.
    pub isnet: PathBuf,
    pub compute: Compute,
}

/// The three shard sets' indexes of a converted model, and the check that the model fits
/// the device (before a byte of weights is read).
pub fn check_fit(model: &Path, capacity: &Capacity, dtype: DType) -> Result<()> {
    let mut indexes = Vec::new();
    for component in COMPONENTS {
        let path = model
            .join(component)
            .join(orfeas_engine::weights::INDEX_FILE);
        if !path.is_file() {
            bail!(
                "{}: not a converted model (no {component}/ shard set; run `orfeas convert`)",
                model.display()
            );
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        indexes.push(
            ShardIndex::from_json(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        );
    }
    let name = indexes[1].config["variant"]
        .as_str()
        .map(|v| format!("Hunyuan3D-{v}"))
        .unwrap_or_else(|| model.display().to_string());
    let footprint = Footprint::of(&indexes.iter().collect::<Vec<_>>());
    orfeas_engine::fit::check(&name, &footprint, capacity, dtype).map_err(anyhow::Error::msg)
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let format = Format::from_path(&args.output)?;
    let device = &args.compute.device;
    // Refuse before reading anything large: the model must fit the device in this dtype.
    check_fit(&args.model, &args.compute.capacity, args.compute.dtype)?;
    let bytes =
        std::fs::read(&args.image).with_context(|| format!("reading {}", args.image.display()))?;
    let rgba =
        decode_image(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", args.image.display()))?;
    let rgba = if orfeas_engine::background::has_alpha(&rgba) {
        rgba
    } else if args
        .isnet
        .join(orfeas_engine::weights::INDEX_FILE)
        .is_file()
    {
        let isnet = crate::remove_bg::load_isnet(&args.isnet, device, args.compute.dtype)?;
        crate::remove_bg::cut_out(&isnet, &rgba, device)?
    } else {
        eprintln!(
            "note: {} has no transparency and there are no ISNet weights at {}: the whole \
             picture is taken as the object",
            args.image.display(),
            args.isnet.display()
        );
        rgba
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bars = MultiProgress::new();
    let model = runtime.block_on(async {
        let sources = COMPONENTS.map(|c| DirSource::new(args.model.join(c)));
        let load_bars: Vec<ProgressBar> = COMPONENTS
            .iter()
            .map(|c| bars.add(bytes_bar(0, c)))
            .collect();
        let model = load_shape_model(
            [&sources[0], &sources[1], &sources[2]],
            device,
            args.compute.dtype,
            |component, p| {
                let i = COMPONENTS.iter().position(|c| *c == component).unwrap_or(0);
                show_load(&load_bars[i], p);
            },
        )
        .await;
        for bar in &load_bars {
            bar.finish();
        }
        model.map_err(anyhow::Error::msg)
    })?;
    // The model's own image processor (2mini-turbo takes 1022 px).
    let input = model
        .preprocess(&rgba)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.image.display()))?;
    let total_steps = args.options.steps.unwrap_or(model.default_steps);

    let steps = bars.add(ProgressBar::new(total_steps as u64));
    steps.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} steps {elapsed} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    steps.set_prefix("sample");
    let started = std::time::Instant::now();
    let surface = runtime.block_on(model.generate(
        &input.image,
        input.size,
        input.size,
        &args.options,
        |progress| match progress {
            Progress::Encoding => steps.set_message("encoding the image"),
            Progress::Sampling { done, total } => {
                steps.set_length(total as u64);
                steps.set_position(done as u64);
                steps.set_message("");
            }
            Progress::Decoding { queries } => {
                steps.set_message(format!("decoding the field: {queries} queries"))
            }
            Progress::Meshing => steps.set_message("marching cubes"),
        },
    ));
    let surface = surface.map_err(anyhow::Error::msg)?;
    steps.finish_with_message(format!(
        "{:.1} s, {} field queries",
        started.elapsed().as_secs_f64(),
        surface.queries
    ));
    let raw_faces = surface.mesh.triangles.len();
    if raw_faces == 0 {
        bail!("the model's field has no surface at level 0 (nothing to mesh)");
    }
    let mesh = cleanup::official(surface.mesh, args.max_faces);
    std::fs::write(&args.output, format.encode(&mesh))
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "wrote {} ({} vertices, {} faces; {raw_faces} before clean-up)",
        args.output.display(),
        mesh.positions.len(),
        mesh.triangles.len()
    );
    Ok(())
}
