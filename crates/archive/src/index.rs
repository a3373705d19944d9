//! The in-process index over the stored passages: exact cosine similarity over every
//! vector (no approximate index: a brute-force pass over 10,000 passages of 384 floats is
//! a few milliseconds), BM25 over the passages' words, and the two fused by reciprocal
//! rank (Cormack et al., 2009).

use std::collections::HashMap;

/// How passages are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retrieval {
    /// Cosine similarity of the embeddings only.
    Vector,
    /// BM25 over the words only.
    Keyword,
    /// Both, fused by reciprocal rank.
    #[default]
    Hybrid,
}

impl std::str::FromStr for Retrieval {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vector" => Ok(Self::Vector),
            "keyword" | "bm25" => Ok(Self::Keyword),
            "hybrid" => Ok(Self::Hybrid),
            other => Err(format!(
                "unknown retrieval {other:?}: expected vector, keyword or hybrid"
            )),
        }
    }
}

/// BM25's usual constants.
const K1: f32 = 1.2;
const B: f32 = 0.75;
/// Reciprocal rank fusion's constant: a passage at rank r adds 1 / (RRF_K + r).
const RRF_K: f32 = 60.0;
/// How deep each ranking is read before fusing.
const FUSE_DEPTH: usize = 50;

/// The words BM25 counts: lower-cased runs of letters and digits.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// One ranked passage: its position in the index, its cosine similarity to the question
/// and the score it was ranked by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    pub position: usize,
    pub cosine: f32,
    pub score: f32,
}

/// Vectors and word counts of every passage, in a fixed order.
#[derive(Debug, Default)]
pub struct Index {
    dimensions: usize,
    /// Row-major, `dimensions` floats per passage, unit length.
    vectors: Vec<f32>,
    /// Word -> (passage, count), passages ascending.
    postings: HashMap<String, Vec<(u32, u32)>>,
    lengths: Vec<u32>,
    average_length: f32,
}

impl Index {
    /// Build from (text, unit vector) pairs; every vector must have the same length.
    pub fn build<'a>(passages: impl IntoIterator<Item = (&'a str, &'a [f32])>) -> Self {
        let mut index = Index::default();
        for (i, (text, vector)) in passages.into_iter().enumerate() {
            if index.dimensions == 0 {
                index.dimensions = vector.len();
            }
            assert_eq!(vector.len(), index.dimensions, "vectors of one length");
            index.vectors.extend_from_slice(vector);
            let mut counts: HashMap<String, u32> = HashMap::new();
            let mut length = 0;
            for w in words(text) {
                *counts.entry(w).or_default() += 1;
                length += 1;
            }
            for (w, n) in counts {
                index.postings.entry(w).or_default().push((i as u32, n));
            }
            index.lengths.push(length);
        }
        let total: u64 = index.lengths.iter().map(|&l| l as u64).sum();
        index.average_length = total as f32 / index.lengths.len().max(1) as f32;
        index
    }

    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Cosine similarity of every passage to a unit-length query vector.
    fn cosines(&self, query: &[f32]) -> Vec<f32> {
        if self.dimensions == 0 || query.len() != self.dimensions {
            return vec![0.0; self.len()];
        }
        self.vectors
            .chunks_exact(self.dimensions)
            .map(|v| v.iter().zip(query).map(|(a, b)| a * b).sum())
            .collect()
    }

    /// BM25 of every passage that shares a word with the query (others score 0).
    fn bm25(&self, query: &str) -> Vec<f32> {
        let mut scores = vec![0.0; self.len()];
        let n = self.len() as f32;
        let mut seen = Vec::new();
        for w in words(query) {
            if seen.contains(&w) {
                continue;
            }
            let Some(postings) = self.postings.get(&w) else {
                seen.push(w);
                continue;
            };
            let df = postings.len() as f32;
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
            for &(p, tf) in postings {
                let tf = tf as f32;
                let norm = 1.0 - B + B * self.lengths[p as usize] as f32 / self.average_length;
                scores[p as usize] += idf * tf * (K1 + 1.0) / (tf + K1 * norm);
            }
            seen.push(w);
        }
        scores
    }

    /// The `k` best passages for a question (its text and unit-length vector).
    pub fn search(&self, query: &str, vector: &[f32], k: usize, how: Retrieval) -> Vec<Ranked> {
        let cosines = self.cosines(vector);
        let ranked = |scores: &[f32], depth: usize| -> Vec<usize> {
            let mut order: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] > 0.0).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            order.truncate(depth);
            order
        };
        let scored: Vec<(usize, f32)> = match how {
            Retrieval::Vector => {
                // Cosines may be negative: rank them all.
                let mut order: Vec<usize> = (0..cosines.len()).collect();
                order.sort_by(|&a, &b| cosines[b].total_cmp(&cosines[a]).then(a.cmp(&b)));
                order.truncate(k);
                order.into_iter().map(|i| (i, cosines[i])).collect()
            }
            Retrieval::Keyword => {
                let bm25 = self.bm25(query);
                ranked(&bm25, k).into_iter().map(|i| (i, bm25[i])).collect()
            }
            Retrieval::Hybrid => {
                let mut by_vector: Vec<usize> = (0..cosines.len()).collect();
                by_vector.sort_by(|&a, &b| cosines[b].total_cmp(&cosines[a]).then(a.cmp(&b)));
                by_vector.truncate(FUSE_DEPTH);
                let by_words = ranked(&self.bm25(query), FUSE_DEPTH);
                let mut fused: HashMap<usize, f32> = HashMap::new();
                for list in [&by_vector, &by_words] {
                    for (rank, &i) in list.iter().enumerate() {
                        *fused.entry(i).or_default() += 1.0 / (RRF_K + rank as f32 + 1.0);
                    }
                }
                let mut fused: Vec<(usize, f32)> = fused.into_iter().collect();
                fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                fused.truncate(k);
                fused
            }
        };
        scored
            .into_iter()
            .map(|(position, score)| Ranked {
                position,
                cosine: cosines[position],
                score,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    fn index() -> (Index, Vec<Vec<f32>>) {
        let vectors = vec![
            unit(&[1.0, 0.0, 0.0]),
            unit(&[0.0, 1.0, 0.0]),
            unit(&[0.7, 0.7, 0.1]),
        ];
        let texts = [
            "the lease of the warehouse",
            "invoice for the consulting work of Norvane",
            "minutes of the board",
        ];
        let index = Index::build(
            texts
                .iter()
                .copied()
                .zip(vectors.iter().map(|v| v.as_slice())),
        );
        (index, vectors)
    }

    #[test]
    fn vector_search_is_exact_cosine_order() {
        let (index, _) = index();
        let hits = index.search("", &unit(&[1.0, 0.1, 0.0]), 3, Retrieval::Vector);
        let order: Vec<usize> = hits.iter().map(|h| h.position).collect();
        assert_eq!(order, [0, 2, 1]);
        assert!((hits[0].cosine - hits[0].score).abs() < 1e-6);
    }

    #[test]
    fn bm25_prefers_the_rare_word() {
        let (index, _) = index();
        let hits = index.search("Norvane invoice", &[0.0, 0.0, 1.0], 3, Retrieval::Keyword);
        assert_eq!(hits.len(), 1, "only passages that share a word");
        assert_eq!(hits[0].position, 1);
    }

    #[test]
    fn hybrid_fuses_both_rankings() {
        let (index, _) = index();
        // The vector ranks 0, 2, 1; the words rank 1 alone: 1 is in both lists and
        // comes first, then the vector's first choice, then its second.
        let hits = index.search("Norvane", &unit(&[1.0, 0.0, 0.0]), 3, Retrieval::Hybrid);
        let order: Vec<usize> = hits.iter().map(|h| h.position).collect();
        assert_eq!(order, [1, 0, 2]);
    }
}
