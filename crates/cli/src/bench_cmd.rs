//! `verre bench`: prefill and decode speed of a model on this machine, for one sequence
//! and for batches of sequences decoded together, with peak memory.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use clap::Args;
use serde_json::json;
use verre_engine::LoadedModel;
use verre_engine::kv::KvCacheType;
use verre_engine::model::SeqChunk;

#[derive(Args)]
pub struct BenchArgs {
    /// Model: a name in the store or a path to a .gguf file.
    #[arg(short, long)]
    pub model: String,
    /// Prompt length for the prefill measurement (pp).
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens decoded per sequence for the decode measurement (tg).
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Batch sizes for decode: sequences decoded together, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// Repetitions of each measurement (min/median/max are reported).
    #[arg(long, default_value_t = 3)]
    pub repetitions: usize,
    /// How the KV cache stores keys and values: f16, q8_0 or q4_0.
    #[arg(long, default_value_t = KvCacheType::F16)]
    pub kv_cache_type: KvCacheType,
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

/// min / median / max of a set of tokens-per-second samples.
fn summary(mut xs: Vec<f64>) -> serde_json::Value {
    xs.sort_by(f64::total_cmp);
    let r = |x: f64| (x * 100.0).round() / 100.0;
    json!({ "min": r(xs[0]), "median": r(xs[xs.len() / 2]), "max": r(xs[xs.len() - 1]) })
}

/// Deterministic filler tokens spread over the vocabulary (speed does not depend on them).
fn filler(n: usize, vocab: usize, salt: u64) -> Vec<u32> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ salt;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // Stay clear of the special tokens at the start of most vocabularies.
            (1000 + (x >> 33) as usize % (vocab - 1000)) as u32
        })
        .collect()
}

pub fn bench(args: BenchArgs) -> Result<()> {
    crate::set_threads(args.threads)?;
    ensure!(args.repetitions > 0, "--repetitions must be at least 1");
    ensure!(
        args.batch.iter().all(|&b| b > 0),
        "--batch sizes must be at least 1"
    );
    let entry = verre_models::ModelStore::from_env()?.resolve(&args.model)?;
    let model = LoadedModel::load(&entry.path)?;
    let info = model.info().clone();
    ensure!(info.vocab_size > 2000, "vocabulary too small to benchmark");
    ensure!(
        args.prompt_tokens + args.gen_tokens < info.context_length,
        "--prompt-tokens + --gen-tokens must fit the context length {}",
        info.context_length
    );
    let threads = args.threads.unwrap_or_else(rayon::current_num_threads);

    // Prefill: one sequence of prompt_tokens from an empty cache.
    let prompt = filler(args.prompt_tokens, info.vocab_size, 1);
    let (mut pp, mut ttft_ms) = (Vec::new(), Vec::new());
    for _ in 0..args.repetitions {
        let mut kv = model.model.new_kv_cache_as(args.kv_cache_type)?;
        let t = Instant::now();
        model.prefill(&mut kv, &prompt).context("prefill")?;
        pp.push(args.prompt_tokens as f64 / t.elapsed().as_secs_f64());
        ttft_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    // Decode: `batch` sequences, each with a short prompt, then gen_tokens steps together.
    let mut decode = Vec::new();
    for &b in &args.batch {
        let mut samples = Vec::new();
        for rep in 0..args.repetitions {
            // One pool for the batch, as the engine has: each sequence a block table in it.
            let per_seq = 16 + args.gen_tokens + 1;
            let mut pool = model.model.new_kv_pool_as(
                args.kv_cache_type,
                b * verre_engine::kv::KvPool::blocks_for(per_seq),
            )?;
            let mut seqs: Vec<_> = (0..b)
                .map(|_| verre_engine::kv::SeqKv::new(info.context_length))
                .collect();
            for (i, kv) in seqs.iter_mut().enumerate() {
                let prompt = filler(16, info.vocab_size, (rep * 1000 + i) as u64);
                model.model.forward(
                    &mut pool,
                    &mut [SeqChunk {
                        tokens: &prompt,
                        kv,
                        all_logits: false,
                    }],
                )?;
            }
            let steps: Vec<Vec<u32>> = (0..b)
                .map(|i| filler(args.gen_tokens, info.vocab_size, 7 + i as u64))
                .collect();
            let t = Instant::now();
            for step in 0..args.gen_tokens {
                let mut batch: Vec<SeqChunk<'_>> = seqs
                    .iter_mut()
                    .zip(&steps)
                    .map(|(kv, toks)| SeqChunk {
                        tokens: &toks[step..step + 1],
                        kv,
                        all_logits: false,
                    })
                    .collect();
                model.model.forward(&mut pool, &mut batch)?;
            }
            samples.push((b * args.gen_tokens) as f64 / t.elapsed().as_secs_f64());
        }
        decode.push((b, samples));
    }

    let rss = peak_rss_bytes();
    let out = json!({
        "model": args.model,
        "path": entry.path,
        "file_size_bytes": model.file_size,
        "threads": threads,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "repetitions": args.repetitions,
        "kv_cache_type": args.kv_cache_type.name(),
        "prefill_tokens_per_second": summary(pp.clone()),
        "prefill_ms": summary(ttft_ms),
        "decode": decode.iter().map(|(b, s)| json!({"batch": b, "tokens_per_second": summary(s.clone())})).collect::<Vec<_>>(),
        "peak_rss_bytes": rss,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} ({}, {} threads, {} KV cache)",
        args.model,
        entry.path.display(),
        threads,
        args.kv_cache_type
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10}",
        "test", "min t/s", "median", "max"
    );
    let row = |name: String, v: &serde_json::Value| {
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{name:<22} {:>10.2} {:>10.2} {:>10.2}",
            f("min"),
            f("median"),
            f("max")
        );
    };
    row(
        format!("pp{}", args.prompt_tokens),
        &out["prefill_tokens_per_second"],
    );
    for d in out["decode"].as_array().into_iter().flatten() {
        row(
            format!("tg{} x{}", args.gen_tokens, d["batch"]),
            &d["tokens_per_second"],
        );
    }
    if let Some(rss) = rss {
        println!(
            "peak RSS {:.1} MB (model file {:.1} MB)",
            rss as f64 / 1e6,
            model.file_size as f64 / 1e6
        );
    }
    Ok(())
}

/// Peak resident memory of this process (Linux `VmHWM`), if known.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
