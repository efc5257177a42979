//! Building a shard set from safetensors files: tensors converted to F16 and spread over
//! shards of a target size, each hashed while written, then the index. One tensor at a time
//! is in memory, whatever the model's size.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::dtype::{append_f16, is_float, to_f32};
use super::index::{
    FORMAT, FORMAT_QUANTIZED, INDEX_FILE, IndexMetadata, ModelMeta, ShardIndex, ShardInfo,
};
use super::quant::{Precision, QuantInfo, channels_last, quantize, storage, stored_len};

pub const DEFAULT_SHARD_SIZE: u64 = 32 << 20;
pub const MIN_SHARD_SIZE: u64 = 16 << 20;
pub const MAX_SHARD_SIZE: u64 = 64 << 20;

#[derive(Debug, Error)]
#[error("{0}")]
pub struct PackError(pub String);

#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Target shard size in bytes; a tensor larger than this gets a shard of its own.
    pub shard_size: u64,
    pub model_id: String,
    pub version: String,
    pub config: serde_json::Value,
    /// Quantize the projection weights ([`quantizable`]) to this precision; f16 keeps every
    /// tensor a float.
    pub precision: Precision,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            shard_size: DEFAULT_SHARD_SIZE,
            model_id: "model".into(),
            version: "1".into(),
            config: serde_json::Value::Null,
            precision: Precision::F16,
        }
    }
}

/// One tensor to pack: its name, element type and shape, and how to read its bytes
/// (little-endian) when its shard is written.
pub struct PackTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Where it comes from, for error messages (an input file).
    pub origin: String,
    pub read: Box<dyn Fn() -> std::io::Result<Vec<u8>> + Send>,
}

impl PackTensor {
    /// How the tensor is stored at `precision`: quantized (with its index entry) or f16.
    fn storage(&self, precision: Precision) -> Option<QuantInfo> {
        storage(&self.name, &self.shape, precision)
    }

    /// Bytes the tensor takes in its shard.
    pub fn stored_len(&self, precision: Precision) -> u64 {
        stored_len(&self.name, &self.shape, precision)
    }
}

/// Safetensors files named by `inputs`: files as given, folders by their `*.safetensors`.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, PackError> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|e| PackError(format!("{}: {e}", input.display())))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(PackError(format!(
                    "{}: no .safetensors files",
                    input.display()
                )));
            }
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

/// Read a safetensors file's header (only the header) and list its tensors.
/// The tensors of one safetensors file, read lazily.
pub fn read_safetensors(path: &Path) -> Result<Vec<PackTensor>, PackError> {
    let err = |m: String| PackError(format!("{}: {m}", path.display()));
    let mut file = File::open(path).map_err(|e| err(e.to_string()))?;
    let file_len = file.metadata().map_err(|e| err(e.to_string()))?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| err("too short to be a safetensors file".into()))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > file_len.saturating_sub(8) {
        return Err(err(format!(
            "header length {header_len} is larger than the file ({file_len} bytes)"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| err(e.to_string()))?;
    let metadata: Metadata =
        serde_json::from_slice(&header).map_err(|e| err(format!("invalid header: {e}")))?;
    let data_start = 8 + header_len;
    if data_start + metadata.data_len() as u64 != file_len {
        return Err(err(format!(
            "header describes {} data bytes, the file holds {}",
            metadata.data_len(),
            file_len - data_start
        )));
    }
    metadata
        .offset_keys()
        .into_iter()
        .map(|name| {
            let info = metadata.info(&name).expect("listed name");
            if !is_float(info.dtype) {
                return Err(err(format!(
                    "tensor {name} has dtype {:?}, which cannot be stored as F16",
                    info.dtype
                )));
            }
            let start = data_start + info.data_offsets.0 as u64;
            let len = info.data_offsets.1 - info.data_offsets.0;
            let file = path.to_path_buf();
            Ok(PackTensor {
                dtype: info.dtype,
                shape: info.shape.clone(),
                origin: path.display().to_string(),
                read: Box::new(move || {
                    let mut reader = File::open(&file)?;
                    reader.seek(SeekFrom::Start(start))?;
                    let mut bytes = vec![0u8; len];
                    reader.read_exact(&mut bytes)?;
                    Ok(bytes)
                }),
                name,
            })
        })
        .collect()
}

/// Pack `inputs` (safetensors files, or folders of them) into a shard set in `out_dir`;
/// `on_bytes` is told how many tensor bytes of the total have been written.
pub fn pack(
    inputs: &[PathBuf],
    out_dir: &Path,
    options: &PackOptions,
    on_bytes: impl FnMut(u64, u64),
) -> Result<ShardIndex, PackError> {
    let files = expand_inputs(inputs)?;
    let mut tensors = Vec::new();
    for path in &files {
        tensors.extend(read_safetensors(path)?);
    }
    pack_tensors(tensors, out_dir, options, on_bytes)
}

/// Pack `tensors` from any source (a converter's checkpoint reader, say) into a shard set.
pub fn pack_tensors(
    mut tensors: Vec<PackTensor>,
    out_dir: &Path,
    options: &PackOptions,
    mut on_bytes: impl FnMut(u64, u64),
) -> Result<ShardIndex, PackError> {
    if options.shard_size == 0 {
        return Err(PackError("shard size must be positive".into()));
    }
    if let Some(tensor) = tensors.iter().find(|t| !is_float(t.dtype)) {
        return Err(PackError(format!(
            "{}: tensor {} has dtype {:?}, which cannot be stored as F16",
            tensor.origin, tensor.name, tensor.dtype
        )));
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = tensors.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(PackError(format!(
            "tensor {} appears in more than one input ({} and {})",
            pair[0].name, pair[0].origin, pair[1].origin
        )));
    }

    // Greedy split in name order: a shard closes when the next tensor would overflow it.
    let mut groups: Vec<Vec<&PackTensor>> = vec![Vec::new()];
    let mut current = 0u64;
    for tensor in &tensors {
        let size = tensor.stored_len(options.precision);
        let group = groups.last_mut().expect("never empty");
        if !group.is_empty() && current + size > options.shard_size {
            groups.push(vec![tensor]);
            current = size;
        } else {
            group.push(tensor);
            current += size;
        }
    }

    // Written beside `out_dir` and swapped in at the end: a failure, or a second writer,
    // never leaves an installed set that fails `verify`.
    super::install::install(out_dir, |staging| {
        write_set(&tensors, &groups, staging, options, &mut on_bytes)
    })
}

/// Write the shards of `groups` and then the index into `out_dir`.
fn write_set(
    tensors: &[PackTensor],
    groups: &[Vec<&PackTensor>],
    out_dir: &Path,
    options: &PackOptions,
    on_bytes: &mut impl FnMut(u64, u64),
) -> Result<ShardIndex, PackError> {
    let precision = options.precision;
    let total: u64 = tensors.iter().map(|t| t.stored_len(precision)).sum();
    let mut done = 0u64;
    let mut shards = Vec::new();
    let mut weight_map = std::collections::BTreeMap::new();
    let count = groups.len();
    for (i, group) in groups.iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        let info = write_shard(out_dir, &file, group, precision, |n| {
            done += n;
            on_bytes(done, total);
        })?;
        for tensor in group {
            weight_map.insert(tensor.name.clone(), file.clone());
        }
        shards.push(info);
    }

    let largest = tensors
        .iter()
        .max_by_key(|t| t.shape.iter().product::<usize>())
        .map(|t| (t.name.clone(), t.shape.iter().product::<usize>() as u64))
        .unwrap_or_default();
    let quantized: std::collections::BTreeMap<String, QuantInfo> = tensors
        .iter()
        .filter_map(|t| Some((t.name.clone(), t.storage(precision)?)))
        .collect();
    let quantized_size = quantized
        .values()
        .map(|q| q.byte_len(precision) as u64)
        .sum();
    let index = ShardIndex {
        metadata: IndexMetadata {
            total_size: total,
            quantized_size,
            format: if quantized.is_empty() {
                FORMAT.into()
            } else {
                FORMAT_QUANTIZED.into()
            },
            largest_tensor: Some(largest.0),
            largest_tensor_elements: Some(largest.1),
        },
        weight_map,
        model: ModelMeta {
            id: options.model_id.clone(),
            version: options.version.clone(),
        },
        config: options.config.clone(),
        shards,
        quantized,
    };
    // The index goes last and atomically: a set is never visible half-written.
    let tmp = out_dir.join(format!(".{INDEX_FILE}.partial"));
    std::fs::write(&tmp, index.to_json())
        .and_then(|_| std::fs::rename(&tmp, out_dir.join(INDEX_FILE)))
        .map_err(|e| PackError(format!("writing the index: {e}")))?;
    Ok(index)
}

fn write_shard(
    out_dir: &Path,
    file_name: &str,
    group: &[&PackTensor],
    precision: Precision,
    mut on_bytes: impl FnMut(u64),
) -> Result<ShardInfo, PackError> {
    let mut offset = 0usize;
    let mut infos = Vec::with_capacity(group.len());
    for tensor in group {
        let len = tensor.stored_len(precision) as usize;
        let (dtype, shape) = match tensor.storage(precision) {
            // A quantized tensor's bytes as one flat U8 tensor; the index says how to read them.
            Some(_) => (Dtype::U8, vec![len]),
            None => (Dtype::F16, tensor.shape.clone()),
        };
        infos.push((
            tensor.name.clone(),
            TensorInfo {
                dtype,
                shape,
                data_offsets: (offset, offset + len),
            },
        ));
        offset += len;
    }
    let metadata = Metadata::new(None, infos).map_err(|e| PackError(format!("{e:?}")))?;
    let mut header = serde_json::to_vec(&metadata).expect("metadata serialises");
    // Pad with spaces so tensor data starts 8-byte aligned, as safetensors writers do.
    header.resize(header.len().next_multiple_of(8), b' ');

    let tmp_path = out_dir.join(format!(".{file_name}.partial"));
    let out =
        File::create(&tmp_path).map_err(|e| PackError(format!("{}: {e}", tmp_path.display())))?;
    let mut writer = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, out),
        hasher: Sha256::new(),
        written: 0,
    };
    let write_err = |e: std::io::Error| PackError(format!("{}: {e}", tmp_path.display()));
    writer
        .write_all(&(header.len() as u64).to_le_bytes())
        .and_then(|_| writer.write_all(&header))
        .map_err(write_err)?;

    let mut converted = Vec::new();
    for tensor in group {
        let raw = (tensor.read)()
            .map_err(|e| PackError(format!("{}: reading {}: {e}", tensor.origin, tensor.name)))?;
        let expected = tensor.shape.iter().product::<usize>() * tensor.dtype.bitsize() / 8;
        if raw.len() != expected {
            return Err(PackError(format!(
                "{}: tensor {} holds {} bytes, its shape {:?} needs {expected}",
                tensor.origin,
                tensor.name,
                raw.len(),
                tensor.shape
            )));
        }
        converted.clear();
        if let Some(info) = tensor.storage(precision) {
            let values = to_f32(tensor.dtype, &raw).expect("float dtype");
            if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
                return Err(PackError(format!(
                    "tensor {} has a non-finite value at {bad}: it cannot be quantized",
                    tensor.name
                )));
            }
            let values = channels_last(&values, &info.shape);
            converted = quantize(&values, info.matrix(), precision, info.block);
            debug_assert_eq!(converted.len(), info.byte_len(precision));
            writer.write_all(&converted).map_err(write_err)?;
            on_bytes(converted.len() as u64);
            continue;
        }
        let overflowed = append_f16(tensor.dtype, &raw, &mut converted).expect("float dtype");
        if overflowed > 0 {
            return Err(PackError(format!(
                "tensor {} has {overflowed} values beyond the F16 range",
                tensor.name
            )));
        }
        writer.write_all(&converted).map_err(write_err)?;
        on_bytes(converted.len() as u64);
    }
    writer.inner.flush().map_err(write_err)?;
    let size = writer.written;
    let sha256 = hex::encode(writer.hasher.finalize());
    std::fs::rename(&tmp_path, out_dir.join(file_name)).map_err(write_err)?;
    Ok(ShardInfo {
        file: file_name.to_string(),
        size,
        sha256,
    })
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Re-hash every shard of a set on disk; `Ok` lists nothing when all verify.
pub fn verify_dir(dir: &Path) -> Result<Vec<String>, PackError> {
    let bytes = std::fs::read(dir.join(INDEX_FILE))
        .map_err(|e| PackError(format!("{}: {e}", dir.join(INDEX_FILE).display())))?;
    let index = ShardIndex::from_json(&bytes).map_err(|e| PackError(e.to_string()))?;
    let mut problems = Vec::new();
    for shard in &index.shards {
        let path = dir.join(&shard.file);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("{}: {e}", shard.file));
                continue;
            }
        };
        let mut hasher = Sha256::new();
        let size = std::io::copy(&mut file, &mut hasher)
            .map_err(|e| PackError(format!("{}: {e}", path.display())))?;
        let actual = hex::encode(hasher.finalize());
        if size != shard.size {
            problems.push(format!(
                "{}: {size} bytes, expected {}",
                shard.file, shard.size
            ));
        } else if actual != shard.sha256 {
            problems.push(format!("{}: sha256 mismatch", shard.file));
        }
    }
    Ok(problems)
}
