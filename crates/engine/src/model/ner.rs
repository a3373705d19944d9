//! Named-entity recognition with a BERT token classifier (`BertForTokenClassification`):
//! the encoder of [`super::bert`] and a linear head giving each token a label in BIO form
//! (`B-SURNAME`, `I-PER`, `O`, …). Used to find the names of persons that rules miss.
//!
//! Long texts are read in overlapping windows of [`WINDOW_TOKENS`]; each token takes its
//! probabilities from the window in which it stands farthest from an edge, where it has
//! the most context on both sides.

use std::path::Path;

use anyhow::{Context, Result, anyhow, ensure};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::bert::{BATCH_SEQUENCES, Embedder};

/// Tokens of text per window, besides `[CLS]` and `[SEP]`: about 400-500 characters of
/// European text, the length such models are trained on.
pub const WINDOW_TOKENS: usize = 128;
/// Tokens by which one window overlaps the next.
pub const WINDOW_OVERLAP: usize = 32;

/// The entity types that name a person, whatever the scheme: CoNLL's `PER`, OntoNotes'
/// `PERSON`, PII schemes' given names and surnames.
const PERSON_TYPES: &[&str] = &[
    "PER",
    "PERSON",
    "NAME",
    "GIVEN_NAME",
    "GIVENNAME",
    "FIRST_NAME",
    "FIRSTNAME",
    "MIDDLE_NAME",
    "SURNAME",
    "LAST_NAME",
    "LASTNAME",
    "FAMILY_NAME",
];

#[derive(Deserialize)]
struct HeadConfig {
    id2label: std::collections::BTreeMap<String, String>,
}

/// A BERT encoder with a token-classification head.
pub struct TokenClassifier {
    encoder: Embedder,
    /// `[labels, hidden]`, transposed: `[hidden, labels]`.
    head_t: Tensor,
    head_bias: Vec<f32>,
    labels: Vec<String>,
    /// For each label, whether its entity type names a person.
    person: Vec<bool>,
    tokenizer: tokenizers::Tokenizer,
    cls: u32,
    sep: u32,
}

/// A token of the text with the probability that it is part of a person's name.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenScore {
    /// Byte range of the token in the text.
    pub start: usize,
    pub end: usize,
    /// Probability mass of the labels whose type names a person.
    pub person: f32,
}

/// A span of the text that names a person: whole words, byte offsets.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonSpan {
    pub start: usize,
    pub end: usize,
    /// The highest token probability inside it.
    pub score: f32,
}

impl TokenClassifier {
    /// Loads `dir`: `config.json` with `id2label`, `tokenizer.json`, and the weights
    /// (`model.safetensors` or an ONNX export) with a `classifier` head.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let config: HeadConfig = serde_json::from_str(
            &std::fs::read_to_string(&config_path)
                .with_context(|| format!("reading {}", config_path.display()))?,
        )
        .with_context(|| format!("{}: no id2label", config_path.display()))?;
        let (encoder, mut rest, weights_path) = Embedder::load_with_rest(dir)?;
        let mut take = |name: &str| {
            rest.remove(name)
                .ok_or_else(|| anyhow!("{}: tensor {name} is missing", weights_path.display()))
        };
        let head = take("classifier.weight")?.to_dtype(DType::F32)?;
        let head_bias = take("classifier.bias")?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let (n_labels, hidden) = head.dims2()?;
        ensure!(
            hidden == encoder.dimensions() && head_bias.len() == n_labels,
            "{}: the classifier is {n_labels}x{hidden} with {} biases; the encoder is {} wide",
            weights_path.display(),
            head_bias.len(),
            encoder.dimensions()
        );
        let mut labels = vec![String::new(); n_labels];
        for (id, label) in &config.id2label {
            let i: usize = id
                .parse()
                .ok()
                .filter(|&i| i < n_labels)
                .ok_or_else(|| anyhow!("{}: label id {id:?}", config_path.display()))?;
            labels[i] = label.clone();
        }
        ensure!(
            labels.iter().all(|l| !l.is_empty()),
            "{}: id2label names {} of {n_labels} labels",
            config_path.display(),
            config.id2label.len()
        );
        let person = labels
            .iter()
            .map(|l| {
                let kind = l
                    .strip_prefix("B-")
                    .or_else(|| l.strip_prefix("I-"))
                    .or_else(|| l.strip_prefix("E-"))
                    .or_else(|| l.strip_prefix("S-"))
                    .unwrap_or(l);
                PERSON_TYPES.contains(&kind.to_ascii_uppercase().as_str())
            })
            .collect();
        let mut tokenizer = encoder.tokenizer().clone();
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow!("{}: {e}", dir.display()))?;
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| anyhow!("{}: the tokenizer has no {t}", dir.display()))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        Ok(Self {
            encoder,
            head_t: head.t()?.contiguous()?,
            head_bias,
            labels,
            person,
            tokenizer,
            cls,
            sep,
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Whether some label names a person (a model without one finds no names).
    pub fn knows_persons(&self) -> bool {
        self.person.iter().any(|&p| p)
    }

    /// Each token of `text`, with the probability that it is part of a person's name.
    pub fn person_scores(&self, text: &str) -> Result<Vec<TokenScore>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        let (ids, offsets) = (enc.get_ids(), enc.get_offsets());
        let n = ids.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        // Window starts: every WINDOW_TOKENS - WINDOW_OVERLAP tokens, the last flush with
        // the end.
        let step = WINDOW_TOKENS - WINDOW_OVERLAP;
        let mut starts: Vec<usize> = (0..n.saturating_sub(WINDOW_OVERLAP).max(1))
            .step_by(step)
            .collect();
        if let Some(&last) = starts.last()
            && last + WINDOW_TOKENS < n
        {
            starts.push(n - WINDOW_TOKENS);
        }
        // Which window each token is read in: the one where it is farthest from an edge.
        let owner: Vec<usize> = (0..n)
            .map(|i| {
                (0..starts.len())
                    .filter(|&w| starts[w] <= i && i < starts[w] + WINDOW_TOKENS)
                    .max_by_key(|&w| {
                        let (s, e) = (starts[w], (starts[w] + WINDOW_TOKENS).min(n));
                        (i - s).min(e - 1 - i)
                    })
                    .unwrap_or(0)
            })
            .collect();
        let mut person = vec![0f32; n];
        let n_labels = self.labels.len();
        for (batch_no, batch) in starts.chunks(BATCH_SEQUENCES).enumerate() {
            let seqs: Vec<Vec<u32>> = batch
                .iter()
                .map(|&s| {
                    let e = (s + WINDOW_TOKENS).min(n);
                    let mut seq = Vec::with_capacity(e - s + 2);
                    seq.push(self.cls);
                    seq.extend_from_slice(&ids[s..e]);
                    seq.push(self.sep);
                    seq
                })
                .collect();
            let states = self.encoder.hidden_states(&seqs)?;
            let rows = states.len() / self.encoder.dimensions();
            let x = Tensor::from_vec(states, (rows, self.encoder.dimensions()), &Device::Cpu)?;
            let logits = x.matmul(&self.head_t)?.flatten_all()?.to_vec1::<f32>()?;
            let mut row = 0;
            for (k, seq) in seqs.iter().enumerate() {
                let w = batch_no * BATCH_SEQUENCES + k;
                for (j, _) in seq.iter().enumerate() {
                    // j = 0 is [CLS], the last is [SEP].
                    if j > 0 && j + 1 < seq.len() {
                        let i = starts[w] + j - 1;
                        if owner[i] == w {
                            let l = &logits[(row + j) * n_labels..(row + j + 1) * n_labels];
                            person[i] = self.person_mass(l);
                        }
                    }
                }
                row += seq.len();
            }
        }
        Ok(offsets
            .iter()
            .zip(person)
            .map(|(&(start, end), person)| TokenScore { start, end, person })
            .collect())
    }

    /// The softmax mass of the person labels, from one token's logits.
    fn person_mass(&self, logits: &[f32]) -> f32 {
        let max = logits
            .iter()
            .zip(&self.head_bias)
            .map(|(l, b)| l + b)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0;
        let mut person = 0.0;
        for ((l, b), &p) in logits.iter().zip(&self.head_bias).zip(&self.person) {
            let e = (l + b - max).exp();
            total += e;
            if p {
                person += e;
            }
        }
        person / total
    }

    /// The names of persons in `text`: every word with a token at or above `threshold`,
    /// whole, and words next to each other (one or two spaces apart) joined into one name.
    pub fn persons(&self, text: &str, threshold: f32) -> Result<Vec<PersonSpan>> {
        let mut words: Vec<PersonSpan> = Vec::new();
        for t in self.person_scores(text)? {
            if t.person < threshold || t.start >= t.end {
                continue;
            }
            let (start, end) = word_around(text, t.start, t.end);
            match words.last_mut() {
                Some(w) if w.start == start => w.score = w.score.max(t.person),
                _ => words.push(PersonSpan {
                    start,
                    end,
                    score: t.person,
                }),
            }
        }
        let mut names: Vec<PersonSpan> = Vec::new();
        for w in words {
            match names.last_mut() {
                Some(n)
                    if w.start >= n.end
                        && w.start - n.end <= 2
                        && text[n.end..w.start]
                            .chars()
                            .all(|c| c == ' ' || c == '\u{a0}') =>
                {
                    n.end = w.end;
                    n.score = n.score.max(w.score);
                }
                Some(n) if w.start < n.end => {
                    n.end = n.end.max(w.end);
                    n.score = n.score.max(w.score);
                }
                _ => names.push(w),
            }
        }
        Ok(names)
    }
}

/// The word around the bytes `start..end`: letters, digits and marks, with apostrophes
/// and hyphens inside ("O'Brien", "Jean-Luc").
fn word_around(text: &str, start: usize, end: usize) -> (usize, usize) {
    let part = |c: char| c.is_alphanumeric() || matches!(c, '\'' | '’' | '-');
    let mut s = start;
    for (i, c) in text[..start].char_indices().rev() {
        if !part(c) {
            break;
        }
        s = i;
    }
    let mut e = end;
    for (i, c) in text[end..].char_indices() {
        if !part(c) {
            break;
        }
        e = end + i + c.len_utf8();
    }
    // Joiners at the edges are punctuation, not part of the name ("Anna-" at a line end).
    let word = &text[s..e];
    let trimmed_start = word.len() - word.trim_start_matches(['\'', '’', '-']).len();
    let trimmed = word.trim_matches(['\'', '’', '-']);
    (s + trimmed_start, s + trimmed_start + trimmed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_grows_to_its_whole_word() {
        let text = "Bonjour Jean-Luc O'Brien, à bientôt -Anna-";
        let at = |w: &str| {
            let s = text.find(w).unwrap();
            (s, s + w.len())
        };
        let (s, _) = at("Luc");
        assert_eq!(word_around(text, s, s + 2), at("Jean-Luc"));
        let (s, _) = at("Brien");
        assert_eq!(word_around(text, s, s + 3), at("O'Brien"));
        let (s, _) = at("Anna");
        assert_eq!(word_around(text, s, s + 2), at("Anna"));
        let (s, _) = at("bientôt");
        assert_eq!(word_around(text, s + 3, s + 5), at("bientôt"));
    }
}
