//! `verre run`: one generation from the terminal.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use verre_engine::kv::KvCacheType;
use verre_engine::{
    EngineHandle, EngineOptions, GenerateRequest, GrammarSpec, LoadedModel, Message, SamplingParams,
};

#[derive(Args)]
pub struct RunArgs {
    /// Model: a name in the store (see `verre models`) or a path to a .gguf file.
    #[arg(short, long)]
    pub model: String,
    /// The prompt; `-` reads it from standard input.
    pub prompt: String,
    /// A system message before the prompt (chat mode only).
    #[arg(long)]
    pub system: Option<String>,
    /// Send the prompt to the model as-is, without the chat template (like a completion).
    #[arg(long)]
    pub raw: bool,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop before this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens (for measurements).
    #[arg(long)]
    pub ignore_eos: bool,
    /// The answer must be an instance of the JSON Schema in this file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["regex", "grammar"])]
    pub json_schema: Option<std::path::PathBuf>,
    /// The answer must match this regular expression.
    #[arg(long, conflicts_with = "grammar")]
    pub regex: Option<String>,
    /// The answer must be a sentence of the Lark grammar in this file.
    #[arg(long, value_name = "FILE")]
    pub grammar: Option<std::path::PathBuf>,
    /// How the KV cache stores keys and values: f16, q8_0 or q4_0.
    #[arg(long, default_value_t = KvCacheType::F16)]
    pub kv_cache_type: KvCacheType,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Decode token by token: no speculative decoding, no grammar fast-forward (the answer
    /// is the same; for comparing times).
    #[arg(long)]
    pub no_speculation: bool,
    /// A smaller model with the same tokenizer (store name or .gguf path) that drafts
    /// tokens for this one (e.g. qwen2.5-coder-0.5b for qwen2.5-coder-1.5b).
    #[arg(long, value_name = "NAME|PATH")]
    pub draft_model: Option<String>,
    /// Speculative decoding: most tokens drafted per step (prompt lookup or the draft
    /// model).
    #[arg(long, default_value_t = verre_engine::engine::DEFAULT_DRAFT_TOKENS)]
    pub draft_tokens: usize,
    /// Print one JSON object (text, token ids, counts, timings) instead of streaming.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: RunArgs) -> Result<()> {
    crate::set_threads(args.threads)?;
    let prompt = if args.prompt == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the prompt from standard input")?;
        s
    } else {
        args.prompt.clone()
    };

    let entry = verre_models::ModelStore::from_env()?.resolve(&args.model)?;
    let load_start = Instant::now();
    let model = Arc::new(LoadedModel::load(&entry.path)?);
    let load_ms = load_start.elapsed().as_secs_f64() * 1000.0;

    let prompt_ids = if args.raw {
        model.encode_prompt(&prompt)?
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::new("system", system));
        }
        messages.push(Message::new("user", &prompt));
        model.chat_prompt(&messages)?
    };
    let req = GenerateRequest {
        prompt_ids,
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repetition_penalty: args.repeat_penalty,
            seed: args.seed,
            ..Default::default()
        },
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
        grammar: grammar_spec(&args)?
            .map(|spec| model.compile_grammar(&spec))
            .transpose()?,
    };

    let draft_model = args
        .draft_model
        .as_deref()
        .map(load_draft_model)
        .transpose()?;
    let options = EngineOptions {
        draft_tokens: args.draft_tokens,
        draft_model,
        ..EngineOptions::one_at_a_time_as(&model, args.kv_cache_type)?
    }
    .speculative(!args.no_speculation);
    let engine = EngineHandle::spawn(model.clone(), options)?;
    let stdout = std::io::stdout();
    let out = engine.generate(req, |text| {
        if !args.json {
            let mut out = stdout.lock();
            // A closed pipe (`| head`) ends the generation instead of failing it.
            return out
                .write_all(text.as_bytes())
                .and_then(|_| out.flush())
                .is_ok();
        }
        true
    })?;

    if args.json {
        let m = engine.metrics();
        let out = json!({
            "model": args.model,
            "path": entry.path,
            "text": out.text,
            "token_ids": out.token_ids,
            "finish_reason": out.finish_reason.as_str(),
            "prompt_tokens": out.prompt_tokens,
            "completion_tokens": out.completion_tokens,
            "timings": {
                "load_ms": round2(load_ms),
                "prefill_ms": round2(out.prefill_ms),
                "decode_ms": round2(out.decode_ms),
                "prefill_tokens_per_second": round2(out.prefill_tokens_per_second()),
                "decode_tokens_per_second": round2(out.decode_tokens_per_second()),
            },
            // Speculative decoding: forward passes, and the drafts checked and confirmed.
            "engine": {
                "forward_passes": m.steps,
                "draft_tokens": m.draft_tokens,
                "accepted_draft_tokens": m.accepted_draft_tokens,
                "model_draft_tokens": m.model_draft_tokens,
                "model_accepted_draft_tokens": m.model_accepted_draft_tokens,
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!();
    }
    Ok(())
}

/// Load a draft model (`--draft-model`) by store name or path.
pub(crate) fn load_draft_model(name: &str) -> Result<verre_engine::DraftModel> {
    let entry = verre_models::ModelStore::from_env()?.resolve(name)?;
    let model = LoadedModel::load(&entry.path)
        .with_context(|| format!("loading the draft model {name}"))?;
    Ok(verre_engine::DraftModel::new(Arc::new(model)))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The grammar the answer must follow, from `--json-schema`, `--regex` or `--grammar`.
fn grammar_spec(args: &RunArgs) -> Result<Option<GrammarSpec>> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    Ok(if let Some(path) = &args.json_schema {
        let schema = serde_json::from_str(&read(path)?)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        Some(GrammarSpec::JsonSchema(schema))
    } else if let Some(rx) = &args.regex {
        Some(GrammarSpec::Regex(rx.clone()))
    } else if let Some(path) = &args.grammar {
        Some(GrammarSpec::Lark(read(path)?))
    } else {
        None
    })
}
