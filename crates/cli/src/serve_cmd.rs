//! `verre serve` and `verre keys add`: arguments, wired to verre-server.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use verre_engine::engine::EngineOptions;
use verre_engine::kv::KvCacheType;
use verre_models::ModelFormat;
use verre_server::auth::{self, ApiKeys};
use verre_server::config::VerreConfig;
use verre_server::{ModelKind, ModelSpec, ServeConfig};

#[derive(Args)]
pub struct ServeArgs {
    /// Models to serve, comma-separated: names in the store (see `verre models`) or paths
    /// to .gguf files. Clients pick one by name in `model`. GGUF models answer chat and
    /// completions; BERT models (`minilm-l6`) answer /v1/embeddings.
    #[arg(short, long, value_delimiter = ',', required_unless_present = "config")]
    pub model: Vec<String>,
    /// Gateway config (verre.toml, see docs/CONFIG.md): remote OpenAI-compatible backends,
    /// routing, the egress policy, per-key limits. Models of `kind = "local"` backends
    /// are loaded as if given with --model. Default: $VERRE_HOME/verre.toml, else
    /// ./verre.toml, when there is one.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port; the address is printed at start either way.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// API keys file (make keys with `verre keys add NAME --file F`). Without it every
    /// request is let in, so only a loopback address may be bound.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Bind a non-loopback address even without API keys.
    #[arg(long)]
    pub insecure_public: bool,
    /// Most sequences decoded together per model.
    #[arg(long, default_value_t = 8)]
    pub max_running: usize,
    /// Most requests waiting per model; past that, clients get 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_waiting: usize,
    /// Memory for each model's paged KV cache, in MiB (pages become resident as blocks are
    /// first used). Requests wait for blocks, and the last admitted are preempted when
    /// the cache runs out.
    #[arg(long, default_value_t = verre_engine::engine::DEFAULT_KV_CACHE_MB)]
    pub kv_cache_mb: usize,
    /// How the KV cache stores keys and values: f16, q8_0 (0.53x the bytes: 1.9x the
    /// positions in the same --kv-cache-mb) or q4_0. Default: `[engine] kv_cache_type` of
    /// verre.toml, else f16.
    #[arg(long)]
    pub kv_cache_type: Option<KvCacheType>,
    /// Most tokens per engine step: decode tokens first, then prompt chunks.
    #[arg(long, default_value_t = verre_engine::generate::PREFILL_CHUNK)]
    pub max_batched_tokens: usize,
    /// Speculative decoding: most tokens drafted by prompt lookup per sequence and step
    /// (0 = off). The output is the same with or without; a request may turn it off.
    #[arg(long, default_value_t = verre_engine::engine::DEFAULT_DRAFT_TOKENS)]
    pub draft_tokens: usize,
    /// A smaller model with the same tokenizer (store name or .gguf path) that drafts up
    /// to --draft-tokens tokens per step for the chat models (e.g. qwen2.5-coder-0.5b for
    /// qwen2.5-coder-1.5b). Default: `[engine] draft_model` of verre.toml.
    #[arg(long, value_name = "NAME|PATH")]
    pub draft_model: Option<String>,
    /// Under a grammar, do not draft the tokens it forces (grammar fast-forward).
    #[arg(long)]
    pub no_grammar_fast_forward: bool,
    /// Worker threads for the model (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub db: crate::intake_cmd::DbArgs,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a new API key, store its hash in the keys file and print the key (once).
    Add(KeysAddArgs),
}

#[derive(Args)]
pub struct KeysAddArgs {
    /// A name for the key (who or what uses it).
    pub name: String,
    /// The keys file, created if missing; pass the same to `verre serve --api-key-file`.
    #[arg(long)]
    pub file: PathBuf,
}

pub fn serve(args: ServeArgs) -> Result<()> {
    crate::set_threads(args.threads)?;
    let gateway_config = crate::config_file::load(args.config.as_deref())?;
    let mut names = args.model.clone();
    for name in gateway_config.iter().flat_map(VerreConfig::local_models) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let gateway = gateway_config
        .as_ref()
        .map(crate::config_file::gateway)
        .transpose()
        .context("setting up the gateway")?;
    let models = model_specs(&names)?;
    let kv_cache_type = match (args.kv_cache_type, &gateway_config) {
        (Some(t), _) => t,
        (None, Some(c)) => c
            .engine
            .kv_cache_type
            .as_deref()
            .map(str::parse)
            .transpose()?
            .unwrap_or_default(),
        (None, None) => KvCacheType::default(),
    };
    let draft_model = args
        .draft_model
        .clone()
        .or_else(|| gateway_config.as_ref()?.engine.draft_model.clone())
        .map(|name| crate::run_cmd::load_draft_model(&name))
        .transpose()?;
    let keys = args
        .api_key_file
        .as_deref()
        .map(ApiKeys::load)
        .transpose()?;
    if keys.as_ref().is_some_and(ApiKeys::is_empty) {
        eprintln!("verre serve: the keys file holds no keys: every API request will be refused");
    }
    verre_server::run(ServeConfig {
        models,
        host: args.host,
        port: args.port,
        keys,
        insecure_public: args.insecure_public,
        engine: EngineOptions {
            max_running: args.max_running,
            max_waiting: args.max_waiting,
            kv_cache_bytes: args.kv_cache_mb << 20,
            kv_cache_type,
            prefill_chunk: args.max_batched_tokens,
            draft_tokens: args.draft_tokens,
            grammar_fast_forward: !args.no_grammar_fast_forward,
            draft_model,
        },
        gateway,
        database: Some(args.db.url()?),
        on_listening: None,
        on_state: None,
        review: gateway_config
            .as_ref()
            .map(verre_server::review::ReviewSettings::from_config)
            .transpose()?
            .unwrap_or_default(),
    })
}

/// What to load for each model name (a store name or a .gguf path): chat or embedding.
pub(crate) fn model_specs(names: &[String]) -> Result<Vec<ModelSpec>> {
    let store = verre_models::ModelStore::from_env()?;
    let mut models = Vec::new();
    for name in names {
        let entry = store.resolve(name)?;
        let kind = match entry.format {
            ModelFormat::Gguf => ModelKind::Chat,
            ModelFormat::SafetensorsDir if entry.architecture == "bert" => ModelKind::Embedding,
            ModelFormat::SafetensorsDir => bail!(
                "{} is a {} safetensors model: verre serves GGUF text models and BERT embedding models",
                entry.name,
                entry.architecture
            ),
            ModelFormat::OnnxDir => bail!(
                "{} is an ONNX {} model (a token classifier for finding personal data): it is \
                 not served, name it in verre.toml's [pii] ner_model instead",
                entry.name,
                entry.architecture
            ),
        };
        if models.iter().any(|m: &ModelSpec| m.id == entry.name) {
            bail!("model {} is given twice", entry.name);
        }
        models.push(ModelSpec {
            id: entry.name,
            path: entry.path,
            kind,
        });
    }
    Ok(models)
}

pub fn keys(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Add(args) => keys_add(&args),
    }
}

pub fn keys_add(args: &KeysAddArgs) -> Result<()> {
    let key = auth::add_key(&args.file, &args.name)
        .with_context(|| format!("adding key {:?}", args.name))?;
    println!("{key}");
    eprintln!(
        "verre keys: added {:?} to {}. The key above is shown only now: store it safely.",
        args.name,
        args.file.display()
    );
    Ok(())
}
