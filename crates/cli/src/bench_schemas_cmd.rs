//! `verre bench-schemas DIR`: every JSON Schema in a folder through compilation and
//! constrained generation, each output checked with the `jsonschema` crate.
//!
//! - declared coverage: schemas that compile into a grammar;
//! - empirical coverage: schemas for which a complete, valid instance came out;
//! - compile time per schema and mask time per token (p50/p99);
//! - with `--compare N`: decode tokens/s under the grammar against the same model, prompt
//!   and token count without it, for the first N schemas that produced output.
//!
//! JSONSchemaBench (arXiv 2501.10868) defines the two coverages the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Args;
use serde_json::{Value, json};
use verre_engine::{
    EngineHandle, EngineOptions, FinishReason, GenerateRequest, Generation, GrammarSpec,
    LoadedModel, Message,
};

#[derive(Args)]
pub struct BenchSchemasArgs {
    /// A folder of `.json` files, one JSON Schema each.
    pub dir: PathBuf,
    /// Model: a name in the store or a path to a .gguf file.
    #[arg(short, long, default_value = "smollm2-135m")]
    pub model: String,
    /// Most tokens per instance; an output cut here counts as not valid.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Take every K-th schema (sorted by file name) to bound the run.
    #[arg(long, default_value_t = 1)]
    pub every: usize,
    /// Stop after this many schemas.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also decode the first N outputs' prompts without the grammar, for the speed ratio.
    #[arg(long, default_value_t = 0)]
    pub compare: usize,
    /// llama.cpp-style repetition penalty over prompt and output (1.0 = off); a small
    /// model under a grammar otherwise tends to repeat array items until the token limit.
    #[arg(long, default_value_t = 1.1)]
    pub repetition_penalty: f32,
    #[arg(long)]
    pub threads: Option<usize>,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Print each schema's outcome on stderr as it is done.
    #[arg(long, short)]
    pub verbose: bool,
}

/// What happened to one schema.
#[derive(Debug)]
enum Outcome {
    /// The grammar compiler refused it (the API would answer 400).
    Refused(String),
    /// Compiled, generated, and the output is an instance.
    Valid,
    /// Compiled and generated, but the output is cut by `--max-tokens` (its last bytes).
    Truncated(String),
    /// Compiled and complete, yet not an instance (a bug in enforcement) — or the schema
    /// itself cannot be checked by the validator.
    Invalid(String),
    /// Generation failed.
    Failed(String),
}

pub fn bench_schemas(args: BenchSchemasArgs) -> Result<()> {
    crate::set_threads(args.threads)?;
    ensure!(args.every >= 1, "--every must be at least 1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.dir)
        .with_context(|| format!("reading {}", args.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let files: Vec<PathBuf> = files
        .into_iter()
        .step_by(args.every)
        .take(args.limit.unwrap_or(usize::MAX))
        .collect();
    ensure!(
        !files.is_empty(),
        "no .json files in {}",
        args.dir.display()
    );
    let entry = verre_models::ModelStore::from_env()?.resolve(&args.model)?;
    let model = Arc::new(LoadedModel::load(&entry.path)?);
    // One schema at a time: the timings are those of a lone request.
    let engine = EngineHandle::spawn(model.clone(), EngineOptions::one_at_a_time(&model))?;

    let started = Instant::now();
    let mut outcomes = Vec::with_capacity(files.len());
    let mut compile_ms = Vec::new();
    let mut mask_us = Vec::new();
    let mut constrained_tps = Vec::new();
    let mut free_tps = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let schema: Value = serde_json::from_str(
            &std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?,
        )
        .with_context(|| format!("{} is not JSON", file.display()))?;
        let outcome = run_one(
            &model,
            &engine,
            &schema,
            &args,
            &mut compile_ms,
            &mut mask_us,
            |g, prompt| {
                if constrained_tps.len() < args.compare && g.completion_tokens >= 8 {
                    constrained_tps.push(g.decode_tokens_per_second());
                    // The same prompt, length and sampling, without the grammar: the ratio
                    // is the grammar's cost alone.
                    let free = GenerateRequest {
                        prompt_ids: prompt.to_vec(),
                        max_tokens: g.completion_tokens,
                        ignore_eos: true,
                        sampling: verre_engine::SamplingParams {
                            repetition_penalty: args.repetition_penalty,
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    if let Ok(f) = engine.generate(free, |_| true) {
                        free_tps.push(f.decode_tokens_per_second());
                    }
                }
            },
        );
        if args.verbose {
            eprintln!(
                "[{}/{}] {}: {outcome:?}",
                i + 1,
                files.len(),
                file.file_name().unwrap_or_default().to_string_lossy()
            );
        }
        outcomes.push(outcome);
    }
    report(
        &args,
        &files,
        &outcomes,
        compile_ms,
        mask_us,
        constrained_tps,
        free_tps,
        started.elapsed(),
    )
}

fn run_one(
    model: &LoadedModel,
    engine: &EngineHandle,
    schema: &Value,
    args: &BenchSchemasArgs,
    compile_ms: &mut Vec<f64>,
    mask_us: &mut Vec<f64>,
    mut on_output: impl FnMut(&Generation, &[u32]),
) -> Outcome {
    let t = Instant::now();
    let grammar = match model.compile_grammar(&GrammarSpec::JsonSchema(schema.clone())) {
        Ok(g) => g,
        Err(e) => return Outcome::Refused(e.reason),
    };
    compile_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    let prompt = match model.chat_prompt(&[
        Message::new("system", "You answer with one JSON value and nothing else."),
        Message::new(
            "user",
            &format!(
                "Write a realistic example instance of this JSON Schema:\n{}",
                clip(&schema.to_string(), 1500)
            ),
        ),
    ]) {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(format!("{e:#}")),
    };
    let req = GenerateRequest {
        prompt_ids: prompt.clone(),
        max_tokens: args.max_tokens,
        grammar: Some(grammar),
        sampling: verre_engine::SamplingParams {
            repetition_penalty: args.repetition_penalty,
            ..Default::default()
        },
        ..Default::default()
    };
    let generation = match engine.generate(req, |_| true) {
        Ok(g) => g,
        Err(e) => return Outcome::Failed(format!("{e:#}")),
    };
    mask_us.extend(generation.mask_times.iter().map(|d| micros(*d)));
    on_output(&generation, &prompt);
    if generation.finish_reason != FinishReason::Stop {
        let text = &generation.text;
        let mut start = text.len().saturating_sub(120);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        let tail = &text[start..];
        return Outcome::Truncated(tail.chars().filter(|c| !c.is_control()).collect());
    }
    let instance: Value = match serde_json::from_str(&generation.text) {
        Ok(v) => v,
        Err(e) => {
            return Outcome::Invalid(format!("not JSON ({e}): {}", clip(&generation.text, 200)));
        }
    };
    let validator = match jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
    {
        Ok(v) => v,
        Err(e) => return Outcome::Invalid(format!("the validator cannot read the schema: {e}")),
    };
    match validator.iter_errors(&instance).next() {
        None => Outcome::Valid,
        Some(e) => Outcome::Invalid(format!("{e} at {}", e.instance_path())),
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// At most `n` bytes of `s`, cut at a character boundary.
fn clip(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn percentile(xs: &mut [f64], p: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let i = ((xs.len() - 1) as f64 * p).round() as usize;
    xs[i]
}

fn median(mut xs: Vec<f64>) -> f64 {
    percentile(&mut xs, 0.5)
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &BenchSchemasArgs,
    files: &[PathBuf],
    outcomes: &[Outcome],
    mut compile_ms: Vec<f64>,
    mut mask_us: Vec<f64>,
    constrained_tps: Vec<f64>,
    free_tps: Vec<f64>,
    elapsed: Duration,
) -> Result<()> {
    let n = outcomes.len();
    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let refused = count(|o| matches!(o, Outcome::Refused(_)));
    let valid = count(|o| matches!(o, Outcome::Valid));
    let truncated = count(|o| matches!(o, Outcome::Truncated(_)));
    let invalid = count(|o| matches!(o, Outcome::Invalid(_)));
    let failed = count(|o| matches!(o, Outcome::Failed(_)));
    let complete = valid + invalid;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for o in outcomes {
        if let Outcome::Refused(r) = o {
            *reasons.entry(first_line(r)).or_default() += 1;
        }
    }
    let mut reasons: Vec<(String, usize)> = reasons.into_iter().collect();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    let invalid_examples: Vec<Value> = files
        .iter()
        .zip(outcomes)
        .filter_map(|(f, o)| match o {
            Outcome::Truncated(tail) => Some(json!({
                "schema": f.file_name().unwrap_or_default().to_string_lossy(),
                "why": format!("cut by --max-tokens: …{tail}"),
            })),
            Outcome::Invalid(why) | Outcome::Failed(why) => Some(json!({
                "schema": f.file_name().unwrap_or_default().to_string_lossy(),
                "why": why,
            })),
            _ => None,
        })
        .take(10)
        .collect();
    let ratio = if free_tps.is_empty() {
        None
    } else {
        Some(median(constrained_tps.clone()) / median(free_tps.clone()))
    };
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let out = json!({
        "dir": args.dir.display().to_string(),
        "model": args.model,
        "schemas": n,
        "every": args.every,
        "max_tokens": args.max_tokens,
        "repetition_penalty": args.repetition_penalty,
        "compiled": n - refused,
        "declared_coverage": r3((n - refused) as f64 / n as f64),
        "valid": valid,
        "empirical_coverage": r3(valid as f64 / n as f64),
        "truncated": truncated,
        "complete_outputs": complete,
        "complete_outputs_valid": valid,
        "invalid": invalid,
        "failed": failed,
        "compile_ms": {"p50": r3(percentile(&mut compile_ms, 0.5)), "p99": r3(percentile(&mut compile_ms, 0.99))},
        "mask_us_per_token": {"p50": r3(percentile(&mut mask_us, 0.5)), "p99": r3(percentile(&mut mask_us, 0.99)), "tokens": mask_us.len()},
        "decode_tps": {
            "constrained_median": r3(median(constrained_tps.clone())),
            "unconstrained_median": r3(median(free_tps.clone())),
            "ratio": ratio.map(r3),
            "samples": free_tps.len(),
        },
        "refusal_reasons": reasons.iter().take(10).map(|(r, c)| json!({"reason": r, "count": c})).collect::<Vec<_>>(),
        "not_valid_examples": invalid_examples,
        "seconds": r3(elapsed.as_secs_f64()),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let name = short_name(&args.dir);
    println!(
        "{name}: {n} schemas (every {}), model {}, max {} tokens, repetition penalty {}, {:.0} s",
        args.every,
        args.model,
        args.max_tokens,
        args.repetition_penalty,
        elapsed.as_secs_f64()
    );
    println!(
        "  declared coverage (compiled)   {:>5}/{n}  {:.3}",
        n - refused,
        (n - refused) as f64 / n as f64
    );
    println!(
        "  empirical coverage (valid)     {valid:>5}/{n}  {:.3}",
        valid as f64 / n as f64
    );
    println!("  complete outputs that validate {valid:>5}/{complete}");
    println!("  cut by --max-tokens            {truncated:>5}");
    println!("  generation failed              {failed:>5}");
    println!(
        "  compile ms        p50 {:>8.2}  p99 {:>8.2}",
        out["compile_ms"]["p50"].as_f64().unwrap_or(0.0),
        out["compile_ms"]["p99"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  mask us/token     p50 {:>8.1}  p99 {:>8.1}  ({} tokens)",
        out["mask_us_per_token"]["p50"].as_f64().unwrap_or(0.0),
        out["mask_us_per_token"]["p99"].as_f64().unwrap_or(0.0),
        mask_us.len()
    );
    if let Some(ratio) = ratio {
        println!(
            "  decode tok/s      constrained {:.1}  unconstrained {:.1}  ratio {ratio:.3} ({} prompts)",
            median(constrained_tps),
            median(free_tps.clone()),
            free_tps.len()
        );
    }
    for (reason, c) in reasons.iter().take(5) {
        println!("  refused x{c}: {reason}");
    }
    for e in &invalid_examples {
        println!(
            "  not valid: {} — {}",
            e["schema"].as_str().unwrap_or(""),
            e["why"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

fn first_line(s: &str) -> String {
    clip(s.lines().next().unwrap_or(""), 160).to_string()
}

fn short_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}
