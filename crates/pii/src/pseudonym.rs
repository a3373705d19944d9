//! Per-request pseudonymisation: PII out of the prompt before it leaves for a backend that
//! is not local, and back into the answer.
//!
//! A [`Pseudonymizer`] lives for one request. Every distinct value gets one placeholder,
//! `<KIND_n>`, numbered per kind in order of first appearance, whichever message it
//! appears in ("same value" is compared after normalising: case of e-mail addresses, the
//! E.164 form of phone numbers, spaces in IBANs and card numbers). Its [`Restorer`] maps
//! the placeholders back — in whole text, in a stream of chunks ([`StreamRestorer`]), and
//! in JSON values such as tool-call arguments.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use regex::Regex;
use serde_json::Value;

use crate::detect::{DetectOptions, PiiKind, PiiSpan, detect};
use crate::recognizers::normalize_phone;

/// Anything shaped like a placeholder, to keep a user's own `<EMAIL_1>` from being
/// mistaken for one of ours.
static PLACEHOLDER_SHAPE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"<([A-Z_]+)_([0-9]{1,9})>").expect("placeholder pattern"));

/// What a [`Pseudonymizer`] replaces.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PseudonymizeOptions {
    /// Detection settings; its `kinds` are the kinds that get replaced (default: all).
    /// Put names the model extracted in `detect.extra_names`, or add them later with
    /// [`Pseudonymizer::add_names`].
    pub detect: DetectOptions,
}

impl PseudonymizeOptions {
    /// Replace only `kinds`.
    pub fn only(kinds: &[PiiKind]) -> Self {
        PseudonymizeOptions {
            detect: DetectOptions::only(kinds),
        }
    }
}

/// Replaces PII with placeholders for one request; see the module documentation.
#[derive(Debug, Clone)]
pub struct Pseudonymizer {
    detect: DetectOptions,
    /// Normalised value → placeholder.
    placeholder_of: HashMap<(PiiKind, String), String>,
    /// Value as written → placeholder, so each spelling is normalised once.
    placeholder_of_written: HashMap<(PiiKind, String), String>,
    original_of: HashMap<String, String>,
    counts: HashMap<PiiKind, usize>,
    /// Placeholder-shaped strings the request itself contains; never handed out, so that
    /// restoring the answer cannot turn the user's literal text into someone's data.
    taken: HashSet<String>,
}

impl Pseudonymizer {
    pub fn new(opts: PseudonymizeOptions) -> Self {
        Pseudonymizer {
            detect: opts.detect,
            placeholder_of: HashMap::new(),
            placeholder_of_written: HashMap::new(),
            original_of: HashMap::new(),
            counts: HashMap::new(),
            taken: HashSet::new(),
        }
    }

    /// Adds names known to be persons (for instance extracted by a model) for the texts
    /// pseudonymised from now on.
    pub fn add_names<S: Into<String>>(&mut self, names: impl IntoIterator<Item = S>) {
        self.detect
            .extra_names
            .extend(names.into_iter().map(Into::into));
    }

    /// Detects PII in `text` and returns it with every span replaced by its placeholder.
    pub fn pseudonymize(&mut self, text: &str) -> String {
        let spans = detect(text, &self.detect);
        self.pseudonymize_spans(text, &spans)
    }

    /// Replaces the given spans (sorted, non-overlapping, as [`detect`] returns them) with
    /// their placeholders. Spans of kinds these options do not replace are left as they are.
    pub fn pseudonymize_spans(&mut self, text: &str, spans: &[PiiSpan]) -> String {
        for m in PLACEHOLDER_SHAPE.find_iter(text) {
            if !self.original_of.contains_key(m.as_str()) {
                self.taken.insert(m.as_str().to_string());
            }
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for span in spans {
            if span.start < at || !self.detect.wants(span.kind) {
                continue;
            }
            out.push_str(&text[at..span.start]);
            out.push_str(&self.placeholder(span.kind, &text[span.start..span.end]));
            at = span.end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// Pseudonymises every string inside `value`, recursively (object keys stay). Every
    /// string means every string: for a whole chat request, where image data and tool
    /// schemas must stay intact, use [`Pseudonymizer::pseudonymize_chat_messages`].
    pub fn pseudonymize_json(&mut self, value: &mut Value) {
        match value {
            Value::String(s) => *s = self.pseudonymize(s),
            Value::Array(items) => items.iter_mut().for_each(|v| self.pseudonymize_json(v)),
            Value::Object(map) => map.values_mut().for_each(|v| self.pseudonymize_json(v)),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// Pseudonymises the text of OpenAI-shaped chat `messages` (an array): each message's
    /// `content` when it is a string, the `text` of its `{"type": "text"}` parts, and the
    /// `arguments` of its `tool_calls` (JSON text; placeholders need no escaping). Roles,
    /// tool-call ids, image parts and anything else stay as they are.
    pub fn pseudonymize_chat_messages(&mut self, messages: &mut Value) {
        let Some(messages) = messages.as_array_mut() else {
            return;
        };
        for message in messages {
            match message.get_mut("content") {
                Some(Value::String(text)) => *text = self.pseudonymize(text),
                Some(Value::Array(parts)) => {
                    for part in parts {
                        if part.get("type").and_then(Value::as_str) == Some("text")
                            && let Some(Value::String(text)) = part.get_mut("text")
                        {
                            *text = self.pseudonymize(text);
                        }
                    }
                }
                _ => {}
            }
            if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
                for call in calls {
                    if let Some(Value::String(arguments)) = call.pointer_mut("/function/arguments")
                    {
                        *arguments = self.pseudonymize(arguments);
                    }
                }
            }
        }
    }

    /// The placeholder for `value` of `kind`, allocating the next number on first sight.
    pub fn placeholder(&mut self, kind: PiiKind, value: &str) -> String {
        if let Some(p) = self.placeholder_of_written.get(&(kind, value.to_string())) {
            return p.clone();
        }
        let key = (kind, self.normalize(kind, value));
        if let Some(p) = self.placeholder_of.get(&key).cloned() {
            self.placeholder_of_written
                .insert((kind, value.to_string()), p.clone());
            return p;
        }
        let n = self.counts.entry(kind).or_insert(0);
        let placeholder = loop {
            *n += 1;
            let candidate = format!("<{}_{}>", kind.placeholder_label(), n);
            if !self.taken.contains(&candidate) {
                break candidate;
            }
        };
        self.placeholder_of.insert(key, placeholder.clone());
        self.placeholder_of_written
            .insert((kind, value.to_string()), placeholder.clone());
        self.original_of
            .insert(placeholder.clone(), value.to_string());
        placeholder
    }

    /// How many distinct values have a placeholder.
    pub fn len(&self) -> usize {
        self.original_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.original_of.is_empty()
    }

    /// A restorer for the placeholders handed out so far (take it after the whole request
    /// has been pseudonymised).
    pub fn restorer(&self) -> Restorer {
        Restorer::new(self.original_of.clone())
    }

    fn normalize(&self, kind: PiiKind, value: &str) -> String {
        match kind {
            PiiKind::Email => value.to_lowercase(),
            PiiKind::Phone => normalize_phone(value, &self.detect.phone_regions)
                .unwrap_or_else(|| value.chars().filter(char::is_ascii_digit).collect()),
            PiiKind::Iban | PiiKind::Card => value
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
                .to_ascii_uppercase(),
            PiiKind::Ip => value
                .parse::<IpAddr>()
                .map_or_else(|_| value.to_lowercase(), |ip| ip.to_string()),
            PiiKind::Person => value
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase(),
            PiiKind::Url | PiiKind::DateOfBirth => value.to_string(),
        }
    }
}

/// How a restored value is written into the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Escape {
    /// As it was.
    #[default]
    None,
    /// Escaped for the inside of a JSON string literal: for JSON text such as streamed
    /// tool-call arguments, where a restored `"` or `\` would otherwise break the JSON.
    JsonString,
}

/// Puts original values back in place of placeholders. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Restorer {
    original_of: Arc<HashMap<String, String>>,
    longest: usize,
}

impl Restorer {
    /// A restorer for an explicit placeholder → original map.
    pub fn new(original_of: HashMap<String, String>) -> Self {
        let longest = original_of.keys().map(String::len).max().unwrap_or(0);
        Restorer {
            original_of: Arc::new(original_of),
            longest,
        }
    }

    /// The original value behind `placeholder`.
    pub fn original(&self, placeholder: &str) -> Option<&str> {
        self.original_of.get(placeholder).map(String::as_str)
    }

    /// `text` with every known placeholder replaced; unknown ones (`<PERSON_9>` that this
    /// request never handed out) stay as they are.
    pub fn restore(&self, text: &str) -> String {
        self.restore_escaped(text, Escape::None)
    }

    /// Like [`Restorer::restore`], writing the originals with `escape`.
    pub fn restore_escaped(&self, text: &str, escape: Escape) -> String {
        let mut stream = self.stream_escaped(escape);
        let mut out = stream.push(text);
        out.push_str(&stream.finish());
        out
    }

    /// Restores every string inside `value`, object keys included, recursively: for
    /// parsed tool-call arguments and structured output.
    pub fn restore_json(&self, value: &mut Value) {
        match value {
            Value::String(s) => *s = self.restore(s),
            Value::Array(items) => items.iter_mut().for_each(|v| self.restore_json(v)),
            Value::Object(map) => {
                let entries = std::mem::take(map);
                for (key, mut v) in entries {
                    self.restore_json(&mut v);
                    map.insert(self.restore(&key), v);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// A restorer for a stream of text chunks.
    pub fn stream(&self) -> StreamRestorer {
        self.stream_escaped(Escape::None)
    }

    /// A restorer for a stream of chunks that writes originals with `escape`
    /// ([`Escape::JsonString`] for streamed tool-call arguments).
    pub fn stream_escaped(&self, escape: Escape) -> StreamRestorer {
        StreamRestorer {
            restorer: self.clone(),
            pending: String::new(),
            escape,
        }
    }

    /// Whether `s` (which starts with `<` and has no `>`) could still grow into a known
    /// placeholder.
    fn could_become_placeholder(&self, s: &str) -> bool {
        s.len() < self.longest && self.original_of.keys().any(|p| p.starts_with(s))
    }

    fn write_original(&self, original: &str, escape: Escape, out: &mut String) {
        match escape {
            Escape::None => out.push_str(original),
            Escape::JsonString => {
                let quoted = serde_json::to_string(original).expect("a string always serialises");
                out.push_str(&quoted[1..quoted.len() - 1]);
            }
        }
    }
}

/// Restores placeholders in a stream of chunks that may split a placeholder anywhere
/// (`"<PER"`, `"SON_1> said"`). It holds back only text that could still be the start
/// of a known placeholder; everything else comes out at once.
#[derive(Debug, Clone)]
pub struct StreamRestorer {
    restorer: Restorer,
    pending: String,
    escape: Escape,
}

impl StreamRestorer {
    /// Feeds the next chunk; returns the text that is final now.
    pub fn push(&mut self, chunk: &str) -> String {
        self.pending.push_str(chunk);
        let mut out = String::with_capacity(self.pending.len());
        let pending = std::mem::take(&mut self.pending);
        let mut at = 0;
        while let Some(lt) = pending[at..].find('<').map(|i| at + i) {
            out.push_str(&pending[at..lt]);
            let rest = &pending[lt..];
            // '>' is ASCII, so its byte position is a char boundary wherever it falls.
            let window = &rest.as_bytes()[..self.restorer.longest.min(rest.len())];
            match window.iter().position(|&b| b == b'>') {
                Some(gt) => {
                    if let Some(original) = self.restorer.original(&rest[..=gt]) {
                        self.restorer
                            .write_original(original, self.escape, &mut out);
                        at = lt + gt + 1;
                        continue;
                    }
                }
                None if self.restorer.could_become_placeholder(rest) => {
                    self.pending = rest.to_string();
                    return out;
                }
                None => {}
            }
            out.push('<');
            at = lt + 1;
        }
        out.push_str(&pending[at..]);
        out
    }

    /// Ends the stream: whatever was held back comes out as it is.
    pub fn finish(self) -> String {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restorer() -> Restorer {
        Restorer::new(HashMap::from([
            ("<PERSON_1>".to_string(), "Jean \"JD\" Dupont".to_string()),
            ("<EMAIL_1>".to_string(), "jd@example.fr".to_string()),
            ("<PERSON_10>".to_string(), "Zoé".to_string()),
        ]))
    }

    #[test]
    fn whole_text_restoration_leaves_unknown_and_partial_placeholders() {
        let r = restorer();
        assert_eq!(
            r.restore("<PERSON_1> <EMAIL_1><PERSON_10> <PERSON_2> <PERSON_1 <<EMAIL_1>> a<b"),
            "Jean \"JD\" Dupont jd@example.frZoé <PERSON_2> <PERSON_1 <jd@example.fr> a<b"
        );
    }

    #[test]
    fn every_split_of_a_stream_gives_the_same_text() {
        let r = restorer();
        let text = "Bonjour <PERSON_1>, écrivez à <EMAIL_1> ou <PERSON_10>; <PERSON_3> <<PERSON_1>< PERSON_1> <EMAIL_1";
        let expected = r.restore(text);
        assert!(
            expected
                .contains("Jean \"JD\" Dupont, écrivez à jd@example.fr ou Zoé; <PERSON_3> <Jean")
        );
        let boundaries: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for &i in &boundaries {
            for &j in boundaries.iter().filter(|&&j| j >= i) {
                let mut s = r.stream();
                let mut out = s.push(&text[..i]);
                out += &s.push(&text[i..j]);
                out += &s.push(&text[j..]);
                out += &s.finish();
                assert_eq!(out, expected, "split at {i} and {j}");
            }
        }
        // One character at a time, too.
        let mut s = r.stream();
        let mut out = String::new();
        for c in text.chars() {
            out += &s.push(c.encode_utf8(&mut [0; 4]));
        }
        out += &s.finish();
        assert_eq!(out, expected);
    }

    #[test]
    fn stream_holds_back_only_possible_placeholder_starts() {
        let r = restorer();
        let mut s = r.stream();
        assert_eq!(s.push("a < b and <PER"), "a < b and ");
        assert_eq!(s.push("SON_1"), "");
        assert_eq!(s.push("> ok <X"), "Jean \"JD\" Dupont ok <X");
        assert_eq!(s.push("<EMAIL_"), "");
        assert_eq!(s.finish(), "<EMAIL_");
    }

    #[test]
    fn json_values_and_json_text_are_restored() {
        let r = restorer();
        let mut args = serde_json::json!({
            "to": "<EMAIL_1>",
            "people": ["<PERSON_1>", {"<PERSON_10>": 3}],
            "n": 1,
        });
        r.restore_json(&mut args);
        assert_eq!(
            args,
            serde_json::json!({"to": "jd@example.fr", "people": ["Jean \"JD\" Dupont", {"Zoé": 3}], "n": 1})
        );
        let text = r#"{"name": "<PERSON_1>", "mail": "<EMAIL_1>"}"#;
        let restored = r.restore_escaped(text, Escape::JsonString);
        let parsed: Value = serde_json::from_str(&restored).unwrap();
        assert_eq!(parsed["name"], "Jean \"JD\" Dupont");
        let mut s = r.stream_escaped(Escape::JsonString);
        let mut streamed = String::new();
        for piece in text.as_bytes().chunks(3) {
            streamed += &s.push(std::str::from_utf8(piece).unwrap());
        }
        streamed += &s.finish();
        assert_eq!(streamed, restored);
    }

    #[test]
    fn same_value_same_placeholder_across_messages() {
        let mut p = Pseudonymizer::new(PseudonymizeOptions::default());
        let a = p.pseudonymize("Mail Jean.Dupont@Example.fr or call +33 6 12 34 56 78.");
        let b = p.pseudonymize("Again: jean.dupont@example.fr, 06 12 34 56 78, other@example.org");
        assert_eq!(a, "Mail <EMAIL_1> or call <PHONE_1>.");
        assert_eq!(b, "Again: <EMAIL_1>, <PHONE_1>, <EMAIL_2>");
        let r = p.restorer();
        assert_eq!(
            r.restore("<EMAIL_2> / <EMAIL_1>"),
            "other@example.org / Jean.Dupont@Example.fr"
        );
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn placeholders_already_in_the_request_are_never_handed_out() {
        let mut p = Pseudonymizer::new(PseudonymizeOptions::default());
        let out =
            p.pseudonymize("Template: Hello <PERSON_1>, write to <EMAIL_1>. Mine: ana@example.pt");
        assert_eq!(
            out,
            "Template: Hello <PERSON_1>, write to <EMAIL_1>. Mine: <EMAIL_2>"
        );
        let r = p.restorer();
        assert_eq!(
            r.restore("<EMAIL_1> / <EMAIL_2>"),
            "<EMAIL_1> / ana@example.pt"
        );
    }

    #[test]
    fn only_chosen_kinds_are_replaced_and_extra_names_count() {
        let mut p = Pseudonymizer::new(PseudonymizeOptions::only(&[PiiKind::Person]));
        p.add_names(["Kowalczyk"]);
        let out = p.pseudonymize("Kowalczyk <k@example.com> paid.");
        assert_eq!(out, "<PERSON_1> <k@example.com> paid.");
    }

    #[test]
    fn chat_messages_keep_everything_but_their_text() {
        let mut p = Pseudonymizer::new(PseudonymizeOptions::default());
        let image = "data:image/png;base64,4111111111111111AAAA+33612345678";
        let mut messages = serde_json::json!([
            {"role": "system", "content": "You help Mme Lefèvre."},
            {"role": "user", "content": [
                {"type": "text", "text": "Mail lefevre@example.fr"},
                {"type": "image_url", "image_url": {"url": image}},
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_4111111111111111", "type": "function",
                 "function": {"name": "send", "arguments": "{\"to\": \"lefevre@example.fr\"}"}},
            ]},
        ]);
        p.pseudonymize_chat_messages(&mut messages);
        assert_eq!(messages[0]["content"], "You help Mme <PERSON_1>.");
        assert_eq!(messages[1]["content"][0]["text"], "Mail <EMAIL_1>");
        assert_eq!(messages[1]["content"][1]["image_url"]["url"], image);
        let call = &messages[2]["tool_calls"][0];
        assert_eq!(call["id"], "call_4111111111111111");
        assert_eq!(call["function"]["arguments"], "{\"to\": \"<EMAIL_1>\"}");
        let mut args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        p.restorer().restore_json(&mut args);
        assert_eq!(args["to"], "lefevre@example.fr");
    }

    #[test]
    fn json_request_is_pseudonymised_in_place() {
        let mut p = Pseudonymizer::new(PseudonymizeOptions::default());
        let mut messages = serde_json::json!([
            {"role": "user", "content": "Je suis Mme Lefèvre, lefevre@example.fr"},
            {"role": "assistant", "content": "Bonjour Mme Lefèvre"},
        ]);
        p.pseudonymize_json(&mut messages);
        assert_eq!(messages[0]["content"], "Je suis Mme <PERSON_1>, <EMAIL_1>");
        assert_eq!(messages[1]["content"], "Bonjour Mme <PERSON_1>");
        assert_eq!(messages[1]["role"], "assistant");
    }
}
