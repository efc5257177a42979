use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::DType;
use clap::{Parser, Subcommand};
use orfeas_engine::pipeline;
use orfeas_engine::weights::pack::{self, MAX_SHARD_SIZE, MIN_SHARD_SIZE, PackOptions};
use orfeas_engine::weights::source::{DirSource, HttpSource};
use orfeas_engine::weights::{INDEX_FILE, Precision, ShardSource, load_all};

use crate::compute::DeviceArgs;
use crate::progress::{bytes_bar, show_load};

#[derive(Parser, Debug)]
#[command(
    name = "orfeas",
    version,
    about = "Orfeas image-to-3D studio: tools and server"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pack safetensors file(s) into an Orfeas shard set (F16, hashed, with an index).
    Pack(PackArgs),
    /// Re-hash every shard of a shard set and report any that do not match the index.
    Verify(VerifyArgs),
    /// Serve the original studio's HTTP API (and the web app, and the shard sets) while the
    /// models load in the background.
    Serve(Box<ServeArgs>),
    /// Convert an official Hunyuan3D checkpoint (model.fp16.ckpt, or its .safetensors repack)
    /// and its config.yaml into three shard sets: conditioner/, denoiser/, vae/ (f16, or with
    /// the projection weights quantized: --quant q8|q4).
    Convert(ConvertArgs),
    /// Quantize an f16 shard set (or a converted model's three) into a new one: the attention
    /// and MLP projection weights to q8 or q4 in blocks of 32 with f16 scales.
    Quantize(QuantizeArgs),
    /// Write a checkpoint in an official Hunyuan3D variant's layout (its config.yaml, real
    /// tensor names and shapes) filled with seeded random F16 weights: for tests and benchmarks
    /// of `convert` and the engine at real sizes when no real checkpoint is at hand.
    Synthesize(SynthesizeArgs),
    /// Convert the ISNet background-removal model from the npm package
    /// @imgly/background-removal-data@1.4.5 (its dist/ folder) into a shard set; does nothing
    /// when the output already holds a verified conversion.
    ConvertIsnet(ConvertIsnetArgs),
    /// Cut the object out of an image with ISNet: a PNG with the matte as alpha.
    RemoveBg(RemoveBgArgs),
    /// Generate a mesh from an image with a converted shape model.
    Generate(GenerateArgs),
    /// Stream a shard set onto a device with the engine's loader (a load check, and a demo).
    Load(LoadArgs),
}

#[derive(clap::Args, Debug)]
struct PackArgs {
    /// Input .safetensors files or folders holding them.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output folder for the shards and model.safetensors.index.json.
    #[arg(short, long)]
    output: PathBuf,
    /// Target shard size in MiB (16-64).
    #[arg(long, default_value_t = 32)]
    shard_size: u64,
    /// Model id recorded in the index.
    #[arg(long, default_value = "model")]
    model_id: String,
    /// Model version recorded in the index.
    #[arg(long, default_value = "1")]
    model_version: String,
    /// JSON file with the model's config, stored in the index.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// Folder with model.safetensors.index.json, or a converted shape model (its
    /// conditioner/, denoiser/ and vae/ sets are each checked).
    dir: PathBuf,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on; 127.0.0.1 keeps it local, 0.0.0.0:PORT exposes it.
    #[arg(long, default_value = "127.0.0.1:8000")]
    bind: std::net::SocketAddr,
    /// Folder of models, one sub-folder each: a shard set (e.g. isnet-medium from
    /// `convert-isnet`) or a converted shape model (conditioner/, denoiser/, vae/ from
    /// `convert`). Served at /models/ as well, for the web app.
    #[arg(long)]
    models: Option<PathBuf>,
    /// A shape model installed at several precisions (`<name>`, `<name>-q8`, `<name>-q4`):
    /// load this one (default: the finest that fits the device). The web app chooses for its
    /// own GPU among all of them.
    #[arg(long)]
    quant: Option<Precision>,
    /// The built web app to serve at / (`trunk build --release` writes dist/).
    #[arg(long)]
    web: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    /// Where jobs wait: a number is how many may wait in this machine's own queue (more get
    /// 429; as --queue-size); `nats://HOST:PORT` shares the jobs with every instance using
    /// the same NATS JetStream (a fleet: see "Running a fleet" in the README).
    #[arg(long, value_name = "N|URL")]
    queue: Option<QueueArg>,
    /// Generation requests that may wait in the queue (more get 429); a fleet's front ends
    /// count the whole fleet's queue.
    #[arg(long, value_name = "N")]
    queue_size: Option<usize>,
    /// A fleet's front end: accept and answer requests, load no models, run no jobs.
    #[arg(long, requires = "queue")]
    no_worker: bool,
    /// The fleet's name: the prefix of its stream and buckets in NATS (fleets sharing one
    /// NATS keep apart by name).
    #[arg(long, default_value = "orfeas", value_parser = fleet_name)]
    fleet_name: String,
    /// This instance's name in the fleet's health (default: host name and port).
    #[arg(long)]
    instance_name: Option<String>,
    /// Seconds a fleet's worker may go silent (killed, frozen, cut off) before its job is
    /// handed to another worker.
    #[arg(long, default_value_t = 30)]
    ack_wait_s: u64,
    /// Runs of one fleet job before it is failed: each ended by its worker stopping mid-job.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// NATS credentials file (JWT and NKey seed).
    #[arg(long, value_name = "FILE")]
    nats_creds: Option<PathBuf>,
    /// NATS user (with --nats-password).
    #[arg(long, requires = "nats_password")]
    nats_user: Option<String>,
    #[arg(long, requires = "nats_user")]
    nats_password: Option<String>,
    /// NATS token.
    #[arg(long)]
    nats_token: Option<String>,
    /// PEM root certificates to trust for NATS's TLS certificate.
    #[arg(long, value_name = "FILE")]
    nats_tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for NATS servers that verify clients (with --nats-tls-key).
    #[arg(long, value_name = "FILE", requires = "nats_tls_key")]
    nats_tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "nats_tls_cert")]
    nats_tls_key: Option<PathBuf>,
    /// Refuse a NATS connection without TLS.
    #[arg(long)]
    nats_require_tls: bool,
    /// While this file exists, a job taken waits before it runs (tests and demos of a worker
    /// stopping mid-job).
    #[arg(long, hide = true)]
    hold_jobs_while: Option<PathBuf>,
    /// Largest upload accepted, in MB (more gets 413, whatever the framing).
    #[arg(long, default_value_t = 32)]
    max_upload_mb: usize,
    /// Most sampler steps a request may ask for.
    #[arg(long, default_value_t = 100)]
    max_steps: u32,
    /// Largest octree resolution a request may ask for.
    #[arg(long, default_value_t = 512)]
    max_octree: u32,
    /// A job still running after this many seconds is stopped at its next step (0: never).
    #[arg(long, default_value_t = 1800)]
    job_timeout: u64,
    /// Finished jobs kept for their results (older ones are evicted first).
    #[arg(long, default_value_t = 64)]
    keep_jobs: usize,
    /// Seconds a finished job's result is kept (then: 410 Gone).
    #[arg(long, default_value_t = 3600)]
    keep_results_s: u64,
    /// Seconds an upload may take to arrive (then: 408).
    #[arg(long, default_value_t = 60)]
    upload_timeout_s: u64,
    /// A web origin (scheme://host[:port]) whose pages may post jobs, besides the server's
    /// own. Repeatable.
    #[arg(long)]
    allow_origin: Vec<String>,
    /// A host name this server answers to, besides loopback names, IP literals and the
    /// --bind address (names are checked against DNS rebinding). Repeatable.
    #[arg(long)]
    allow_host: Vec<String>,
    /// Read model shards at most this many MiB/s (to demo or test the loading state).
    #[arg(long)]
    load_throttle_mibps: Option<f64>,
    /// Models wait to load while this file exists (tests and demos of the loading state).
    #[arg(long, hide = true)]
    hold_loading_while: Option<PathBuf>,
    /// Jobs one client (one IP address) may have queued or running at once (more get 429);
    /// 0: half the queue.
    #[arg(long, default_value_t = 0)]
    jobs_per_client: usize,
    /// Behind a trusted reverse proxy: take the client's address (for --jobs-per-client) from
    /// the last X-Forwarded-For entry, which the proxy appends. Never set it without such a
    /// proxy: clients could then claim any address.
    #[arg(long)]
    client_from_forwarded_for: bool,
    /// Connections served at once (further ones wait); lowered to fit the descriptor limit.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// Seconds a client has to send a request's head (then the connection is closed).
    #[arg(long, default_value_t = 10)]
    header_timeout_s: u64,
    /// Seconds an idle keep-alive connection is kept open.
    #[arg(long, default_value_t = 5)]
    idle_timeout_s: u64,
    /// Seconds a response may wait for a client that stopped reading (then it is dropped).
    #[arg(long, default_value_t = 30)]
    send_timeout_s: u64,
    /// Seconds open connections and the running job get after SIGTERM/SIGINT; then the
    /// server exits.
    #[arg(long, default_value_t = 10)]
    shutdown_grace_s: u64,
    /// A failed model is reloaded at most once in this many seconds (POST /api/models/retry;
    /// sooner gets 429 with Retry-After).
    #[arg(long, default_value_t = 10)]
    retry_interval_s: u64,
}

#[derive(clap::Args, Debug)]
struct ConvertArgs {
    /// The bundled checkpoint ({model, vae, conditioner}); read without running pickle code.
    checkpoint: PathBuf,
    /// The checkpoint's config.yaml.
    #[arg(long)]
    config: PathBuf,
    /// Output folder (gets conditioner/, denoiser/ and vae/).
    #[arg(short, long)]
    output: PathBuf,
    /// Target shard size in MiB (16-64).
    #[arg(long, default_value_t = 32)]
    shard_size: u64,
    /// f16, or quantize the attention and MLP projection weights: q8 (int8) or q4 (int4).
    #[arg(long, default_value = "f16")]
    quant: Precision,
    /// A VAE shipped on its own to use instead of the bundle's (e.g. the turbo VAE of
    /// hunyuan3d-vae-v2-0-turbo/, which the official enable_flashvdm() swaps in): its
    /// checkpoint. Needs --vae-config.
    #[arg(long, requires = "vae_config")]
    vae: Option<PathBuf>,
    /// That VAE's config.yaml.
    #[arg(long, requires = "vae")]
    vae_config: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct QuantizeArgs {
    /// An f16 shard set, or a folder written by `orfeas convert` (conditioner/, denoiser/,
    /// vae/).
    input: PathBuf,
    /// The output folder (the same layout as the input).
    output: PathBuf,
    /// q8 (int8) or q4 (int4).
    #[arg(long)]
    quant: Precision,
    /// Target shard size in MiB (16-64).
    #[arg(long, default_value_t = 32)]
    shard_size: u64,
}

#[derive(clap::Args, Debug)]
struct SynthesizeArgs {
    /// The official variant whose layout to write.
    #[arg(long, value_enum)]
    variant: crate::synthetic::Variant,
    /// The same layout at small depth and width (image sizes stay real).
    #[arg(long)]
    reduced: bool,
    /// A torch zip checkpoint (model.fp16.ckpt) or the safetensors repack.
    #[arg(long, value_enum, default_value_t = crate::synthetic::Format::Ckpt)]
    format: crate::synthetic::Format,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write only config.yaml.
    #[arg(long)]
    config_only: bool,
    /// Also convert the checkpoint into shard sets at this precision (f16, q8 or q4) in
    /// OUTPUT/sets (conditioner/, denoiser/, vae/), as `orfeas convert --quant` does: the
    /// benchmarks' full-size quantized sets in one command.
    #[arg(long, conflicts_with = "config_only")]
    sets: Option<Precision>,
    /// Output folder (gets config.yaml and the checkpoint).
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(clap::Args, Debug)]
struct ConvertIsnetArgs {
    /// The package's dist/ folder (resources.json and the sha256-named chunks).
    dist: PathBuf,
    /// Output folder for the shard set.
    #[arg(short, long)]
    output: PathBuf,
    /// f16, or q8: the convolutions in int8 (half the download).
    #[arg(long, default_value = "f16")]
    quant: Precision,
}

#[derive(clap::Args, Debug)]
struct RemoveBgArgs {
    /// PNG, JPEG or WebP.
    image: PathBuf,
    /// The cut-out, a .png.
    #[arg(short, long)]
    output: PathBuf,
    /// The converted ISNet shard set (default: $ORFEAS_ISNET or
    /// ~/.cache/orfeas/models/isnet-medium, where the set-up puts it).
    #[arg(long)]
    isnet: Option<PathBuf>,
    /// Run the model even when the image already has transparency.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(clap::Args, Debug)]
struct GenerateArgs {
    /// PNG, JPEG or WebP; an RGBA cut-out keeps its alpha as the object's outline. The front
    /// view (or give it as `--view front=IMAGE`).
    #[arg(required_unless_present = "views")]
    image: Option<PathBuf>,
    /// A view of the object for a multi-view (2mv) model: `front=IMAGE`, `left=IMAGE`,
    /// `back=IMAGE`, `right=IMAGE` (repeat the flag; any set with the front). Each is cut out
    /// as the front is.
    #[arg(long = "view", value_name = "NAME=IMAGE", value_parser = parse_view)]
    views: Vec<(orfeas_engine::pipeline::View, PathBuf)>,
    /// A folder written by `orfeas convert`.
    #[arg(long)]
    model: PathBuf,
    /// The mesh file: .glb, .obj, .stl or .ply.
    #[arg(short, long)]
    output: PathBuf,
    /// Sampler steps (default: the model's own, 5 for turbo checkpoints, else 30).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale (the guidance input for fast/turbo models).
    #[arg(long, default_value_t = pipeline::DEFAULT_GUIDANCE)]
    guidance: f32,
    /// Octree resolution: the field is sampled on (R + 1)³ points.
    #[arg(long, default_value_t = pipeline::DEFAULT_OCTREE_RESOLUTION)]
    octree_resolution: usize,
    #[arg(long, default_value_t = pipeline::DEFAULT_SEED)]
    seed: u64,
    /// Field points per decoder call.
    #[arg(long, default_value_t = pipeline::DEFAULT_CHUNK)]
    num_chunks: usize,
    /// Query every grid point instead of coarse-to-fine (same mesh, slower).
    #[arg(long, conflicts_with = "flashvdm")]
    dense: bool,
    /// Decode as the official enable_flashvdm() does: levels, each group of queries attending
    /// only to the latents it draws most (the turbo VAEs are trained for it).
    #[arg(long)]
    flashvdm: bool,
    /// Fine cells per coarse cell (coarse-to-fine); 0 picks R / 64, between 1 and 4.
    #[arg(long, default_value_t = 0)]
    coarse_stride: usize,
    /// Faces of the finished mesh (100 to 1 000 000: 2 000 is low-poly, 40 000 the reference's);
    /// the clean-up decimates to it, never opening a closed surface; 0 keeps every face.
    #[arg(long, visible_alias = "max-faces", default_value_t = pipeline::DEFAULT_FACES)]
    faces: usize,
    /// A grey mesh: no vertex colours from the photo (GLB, OBJ and PLY carry them otherwise).
    #[arg(long, visible_alias = "no-color")]
    no_colour: bool,
    /// ISNet weights for images without transparency (default: $ORFEAS_ISNET or
    /// ~/.cache/orfeas/models/isnet-medium; without them the whole picture is the object).
    #[arg(long)]
    isnet: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// A shard-set folder, or an http:// URL of one.
    from: String,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Pack(args) => args.run(),
        Command::Verify(args) => args.run(),
        Command::Serve(args) => args.run(),
        Command::Convert(args) => args.run(),
        Command::Quantize(args) => args.run(),
        Command::Synthesize(args) => args.run(),
        Command::ConvertIsnet(args) => args.run(),
        Command::RemoveBg(args) => args.run(),
        Command::Generate(args) => args.run(),
        Command::Load(args) => args.run(),
    }
}

/// `--queue`: a queue length (this machine alone) or a NATS URL (a fleet).
#[derive(Debug, Clone)]
enum QueueArg {
    Size(usize),
    Nats(String),
}

impl std::str::FromStr for QueueArg {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        if let Ok(size) = text.parse() {
            return Ok(QueueArg::Size(size));
        }
        let schemes = ["nats://", "tls://", "ws://", "wss://"];
        if schemes.iter().any(|s| text.starts_with(s)) {
            return Ok(QueueArg::Nats(text.to_string()));
        }
        Err(format!(
            "{text:?} is neither a queue length nor a NATS URL (nats://HOST:PORT)"
        ))
    }
}

/// A fleet name: what NATS allows in stream and bucket names.
fn fleet_name(text: &str) -> std::result::Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if text.is_empty() || text.len() > 32 || !text.chars().all(allowed) {
        return Err("1 to 32 letters, digits, '-' or '_'".into());
    }
    Ok(text.to_string())
}

/// This machine's name, for an instance's default name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "orfeas".into())
}

impl ServeArgs {
    /// The queue's length and, for a fleet, how to reach it.
    fn queue(&self) -> Result<(usize, Option<crate::server::jobs::nats::FleetOptions>)> {
        use crate::server::jobs::nats::{Credentials, FleetOptions};
        let (size, url) = match (&self.queue, self.queue_size) {
            (Some(QueueArg::Size(_)), Some(_)) => {
                bail!("--queue N and --queue-size N say the same: give one")
            }
            (Some(QueueArg::Size(size)), None) => (*size, None),
            (Some(QueueArg::Nats(url)), size) => (size.unwrap_or(8), Some(url.clone())),
            (None, size) => (size.unwrap_or(8), None),
        };
        let Some(url) = url else {
            return Ok((size, None));
        };
        let fleet = FleetOptions {
            url,
            name: self.fleet_name.clone(),
            instance: self
                .instance_name
                .clone()
                .unwrap_or_else(|| format!("{}:{}", host_name(), self.bind.port())),
            worker: !self.no_worker,
            ack_wait: std::time::Duration::from_secs(self.ack_wait_s.max(1)),
            max_attempts: self.max_attempts.max(1),
            credentials: Credentials {
                creds_file: self.nats_creds.clone(),
                user: self.nats_user.clone(),
                password: self.nats_password.clone(),
                token: self.nats_token.clone(),
                tls_ca: self.nats_tls_ca.clone(),
                tls_client: self.nats_tls_cert.clone().zip(self.nats_tls_key.clone()),
                require_tls: self.nats_require_tls,
            },
        };
        Ok((size, Some(fleet)))
    }

    fn run(self) -> Result<()> {
        let (queue, fleet) = self.queue()?;
        let compute = self.device.open()?;
        let options = crate::server::ServeOptions {
            bind: self.bind,
            models: self.models,
            quant: self.quant,
            web: self.web,
            device: compute.device,
            dtype: compute.dtype,
            capacity: compute.capacity,
            limits: crate::server::RequestLimits {
                max_upload_bytes: self.max_upload_mb << 20,
                max_steps: self.max_steps.max(1),
                max_octree: self.max_octree.max(16),
                body_timeout: std::time::Duration::from_secs(self.upload_timeout_s.max(1)),
                client_from_forwarded_for: self.client_from_forwarded_for,
            },
            jobs: crate::server::jobs::JobLimits {
                queue,
                retain: self.keep_jobs,
                retain_for: std::time::Duration::from_secs(self.keep_results_s),
                timeout: (self.job_timeout > 0)
                    .then(|| std::time::Duration::from_secs(self.job_timeout)),
                per_client: match self.jobs_per_client {
                    0 => queue.div_ceil(2).max(1),
                    n => n,
                },
            },
            access: crate::server::guard::Access {
                hosts: self
                    .allow_host
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                origins: self.allow_origin,
            },
            load_throttle: self
                .load_throttle_mibps
                .map(|m| (m * (1 << 20) as f64) as u64),
            hold_loading_while: self.hold_loading_while,
            connections: crate::server::connections::ConnectionLimits {
                max_connections: self.max_connections.max(1),
                header_timeout: std::time::Duration::from_secs(self.header_timeout_s.max(1)),
                idle_timeout: std::time::Duration::from_secs(self.idle_timeout_s.max(1)),
                send_timeout: std::time::Duration::from_secs(self.send_timeout_s.max(1)),
                shutdown_grace: std::time::Duration::from_secs(self.shutdown_grace_s),
            },
            retry_interval: std::time::Duration::from_secs(self.retry_interval_s),
            fleet,
            hold_jobs_while: self.hold_jobs_while,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let served = runtime.block_on(crate::server::serve(options));
        // A decode still running on the blocking pool must not hold the exit past the grace
        // period (dropping a runtime waits for its blocking tasks without limit).
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        served
    }
}

impl PackArgs {
    fn run(self) -> Result<()> {
        let shard_size = self.shard_size << 20;
        if !(MIN_SHARD_SIZE..=MAX_SHARD_SIZE).contains(&shard_size) {
            bail!("--shard-size must be between 16 and 64 (MiB)");
        }
        let config = match self.config {
            Some(path) => serde_json::from_slice(
                &std::fs::read(&path).with_context(|| path.display().to_string())?,
            )
            .with_context(|| format!("{}: not JSON", path.display()))?,
            None => serde_json::Value::Null,
        };
        let options = PackOptions {
            shard_size,
            model_id: self.model_id,
            version: self.model_version,
            config,
            ..Default::default()
        };
        let bar = bytes_bar(0, "pack");
        let index = pack::pack(&self.inputs, &self.output, &options, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })?;
        bar.finish_and_clear();
        println!(
            "packed {} tensors into {} shards ({} bytes) in {}",
            index.tensor_count(),
            index.shards.len(),
            index.total_bytes(),
            self.output.display()
        );
        Ok(())
    }
}

impl ConvertArgs {
    fn run(self) -> Result<()> {
        let shard_size = self.shard_size << 20;
        if !(MIN_SHARD_SIZE..=MAX_SHARD_SIZE).contains(&shard_size) {
            bail!("--shard-size must be between 16 and 64 (MiB)");
        }
        let bar = bytes_bar(0, "convert");
        let vae =
            self.vae
                .as_deref()
                .zip(self.vae_config.as_deref())
                .map(|(checkpoint, config_yaml)| crate::convert::SeparateVae {
                    checkpoint,
                    config_yaml,
                });
        let converted = crate::convert::convert_with_vae(
            &self.checkpoint,
            &self.config,
            vae,
            &self.output,
            shard_size,
            self.quant,
            |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            },
        );
        bar.finish_and_clear();
        let converted = converted?;
        println!(
            "Hunyuan3D-{} ({}) → {}",
            converted.variant.name,
            converted.variant.architecture,
            self.output.display()
        );
        for (component, tensors, bytes) in &converted.sets {
            println!("  {component}: {tensors} tensors, {bytes} bytes");
        }
        if !converted.skipped.is_empty() {
            println!(
                "  skipped {} tensors that image-to-3D does not use (the VAE's point-cloud \
                     encoder): {}",
                converted.skipped.len(),
                crate::convert::summarize(&converted.skipped)
            );
        }
        Ok(())
    }
}

impl QuantizeArgs {
    fn run(self) -> Result<()> {
        let shard_size = self.shard_size << 20;
        if !(MIN_SHARD_SIZE..=MAX_SHARD_SIZE).contains(&shard_size) {
            bail!("--shard-size must be between 16 and 64 (MiB)");
        }
        if self.quant == Precision::F16 {
            bail!("--quant takes q8 or q4 (an f16 set is what `convert` and `pack` write)");
        }
        let parts = orfeas_engine::pipeline::COMPONENTS;
        let components: Vec<&str> = if !self.input.join(INDEX_FILE).is_file()
            && parts
                .iter()
                .all(|p| self.input.join(p).join(INDEX_FILE).is_file())
        {
            parts.to_vec()
        } else {
            vec![""]
        };
        // Everything is read and checked before anything is written.
        let mut indexes = Vec::new();
        for part in &components {
            let path = self.input.join(part).join(INDEX_FILE);
            let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
            let index = orfeas_engine::weights::ShardIndex::from_json(&bytes)
                .with_context(|| path.display().to_string())?;
            if index.precision() != Precision::F16 {
                bail!(
                    "{} is already {}: quantize from the f16 set",
                    self.input.join(part).display(),
                    index.precision()
                );
            }
            indexes.push(index);
        }
        let total: u64 = indexes.iter().map(|i| i.metadata.total_size).sum();
        let bar = bytes_bar(total, "quantize");
        let mut before = 0u64;
        let mut written = Vec::new();
        let single = components == [""];
        let mut write = |root: &std::path::Path| -> Result<(), pack::PackError> {
            for (part, index) in components.iter().zip(&indexes) {
                let options = PackOptions {
                    shard_size,
                    model_id: index.model.id.clone(),
                    version: index.model.version.clone(),
                    config: index.config.clone(),
                    precision: self.quant,
                };
                let into = if part.is_empty() {
                    root.to_path_buf()
                } else {
                    root.join(part)
                };
                let out = pack::pack(&[self.input.join(part)], &into, &options, |done, _| {
                    bar.set_position(before + done)
                })?;
                before += out.metadata.total_size;
                written.push((part.to_string(), index.total_bytes(), out));
            }
            Ok(())
        };
        if single {
            // `pack` installs one set as a transaction of its own.
            write(&self.output)?;
        } else {
            // The three sets are swapped in together, as `convert` does.
            orfeas_engine::weights::install::install(&self.output, write)?;
        }
        bar.finish_and_clear();
        for (part, f16_bytes, index) in &written {
            let name = if part.is_empty() {
                "set"
            } else {
                part.as_str()
            };
            println!(
                "  {name}: {} of {} tensors {}, {} bytes (f16: {f16_bytes}, {:.3}×)",
                index.quantized.len(),
                index.tensor_count(),
                self.quant,
                index.total_bytes(),
                index.total_bytes() as f64 / *f16_bytes as f64
            );
        }
        println!("{} → {}", self.input.display(), self.output.display());
        Ok(())
    }
}

impl SynthesizeArgs {
    fn run(self) -> Result<()> {
        let Self {
            variant, reduced, ..
        } = self;
        let output = &self.output;
        if self.config_only {
            std::fs::create_dir_all(output)?;
            std::fs::write(output.join("config.yaml"), variant.config_yaml(reduced))?;
            return Ok(());
        }
        let bar = bytes_bar(0, variant.name());
        let (path, entries) = crate::synthetic::write(
            variant,
            reduced,
            self.format,
            output,
            self.seed,
            |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            },
        )?;
        bar.finish_and_clear();
        let (all, used) = crate::synthetic::sizes(&entries);
        println!(
            "Hunyuan3D-{} layout ({}{}): {} ({} tensors, {all} bytes of f16; {used} used by \
                 image-to-3D) and {}",
            variant.name(),
            variant.source(),
            if reduced { ", reduced" } else { "" },
            path.display(),
            entries.len(),
            output.join("config.yaml").display()
        );
        if let Some(precision) = self.sets {
            ConvertArgs {
                checkpoint: path,
                config: output.join("config.yaml"),
                output: output.join("sets"),
                shard_size: 32,
                quant: precision,
                vae: None,
                vae_config: None,
            }
            .run()?;
        }
        Ok(())
    }
}

impl ConvertIsnetArgs {
    fn run(self) -> Result<()> {
        let Self {
            dist,
            output,
            quant,
        } = self;

        let bar = bytes_bar(0, "isnet");
        let converted = crate::isnet::convert(&dist, &output, quant, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        });
        bar.finish_and_clear();
        if converted? {
            println!(
                "converted ISNet ({}) into {} ({quant})",
                crate::isnet::NPM_PACKAGE,
                output.display()
            );
        } else {
            println!("{}: already converted and verified", output.display());
        }
        Ok(())
    }
}

impl RemoveBgArgs {
    fn run(self) -> Result<()> {
        let compute = self.device.open()?;
        crate::remove_bg::run(
            &self.image,
            &self.output,
            &self
                .isnet
                .unwrap_or_else(crate::remove_bg::default_isnet_dir),
            self.force,
            &compute.device,
            compute.dtype,
        )
    }
}

/// `left=photo.png` → the view and the file.
fn parse_view(text: &str) -> Result<(orfeas_engine::pipeline::View, PathBuf), String> {
    use orfeas_engine::pipeline::View;
    let (name, path) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=IMAGE (front, left, back or right)"))?;
    let view = View::parse(name)
        .ok_or_else(|| format!("{name:?} is not a view (front, left, back or right)"))?;
    if path.is_empty() {
        return Err(format!("{name}= names no image"));
    }
    Ok((view, PathBuf::from(path)))
}

impl GenerateArgs {
    fn run(self) -> Result<()> {
        use orfeas_engine::pipeline::View;
        let mut views = self.views;
        // The front: the positional image, or `--view front=`; never both, never neither.
        let fronts = views
            .iter()
            .filter(|(view, _)| *view == View::Front)
            .count();
        let image = match (self.image, fronts) {
            (Some(image), 0) => image,
            (None, 1) => {
                let at = views
                    .iter()
                    .position(|(view, _)| *view == View::Front)
                    .unwrap_or(0);
                views.remove(at).1
            }
            (Some(_), _) => {
                anyhow::bail!("the front view is given twice (IMAGE and --view front=)")
            }
            (None, _) => anyhow::bail!("no front view: give IMAGE or --view front=IMAGE once"),
        };
        crate::generate::run(crate::generate::GenerateArgs {
            compute: self.device.open()?,
            image,
            views,
            model: self.model,
            output: self.output,
            options: orfeas_engine::pipeline::GenerateOptions {
                steps: self.steps,
                guidance: self.guidance,
                resolution: self.octree_resolution,
                seed: self.seed,
                chunk: self.num_chunks.max(1),
                dense: self.dense,
                flashvdm: self.flashvdm,
                coarse_stride: self.coarse_stride,
                faces: self.faces,
                colour: !self.no_colour,
            },
            isnet: self
                .isnet
                .unwrap_or_else(crate::remove_bg::default_isnet_dir),
        })
    }
}

impl VerifyArgs {
    fn run(self) -> Result<()> {
        let Self { dir } = self;

        // A converted shape model is three shard sets: verify each.
        let parts = orfeas_engine::pipeline::COMPONENTS;
        let sets: Vec<(String, PathBuf)> = if !dir.join(INDEX_FILE).is_file()
            && parts.iter().all(|p| dir.join(p).join(INDEX_FILE).is_file())
        {
            parts
                .iter()
                .map(|p| (format!("{p}/"), dir.join(p)))
                .collect()
        } else {
            vec![(String::new(), dir.clone())]
        };
        let mut problems = Vec::new();
        for (prefix, set) in &sets {
            problems.extend(
                pack::verify_dir(set)?
                    .into_iter()
                    .map(|p| format!("{prefix}{p}")),
            );
        }
        if problems.is_empty() {
            println!("{}: all shards verify", dir.display());
            Ok(())
        } else {
            for p in &problems {
                eprintln!("{p}");
            }
            bail!("{} shard(s) failed verification", problems.len())
        }
    }
}

impl LoadArgs {
    fn run(self) -> Result<()> {
        let Self { from, device } = self;

        let compute = device.open()?;
        let (device, dtype) = (compute.device, compute.dtype);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            if from.starts_with("http://") || from.starts_with("https://") {
                load(&HttpSource::new(from), &device, dtype).await
            } else {
                load(&DirSource::new(from), &device, dtype).await
            }
        })
    }
}

async fn load<S: ShardSource>(
    source: &S,
    device: &burn::tensor::Device,
    dtype: DType,
) -> Result<()> {
    let bar = bytes_bar(0, "load");
    let started = std::time::Instant::now();
    let result = load_all(source, device, dtype, |p| show_load(&bar, p)).await;
    match result {
        Ok((index, weights)) => {
            bar.finish();
            let secs = started.elapsed().as_secs_f64();
            println!(
                "loaded {} tensors of {} ({} bytes) in {secs:.2} s, {:.1} MiB/s",
                weights.len(),
                index.model.id,
                index.total_bytes(),
                index.total_bytes() as f64 / secs.max(1e-9) / (1 << 20) as f64
            );
            Ok(())
        }
        Err(e) => {
            bar.abandon();
            Err(e.into())
        }
    }
}
