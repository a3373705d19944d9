//! Answers from retrieved passages: the prompt that shows a chat model the passages, each
//! labelled `[document, p. N]`, and asks it to answer from them only and cite the labels;
//! the citations read back from its answer; and the refusal, without any model call, when
//! no passage is close enough to the question. [`ask`] (the command) also constrains the
//! answer to JSON whose sources can only be the retrieved labels; the API route keeps the
//! client's own output format and relies on the instruction alone.

use std::sync::LazyLock;

use anyhow::{Context, Result};
use regex::Regex;
use serde::Serialize;
use serde_json::{Value, json};
use verre_intake::backend::ModelApi;

use crate::Passage;

/// Below this cosine similarity between the question and the closest passage, nothing in
/// the archive is taken as relevant. Measured with all-MiniLM-L6 over the generated
/// archive of `tests/retrieval.rs`: off-topic questions reach 0.22-0.27 (business
/// boilerplate is close to anything), the questions it answers more.
pub const MIN_COSINE: f32 = 0.35;

/// What is said when nothing retrieved is relevant.
pub const NOTHING_RELEVANT: &str =
    "Nothing in the archive is relevant to this question: no passage is close enough to it.";

const INSTRUCTIONS: &str = "You answer questions from an archive of documents. Use only the \
passages given with the question. After each fact, cite the passage it comes from with its \
label exactly as written, for example [lease-0042.txt, p. 2]. If the passages do not answer \
the question, say that the archive does not say.";

/// A passage an answer cites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Citation {
    pub document: String,
    pub page: i64,
}

/// An answer and what it rests on.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub text: String,
    /// The retrieved passages it cites, in the order first cited.
    pub citations: Vec<Citation>,
    /// What was retrieved (empty labels nothing).
    pub passages: Vec<Passage>,
    /// False when nothing retrieved was relevant (no model was called).
    pub relevant: bool,
}

/// A passage's label, as the model is asked to cite it.
pub fn label(p: &Passage) -> String {
    format!("[{}, p. {}]", p.document, p.page)
}

/// Whether the closest passage is close enough to answer from.
pub fn relevant(passages: &[Passage], min_cosine: f32) -> bool {
    passages.iter().any(|p| p.cosine >= min_cosine)
}

/// The passages as the model reads them, each under its label.
pub fn context(passages: &[Passage]) -> String {
    passages
        .iter()
        .map(|p| format!("{}\n{}", label(p), p.text.trim()))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The chat messages that ask `question` over `passages`.
pub fn messages(question: &str, passages: &[Passage]) -> Vec<Value> {
    vec![
        json!({"role": "system", "content": INSTRUCTIONS}),
        json!({"role": "user", "content": user_turn(question, passages)}),
    ]
}

fn user_turn(question: &str, passages: &[Passage]) -> String {
    format!(
        "Passages:\n\n{}\n\nQuestion: {}",
        context(passages),
        question.trim()
    )
}

/// A client's conversation with the passages added: the instructions as (or appended to)
/// the system message, the passages before the text of the last user message. Returns
/// false when there is no user message to answer.
pub fn augment(messages: &mut Vec<Value>, passages: &[Passage]) -> bool {
    let Some(last) = messages.iter().rposition(|m| m["role"] == "user") else {
        return false;
    };
    let question = message_text(&messages[last]);
    messages[last] = json!({"role": "user", "content": user_turn(&question, passages)});
    match messages.first_mut() {
        Some(m) if m["role"] == "system" => {
            let text = message_text(m);
            *m = json!({"role": "system", "content": format!("{text}\n\n{INSTRUCTIONS}")});
        }
        _ => messages.insert(0, json!({"role": "system", "content": INSTRUCTIONS})),
    }
    true
}

/// The text of a chat message: its string content, or its text parts joined.
pub fn message_text(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The retrieved passages' labels an answer cites: `[name, p. N]` (also `page N`, and
/// several pages or labels in one pair of brackets), and `[name]` alone for a document's
/// first retrieved page. Labels that name no retrieved document are left out.
pub fn citations(text: &str, passages: &[Passage]) -> Vec<Citation> {
    static BRACKETS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\[([^\[\]]{1,300})\]").unwrap());
    static PAGE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?i)^(.*?),?\s*(?:p\.|pp\.|page|pages)\s*(\d+)$").unwrap());
    let mut out: Vec<Citation> = Vec::new();
    for inside in BRACKETS.captures_iter(text) {
        for one in inside[1].split(';') {
            let one = one.trim();
            let (name, page) = match PAGE.captures(one) {
                Some(c) => (c[1].trim().to_string(), c[2].parse::<i64>().ok()),
                None => (one.to_string(), None),
            };
            let Some(p) = passages
                .iter()
                .find(|p| p.document == name && page.is_none_or(|n| n == p.page))
                .or_else(|| passages.iter().find(|p| p.document == name))
            else {
                continue;
            };
            let c = Citation {
                document: p.document.clone(),
                page: page.unwrap_or(p.page),
            };
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// Answer `question` from `passages` with the chat `model` behind `api`; when no passage
/// reaches `min_cosine`, say so without calling it.
pub async fn ask(
    api: &dyn ModelApi,
    model: &str,
    question: &str,
    passages: Vec<Passage>,
    min_cosine: f32,
) -> Result<Answer> {
    if !relevant(&passages, min_cosine) {
        return Ok(Answer {
            text: NOTHING_RELEVANT.to_string(),
            citations: Vec::new(),
            passages,
            relevant: false,
        });
    }
    let mut messages = messages(question, &passages);
    messages[0]["content"] = json!(format!("{INSTRUCTIONS} {SOURCES}"));
    let request = json!({
        "model": model,
        "messages": messages,
        "temperature": 0,
        "max_tokens": 300,
        "response_format": cited_answer_format(&passages),
    });
    let response = api
        .chat(request)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("asking {model}"))?;
    let content = response["choices"][0]["message"]["content"]
        .as_str()
        .with_context(|| format!("{model} answered without text: {response}"))?;
    let json: Value = serde_json::from_str(content)
        .with_context(|| format!("{model}'s answer is not the JSON asked for: {content}"))?;
    let mut text = json["answer"]
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_string();
    for source in json["sources"].as_array().into_iter().flatten() {
        if let Some(label) = source.as_str() {
            text.push_str(&format!(" [{label}]"));
        }
    }
    Ok(Answer {
        citations: cited(&text, &passages),
        text,
        passages,
        relevant: true,
    })
}

/// The citations of an answer that its passages support: [`citations`], then [`supported`].
pub fn cited(text: &str, passages: &[Passage]) -> Vec<Citation> {
    supported(text, &citations(text, passages), passages)
}

/// Of the passages an answer cites, those that support it best. A small model asked to
/// name its sources tends to name every passage it was shown; the words that make an
/// answer this answer (names, amounts, dates) stand in the passage it came from and not in
/// the look-alikes retrieved beside it. Each answer word scores by how few of the retrieved
/// passages hold it (words every passage has, such as "penalty" in five supply contracts,
/// count for almost nothing), each cited passage by the answer words it holds, and a
/// citation is kept when its passage scores at least [`SUPPORT_SHARE`] of the best one.
/// When no cited passage holds a word of the answer, the citations are left as they are.
pub fn supported(answer: &str, cited: &[Citation], passages: &[Passage]) -> Vec<Citation> {
    use std::collections::HashSet;
    // The answer without its own labels, as words.
    let answer_words: HashSet<String> =
        crate::index::words(&LABEL.replace_all(answer, " ")).collect();
    let passage_words: Vec<HashSet<String>> = passages
        .iter()
        .map(|p| crate::index::words(&p.text).collect())
        .collect();
    let n = passages.len() as f32;
    let weight = |w: &String| {
        let df = passage_words.iter().filter(|ws| ws.contains(w)).count() as f32;
        if df == 0.0 {
            0.0
        } else {
            ((n + 1.0) / (df + 0.5)).ln()
        }
    };
    let weights: Vec<(&String, f32)> = answer_words.iter().map(|w| (w, weight(w))).collect();
    let score = |c: &Citation| -> f32 {
        passages
            .iter()
            .zip(&passage_words)
            .filter(|(p, _)| p.document == c.document && p.page == c.page)
            .map(|(_, ws)| {
                weights
                    .iter()
                    .filter(|(w, _)| ws.contains(*w))
                    .map(|(_, x)| x)
                    .sum::<f32>()
            })
            .fold(0.0, f32::max)
    };
    let scores: Vec<f32> = cited.iter().map(score).collect();
    let best = scores.iter().copied().fold(0.0, f32::max);
    if best <= 0.0 {
        return cited.to_vec();
    }
    cited
        .iter()
        .zip(&scores)
        .filter(|(_, s)| **s >= SUPPORT_SHARE * best)
        .map(|(c, _)| c.clone())
        .collect()
}

/// A cited passage is kept when it supports the answer at least this share as well as the
/// best cited one (two passages that each hold half of a two-part answer both stay).
pub const SUPPORT_SHARE: f32 = 0.75;

/// `[document, p. N]` labels (the answer's citations, not its words).
static LABEL: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\[[^\[\]]{1,300}\]").unwrap());

/// How the answer names its sources under [`cited_answer_format`].
const SOURCES: &str = "Answer in JSON: `answer` is the answer in one or two sentences, `sources` lists the labels (without brackets) of the passages it comes from.";

/// The answer as JSON whose `sources` can only be labels of the retrieved passages
/// (constrained decoding): a small model that forgets to cite in prose still names one.
pub fn cited_answer_format(passages: &[Passage]) -> Value {
    let mut labels: Vec<String> = Vec::new();
    for p in passages {
        let label = format!("{}, p. {}", p.document, p.page);
        if !labels.contains(&label) {
            labels.push(label);
        }
    }
    json!({
        "type": "json_schema",
        "json_schema": {
            "name": "cited_answer",
            "strict": true,
            "schema": {
                "type": "object",
                "properties": {
                    "answer": {"type": "string", "maxLength": 600},
                    "sources": {
                        "type": "array",
                        "items": {"type": "string", "enum": labels},
                        "minItems": 1,
                        "maxItems": passages.len().max(1),
                    },
                },
                "required": ["answer", "sources"],
                "additionalProperties": false,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(document: &str, page: i64, cosine: f32) -> Passage {
        Passage {
            document_id: 1,
            document: document.into(),
            page,
            text: format!("text of {document} page {page}"),
            cosine,
            score: cosine,
        }
    }

    #[test]
    fn citations_name_retrieved_documents_and_pages() {
        let ps = [
            passage("lease-1.txt", 2, 0.5),
            passage("invoice 7.pdf", 1, 0.4),
        ];
        let text = "The rent is 900 EUR [lease-1.txt, p. 2]; paid late [invoice 7.pdf, page 1; lease-1.txt, p. 2]. \
                    See also [unknown.pdf, p. 3] and [invoice 7.pdf].";
        assert_eq!(
            citations(text, &ps),
            [
                Citation {
                    document: "lease-1.txt".into(),
                    page: 2
                },
                Citation {
                    document: "invoice 7.pdf".into(),
                    page: 1
                }
            ]
        );
        assert!(citations("no brackets at all", &ps).is_empty());
    }

    #[test]
    fn sources_can_only_be_retrieved_labels() {
        let ps = [
            passage("a.txt", 1, 0.5),
            passage("a.txt", 1, 0.4),
            passage("b.pdf", 3, 0.4),
        ];
        let f = cited_answer_format(&ps);
        let sources = &f["json_schema"]["schema"]["properties"]["sources"];
        assert_eq!(
            sources["items"]["enum"],
            json!(["a.txt, p. 1", "b.pdf, p. 3"])
        );
        assert_eq!(sources["minItems"], 1);
    }

    #[test]
    fn a_citation_is_kept_only_where_its_passage_supports_the_answer() {
        let minutes = |doc: &str, company: &str, person: &str| Passage {
            text: format!(
                "Minutes of the board of {company}. The board named {person} as head of \
                 logistics, effective immediately. The meeting closed at noon."
            ),
            ..passage(doc, 1, 0.6)
        };
        let ps = [
            minutes("minutes-0245.md", "Kestrel Foods", "Olga Brandt"),
            minutes("minutes-0325.md", "Kestrel Furniture", "Tilde Kowalski"),
            minutes("minutes-0395.md", "Harbor Foods", "Jan Novak"),
        ];
        // The model named every passage it was shown.
        let text = "The board of Kestrel Foods named Olga Brandt as head of logistics. \
                    [minutes-0245.md, p. 1] [minutes-0325.md, p. 1] [minutes-0395.md, p. 1]";
        let all = citations(text, &ps);
        assert_eq!(all.len(), 3);
        let kept = supported(text, &all, &ps);
        assert_eq!(
            kept,
            [Citation {
                document: "minutes-0245.md".into(),
                page: 1
            }]
        );
        // An answer drawn from two passages keeps both.
        let both = "Olga Brandt leads logistics at Kestrel Foods and Tilde Kowalski at Kestrel \
                    Furniture. [minutes-0245.md, p. 1] [minutes-0325.md, p. 1] [minutes-0395.md, p. 1]";
        let kept = supported(both, &citations(both, &ps), &ps);
        let docs: Vec<&str> = kept.iter().map(|c| c.document.as_str()).collect();
        assert_eq!(docs, ["minutes-0245.md", "minutes-0325.md"]);
        // Nothing of the answer in any passage: the model's citations stand.
        let vague = "The archive does not say. [minutes-0395.md, p. 1]";
        assert_eq!(
            supported(vague, &citations(vague, &ps), &ps),
            citations(vague, &ps)
        );
    }

    #[test]
    fn nothing_relevant_below_the_threshold() {
        assert!(!relevant(&[passage("a", 1, 0.1)], MIN_COSINE));
        assert!(relevant(
            &[passage("a", 1, 0.1), passage("b", 1, 0.6)],
            MIN_COSINE
        ));
        assert!(!relevant(&[], MIN_COSINE));
    }

    #[test]
    fn a_conversation_gets_the_passages_before_its_last_question() {
        let mut messages = vec![
            json!({"role": "user", "content": "hello"}),
            json!({"role": "assistant", "content": "hi"}),
            json!({"role": "user", "content": [{"type": "text", "text": "What is the rent?"}]}),
        ];
        assert!(augment(&mut messages, &[passage("lease-1.txt", 2, 0.5)]));
        assert_eq!(messages.len(), 4);
        assert_eq!(messages[0]["role"], "system");
        let last = messages[3]["content"].as_str().unwrap();
        assert!(last.starts_with("Passages:\n\n[lease-1.txt, p. 2]\ntext of lease-1.txt page 2"));
        assert!(last.ends_with("Question: What is the rent?"));
        assert!(!augment(
            &mut vec![json!({"role": "system", "content": "x"})],
            &[]
        ));
    }
}
