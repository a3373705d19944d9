//! Mistral 3 and Ministral 3 (GGUF architecture `mistral3`: Ministral 3 3B/8B/14B, the text
//! part of Mistral Small 3.1+): Llama's block, adjacent-pair RoPE, head size given by
//! `attention.key_length`, RoPE base up to 1e9, and two things past the original context:
//!
//! - YaRN with `rope.scaling.yarn_log_multiplier` (HF's `mscale_all_dim`): llama.cpp sets
//!   the rotation's magnitude factor to `mscale(factor, 1) / mscale(factor, log_mul)` with
//!   `mscale(s, m) = 1 + 0.1 m ln s`, which is 1 for the released models (`log_mul = 1`).
//! - Llama 4-style attention temperature (`attention.temperature_scale`, HF's
//!   `llama_4_scaling_beta`): queries grow as `1 + beta ln(floor(pos / n_ctx_orig) + 1)`
//!   where `n_ctx_orig` is YaRN's original context.
//!
//! Semantics from llama.cpp's `src/models/mistral3.cpp` and `src/llama-context.cpp`
//! (llama-cpp-python 0.3.36).

use anyhow::{Result, bail, ensure};
use candle_core::Device;

use super::llama::{AttnTemperature, Family, Llama, LlamaConfig, RopeScaling};
use crate::gguf::GgufFile;

pub const FAMILY: Family = Family::LLAMA;

const ARCH: &str = "mistral3";

pub fn config(g: &GgufFile) -> Result<LlamaConfig> {
    let mut cfg = LlamaConfig::from_gguf_family(g, ARCH, FAMILY)?;
    let key = |k: &str| format!("{ARCH}.{k}");
    ensure!(
        cfg.rope.n_rot == cfg.head_dim,
        "{}: {ARCH} rotates whole heads, but rope.dimension_count is {} for head size {}",
        g.path().display(),
        cfg.rope.n_rot,
        cfg.head_dim
    );

    let log_mul = g
        .get_f32_opt(&key("rope.scaling.yarn_log_multiplier"))?
        .unwrap_or(0.0);
    let freq_scale = cfg.rope.freq_scale;
    if let RopeScaling::Yarn { attn_factor, .. } = &mut cfg.rope.scaling
        && log_mul != 0.0
    {
        let factor = 1.0 / freq_scale;
        let mscale = |m: f32| {
            if factor <= 1.0 {
                1.0
            } else {
                0.1 * m * factor.ln() + 1.0
            }
        };
        // llama.cpp's cparams.yarn_attn_factor; the rotation multiplies by
        // `1 + 0.1 ln(factor)` again, which the last division cancels.
        *attn_factor *= mscale(1.0) / mscale(log_mul) * (1.0 / (1.0 + 0.1 * factor.ln()));
    }

    let temp_scale = g
        .get_f32_opt(&key("attention.temperature_scale"))?
        .unwrap_or(0.0);
    if temp_scale != 0.0 {
        let floor_scale = match cfg.rope.scaling {
            RopeScaling::Yarn {
                original_context, ..
            } => original_context,
            _ => g
                .get_u64_opt(&key("rope.scaling.original_context_length"))?
                .map_or(cfg.context_length, |v| v as usize),
        };
        if floor_scale == 0 {
            bail!(
                "{}: attention.temperature_scale needs an original context length, and it is 0",
                g.path().display()
            );
        }
        cfg.attn_temperature = Some(AttnTemperature {
            scale: temp_scale,
            floor_scale,
        });
    }
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

    fn config_of(extra: Vec<(&str, Value)>) -> Result<LlamaConfig> {
        let dir = tempfile::tempdir().unwrap();
        let mut md = test_gguf::base_metadata(ARCH, 2);
        md.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
        config(&test_gguf::write(&dir, "m3.gguf", &md, &[]))
    }

    fn ministral3_keys() -> Vec<(&'static str, Value)> {
        vec![
            ("mistral3.attention.key_length", Value::U32(16)),
            ("mistral3.attention.value_length", Value::U32(16)),
            ("mistral3.rope.freq_base", Value::F32(1e9)),
            ("mistral3.rope.scaling.type", Value::String("yarn".into())),
            ("mistral3.rope.scaling.factor", Value::F32(16.0)),
            (
                "mistral3.rope.scaling.original_context_length",
                Value::U32(16),
            ),
            ("mistral3.rope.scaling.yarn_log_multiplier", Value::F32(1.0)),
            ("mistral3.attention.temperature_scale", Value::F32(0.1)),
        ]
    }

    #[test]
    fn ministral3_yarn_and_temperature() {
        let cfg = config_of(ministral3_keys()).unwrap();
        assert_eq!(cfg.head_dim, 16);
        assert_eq!(cfg.rope.freq_base, 1e9);
        assert_eq!(cfg.rope.freq_scale, 1.0 / 16.0);
        let RopeScaling::Yarn {
            original_context,
            attn_factor,
            ..
        } = cfg.rope.scaling
        else {
            panic!("expected YaRN, got {:?}", cfg.rope.scaling)
        };
        assert_eq!(original_context, 16);
        // With log_mul 1 the rotation's magnitude, attn_factor x (1 + 0.1 ln 16), is 1.
        assert!((attn_factor * (1.0 + 0.1 * 16f32.ln()) - 1.0).abs() < 1e-6);
        assert_eq!(
            cfg.attn_temperature,
            Some(AttnTemperature {
                scale: 0.1,
                floor_scale: 16
            })
        );
    }

    #[test]
    fn without_log_multiplier_yarn_keeps_its_magnitude_and_no_temperature() {
        let keys = ministral3_keys()
            .into_iter()
            .filter(|(k, _)| {
                !k.ends_with("yarn_log_multiplier") && !k.ends_with("temperature_scale")
            })
            .collect();
        let cfg = config_of(keys).unwrap();
        let RopeScaling::Yarn { attn_factor, .. } = cfg.rope.scaling else {
            panic!("expected YaRN")
        };
        assert_eq!(attn_factor, 1.0);
        assert_eq!(cfg.attn_temperature, None);
    }

    #[test]
    fn partial_rotation_is_refused() {
        let mut keys = ministral3_keys();
        keys.push(("mistral3.rope.dimension_count", Value::U32(8)));
        let e = config_of(keys).unwrap_err().to_string();
        assert!(
            e.contains("m3.gguf") && e.contains("rope.dimension_count is 8 for head size 16"),
            "{e}"
        );
    }
}
