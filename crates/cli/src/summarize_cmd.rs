//! `verre summarize FILE`: a long document summarised section by section on a local model,
//! with its points cited to pages. Wiring only; the summary is verre-intake's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use verre_intake::summary::{SummaryOptions, summarize, summarize_single_pass};
use verre_server::AppState;

#[derive(Args)]
pub struct SummarizeArgs {
    /// A PDF, a mail (.eml), or a text or Markdown file.
    pub file: PathBuf,
    /// About how many words the summary has.
    #[arg(long, default_value_t = 200)]
    pub words: usize,
    /// The model: a store name or a .gguf path.
    #[arg(long, short = 'm', default_value = "qwen2.5-coder-1.5b")]
    pub model: String,
    /// Tokens of text one call reads (a chunk of pages).
    #[arg(long, default_value_t = verre_intake::pipeline::DEFAULT_CHUNK_TOKENS)]
    pub chunk_tokens: usize,
    /// The whole document in one call instead (it must fit the model's context): to
    /// compare with map and reduce.
    #[arg(long)]
    pub single_pass: bool,
    /// Worker threads for the model (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print the summary and its costs as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn summarize_file(args: SummarizeArgs) -> Result<()> {
    crate::set_threads(args.threads)?;
    anyhow::ensure!(
        (20..=5000).contains(&args.words),
        "--words: between 20 and 5000"
    );
    anyhow::ensure!(args.chunk_tokens >= 128, "--chunk-tokens: at least 128");
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let pages = verre_intake::document::file_pages(&args.file.to_string_lossy(), &bytes)?;
    anyhow::ensure!(
        pages.iter().any(|p| !p.text.trim().is_empty()),
        "{} has no text to summarise (a scan? OCR is not done here)",
        args.file.display()
    );
    let rt = crate::intake_cmd::runtime()?;
    rt.block_on(async {
        let specs = crate::serve_cmd::model_specs(std::slice::from_ref(&args.model))?;
        let model = specs[0].id.clone();
        let options = verre_engine::engine::EngineOptions::default();
        let (chat, embedding) =
            tokio::task::spawn_blocking(move || verre_server::load_models(&specs, &options))
                .await
                .context("loading the model")??;
        let state = AppState::new(None);
        state.set_models(chat, embedding);
        let api = crate::intake_cmd::PipelineApi::for_caller(Arc::new(state), "summarize".into());
        let summary_options = SummaryOptions {
            model,
            words: args.words,
            chunk_tokens: args.chunk_tokens,
        };
        let bar = (!args.quiet && !args.json).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} model calls",
                )
                .expect("a valid template"),
            );
            bar
        });
        let start = Instant::now();
        let summary = if args.single_pass {
            summarize_single_pass(&api, &pages, &summary_options).await
        } else {
            summarize(&api, &pages, &summary_options, &|done, total| {
                if let Some(bar) = &bar {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                }
            })
            .await
        }
        .map_err(|e| anyhow::anyhow!("summarising {}: {e}", args.file.display()))?;
        let seconds = start.elapsed().as_secs_f64();
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        if args.json {
            let mut out = serde_json::to_value(&summary)?;
            out["pages"] = pages.iter().filter(|p| p.number.is_some()).count().into();
            out["seconds"] = seconds.into();
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!("{}", summary.text);
            eprintln!(
                "\n{} section(s) read in {} chunk(s), {} prompt + {} completion tokens, {seconds:.1} s",
                summary.sections.len(),
                summary.chunks,
                summary.prompt_tokens,
                summary.completion_tokens
            );
        }
        Ok(())
    })
}
