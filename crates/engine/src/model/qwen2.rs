//! Qwen2 and Qwen2.5 (GGUF architecture `qwen2`): Llama's block structure with biases on
//! the Q, K and V projections and NeoX-style rotary embeddings (the two halves of each head
//! rotate together), RoPE base 1e6. The output projection is tied to the embeddings in the
//! small models (no `output.weight`) and separate in the larger ones; both load.

use anyhow::Result;
use candle_core::Device;

use super::llama::{Family, Llama, RopeStyle};
use crate::gguf::GgufFile;

pub const FAMILY: Family = Family {
    rope_style: RopeStyle::Neox,
    qkv_bias: true,
    ..Family::LLAMA
};

pub fn load(g: &GgufFile, device: &Device) -> Result<Llama> {
    Llama::load_family(g, "qwen2", FAMILY, device)
}
