//! Device tensors built from raw shard bytes, and the set of them that makes a model.

use std::collections::{BTreeMap, BTreeSet};

use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::Dtype;

use super::dtype::{append_f16, to_f32};
use super::quant::{QuantInfo, check_scales, for_compute, transposed_for_cpu};

/// A weight on the device.
#[derive(Debug, Clone)]
pub enum DeviceTensor {
    /// A float weight, kept flat (rank 1) so one map holds every rank; reshaping to the
    /// module's rank when it is applied is free.
    Float(Tensor<1>),
    /// A quantized projection weight `[out, in]`, as burn's quantized tensor: it stays packed
    /// on the device and the matmul dequantizes it.
    Quantized(Tensor<2>),
    /// A quantized convolution weight, channels last `[out, kh, kw, in]` (its blocks run along
    /// the input channels): stays packed, and the convolution dequantizes it just before use.
    QuantizedConv(Tensor<4>),
}

#[derive(Debug, Clone)]
pub struct StoredTensor {
    pub tensor: DeviceTensor,
    pub shape: Vec<usize>,
    /// Bytes it takes on the device.
    pub device_bytes: usize,
    /// A quantized weight already laid out `[in, out]`, as a linear layer uses it (on burn's
    /// CPU backend: see [`transposed_for_cpu`]); `shape` is still the stored `[out, in]`.
    pub transposed: bool,
}

impl StoredTensor {
    /// Upload raw little-endian bytes of `dtype` as a tensor of `target` float dtype.
    ///
    /// F16 goes to the device as is when the target is F16; otherwise the host widens it to
    /// f32 first, so devices without `shader-f16` (e.g. SwiftShader) load the same bits.
    pub fn upload(
        dtype: Dtype,
        shape: &[usize],
        bytes: &[u8],
        device: &Device,
        target: DType,
    ) -> Result<Self, String> {
        let numel: usize = shape.iter().product();
        let data = match (dtype, target) {
            (Dtype::F16, DType::F16) => {
                TensorData::from_bytes_vec(bytes.to_vec(), [numel], DType::F16)
            }
            (Dtype::F32, DType::F32) => {
                TensorData::from_bytes_vec(bytes.to_vec(), [numel], DType::F32)
            }
            (_, DType::F32) => {
                let values = to_f32(dtype, bytes)
                    .ok_or_else(|| format!("dtype {dtype:?} is not a float"))?;
                TensorData::new(values, [numel])
            }
            (_, DType::F16) => {
                let mut half = Vec::with_capacity(numel * 2);
                append_f16(dtype, bytes, &mut half)
                    .ok_or_else(|| format!("dtype {dtype:?} is not a float"))?;
                TensorData::from_bytes_vec(half, [numel], DType::F16)
            }
            (_, other) => return Err(format!("model dtype {other:?} is not supported")),
        };
        let tensor = Tensor::<1>::from_data(data, (device, target));
        Ok(Self {
            tensor: DeviceTensor::Float(tensor),
            shape: shape.to_vec(),
            device_bytes: numel * target.size(),
            transposed: false,
        })
    }

    /// Upload a quantized tensor's stored bytes (a flat U8 tensor in the shard) as they are,
    /// but for the scales of a device computing in f32 (see [`for_compute`]): the index's
    /// entry says how they are laid out, and the length and scales are checked against it
    /// first.
    pub fn upload_quantized(
        info: &QuantInfo,
        dtype: Dtype,
        bytes: &[u8],
        device: &Device,
        compute: DType,
    ) -> Result<Self, String> {
        if dtype != Dtype::U8 {
            return Err(format!(
                "the index lists it as quantized, the shard stores it as {dtype:?} (not U8)"
            ));
        }
        let precision = info.check()?;
        let expected = info.byte_len(precision);
        if bytes.len() != expected {
            return Err(format!(
                "{precision} in blocks of {} needs {expected} bytes for {:?}, the shard holds {} \
                 (a wrong block size or a truncated scale table)",
                info.block,
                info.shape,
                bytes.len()
            ));
        }
        check_scales(bytes, info)?;
        if let [out, k, kh, kw] = info.shape[..] {
            let (bytes, scheme) = for_compute(info, precision, bytes, compute);
            let device_bytes = bytes.len();
            let data = TensorData::from_bytes_vec(bytes, [out, kh, kw, k], DType::QFloat(scheme));
            return Ok(Self {
                tensor: DeviceTensor::QuantizedConv(Tensor::<4>::from_data(data, device)),
                shape: info.shape.clone(),
                device_bytes,
                transposed: false,
            });
        }
        let dims: [usize; 2] = info
            .shape
            .clone()
            .try_into()
            .expect("checked: two dimensions");
        let transposed = crate::device::is_cpu(device);
        let (bytes, scheme, dims) = if transposed {
            transposed_for_cpu(info, precision, bytes)
        } else {
            let (bytes, scheme) = for_compute(info, precision, bytes, compute);
            (bytes, scheme, dims)
        };
        let device_bytes = bytes.len();
        let data = TensorData::from_bytes_vec(bytes, dims, DType::QFloat(scheme));
        Ok(Self {
            tensor: DeviceTensor::Quantized(Tensor::<2>::from_data(data, device)),
            shape: info.shape.clone(),
            device_bytes,
            transposed,
        })
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The tensor's data as the device holds it (a quantized tensor's packed bytes and scales).
    pub fn data(&self) -> TensorData {
        match &self.tensor {
            DeviceTensor::Float(tensor) => tensor.clone().into_data(),
            DeviceTensor::Quantized(tensor) => tensor.clone().into_data(),
            DeviceTensor::QuantizedConv(tensor) => tensor.clone().into_data(),
        }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(
            self.tensor,
            DeviceTensor::Quantized(_) | DeviceTensor::QuantizedConv(_)
        )
    }

    /// The tensor with its real shape, as rank `D`.
    pub fn reshaped<const D: usize>(&self) -> Result<Tensor<D>, String> {
        if self.shape.len() != D {
            return Err(format!("has rank {}, expected {D}", self.shape.len()));
        }
        let mut dims: [usize; D] = self.shape.clone().try_into().expect("rank checked");
        if self.transposed {
            dims.reverse();
        }
        Ok(match &self.tensor {
            DeviceTensor::Float(tensor) => tensor.clone().reshape(dims),
            DeviceTensor::Quantized(tensor) => same_rank(tensor.clone(), dims),
            // Channels last, as stored: the convolution that reads it knows (its dims differ
            // from the parameter's `[out, in, kh, kw]`, whose shape was checked by the caller).
            DeviceTensor::QuantizedConv(tensor) => {
                let tensor: Box<dyn std::any::Any> = Box::new(tensor.clone());
                *tensor
                    .downcast::<Tensor<D>>()
                    .map_err(|_| "a quantized convolution has rank 4".to_string())?
            }
        })
    }
}

/// A quantized `[out, in]` (or transposed `[in, out]`) weight as rank `D`: as it is when `D` is
/// 2, without a reshape to its own shape, which burn's CPU backend performs by dequantizing and
/// quantizing again (as every layout op on a block-quantized tensor there).
fn same_rank<const D: usize>(tensor: Tensor<2>, dims: [usize; D]) -> Tensor<D> {
    let tensor: Box<dyn std::any::Any> = Box::new(tensor);
    match tensor.downcast::<Tensor<D>>() {
        Ok(same) => *same,
        Err(other) => other
            .downcast::<Tensor<2>>()
            .expect("a quantized weight has rank 2")
            .reshape(dims),
    }
}

/// Every tensor of a model that has been loaded and verified so far, plus the shards they
/// came from (so a retry can skip them).
#[derive(Debug, Clone, Default)]
pub struct WeightSet {
    tensors: BTreeMap<String, StoredTensor>,
    verified_shards: BTreeSet<String>,
}

impl WeightSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&StoredTensor> {
        self.tensors.get(name)
    }

    pub fn take(&mut self, name: &str) -> Option<StoredTensor> {
        self.tensors.remove(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Bytes the set's tensors take on the device.
    pub fn device_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.device_bytes as u64).sum()
    }

    pub fn is_shard_verified(&self, file: &str) -> bool {
        self.verified_shards.contains(file)
    }

    pub fn verified_shards(&self) -> impl Iterator<Item = &str> {
        self.verified_shards.iter().map(String::as_str)
    }

    /// Add a shard's tensors; called only after the shard's size and hash checked out.
    pub fn commit_shard(&mut self, file: &str, tensors: Vec<(String, StoredTensor)>) {
        self.tensors.extend(tensors);
        self.verified_shards.insert(file.to_string());
    }

    pub fn into_tensors(self) -> BTreeMap<String, StoredTensor> {
        self.tensors
    }
}
