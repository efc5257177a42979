//! `orfeas generate`: an image and a converted model folder → a mesh file, natively.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::DType;
use orfeas_engine::fit::{Capacity, Footprint};
use orfeas_engine::weights::ShardIndex;

use crate::compute::Compute;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use orfeas_engine::input::decode_image;
use orfeas_engine::mesh::export::Format;
use orfeas_engine::pipeline::{
    COMPONENTS, GenerateOptions, ImageToMesh, Request, Stage, View, load_shape_model,
};
use orfeas_engine::weights::INDEX_FILE;
use orfeas_engine::weights::source::DirSource;

use crate::progress::{bytes_bar, show_load};
use crate::remove_bg::load_isnet;

pub struct GenerateArgs {
    /// The front view.
    pub image: PathBuf,
    /// More views for a multi-view (2mv) model.
    pub views: Vec<(View, PathBuf)>,
    pub model: PathBuf,
    pub output: PathBuf,
    pub options: GenerateOptions,
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
    let folder = model.file_name().map_or_else(
        || model.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let indexes: Vec<&ShardIndex> = indexes.iter().collect();
    let name = orfeas_engine::fit::model_name(&folder, &indexes);
    let footprint = Footprint::of(&indexes);
    orfeas_engine::fit::check(&name, &footprint, capacity, dtype).map_err(anyhow::Error::msg)
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let format = Format::of_path(&args.output).map_err(anyhow::Error::msg)?;
    args.options.validate().map_err(anyhow::Error::msg)?;
    let device = &args.compute.device;
    // Refuse before reading anything large: the model must fit the device in this dtype.
    check_fit(&args.model, &args.compute.capacity, args.compute.dtype)?;
    let read = |path: &Path| -> Result<image::RgbaImage> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        decode_image(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    };
    let mut request = Request::new(read(&args.image)?, args.options.clone());
    for (view, path) in &args.views {
        request.views.push((*view, read(path)?));
    }
    // ISNet is read only when this picture needs it; without it the picture is used whole.
    let isnet = if ImageToMesh::wants_background_removal(&request)
        && args.isnet.join(INDEX_FILE).is_file()
    {
        Some(load_isnet(&args.isnet, device, args.compute.dtype)?)
    } else {
        None
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

    let steps = bars.add(ProgressBar::new(
        args.options.steps.unwrap_or(model.default_steps) as u64,
    ));
    steps.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} steps {elapsed} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    steps.set_prefix("generate");
    let started = std::time::Instant::now();
    let job = ImageToMesh::new(&model, isnet.as_ref(), device);
    let on_stage = |stage| match stage {
        Stage::Sampling { done, total } => {
            steps.set_length(total as u64);
            steps.set_position(done as u64);
            steps.set_message("");
        }
        other => steps.set_message(other.to_string()),
    };
    let generated = runtime
        .block_on(job.run(&request, on_stage, || false))
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.image.display()))?;
    steps.finish_with_message(format!(
        "{:.1} s, {} field queries",
        started.elapsed().as_secs_f64(),
        generated.queries
    ));
    for note in &generated.notes {
        eprintln!("note: {note}");
    }
    let mesh = &generated.mesh;
    std::fs::write(
        &args.output,
        format.encode(mesh, generated.colours.as_deref()),
    )
    .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "wrote {} ({} vertices, {} faces; {} before clean-up)",
        args.output.display(),
        mesh.positions.len(),
        mesh.triangles.len(),
        generated.raw_faces
    );
    Ok(())
}
