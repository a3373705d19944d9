//! An archive you can ask (`verre archive add/ask/list/remove`, and `archive:<model>` on
//! `/v1/chat/completions`).
//!
//! Documents (PDF, `.eml`, text, Markdown: [`document`]) are cut into passages on page and
//! paragraph boundaries ([`chunk`]), embedded with a sentence-embedding model (all-MiniLM-L6
//! by default) and kept in verre's store — sealed at rest, erased and purged like mail
//! (`verre_store::archive`). A question is embedded the same way and answered from an
//! exact, in-process index over the stored vectors and BM25 over the passages' words,
//! fused by reciprocal rank ([`index`]): no vector extension is needed in the database.
//! [`answer`] builds the prompt that asks a chat model to answer from the passages and to
//! cite them as `[document, p. N]`, and says so without calling a model when nothing
//! retrieved is close enough to the question.

pub mod answer;
pub mod chunk;
pub mod document;
pub mod index;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde::Serialize;
use verre_engine::model::bert::{BATCH_SEQUENCES, Embedder};
use verre_store::Store;
use verre_store::archive::{ArchiveAdded, NewChunk, NewDocument};

pub use answer::{Answer, Citation};
pub use chunk::{Chunk, ChunkOptions};
pub use document::{DocumentKind, SourceDocument};
pub use index::{Index, Retrieval};

/// The embedding model documents are embedded with unless another is configured.
pub const DEFAULT_EMBEDDING_MODEL: &str = "minilm-l6";

/// A retrieved passage: where it comes from, its text and how close it is.
#[derive(Debug, Clone, Serialize)]
pub struct Passage {
    pub document_id: i64,
    /// The document's file name: what answers cite.
    pub document: String,
    /// From 1.
    pub page: i64,
    pub text: String,
    /// Cosine similarity of the passage's embedding to the question's.
    pub cosine: f32,
    /// The score it was ranked by (cosine, BM25 or the fused reciprocal rank).
    pub score: f32,
}

/// What adding one document did.
#[derive(Debug, Clone, Serialize)]
pub struct Added {
    pub name: String,
    /// `added`, `exists` (the same bytes are archived already) or `forgotten` (erased
    /// before: not stored again).
    pub outcome: &'static str,
    pub document_id: Option<i64>,
    pub pages: usize,
    pub chunks: usize,
}

/// The index and what each of its positions is, as of one state of the store.
struct Snapshot {
    fingerprint: (i64, i64),
    index: Arc<Index>,
    passages: Arc<Vec<Passage>>,
}

/// The archive over a store, with the embedding model its vectors come from.
pub struct Archive {
    store: Store,
    embedder: Arc<Embedder>,
    /// The embedding model's name, stored with each document.
    model: String,
    chunking: ChunkOptions,
    snapshot: tokio::sync::Mutex<Option<Snapshot>>,
}

impl Archive {
    pub fn new(store: Store, embedder: Arc<Embedder>, model: &str) -> Self {
        Self {
            store,
            embedder,
            model: model.to_string(),
            chunking: ChunkOptions::default(),
            snapshot: tokio::sync::Mutex::new(None),
        }
    }

    pub fn with_chunking(mut self, chunking: ChunkOptions) -> Self {
        self.chunking = chunking;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The embedding model's name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Unit-length embeddings of `texts`, on both cores (blocking: the async methods
    /// call it off the runtime).
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        embed_all(&self.embedder, texts)
    }

    async fn embed_off_runtime(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        let embedder = self.embedder.clone();
        tokio::task::spawn_blocking(move || embed_all(&embedder, &texts))
            .await
            .context("the embedding thread failed")?
    }

    /// Read, cut, embed and store one file.
    pub async fn add_file(&self, path: &Path, actor: &str) -> Result<Added> {
        let path = path.to_path_buf();
        let (doc, bytes) = tokio::task::spawn_blocking(move || document::read(&path))
            .await
            .context("the reading thread failed")??;
        self.add_document(&doc, &bytes, actor).await
    }

    /// Cut, embed and store a document read from `bytes` (deduplicated by their hash).
    pub async fn add_document(
        &self,
        doc: &SourceDocument,
        bytes: &[u8],
        actor: &str,
    ) -> Result<Added> {
        let content_hash = verre_store::content_hash(bytes);
        let chunks = chunk::chunk_pages(&doc.pages, self.chunking);
        let mut added = Added {
            name: doc.name.clone(),
            outcome: "added",
            document_id: None,
            pages: doc.pages.len(),
            chunks: chunks.len(),
        };
        if self.store.is_forgotten(&content_hash).await? {
            added.outcome = "forgotten";
            return Ok(added);
        }
        let vectors = self
            .embed_off_runtime(chunks.iter().map(|c| c.text.clone()).collect())
            .await
            .with_context(|| format!("embedding {}", doc.name))?;
        let new = NewDocument {
            content_hash,
            name: doc.name.clone(),
            kind: doc.kind.as_str().to_string(),
            pages: doc.pages.len() as i64,
            model: self.model.clone(),
            dimensions: self.embedder.dimensions() as i64,
        };
        let chunks: Vec<NewChunk> = chunks
            .into_iter()
            .zip(vectors)
            .map(|(c, vector)| NewChunk {
                page: c.page,
                text: c.text,
                vector,
            })
            .collect();
        match self.store.archive_add(&new, &chunks, actor).await? {
            ArchiveAdded::Added(id) => added.document_id = Some(id),
            ArchiveAdded::Exists(id) => {
                added.outcome = "exists";
                added.document_id = Some(id);
            }
            ArchiveAdded::Forgotten => added.outcome = "forgotten",
        }
        Ok(added)
    }

    /// The index as of now: rebuilt only when documents were added or removed since.
    async fn snapshot(&self) -> Result<(Arc<Index>, Arc<Vec<Passage>>)> {
        let fingerprint = self.store.archive_fingerprint().await?;
        let mut snapshot = self.snapshot.lock().await;
        if let Some(s) = snapshot.as_ref().filter(|s| s.fingerprint == fingerprint) {
            return Ok((s.index.clone(), s.passages.clone()));
        }
        let documents = self.store.archive_documents().await?;
        if let Some(d) = documents.iter().find(|d| d.model != self.model) {
            bail!(
                "archived document {} was embedded with {}, not {}: ask with the model it was added with",
                d.id,
                d.model,
                self.model
            );
        }
        let chunks = self.store.archive_chunks().await?;
        let name = |id: i64| {
            documents
                .iter()
                .find(|d| d.id == id)
                .map(|d| d.name.clone())
                .unwrap_or_default()
        };
        let index = Arc::new(Index::build(
            chunks
                .iter()
                .map(|c| (c.text.as_str(), c.vector.as_slice())),
        ));
        let passages: Arc<Vec<Passage>> = Arc::new(
            chunks
                .into_iter()
                .map(|c| Passage {
                    document_id: c.document_id,
                    document: name(c.document_id),
                    page: c.page,
                    text: c.text,
                    cosine: 0.0,
                    score: 0.0,
                })
                .collect(),
        );
        *snapshot = Some(Snapshot {
            fingerprint,
            index: index.clone(),
            passages: passages.clone(),
        });
        Ok((index, passages))
    }

    /// The `k` passages closest to `question`, best first.
    pub async fn search(&self, question: &str, k: usize, how: Retrieval) -> Result<Vec<Passage>> {
        anyhow::ensure!(!question.trim().is_empty(), "the question is empty");
        let (index, passages) = self.snapshot().await?;
        if index.is_empty() {
            return Ok(Vec::new());
        }
        let vector = self
            .embed_off_runtime(vec![question.to_string()])
            .await?
            .pop()
            .context("no embedding for the question")?;
        Ok(index
            .search(question, &vector, k, how)
            .into_iter()
            .map(|r| Passage {
                cosine: r.cosine,
                score: r.score,
                ..passages[r.position].clone()
            })
            .collect())
    }
}

fn embed_all(embedder: &Embedder, texts: &[String]) -> Result<Vec<Vec<f32>>> {
    let ids = texts
        .par_iter()
        .map(|t| embedder.tokenize(t))
        .collect::<Result<Vec<_>>>()?;
    // Batches of stacked sequences (large products), the batches spread over the pool.
    let batches = ids
        .par_chunks(BATCH_SEQUENCES)
        .map(|batch| embedder.embed_batch(batch))
        .collect::<Result<Vec<_>>>()?;
    Ok(batches.into_iter().flatten().collect())
}
