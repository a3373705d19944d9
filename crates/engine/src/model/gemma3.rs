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

use super::llama::{self, Family, FfnActivation, Llama, LlamaConfig, RopeScaling, RopeStyle};
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_gguf;
    use candle_core::quantized::gguf_file::Value;

    fn config_of(n_layer: u32, extra: Vec<(&str, Value)>) -> Result<LlamaConfig> {
        let dir = tempfile::tempdir().unwrap();
        let mut md = test_gguf::base_metadata(ARCH, n_layer);
        md.push(("gemma3.attention.key_length".into(), Value::U32(16)));
        md.push(("gemma3.attention.value_length".into(), Value::U32(16)));
        md.push(("gemma3.rope.freq_base".into(), Value::F32(1e6)));
        md.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
        config(&test_gguf::write(&dir, "g3.gguf", &md, &[]))
    }

    #[test]
    fn five_local_layers_then_one_global_by_default() {
        let cfg = config_of(8, vec![("gemma3.attention.sliding_window", Value::U32(64))]).unwrap();
        let local = [true, true, true, true, true, false, true, true];
        assert_eq!(cfg.swa_layers, local);
        for (l, &is_local) in local.iter().enumerate() {
            assert_eq!(cfg.window(l), is_local.then_some(64));
            let base = if is_local { 10_000.0 } else { 1e6 };
            assert_eq!(cfg.rope_of(l).freq_base, base, "layer {l}");
            assert_eq!(cfg.rope_of(l).style, RopeStyle::Neox);
        }
        assert_eq!(cfg.attention_scale, 0.25);
        assert_eq!(cfg.final_logit_softcap, None);
    }

    #[test]
    fn local_base_pattern_and_softcap_from_the_metadata() {
        let cfg = config_of(
            4,
            vec![
                ("gemma3.attention.sliding_window", Value::U32(64)),
                ("gemma3.attention.sliding_window_pattern", Value::U32(2)),
                ("gemma3.rope.freq_base_swa", Value::F32(5e4)),
                ("gemma3.rope.scaling.type", Value::String("linear".into())),
                ("gemma3.rope.scaling.factor", Value::F32(8.0)),
                ("gemma3.final_logit_softcapping", Value::F32(30.0)),
            ],
        )
        .unwrap();
        assert_eq!(cfg.swa_layers, [true, false, true, false]);
        assert_eq!(cfg.rope_of(0).freq_base, 5e4);
        // Linear scaling applies to the global layers only.
        assert_eq!(cfg.rope_of(0).freq_scale, 1.0);
        assert_eq!(cfg.rope_of(1).freq_scale, 0.125);
        assert_eq!(cfg.final_logit_softcap, Some(30.0));
    }

    #[test]
    fn without_a_window_every_layer_is_global() {
        let cfg = config_of(6, vec![]).unwrap();
        assert_eq!(cfg.swa_layers, [false; 6]);
        assert!(cfg.rope_swa.is_none());
        assert_eq!(cfg.window(0), None);
    }

    #[test]
    fn the_27b_scales_attention_by_embedding_over_heads() {
        // 62 layers: llama.cpp's marker of Gemma 3 27B (query_pre_attn_scalar = 168).
        let cfg = config_of(62, vec![]).unwrap();
        assert_eq!(cfg.attention_scale, 1.0 / ((32 / 4) as f32).sqrt());
    }

    #[test]
    fn a_different_local_head_size_is_refused() {
        let e = config_of(6, vec![("gemma3.attention.key_length_swa", Value::U32(8))])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("g3.gguf") && e.contains("key_length_swa = 8"),
            "{e}"
        );
    }
}
