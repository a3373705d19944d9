//! Log-probabilities in the two shapes OpenAI uses: chat's list of token objects, and the
//! legacy completions' parallel arrays.

use serde_json::{Map, Value, json};
use verre_engine::Sampled;
use verre_engine::tokenizer::Tokenizer;

/// A token as the client sees it: its text (lossy where a token is part of a character)
/// and its exact bytes.
fn token_text(tokenizer: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let bytes = tokenizer.token_bytes(id);
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// One entry of a chat choice's `logprobs.content`.
pub fn chat_entry(tokenizer: &Tokenizer, sampled: &Sampled) -> Value {
    let item = |id: u32, logprob: f32| {
        let (token, bytes) = token_text(tokenizer, id);
        json!({ "token": token, "logprob": logprob, "bytes": bytes })
    };
    let mut entry = item(sampled.token, sampled.logprob);
    let top: Vec<Value> = sampled.top.iter().map(|&(id, lp)| item(id, lp)).collect();
    entry["top_logprobs"] = Value::Array(top);
    entry
}

/// A completion choice's `logprobs`: `tokens`, `token_logprobs`, `top_logprobs` and
/// `text_offset`, grown one token at a time.
#[derive(Debug, Clone, Default)]
pub struct CompletionLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<Option<f32>>,
    top_logprobs: Vec<Option<Map<String, Value>>>,
    text_offset: Vec<usize>,
    /// Characters of text before the next token.
    offset: usize,
}

impl CompletionLogprobs {
    /// Add a token. `sampled` is `None` for the first prompt token, which has no
    /// log-probability. The sampled token is always among its `top_logprobs`, as OpenAI
    /// promises.
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32, sampled: Option<&Sampled>) {
        let (text, _) = token_text(tokenizer, token);
        self.text_offset.push(self.offset);
        self.offset += text.chars().count();
        self.token_logprobs.push(sampled.map(|s| s.logprob));
        self.top_logprobs.push(sampled.map(|s| {
            let mut top = Map::new();
            for &(id, lp) in s.top.iter().chain([(s.token, s.logprob)].iter()) {
                top.entry(token_text(tokenizer, id).0).or_insert(json!(lp));
            }
            top
        }));
        self.tokens.push(text);
    }

    /// The tokens added since the last call, as a JSON object (a stream sends each chunk's
    /// own tokens; offsets keep counting from the start).
    pub fn take(&mut self) -> Value {
        json!({
            "tokens": std::mem::take(&mut self.tokens),
            "token_logprobs": std::mem::take(&mut self.token_logprobs),
            "top_logprobs": std::mem::take(&mut self.top_logprobs),
            "text_offset": std::mem::take(&mut self.text_offset),
        })
    }
}
