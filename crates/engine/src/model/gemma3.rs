//! Gemma 3 (GGUF architecture `gemma3`: 270M, 1B, 4B, 12B, 27B; the text model).
//!
//! Llama's block with Gemma's additions:
//! - token embeddings multiplied by `sqrt(n_embd)`;
//! - RMSNorm of every query and key head before RoPE (`attn_q_norm`, `attn_k_norm`);
//! - RMSNorm of the attention and feed-forward outputs before each residual
//!   (`post_attention_norm`, `post_ffw_norm`); the GGUF norm weights already hold Gemma's
//!   `1 + w`;
//! - GeGLU feed-forward (GELU, tanh approximation) and NeoX-style RoPE;
//! - local and global layers: with `attention.sliding_window` set, layers follow
//!   `attention.sliding_window_pattern`, by default 6 (five local, one global). Local
//!   layers see the window and rotate with `rope.freq_base_swa` (default 10 000, no
//!   scaling); global layers see everything and rotate with `rope.freq_base` (1e6) and the
//!   file's scaling;
//! - attention scale `1 / sqrt(head_dim)` (`query_pre_attn_scalar = head_dim`), except the
//!   27B (62 layers), which uses `1 / sqrt(n_embd / n_head)`: llama.cpp's rule, as the GGUF
//!   does not carry the scalar;
//! - optional `final_logit_softcapping`.
//!
//! Semantics from llama.cpp's `src/models/gemma3.cpp` (llama-cpp-python 0.3.36).

use anyhow::{Result, ensure};
use candle_core::Device;

use super::llama::{self, FfnActivation, Family, Llama, LlamaConfig, RopeScaling, RopeStyle};
use crate::gguf::GgufFile;

pub const FAMILY: Family = Family {
    rope_style: RopeStyle::Neox,
    qkv_bias: false,
    qk_norm: true,
    post_norms: true,
    ffn: FfnActivation::GeGlu,
    scale_embeddings: true,
};

const ARCH: &str = "gemma3";

/// llama.cpp's default period of local/global layers for Gemma 3.
const SWA_PERIOD: u64 = 6;

/// Layer count of Gemma 3 27B, whose attention scale follows `n_embd / n_head`.
const LAYERS_27B: usize = 62;

pub fn config(g: &GgufFile) -> Result<LlamaConfig> {
    let mut cfg = LlamaConfig::from_gguf_family(g, ARCH, FAMILY)?;
    let key = |k: &str| format!("{ARCH}.{k}");
    for k in ["attention.key_length_swa", "attention.value_length_swa"] {
        if let Some(v) = g.get_u64_opt(&key(k))? {
            ensure!(
                v as usize == cfg.head_dim,
                "{}: {ARCH}.{k} = {v} differs from the global head size {}: not supported",
                g.path().display(),
                cfg.head_dim
            );
        }
    }
    if cfg.sliding_window.is_some() {
        cfg.swa_layers = llama::swa_pattern(g, ARCH, cfg.n_layer, Some(SWA_PERIOD))?;
        let mut local = cfg.rope.clone();
        local.freq_base = g
            .get_f32_opt(&key("rope.freq_base_swa"))?
            .unwrap_or(10_000.0);
        local.freq_scale = 1.0;
        local.scaling = RopeScaling::None;
        cfg.rope_swa = Some(local);
    } else {
        cfg.swa_layers = vec![false; cfg.n_layer];
    }
    cfg.attention_scale = if cfg.n_layer == LAYERS_27B {
        1.0 / ((cfg.n_embd / cfg.n_head) as f32).sqrt()
    } else {
        1.0 / (cfg.head_dim as f32).sqrt()
    };
    cfg.final_logit_softcap = g
        .get_f32_opt(&key("final_logit_softcapping"))?
        .filter(|&c| c != 0.0);
    Ok(cfg)
}

pub fn load(g: &GgufFile, device: &Device) -> Result<Llama> {
    Llama::load_config(g, ARCH, FAMILY, config(g)?, device)
}
