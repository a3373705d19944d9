//! Reading what a model file says about itself — architecture, quantization, context length —
//! from headers only: the GGUF header through candle's reader, or `config.json` and the
//! safetensors JSON header. Also catches truncated files, whose headers promise more bytes
//! than the file holds.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{Context, bail};
use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};

use crate::entry::ModelFormat;
use crate::manifest::MANIFEST_FILE;

/// What a model's headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModelInfo {
    pub architecture: String,
    pub quantization: String,
    pub context_length: Option<u64>,
}

/// The GGUF magic, `GGUF` read as a little-endian u32.
const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// A directory is a safetensors model; a file must be GGUF (by extension or magic).
pub(crate) fn detect_format(path: &Path) -> anyhow::Result<ModelFormat> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if metadata.is_dir() {
        let has = |dir: &Path, ext: &str| {
            std::fs::read_dir(dir).is_ok_and(|items| {
                items
                    .flatten()
                    .any(|i| i.path().extension().is_some_and(|e| e == ext))
            })
        };
        if !has(path, "safetensors") && (has(path, "onnx") || has(&path.join("onnx"), "onnx")) {
            return Ok(ModelFormat::OnnxDir);
        }
        return Ok(ModelFormat::SafetensorsDir);
    }
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .with_context(|| format!("reading the first bytes of {}", path.display()))?;
    if &magic == GGUF_MAGIC {
        return Ok(ModelFormat::Gguf);
    }
    bail!(
        "{} is not a GGUF file (it starts with {:02x?}, not \"GGUF\"); verre loads .gguf files \
         and directories with .safetensors and config.json",
        path.display(),
        magic
    )
}

/// Reads the headers of the model at `path`.
pub(crate) fn inspect(path: &Path, format: ModelFormat) -> anyhow::Result<ModelInfo> {
    match format {
        ModelFormat::Gguf => inspect_gguf(path),
        ModelFormat::SafetensorsDir => inspect_safetensors_dir(path),
        ModelFormat::OnnxDir => inspect_onnx_dir(path),
    }
}

/// `config.json`'s model type and context; the quantization is what the ONNX file's name
/// says (`model_q4.onnx` → `onnx q4`), the file itself is read only when loaded.
fn inspect_onnx_dir(dir: &Path) -> anyhow::Result<ModelInfo> {
    let config_path = dir.join("config.json");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?,
    )
    .with_context(|| format!("parsing {}", config_path.display()))?;
    let Some(architecture) = config.get("model_type").and_then(|v| v.as_str()) else {
        bail!("{} has no \"model_type\"", config_path.display());
    };
    let mut onnx = Vec::new();
    for folder in [dir.to_path_buf(), dir.join("onnx")] {
        for item in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = item.path();
            if path.extension().is_some_and(|e| e == "onnx") {
                onnx.push(path);
            }
        }
    }
    onnx.sort();
    let Some(file) = onnx.first() else {
        bail!("{} holds no .onnx file", dir.display());
    };
    let stem = file.file_stem().unwrap_or_default().to_string_lossy();
    let quantization = match stem.strip_prefix("model_") {
        Some(q) => format!("onnx {q}"),
        None => "onnx".to_string(),
    };
    Ok(ModelInfo {
        architecture: architecture.to_string(),
        quantization,
        context_length: config
            .get("max_position_embeddings")
            .and_then(|v| v.as_u64()),
    })
}

fn inspect_gguf(path: &Path) -> anyhow::Result<ModelInfo> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let file_len = file
        .metadata()
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len();
    let mut reader = BufReader::new(file);
    // candle panics on some crafted headers (`general.alignment = 0` divides by zero).
    let content =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut reader)))
            .unwrap_or_else(|_| Err(candle_core::Error::Msg("invalid GGUF header".into())))
            .with_context(|| format!("reading the GGUF header of {}", path.display()))?;

    let needed = gguf_bytes_needed(&content)
        .with_context(|| format!("reading the GGUF header of {}", path.display()))?;
    if needed > file_len {
        bail!(
            "{} is truncated: its tensors need {needed} bytes, the file has {file_len}",
            path.display()
        );
    }

    let architecture = match content.metadata.get("general.architecture") {
        Some(Value::String(arch)) => arch.clone(),
        _ => bail!(
            "{}: the GGUF header has no general.architecture",
            path.display()
        ),
    };
    let quantization = content
        .metadata
        .get("general.file_type")
        .and_then(as_u64)
        .and_then(file_type_name)
        .map(str::to_string)
        .unwrap_or_else(|| majority_tensor_type(&content));
    let context_length = content
        .metadata
        .get(&format!("{architecture}.context_length"))
        .and_then(as_u64);
    Ok(ModelInfo {
        architecture,
        quantization,
        context_length,
    })
}

/// The file size the header implies: the data section's start plus the furthest tensor end.
fn gguf_bytes_needed(content: &Content) -> anyhow::Result<u64> {
    let mut data_end = 0u64;
    for (name, info) in &content.tensor_infos {
        let elements = info.shape.elem_count() as u64;
        let block = info.ggml_dtype.block_size() as u64;
        let bytes = (elements / block)
            .checked_mul(info.ggml_dtype.type_size() as u64)
            .and_then(|bytes| bytes.checked_add(info.offset))
            .with_context(|| format!("tensor {name}: size overflows"))?;
        data_end = data_end.max(bytes);
    }
    content
        .tensor_data_offset
        .checked_add(data_end)
        .context("the tensor data section's end overflows")
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::U8(v) => Some(u64::from(*v)),
        Value::U16(v) => Some(u64::from(*v)),
        Value::U32(v) => Some(u64::from(*v)),
        Value::U64(v) => Some(*v),
        Value::I8(v) => u64::try_from(*v).ok(),
        Value::I16(v) => u64::try_from(*v).ok(),
        Value::I32(v) => u64::try_from(*v).ok(),
        Value::I64(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

/// llama.cpp's `llama_ftype`: what `general.file_type` means.
fn file_type_name(file_type: u64) -> Option<&'static str> {
    Some(match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// The type of the tensors holding most weights, ignoring 1-D tensors (norms and biases
/// stay F32 in every quantization).
fn majority_tensor_type(content: &Content) -> String {
    let mut elements_by_type: HashMap<GgmlDType, u64> = HashMap::new();
    let matrices = content
        .tensor_infos
        .values()
        .filter(|info| info.shape.rank() > 1);
    for info in matrices {
        *elements_by_type.entry(info.ggml_dtype).or_default() += info.shape.elem_count() as u64;
    }
    elements_by_type
        .into_iter()
        .max_by_key(|&(dtype, elements)| (elements, dtype_name(dtype)))
        .map(|(dtype, _)| dtype_name(dtype).to_string())
        .unwrap_or_else(|| "?".to_string())
}

fn dtype_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// The most a safetensors JSON header may take: far above any real model's, far below memory.
const MAX_SAFETENSORS_HEADER: u64 = 100 << 20;

fn inspect_safetensors_dir(dir: &Path) -> anyhow::Result<ModelInfo> {
    let config_path = dir.join("config.json");
    let config_text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let config: serde_json::Value = serde_json::from_str(&config_text)
        .with_context(|| format!("parsing {}", config_path.display()))?;
    let Some(architecture) = config.get("model_type").and_then(|v| v.as_str()) else {
        bail!("{} has no \"model_type\"", config_path.display());
    };
    let context_length = ["max_position_embeddings", "n_positions", "max_seq_len"]
        .iter()
        .find_map(|key| config.get(key).and_then(|v| v.as_u64()));

    let mut weights = Vec::new();
    for item in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = item
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|ext| ext == "safetensors") {
            weights.push(path);
        }
    }
    if weights.is_empty() {
        bail!("{} holds no .safetensors file", dir.display());
    }
    let mut elements_by_dtype: HashMap<String, u64> = HashMap::new();
    for path in &weights {
        for (dtype, elements) in safetensors_dtypes(path)? {
            *elements_by_dtype.entry(dtype).or_default() += elements;
        }
    }
    let quantization = elements_by_dtype
        .into_iter()
        .max_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)))
        .map(|(dtype, _)| dtype)
        .unwrap_or_else(|| "?".to_string());
    Ok(ModelInfo {
        architecture: architecture.to_string(),
        quantization,
        context_length,
    })
}

/// Elements per dtype in one safetensors file, from its JSON header; errors if the header
/// promises more bytes than the file holds.
fn safetensors_dtypes(path: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let what = || format!("reading the safetensors header of {}", path.display());
    let file = File::open(path).with_context(what)?;
    let file_len = file.metadata().with_context(what)?.len();
    let mut reader = BufReader::new(file);
    let mut len_bytes = [0u8; 8];
    reader.read_exact(&mut len_bytes).with_context(what)?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_SAFETENSORS_HEADER || 8 + header_len > file_len {
        bail!(
            "{}: the header claims {header_len} bytes in a {file_len}-byte file",
            path.display()
        );
    }
    let mut header = vec![0u8; header_len as usize];
    reader.read_exact(&mut header).with_context(what)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).with_context(what)?;

    let mut dtypes = Vec::new();
    let mut data_end = 0u64;
    for (name, tensor) in header.iter().filter(|(name, _)| *name != "__metadata__") {
        let dtype = tensor.get("dtype").and_then(|v| v.as_str());
        let shape = tensor.get("shape").and_then(|v| v.as_array());
        let end = tensor
            .get("data_offsets")
            .and_then(|v| v.as_array())
            .and_then(|offsets| offsets.get(1))
            .and_then(|v| v.as_u64());
        let (Some(dtype), Some(shape), Some(end)) = (dtype, shape, end) else {
            bail!(
                "{}: tensor {name} lacks dtype, shape or data_offsets",
                path.display()
            );
        };
        let elements = shape
            .iter()
            .map(|d| d.as_u64().unwrap_or(0))
            .product::<u64>();
        dtypes.push((dtype.to_string(), elements));
        data_end = data_end.max(end);
    }
    let needed = 8 + header_len + data_end;
    if needed > file_len {
        bail!(
            "{} is truncated: its tensors need {needed} bytes, the file has {file_len}",
            path.display()
        );
    }
    Ok(dtypes)
}

/// Bytes on disk: the file's size, or the sum over a directory's files (without the manifest).
pub(crate) fn disk_size(path: &Path) -> anyhow::Result<u64> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !metadata.is_dir() {
        return Ok(metadata.len());
    }
    let mut total = 0;
    for item in std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
        let item = item.with_context(|| format!("listing {}", path.display()))?;
        if item.file_name() == MANIFEST_FILE {
            continue;
        }
        total += disk_size(&item.path())?;
    }
    Ok(total)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::quantized::{QTensor, gguf_file};
    use candle_core::{Device, Tensor};

    /// A small but complete GGUF: a llama header with `general.file_type` = Q4_1 (unless
    /// `file_type` is None) and context length 256, and two Q4_1 matrices and an F32 norm.
    pub(crate) fn tiny_gguf(file_type: Option<u32>) -> Vec<u8> {
        let device = Device::Cpu;
        let matrix = Tensor::zeros((4, 64), candle_core::DType::F32, &device).unwrap();
        let q = QTensor::quantize(&matrix, GgmlDType::Q4_1).unwrap();
        let q2 = QTensor::quantize(&matrix, GgmlDType::Q4_1).unwrap();
        let norm = QTensor::quantize(
            &Tensor::ones(64, candle_core::DType::F32, &device).unwrap(),
            GgmlDType::F32,
        )
        .unwrap();
        let arch = Value::String("llama".into());
        let ctx = Value::U32(256);
        let mut metadata = vec![
            ("general.architecture", &arch),
            ("llama.context_length", &ctx),
        ];
        let file_type = file_type.map(Value::U32);
        if let Some(file_type) = &file_type {
            metadata.push(("general.file_type", file_type));
        }
        let tensors = [
            ("blk.0.attn_q.weight", &q),
            ("blk.0.attn_k.weight", &q2),
            ("output_norm.weight", &norm),
        ];
        let mut bytes = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut bytes, &metadata, &tensors).unwrap();
        bytes.into_inner()
    }

    fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        file
    }

    #[test]
    fn gguf_header_gives_arch_quant_and_context() {
        let file = write_temp(&tiny_gguf(Some(3)));
        let info = inspect(file.path(), ModelFormat::Gguf).unwrap();
        assert_eq!(
            info,
            ModelInfo {
                architecture: "llama".into(),
                quantization: "Q4_1".into(),
                context_length: Some(256)
            }
        );
        assert_eq!(detect_format(file.path()).unwrap(), ModelFormat::Gguf);
    }

    #[test]
    fn quantization_falls_back_to_the_majority_matrix_type() {
        let file = write_temp(&tiny_gguf(None));
        let info = inspect(file.path(), ModelFormat::Gguf).unwrap();
        assert_eq!(info.quantization, "Q4_1");
    }

    #[test]
    fn truncated_gguf_is_an_error_not_a_panic() {
        let bytes = tiny_gguf(Some(3));
        // Cut in the tensor data (header intact), then in the header itself.
        for cut in [bytes.len() - 10, 40, 3] {
            let file = write_temp(&bytes[..cut]);
            let err = inspect(file.path(), ModelFormat::Gguf).unwrap_err();
            assert!(
                format!("{err:#}").contains(&file.path().display().to_string()),
                "{err:#}"
            );
        }
        let err = inspect(
            write_temp(&bytes[..bytes.len() - 10]).path(),
            ModelFormat::Gguf,
        )
        .unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err:#}");
    }

    #[test]
    fn not_a_gguf_is_refused_by_magic() {
        let file = write_temp(b"<html>404</html>");
        let err = detect_format(file.path()).unwrap_err();
        assert!(err.to_string().contains("not a GGUF file"), "{err}");
    }

    /// A safetensors file with one F32 tensor of `elements` values (data written in full
    /// unless `truncate`).
    pub(crate) fn tiny_safetensors(elements: usize, truncate: bool) -> Vec<u8> {
        let header = format!(
            r#"{{"__metadata__":{{"format":"pt"}},"w":{{"dtype":"F32","shape":[{elements}],"data_offsets":[0,{}]}}}}"#,
            elements * 4
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        let data_len = if truncate { elements * 2 } else { elements * 4 };
        bytes.extend(std::iter::repeat_n(0u8, data_len));
        bytes
    }

    #[test]
    fn safetensors_dir_reads_config_and_header() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type":"bert","max_position_embeddings":512}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("model.safetensors"),
            tiny_safetensors(16, false),
        )
        .unwrap();
        let info = inspect(dir.path(), ModelFormat::SafetensorsDir).unwrap();
        assert_eq!(info.architecture, "bert");
        assert_eq!(info.quantization, "F32");
        assert_eq!(info.context_length, Some(512));
        assert_eq!(
            detect_format(dir.path()).unwrap(),
            ModelFormat::SafetensorsDir
        );

        std::fs::write(
            dir.path().join("model.safetensors"),
            tiny_safetensors(16, true),
        )
        .unwrap();
        let err = inspect(dir.path(), ModelFormat::SafetensorsDir).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err:#}");
    }
}
