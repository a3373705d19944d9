//! The weights of a BERT model exported to ONNX, as Hugging Face's exporters write it
//! (node names carry the module path: `/bert/encoder/layer.0/attention/self/query/MatMul`),
//! read into the tensor names of the PyTorch checkpoint (`bert.encoder.layer.0.attention.
//! self.query.weight`) so that [`super::bert`] builds the same model from either file.
//!
//! Only the weights are read, not the graph's computation: the forward is verre's own.
//! What is understood:
//!
//! - float initializers under their checkpoint names (biases, LayerNorm);
//! - `MatMul` with a float initializer as its second input (`[in, out]`, transposed here);
//! - `MatMulNBits` (onnxruntime's 4-bit block quantization, `com.microsoft`): `[N, blocks,
//!   block_size / 2]` bytes, low nibble first, one float scale per block, zero point 8;
//! - `*_quantized` 8-bit tensors with a per-tensor `*_scale` and `*_zero_point`, as
//!   `DequantizeLinear` after a `Gather` reads the embeddings.
//!
//! Anything else that would be a weight (zero points for `MatMulNBits`, per-axis scales, 2-
//! or 8-bit blocks) is refused by name rather than read wrongly. The protobuf messages are
//! the subset of `onnx.proto` (ONNX IR) that this needs; unknown fields are skipped.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail, ensure};
use candle_core::{Device, Tensor};
use prost::Message;

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
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int64, tag = "3")]
    i: i64,
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
    /// Set when the data lives in a file beside the model; not supported.
    #[prost(int32, tag = "14")]
    data_location: i32,
}

const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const INT8: i32 = 3;

impl TensorProto {
    fn shape(&self) -> Result<Vec<usize>> {
        self.dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| anyhow!("{}: dimension {d}", self.name)))
            .collect()
    }

    fn len(&self) -> Result<usize> {
        Ok(self.shape()?.iter().product())
    }

    fn floats(&self) -> Result<Vec<f32>> {
        ensure!(
            self.data_type == FLOAT,
            "{}: element type {} where floats were expected",
            self.name,
            self.data_type
        );
        let n = self.len()?;
        let values: Vec<f32> = if self.raw_data.is_empty() {
            self.float_data.clone()
        } else {
            self.raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        ensure!(
            values.len() == n,
            "{}: {} values for shape {:?}",
            self.name,
            values.len(),
            self.dims
        );
        Ok(values)
    }

    /// Bytes of a UINT8 or INT8 tensor (INT8 as its two's-complement bytes).
    fn bytes(&self) -> Result<Vec<u8>> {
        ensure!(
            self.data_type == UINT8 || self.data_type == INT8,
            "{}: element type {} where bytes were expected",
            self.name,
            self.data_type
        );
        let n = self.len()?;
        let values: Vec<u8> = if self.raw_data.is_empty() {
            self.int32_data.iter().map(|&v| v as u8).collect()
        } else {
            self.raw_data.clone()
        };
        ensure!(
            values.len() == n,
            "{}: {} bytes for shape {:?}",
            self.name,
            values.len(),
            self.dims
        );
        Ok(values)
    }
}

/// The checkpoint name of the weight a node multiplies by: `/bert/encoder/layer.0/
/// attention/self/query/MatMul_Q4` is `bert.encoder.layer.0.attention.self.query.weight`.
fn weight_name(node: &str) -> Option<String> {
    let (module, _op) = node.trim_start_matches('/').rsplit_once('/')?;
    (!module.is_empty()).then(|| format!("{}.weight", module.replace('/', ".")))
}

/// `[n, k]` floats from 4-bit blocks: `packed` is `[n, blocks, block_size / 2]` bytes,
/// element `j` of a block in the low nibble of byte `j / 2` when `j` is even, the high
/// nibble when odd; each block has one scale and the zero point 8.
pub fn dequantize_4bit_blocks(
    packed: &[u8],
    scales: &[f32],
    n: usize,
    k: usize,
    block_size: usize,
) -> Result<Vec<f32>> {
    ensure!(
        block_size >= 2 && block_size.is_multiple_of(2),
        "block size {block_size}"
    );
    let blocks = k.div_ceil(block_size);
    let block_bytes = block_size / 2;
    ensure!(
        packed.len() == n * blocks * block_bytes,
        "{} bytes of 4-bit blocks for [{n}, {k}] in blocks of {block_size}",
        packed.len()
    );
    ensure!(
        scales.len() == n * blocks,
        "{} scales for [{n}, {k}] in blocks of {block_size}",
        scales.len()
    );
    let mut out = Vec::with_capacity(n * k);
    for row in 0..n {
        for col in 0..k {
            let (block, j) = (col / block_size, col % block_size);
            let byte = packed[(row * blocks + block) * block_bytes + j / 2];
            let q = if j % 2 == 0 { byte & 0x0f } else { byte >> 4 };
            out.push((f32::from(q) - 8.0) * scales[row * blocks + block]);
        }
    }
    Ok(out)
}

/// Every weight of the BERT model in the ONNX file at `path`, by checkpoint name, as f32.
pub fn load_bert_weights(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let model = ModelProto::decode(bytes.as_slice())
        .map_err(|e| anyhow!("{}: not an ONNX model: {e}", path.display()))?;
    let graph = model
        .graph
        .ok_or_else(|| anyhow!("{}: the ONNX model has no graph", path.display()))?;
    let context = |e: anyhow::Error| e.context(path.display().to_string());
    let mut init: HashMap<&str, &TensorProto> = HashMap::new();
    for t in &graph.initializer {
        if t.data_location != 0 {
            bail!(
                "{}: {} keeps its data in an external file, which is not supported",
                path.display(),
                t.name
            );
        }
        init.insert(t.name.as_str(), t);
    }
    let tensor = |values: Vec<f32>, shape: &[usize]| -> Result<Tensor> {
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    };
    let mut out = HashMap::new();

    for node in &graph.node {
        let attr = |name: &str| node.attribute.iter().find(|a| a.name == name).map(|a| a.i);
        match node.op_type.as_str() {
            "MatMulNBits" => {
                let name = weight_name(&node.name)
                    .ok_or_else(|| anyhow!("{}: node {:?}", path.display(), node.name))?;
                ensure!(
                    node.input.len() <= 3 || node.input[3..].iter().all(String::is_empty),
                    "{}: {} has zero points, group indices or a bias, which are not supported",
                    path.display(),
                    node.name
                );
                let bits = attr("bits").unwrap_or(4);
                ensure!(
                    bits == 4,
                    "{}: {} is quantized to {bits} bits; only 4 is supported",
                    path.display(),
                    node.name
                );
                let get = |i: usize| {
                    node.input
                        .get(i)
                        .and_then(|n| init.get(n.as_str()))
                        .copied()
                        .ok_or_else(|| {
                            anyhow!(
                                "{}: input {i} of {} is not an initializer",
                                path.display(),
                                node.name
                            )
                        })
                };
                let (packed, scales) = (get(1)?, get(2)?);
                let dim = |a: &str| -> Result<usize> {
                    attr(a)
                        .and_then(|v| usize::try_from(v).ok())
                        .ok_or_else(|| anyhow!("{}: {} has no {a}", path.display(), node.name))
                };
                let (k, n, block_size) = (dim("K")?, dim("N")?, dim("block_size")?);
                let w = dequantize_4bit_blocks(
                    &packed.bytes().map_err(context)?,
                    &scales.floats().map_err(context)?,
                    n,
                    k,
                    block_size,
                )
                .with_context(|| format!("{}: {}", path.display(), node.name))?;
                out.insert(name, tensor(w, &[n, k])?);
            }
            "MatMul" => {
                // A float weight as the second input, `[in, out]`; products of two
                // activations (attention) have no initializer there.
                let Some(w) = node.input.get(1).and_then(|n| init.get(n.as_str())) else {
                    continue;
                };
                let Some(name) = weight_name(&node.name) else {
                    continue;
                };
                let shape = w.shape().map_err(context)?;
                ensure!(
                    shape.len() == 2,
                    "{}: {} multiplies by a {}-d weight",
                    path.display(),
                    node.name,
                    shape.len()
                );
                let t = tensor(w.floats().map_err(context)?, &shape)?;
                out.insert(name, t.t()?.contiguous()?);
            }
            _ => {}
        }
    }

    for t in &graph.initializer {
        if let Some(base) = t.name.strip_suffix("_quantized") {
            let scale = init
                .get(format!("{base}_scale").as_str())
                .ok_or_else(|| anyhow!("{}: {} has no {base}_scale", path.display(), t.name))?;
            let zero = init.get(format!("{base}_zero_point").as_str());
            let scale = scale.floats().map_err(context)?;
            ensure!(
                scale.len() == 1,
                "{}: {base} has {} scales; only one per tensor is supported",
                path.display(),
                scale.len()
            );
            let zero = match zero {
                Some(z) => {
                    let z = z.bytes().map_err(context)?;
                    ensure!(
                        z.len() == 1,
                        "{}: {base} has {} zero points",
                        path.display(),
                        z.len()
                    );
                    z[0]
                }
                None => 0,
            };
            let signed = t.data_type == INT8;
            let values = t
                .bytes()
                .map_err(context)?
                .into_iter()
                .map(|q| {
                    let (q, z) = if signed {
                        (f32::from(q as i8), f32::from(zero as i8))
                    } else {
                        (f32::from(q), f32::from(zero))
                    };
                    (q - z) * scale[0]
                })
                .collect();
            out.insert(
                base.to_string(),
                tensor(values, &t.shape().map_err(context)?)?,
            );
        } else if t.data_type == FLOAT
            && !t.name.ends_with("_scale")
            && !t.name.ends_with("_scales")
            && !t.name.starts_with("onnx::")
            && !t.name.starts_with('/')
        {
            out.insert(
                t.name.clone(),
                tensor(t.floats().map_err(context)?, &t.shape()?)?,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_become_checkpoint_names() {
        assert_eq!(
            weight_name("/bert/encoder/layer.0/attention/self/query/MatMul_Q4").as_deref(),
            Some("bert.encoder.layer.0.attention.self.query.weight")
        );
        assert_eq!(
            weight_name("/classifier/MatMul").as_deref(),
            Some("classifier.weight")
        );
        assert_eq!(weight_name("MatMul"), None);
    }

    #[test]
    fn four_bit_blocks_unpack_low_nibble_first_around_eight() {
        // Two rows of six values in blocks of four: the second block is half-full.
        // Row 0: 8+1, 8-1, 8+7, 8-8 | 8+2, 8+0; row 1 all 8 (zero) but the first, 15.
        let packed = [
            0x79, 0x0f, 0x8a, 0x00, // row 0: (9, 7), (15, 0) | (10, 8), padding
            0x8f, 0x88, 0x88, 0x00, // row 1: (15, 8), (8, 8) | (8, 8), padding
        ];
        let scales = [0.5, 2.0, 1.0, 1.0];
        let w = dequantize_4bit_blocks(&packed, &scales, 2, 6, 4).unwrap();
        assert_eq!(w[..6], [0.5, -0.5, 3.5, -4.0, 4.0, 0.0]);
        assert_eq!(w[6..], [7.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        // Nine columns would need three blocks a row.
        assert!(dequantize_4bit_blocks(&packed, &scales, 2, 9, 4).is_err());
    }

    #[test]
    fn a_file_that_is_not_onnx_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, b"\xff\xff\xff not protobuf").unwrap();
        let err = load_bert_weights(&path).unwrap_err().to_string();
        assert!(err.contains("model.onnx"), "{err}");
    }
}
