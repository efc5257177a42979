//! `orfeas convert-isnet`: the ISNet background-removal weights from the npm package
//! `@imgly/background-removal-data` (the package is AGPL, the model MIT; neither is committed)
//! → an fp16 shard set named after our module tree.
//!
//! The package ships `isnet_medium.onnx` as sha256-named 4 MiB chunks listed in
//! `dist/resources.json`; each chunk is checked against its name, the reassembled model against
//! the pinned sha256, then the ONNX protobuf is decoded with prost (only the fields we read are
//! declared) and every `Conv` node's weight and bias initializers are renamed after the node
//! (`/stage1/rebnconv7/conv_s1/Conv` → `stage1.rebnconv7.conv_s1.{weight,bias}`).

use std::path::Path;

use anyhow::{Context, Result, bail};
use orfeas_engine::weights::Precision;
use orfeas_engine::weights::pack::{self, PackOptions, PackTensor};
use prost::Message;
use safetensors::Dtype;
use sha2::{Digest, Sha256};

/// The package version whose model the fixtures were made with.
pub const NPM_PACKAGE: &str = "@imgly/background-removal-data@1.4.5";
/// sha256 of the reassembled `isnet_medium.onnx` of that version.
pub const MODEL_SHA256: &str = "b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb";
const RESOURCE: &str = "/models/medium";
pub const MODEL_ID: &str = "isnet-medium";

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(float, repeated, tag = "4")]
    float_data: Vec<f32>,
    #[prost(int32, repeated, tag = "5")]
    int32_data: Vec<i32>,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
}

const ONNX_FLOAT: i32 = 1;
const ONNX_FLOAT16: i32 = 10;

/// Reassemble the ONNX model from the package's `dist` folder, checking every hash.
pub fn reassemble(dist: &Path) -> Result<Vec<u8>> {
    let resources = dist.join("resources.json");
    let text = std::fs::read_to_string(&resources).with_context(|| {
        format!(
            "{}: not the dist folder of {NPM_PACKAGE} (run the set-up)",
            dist.display()
        )
    })?;
    let index: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not JSON", resources.display()))?;
    let entry = &index[RESOURCE];
    let chunks = entry["chunks"]
        .as_array()
        .with_context(|| format!("{}: no {RESOURCE} entry", resources.display()))?;
    let mut model = Vec::with_capacity(entry["size"].as_u64().unwrap_or(0) as usize);
    for chunk in chunks {
        let hash = chunk["hash"].as_str().context("a chunk without a hash")?;
        let bytes = std::fs::read(dist.join(hash))
            .with_context(|| format!("chunk {hash} of {RESOURCE} is missing"))?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != hash {
            bail!("chunk {hash} is corrupt (its sha256 is {actual})");
        }
        model.extend_from_slice(&bytes);
    }
    let actual = hex::encode(Sha256::digest(&model));
    if actual != MODEL_SHA256 {
        bail!(
            "the reassembled model's sha256 is {actual}, expected {MODEL_SHA256} ({NPM_PACKAGE})"
        );
    }
    Ok(model)
}

/// The ONNX node name's module path: `/stage1/rebnconv7/conv_s1/Conv` → `stage1.rebnconv7.conv_s1`.
fn module_path(node: &str) -> Option<String> {
    let path = node.strip_prefix('/')?.strip_suffix("/Conv")?;
    Some(path.replace('/', "."))
}

/// The Conv weights of an ONNX model under our names, as fp16 tensors to pack.
pub fn conv_tensors(onnx: &[u8]) -> Result<Vec<PackTensor>> {
    let model = ModelProto::decode(onnx).context("not an ONNX model (protobuf decoding failed)")?;
    let graph = model.graph.context("the ONNX model has no graph")?;
    let mut initializers: std::collections::HashMap<String, TensorProto> = graph
        .initializer
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let mut tensors = Vec::new();
    for node in graph.node.iter().filter(|n| n.op_type == "Conv") {
        let path = module_path(&node.name)
            .with_context(|| format!("Conv node {:?} has no module path", node.name))?;
        for (input, suffix) in node.input.iter().skip(1).zip(["weight", "bias"]) {
            let init = initializers.remove(input).with_context(|| {
                format!(
                    "Conv node {} reads {input}, which is not an initializer",
                    node.name
                )
            })?;
            let (dtype, bytes) = match init.data_type {
                ONNX_FLOAT16 if !init.raw_data.is_empty() => (Dtype::F16, init.raw_data),
                ONNX_FLOAT16 => (
                    Dtype::F16,
                    init.int32_data
                        .iter()
                        .flat_map(|&v| (v as u16).to_le_bytes())
                        .collect(),
                ),
                ONNX_FLOAT if !init.raw_data.is_empty() => (Dtype::F32, init.raw_data),
                ONNX_FLOAT => (
                    Dtype::F32,
                    init.float_data
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                ),
                other => bail!("initializer {input} has ONNX data type {other}, not a float"),
            };
            let shape = init.dims.iter().map(|&d| d as usize).collect();
            tensors.push(PackTensor {
                name: format!("{path}.{suffix}"),
                dtype,
                shape,
                origin: format!("isnet_medium.onnx node {}", node.name),
                read: Box::new(move || Ok(bytes.clone())),
            });
        }
    }
    if tensors.is_empty() {
        bail!("the ONNX model has no Conv nodes");
    }
    Ok(tensors)
}

/// Convert unless `out` already holds a verified set of this model at `precision`
/// (idempotent): f16, or q8 (its convolutions in int8, see `weights::quant::quantizable`).
/// Returns whether it converted.
pub fn convert(
    dist: &Path,
    out: &Path,
    precision: Precision,
    on_bytes: impl FnMut(u64, u64),
) -> Result<bool> {
    if precision == Precision::Q4 {
        bail!(
            "ISNet is converted at f16 or q8 (q4 is for the shape model's projections; a \
             convolution network's masks need more than 4 bits)"
        );
    }
    if let Ok(text) = std::fs::read(out.join(orfeas_engine::weights::INDEX_FILE))
        && let Ok(index) = orfeas_engine::weights::ShardIndex::from_json(&text)
        && index.model.id == MODEL_ID
        && index.model.version == MODEL_SHA256[..12]
        && index.precision() == precision
        && pack::verify_dir(out).is_ok_and(|problems| problems.is_empty())
    {
        return Ok(false);
    }
    let onnx = reassemble(dist)?;
    let tensors = conv_tensors(&onnx)?;
    pack::pack_tensors(
        tensors,
        out,
        &PackOptions {
            shard_size: 32 << 20,
            model_id: MODEL_ID.into(),
            version: MODEL_SHA256[..12].into(),
            config: serde_json::json!({
                "architecture": "ISNetDIS",
                "source": NPM_PACKAGE,
                "license": "MIT (DIS/ISNet model); the npm package itself is AGPL",
                "input_size": 1024,
            }),
            precision,
        },
        on_bytes,
    )?;
    Ok(true)
}
