//! Reading GGUF model files: the header and metadata through candle's GGUF reader, the
//! tensors through a memory map, with errors that name the file and what is wrong with it.

use std::collections::HashMap;
use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use memmap2::Mmap;

use crate::kernels::{QuantMatrix, QuantType, SharedBytes};

/// Tensor types verre loads. Anything else is refused at load time, naming the tensor.
pub const SUPPORTED_TENSOR_TYPES: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// An open GGUF file: parsed header and metadata, and a read-only memory map of its bytes.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    map: Arc<Mmap>,
}

impl GgufFile {
    /// Open and parse the header. Truncated files, bad magic and unknown tensor types are
    /// reported with the file name.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file =
            File::open(&path).with_context(|| format!("opening model file {}", path.display()))?;
        // SAFETY: the map is read-only; verre never writes model files while they are loaded,
        // and `verre pull` replaces files by rename, which leaves an existing map intact.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("memory-mapping {}", path.display()))?;
        if map.len() < 4 || &map[..4] != b"GGUF" {
            bail!(
                "{}: not a GGUF file (the first bytes are not the GGUF magic; {} bytes in file)",
                path.display(),
                map.len()
            );
        }
        let content = read_header(&map[..])
            .map_err(|e| anyhow!(explain_header_error(&e.to_string())))
            .with_context(|| {
                format!(
                    "{}: reading GGUF header (truncated or corrupt file?)",
                    path.display()
                )
            })?;
        Ok(Self {
            path,
            content,
            map: Arc::new(map),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    /// `general.architecture`, e.g. "llama".
    pub fn architecture(&self) -> Result<String> {
        self.get_str("general.architecture")
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The type and shape (candle's order: rows first) of a tensor, if present.
    pub fn tensor_info(&self, name: &str) -> Option<(GgmlDType, Vec<usize>)> {
        self.content
            .tensor_infos
            .get(name)
            .map(|t| (t.ggml_dtype, t.shape.dims().to_vec()))
    }

    /// Load one tensor, quantized as it is stored.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| anyhow!("{}: tensor {name} is missing", self.path.display()))?;
        if !SUPPORTED_TENSOR_TYPES.contains(&info.ggml_dtype) {
            bail!(
                "{}: tensor {name} has type {:?}, which verre does not support (supported: {})",
                self.path.display(),
                info.ggml_dtype,
                supported_list()
            );
        }
        info.read(
            &mut Cursor::new(&self.map[..]),
            self.content.tensor_data_offset,
            device,
        )
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| {
            format!(
                "{}: reading tensor {name} (truncated file?)",
                self.path.display()
            )
        })
    }

    /// A 2-D weight as verre's kernels read it: in place in the memory map, not copied.
    /// `None` when verre has no kernel for the tensor's type (candle's then serve it).
    pub fn mapped_matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<QuantMatrix>> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| anyhow!("{}: tensor {name} is missing", self.path.display()))?;
        if info.shape.dims() != [rows, cols] {
            bail!(
                "{}: tensor {name} has shape {:?}, expected {:?} from the model's metadata",
                self.path.display(),
                info.shape.dims(),
                [rows, cols]
            );
        }
        let Ok(qtype) = QuantType::try_from(info.ggml_dtype) else {
            return Ok(None);
        };
        let offset = self
            .content
            .tensor_data_offset
            .checked_add(info.offset)
            .ok_or_else(|| anyhow!("{}: tensor {name} offset overflows", self.path.display()))?;
        let offset = usize::try_from(offset)
            .with_context(|| format!("{}: tensor {name} offset", self.path.display()))?;
        let bytes: SharedBytes = self.map.clone();
        QuantMatrix::new(bytes, offset, qtype, rows, cols)
            .map(Some)
            .with_context(|| format!("{}: tensor {name} (truncated file?)", self.path.display()))
    }

    /// Load a tensor and check its shape (candle's order: `[rows, cols]` where the GGUF
    /// header stores `[cols, rows]`).
    pub fn tensor_with_shape(
        &self,
        name: &str,
        shape: &[usize],
        device: &Device,
    ) -> Result<QTensor> {
        let t = self.tensor(name, device)?;
        if t.shape().dims() != shape {
            bail!(
                "{}: tensor {name} has shape {:?}, expected {:?} from the model's metadata",
                self.path.display(),
                t.shape().dims(),
                shape
            );
        }
        Ok(t)
    }

    /// The names of every tensor in the file, in no particular order.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.content.tensor_infos.keys().map(String::as_str)
    }

    /// Every tensor type used in the file with its count, for `verre models` and errors.
    pub fn tensor_type_counts(&self) -> Vec<(GgmlDType, usize)> {
        let mut counts: Vec<(GgmlDType, usize)> = Vec::new();
        for info in self.content.tensor_infos.values() {
            match counts.iter_mut().find(|(t, _)| *t == info.ggml_dtype) {
                Some((_, n)) => *n += 1,
                None => counts.push((info.ggml_dtype, 1)),
            }
        }
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        counts
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Result<String> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => bail!(
                "{}: metadata {key} is {:?}, expected a string",
                self.path.display(),
                other.value_type()
            ),
            None => bail!("{}: metadata key {key} is missing", self.path.display()),
        }
    }

    /// An integer metadata value of any integer width.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self
            .get(key)
            .ok_or_else(|| anyhow!("{}: metadata key {key} is missing", self.path.display()))?;
        value_as_u64(v).ok_or_else(|| {
            anyhow!(
                "{}: metadata {key} is {:?}, expected an integer",
                self.path.display(),
                v.value_type()
            )
        })
    }

    pub fn get_u64_opt(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.get_u64(key).map(Some),
        }
    }

    pub fn get_f32_opt(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v)),
            Some(Value::F64(v)) => Ok(Some(*v as f32)),
            Some(v) => match value_as_u64(v) {
                Some(i) => Ok(Some(i as f32)),
                None => bail!(
                    "{}: metadata {key} is {:?}, expected a number",
                    self.path.display(),
                    v.value_type()
                ),
            },
        }
    }
}

/// candle's header reader, with its panics on crafted files (e.g. `general.alignment = 0`
/// divides by zero) turned into errors.
pub fn read_header(bytes: &[u8]) -> candle_core::Result<Content> {
    std::panic::catch_unwind(|| Content::read(&mut Cursor::new(bytes))).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "malformed header".into());
        Err(candle_core::Error::Msg(format!(
            "invalid GGUF header: {why}"
        )))
    })
}

fn value_as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(x) if *x >= 0 => Some(*x as u64),
        Value::I16(x) if *x >= 0 => Some(*x as u64),
        Value::I32(x) if *x >= 0 => Some(*x as u64),
        Value::I64(x) if *x >= 0 => Some(*x as u64),
        _ => None,
    }
}

fn supported_list() -> String {
    SUPPORTED_TENSOR_TYPES
        .iter()
        .map(|t| format!("{t:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// ggml's type numbers, for naming a type candle's reader does not know.
fn ggml_type_name(id: u32) -> &'static str {
    match id {
        4 | 5 => "Q4_2/Q4_3 (removed from ggml)",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "an unknown ggml type",
    }
}

/// candle says "unknown dtype for tensor 16"; say which type that is and what is supported.
fn explain_header_error(msg: &str) -> String {
    // candle may append a backtrace after the message: keep its first line only.
    let msg = msg.lines().next().unwrap_or_default();
    if let Some(rest) = msg.strip_prefix("unknown dtype for tensor ")
        && let Ok(id) = rest.trim().parse::<u32>()
    {
        return format!(
            "unsupported tensor type: ggml type {id} ({}); verre supports {}",
            ggml_type_name(id),
            supported_list()
        );
    }
    msg.to_string()
}
