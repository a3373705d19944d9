//! `verre archive add|ask|list|remove`: the archive you can ask (verre-archive), over the
//! same database and data keys as `verre up`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use verre_archive::{Archive, Retrieval, answer};
use verre_engine::model::bert::Embedder;
use verre_intake::backend::{BoxFuture, ModelApi, ModelCallError};
use verre_server::AppState;
use verre_server::internal::ApiClient;

use crate::intake_cmd::{DbArgs, open_store_as_up, runtime};

#[derive(Subcommand)]
pub enum ArchiveCommand {
    /// Add documents (PDF, .eml, .txt, .md; a folder adds the files in it): cut into
    /// passages, embedded, stored (sealed with the data keys like mail).
    Add {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        embedding: EmbeddingArgs,
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        json: bool,
    },
    /// Ask a question: the passages retrieved, with document and page, then an answer from
    /// the chat model that cites them (nothing relevant: said so, no model called).
    Ask(AskArgs),
    /// List the archived documents.
    List {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        json: bool,
    },
    /// Remove archived documents (by the id `list` shows) with their passages.
    Remove {
        #[arg(required = true)]
        ids: Vec<i64>,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Args)]
pub struct EmbeddingArgs {
    /// The embedding model (a store name or a model directory); asking needs the one the
    /// documents were added with.
    #[arg(long, default_value = verre_archive::DEFAULT_EMBEDDING_MODEL)]
    pub embedding_model: String,
}

#[derive(Args)]
pub struct AskArgs {
    pub question: String,
    /// The chat model that answers.
    #[arg(long, default_value = crate::up_cmd::DEFAULT_CHAT_MODEL)]
    pub model: String,
    /// Passages retrieved and shown to the model.
    #[arg(short, long, default_value_t = 5)]
    pub k: usize,
    /// vector, keyword (BM25) or hybrid (both, fused by reciprocal rank).
    #[arg(long, default_value = "hybrid")]
    pub retrieval: Retrieval,
    /// Cosine similarity the closest passage must reach to be taken as relevant.
    #[arg(long, default_value_t = answer::MIN_COSINE)]
    pub min_score: f32,
    /// Show the passages only; call no model.
    #[arg(long)]
    pub passages_only: bool,
    #[command(flatten)]
    pub embedding: EmbeddingArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn archive(cmd: ArchiveCommand) -> Result<()> {
    let rt = runtime()?;
    match cmd {
        ArchiveCommand::Add {
            paths,
            embedding,
            db,
            json,
        } => rt.block_on(add(paths, &embedding, &db, json)),
        ArchiveCommand::Ask(args) => rt.block_on(ask(args)),
        ArchiveCommand::List { db, json } => rt.block_on(list(&db, json)),
        ArchiveCommand::Remove { ids, db } => rt.block_on(remove(&ids, &db)),
    }
}

/// The embedding model by store name or directory: (name stored with documents, model).
fn embedder(args: &EmbeddingArgs) -> Result<(String, Arc<Embedder>)> {
    let name = &args.embedding_model;
    let (id, path) = if std::path::Path::new(name).is_dir() {
        (name.clone(), PathBuf::from(name))
    } else {
        let entry = verre_models::ModelStore::from_env()?
            .resolve(name)
            .with_context(|| format!("the embedding model {name} (verre pull {name})"))?;
        (entry.name, entry.path)
    };
    let embedder =
        Embedder::load(&path).with_context(|| format!("loading the embedding model {id}"))?;
    Ok((id, Arc::new(embedder)))
}

async fn open(embedding: &EmbeddingArgs, db: &DbArgs) -> Result<Archive> {
    let store = open_store_as_up(db).await?;
    let (name, embedder) = tokio::task::spawn_blocking({
        let embedding = EmbeddingArgs {
            embedding_model: embedding.embedding_model.clone(),
        };
        move || embedder(&embedding)
    })
    .await??;
    Ok(Archive::new(store, embedder, &name))
}

/// The files a path names: itself, or the readable files of a folder (not recursive).
fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && verre_archive::DocumentKind::of(p).is_some())
                .collect();
            inside.sort();
            out.extend(inside);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

async fn add(
    paths: Vec<PathBuf>,
    embedding: &EmbeddingArgs,
    db: &DbArgs,
    json: bool,
) -> Result<()> {
    let files = files(&paths)?;
    if files.is_empty() {
        bail!("no .pdf, .eml, .txt or .md file in what was given");
    }
    let archive = open(embedding, db).await?;
    let bar = (!json).then(|| {
        let bar = indicatif::ProgressBar::new(files.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} documents {msg}")
                .expect("a valid template"),
        );
        bar
    });
    let started = std::time::Instant::now();
    let (mut results, mut failed, mut passages) = (Vec::new(), 0, 0);
    for file in &files {
        match archive.add_file(file, "cli").await {
            Ok(added) => {
                passages += added.chunks;
                if let Some(bar) = &bar {
                    bar.set_message(format!("{passages} passages"));
                }
                results.push(serde_json::to_value(&added)?);
            }
            Err(e) => {
                failed += 1;
                let message = format!("{}: {e:#}", file.display());
                match &bar {
                    Some(bar) => bar.suspend(|| eprintln!("error: {message}")),
                    None => eprintln!("error: {message}"),
                }
                results.push(serde_json::json!({"name": file.display().to_string(), "outcome": "failed", "error": format!("{e:#}")}));
            }
        }
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        let count = |o: &str| results.iter().filter(|r| r["outcome"] == o).count();
        println!(
            "archive: {} added ({passages} passages, {:.1} s), {} already there, {} erased before (not stored), {failed} failed",
            count("added"),
            started.elapsed().as_secs_f64(),
            count("exists"),
            count("forgotten")
        );
    }
    if failed > 0 {
        bail!("{failed} of {} files could not be added", files.len());
    }
    Ok(())
}

/// verre's `/v1` in this process as the archive's model API, caller `archive`.
struct ArchiveApi(ApiClient);

impl ModelApi for ArchiveApi {
    fn chat(&self, request: Value) -> BoxFuture<'_, Result<Value, ModelCallError>> {
        Box::pin(async move {
            self.0
                .post("archive", "/v1/chat/completions", &request)
                .await
                .map_err(|e| ModelCallError {
                    permanent: e.is_permanent(),
                    param: e.param.clone(),
                    message: e.to_string(),
                })
        })
    }
}

async fn ask(args: AskArgs) -> Result<()> {
    anyhow::ensure!(args.k > 0, "-k must be at least 1");
    let archive = open(&args.embedding, &args.db).await?;
    let passages = archive
        .search(&args.question, args.k, args.retrieval)
        .await?;
    if !args.json {
        for p in &passages {
            println!(
                "{} (cosine {:.2})\n  {}\n",
                answer::label(p),
                p.cosine,
                p.text.replace('\n', "\n  ")
            );
        }
    }
    let result = if args.passages_only {
        answer::Answer {
            text: String::new(),
            citations: Vec::new(),
            relevant: answer::relevant(&passages, args.min_score),
            passages,
        }
    } else if !answer::relevant(&passages, args.min_score) {
        answer::ask(
            &NoModel,
            &args.model,
            &args.question,
            passages,
            args.min_score,
        )
        .await?
    } else {
        let specs = crate::serve_cmd::model_specs(std::slice::from_ref(&args.model))?;
        let options = verre_engine::engine::EngineOptions::default();
        let (chat, embedding) =
            tokio::task::spawn_blocking(move || verre_server::load_models(&specs, &options))
                .await
                .context("loading the chat model")??;
        let state = AppState::new(None).with_store(archive.store().clone());
        state.set_models(chat, embedding);
        let api = ArchiveApi(ApiClient::new(Arc::new(state)));
        answer::ask(&api, &args.model, &args.question, passages, args.min_score).await?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else if !args.passages_only {
        println!("{}", result.text);
        if result.relevant && result.citations.is_empty() {
            eprintln!("(the answer cites none of the passages)");
        }
    }
    Ok(())
}

/// Never called: nothing relevant is answered without a model.
struct NoModel;

impl ModelApi for NoModel {
    fn chat(&self, _: Value) -> BoxFuture<'_, Result<Value, ModelCallError>> {
        Box::pin(async { Err(ModelCallError::permanent("no model is loaded")) })
    }
}

async fn list(db: &DbArgs, json: bool) -> Result<()> {
    let store = open_store_as_up(db).await?;
    let docs = store.archive_documents().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&docs)?);
        return Ok(());
    }
    if docs.is_empty() {
        println!("the archive is empty (verre archive add PATH...)");
    }
    for d in docs {
        println!(
            "{:>6}  {:<8} {:>4} pages {:>5} passages  {}  {}",
            d.id,
            d.kind,
            d.pages,
            d.chunks,
            crate::gdpr_cmd::utc(d.added_at),
            d.name
        );
    }
    Ok(())
}

async fn remove(ids: &[i64], db: &DbArgs) -> Result<()> {
    let store = open_store_as_up(db).await?;
    let mut missing = Vec::new();
    for &id in ids {
        if store.archive_remove(id, "cli").await? {
            println!("removed archived document {id}");
        } else {
            missing.push(id.to_string());
        }
    }
    if !missing.is_empty() {
        bail!("no archived document {}", missing.join(", "));
    }
    Ok(())
}
