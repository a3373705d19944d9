//! Merging the extractions of a document's chunks into one, field by field, by the rule the
//! pipeline declares (`[extract.merge]`), each value keeping the page it came from.
//!
//! Every chunk answers under the pipeline's schema with its fields made nullable
//! ([`chunk_schema`]): null where its pages do not state the field. [`merge`] then takes,
//! per field, the first or last value in document order, the largest or smallest (labels
//! by their declared order: the worst wins), the union of lists, or the most frequent; a
//! field ruled `reconcile` is left for one more model call that reads every chunk's
//! candidates ([`reconcile_prompt`]). [`locate`] finds the page of the chunk that holds a
//! value.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::document::{Chunk, Page};

/// How the chunks' values of one field become the message's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeRule {
    /// The first value in document order.
    First,
    /// The last value in document order.
    Last,
    /// The largest: numbers by value, a label (or any enum) by its declared order, so the
    /// worst level wins; other strings in text order (ISO dates: the latest).
    Max,
    /// The smallest, in the same orders.
    Min,
    /// Every item of every chunk's list, each once, in document order (list fields).
    Union,
    /// The value most chunks gave (ties: the first).
    MostFrequent,
    /// One more model call, given every chunk's value with its pages, decides.
    Reconcile,
}

impl MergeRule {
    pub const NAMES: [&'static str; 7] = [
        "first",
        "last",
        "max",
        "min",
        "union",
        "most_frequent",
        "reconcile",
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "first" => MergeRule::First,
            "last" => MergeRule::Last,
            "max" => MergeRule::Max,
            "min" => MergeRule::Min,
            "union" => MergeRule::Union,
            "most_frequent" => MergeRule::MostFrequent,
            "reconcile" => MergeRule::Reconcile,
            _ => return None,
        })
    }
}

/// Where a value was found: the part, its file name, and the page (None when the value
/// could not be placed on one page: then `pages` is the chunk's range).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    pub part: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    /// First and last page of the chunk, when the page itself is not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pages: Option<(u32, u32)>,
}

impl Source {
    fn of_page(p: &Page) -> Self {
        Source {
            part: p.part,
            file: p.file.clone(),
            page: p.number,
            pages: None,
        }
    }
}

/// The pipeline's schema as one chunk answers it: every property that is not a label may
/// be null (the chunk does not state it), and the model is told so.
pub fn chunk_schema(schema: &Value, labels: &[String]) -> Value {
    let mut schema = schema.clone();
    let Some(props) = schema["properties"].as_object_mut() else {
        return schema;
    };
    for (name, prop) in props.iter_mut() {
        if labels.contains(name) {
            continue;
        }
        if let Some(options) = prop.get_mut("enum").and_then(Value::as_array_mut)
            && !options.contains(&Value::Null)
        {
            options.push(Value::Null);
        }
        match prop.get("type").cloned() {
            Some(Value::String(t)) if t != "null" => prop["type"] = json!([t, "null"]),
            Some(Value::Array(mut types)) if !types.contains(&json!("null")) => {
                types.push(json!("null"));
                prop["type"] = Value::Array(types);
            }
            _ => {}
        }
    }
    schema
}

/// One chunk's validated answer, with the chunk it read.
pub struct ChunkAnswer<'a> {
    pub chunk: &'a Chunk,
    pub value: Value,
}

/// The merged value (fields ruled `reconcile` left out), each field's source, and the
/// fields left for a reconciling call.
#[derive(Debug, Default)]
pub struct Merged {
    pub value: Map<String, Value>,
    /// A value's source, or for `union` lists one source per item.
    pub sources: BTreeMap<String, Value>,
    pub reconcile: Vec<String>,
}

/// Merge the chunks' answers (in document order) field by field. `rule` gives each field's
/// rule; `order` an enum field's declared values (for max and min).
pub fn merge(
    answers: &[ChunkAnswer],
    fields: &[String],
    rule: impl Fn(&str) -> MergeRule,
    order: impl Fn(&str) -> Option<Vec<Value>>,
) -> Merged {
    let mut out = Merged::default();
    for field in fields {
        // Every chunk's value for the field, nulls left out.
        let mut candidates: Vec<(&Value, &Chunk)> = answers
            .iter()
            .filter_map(|a| match a.value.get(field) {
                None | Some(Value::Null) => None,
                Some(v) => Some((v, a.chunk)),
            })
            .collect();
        // Small models fill a field they were told to leave null (a date made up from the
        // mail's, an amount of 0): a value its chunk's text does not hold counts only when
        // no chunk's value is found in its text. Labels are judgements, not quotes.
        if order(field).is_none() && candidates.iter().any(|(v, c)| is_grounded(v, c)) {
            candidates.retain(|(v, c)| is_grounded(v, c));
        }
        let rule = rule(field);
        if rule == MergeRule::Reconcile {
            out.reconcile.push(field.clone());
            continue;
        }
        if rule == MergeRule::Union {
            let mut items: Vec<Value> = Vec::new();
            let mut sources: Vec<Value> = Vec::new();
            for (v, chunk) in &candidates {
                let list = match v {
                    Value::Array(list) => list.clone(),
                    other => vec![(*other).clone()],
                };
                for item in list {
                    if !items.contains(&item) {
                        sources.push(json!(locate(&item, chunk)));
                        items.push(item);
                    }
                }
            }
            out.value.insert(field.clone(), Value::Array(items));
            out.sources.insert(field.clone(), Value::Array(sources));
            continue;
        }
        let chosen = match rule {
            MergeRule::First => candidates.first().copied(),
            MergeRule::Last => candidates.last().copied(),
            MergeRule::Max | MergeRule::Min => {
                let order = order(field);
                let key = |v: &Value| rank(v, order.as_deref());
                let mut best: Option<(&Value, &Chunk)> = None;
                for c in &candidates {
                    best = match best {
                        None => Some(*c),
                        Some(b) => {
                            let ord = key(c.0).partial_cmp(&key(b.0));
                            let better = match rule {
                                MergeRule::Max => ord == Some(std::cmp::Ordering::Greater),
                                _ => ord == Some(std::cmp::Ordering::Less),
                            };
                            Some(if better { *c } else { b })
                        }
                    };
                }
                best
            }
            MergeRule::MostFrequent => {
                let mut best: Option<((&Value, &Chunk), usize)> = None;
                for c in &candidates {
                    let n = candidates.iter().filter(|d| d.0 == c.0).count();
                    if best.is_none_or(|(_, m)| n > m) {
                        best = Some((*c, n));
                    }
                }
                best.map(|(c, _)| c)
            }
            MergeRule::Union | MergeRule::Reconcile => unreachable!("handled above"),
        };
        match chosen {
            Some((v, chunk)) => {
                out.value.insert(field.clone(), v.clone());
                out.sources.insert(field.clone(), json!(locate(v, chunk)));
            }
            None => {
                out.value.insert(field.clone(), Value::Null);
            }
        }
    }
    out
}

/// A value's place in an order: its index among an enum's values, else the number, else
/// the text.
#[derive(Debug, PartialEq, PartialOrd)]
enum Rank {
    Number(f64),
    Text(String),
}

fn rank(v: &Value, order: Option<&[Value]>) -> Rank {
    if let Some(i) = order.and_then(|o| o.iter().position(|x| x == v)) {
        return Rank::Number(i as f64);
    }
    match v {
        Value::Number(n) => Rank::Number(n.as_f64().unwrap_or(0.0)),
        Value::Bool(b) => Rank::Number(*b as u8 as f64),
        Value::String(s) => Rank::Text(s.clone()),
        other => Rank::Text(other.to_string()),
    }
}

/// The page of `chunk` that holds `value` (as written, or a number or date in the ways
/// documents write them); else the chunk's page range.
pub fn locate(value: &Value, chunk: &Chunk) -> Source {
    let needles = spellings(value);
    let pages: Vec<&Page> = chunk.content().collect();
    if !needles.is_empty() {
        for p in &pages {
            let hay = normalise(&p.text);
            if needles.iter().any(|n| hay.contains(n.as_str())) {
                return Source::of_page(p);
            }
        }
    }
    let numbers: Vec<u32> = pages.iter().filter_map(|p| p.number).collect();
    // The chunk's document, when it has one, rather than the mail body before it.
    let first = pages
        .iter()
        .find(|p| p.number.is_some())
        .or(pages.first())
        .copied();
    match (first, numbers.first(), numbers.last()) {
        (Some(p), Some(&a), Some(&b)) if a != b => Source {
            pages: Some((a, b)),
            page: None,
            ..Source::of_page(p)
        },
        (Some(p), _, _) => Source::of_page(p),
        (None, _, _) => Source {
            part: 0,
            file: None,
            page: None,
            pages: None,
        },
    }
}

/// Whether `chunk`'s own pages hold `value` (a list: any of its items).
fn is_grounded(value: &Value, chunk: &Chunk) -> bool {
    let items = match value {
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    items.into_iter().any(|v| {
        let needles = spellings(v);
        !needles.is_empty()
            && chunk.content().any(|p| {
                let hay = normalise(&p.text);
                needles.iter().any(|n| hay.contains(n.as_str()))
            })
    })
}

/// Lower case, whitespace runs as one space.
fn normalise(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The ways a document may print `value`, normalised.
fn spellings(value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    match value {
        Value::String(s) if s.trim().chars().count() >= 2 => {
            out.push(normalise(s));
            if let Some(dates) = date_spellings(s.trim()) {
                out.extend(dates);
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            let whole = x.trunc() as i64;
            let cents = ((x - x.trunc()).abs() * 100.0).round() as i64;
            let grouped = |sep: &str| {
                let digits = whole.abs().to_string();
                let mut g = String::new();
                for (i, ch) in digits.chars().enumerate() {
                    if i > 0 && (digits.len() - i) % 3 == 0 {
                        g.push_str(sep);
                    }
                    g.push(ch);
                }
                g
            };
            for sep in [",", ".", " ", "'", ""] {
                let g = grouped(sep);
                if cents > 0 {
                    let dec = if sep == "," || sep == "'" { "." } else { "," };
                    out.push(format!("{g}{dec}{cents:02}"));
                    if sep.is_empty() {
                        out.push(format!("{g}.{cents:02}"));
                    }
                } else if whole.abs() >= 10 {
                    out.push(g);
                }
            }
        }
        _ => {}
    }
    out.retain(|s| !s.is_empty());
    out
}

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// An ISO date as documents print it: 31 March 2027, March 31, 2027, 31.03.2027, 31/03/2027.
fn date_spellings(iso: &str) -> Option<Vec<String>> {
    let mut it = iso.splitn(3, '-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (mi, di): (usize, u32) = (m.parse().ok()?, d.parse().ok()?);
    let month = MONTHS.get(mi.checked_sub(1)?)?;
    Some(vec![
        format!("{di} {month} {y}"),
        format!("{month} {di}, {y}"),
        format!("{d}.{m}.{y}"),
        format!("{d}/{m}/{y}"),
    ])
}

/// The user turn of the reconciling call: each chunk's values for `fields`, with the pages
/// it read.
pub fn reconcile_prompt(answers: &[ChunkAnswer], fields: &[String]) -> String {
    let mut text = String::from(
        "A long document was read in parts. Each part's reading of the fields below is given with the pages it covers. Decide each field's value for the whole document.\n",
    );
    for (i, a) in answers.iter().enumerate() {
        let values: Map<String, Value> = fields
            .iter()
            .filter_map(|f| a.value.get(f).map(|v| (f.clone(), v.clone())))
            .collect();
        text.push_str(&format!(
            "\nPart {} ({}): {}",
            i + 1,
            a.chunk.span(),
            Value::Object(values)
        ));
    }
    text
}

/// The schema of the reconciling call: the pipeline's schema restricted to `fields`.
pub fn reconcile_schema(schema: &Value, fields: &[String]) -> Value {
    let mut s = schema.clone();
    if let Some(props) = s["properties"].as_object_mut() {
        props.retain(|k, _| fields.contains(k));
    }
    if let Some(required) = s.get_mut("required").and_then(Value::as_array_mut) {
        required.retain(|r| r.as_str().is_some_and(|r| fields.iter().any(|f| f == r)));
    }
    s
}

/// The source of a reconciled value: the chunk whose candidate it equals, else wherever a
/// chunk's pages hold it.
pub fn reconciled_source(value: &Value, field: &str, answers: &[ChunkAnswer]) -> Option<Source> {
    if let Some(a) = answers.iter().find(|a| a.value.get(field) == Some(value)) {
        return Some(locate(value, a.chunk));
    }
    answers
        .iter()
        .map(|a| locate(value, a.chunk))
        .find(|s| s.page.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(file: &str, pages: &[(u32, &str)]) -> Chunk {
        Chunk {
            pages: pages
                .iter()
                .map(|&(n, text)| Page {
                    part: 1,
                    kind: "attachment".into(),
                    file: Some(file.into()),
                    number: Some(n),
                    text: text.into(),
                })
                .collect(),
        }
    }

    fn fields(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_rule_picks_its_value_and_keeps_its_page() {
        let c1 = chunk(
            "c.pdf",
            &[(1, "Between ACME GmbH and us."), (2, "threat: low")],
        );
        let c2 = chunk(
            "c.pdf",
            &[(36, "nothing"), (37, "Terminate by 31 March 2027.")],
        );
        let c3 = chunk(
            "c.pdf",
            &[
                (49, "Penalty: EUR 25,000.00"),
                (50, "Signed for Other Ltd."),
            ],
        );
        let answers = [
            // A deadline and a penalty the first chunk's text does not hold (made up).
            ChunkAnswer {
                chunk: &c1,
                value: json!({"party": "ACME GmbH", "deadline": "2026-12-07", "penalty": 0, "level": "low", "tags": ["a"]}),
            },
            ChunkAnswer {
                chunk: &c2,
                value: json!({"party": null, "deadline": "2027-03-31", "penalty": null, "level": "critical", "tags": ["b", "a"]}),
            },
            ChunkAnswer {
                chunk: &c3,
                value: json!({"party": "Other Ltd", "deadline": null, "penalty": 25000, "level": "medium", "tags": []}),
            },
        ];
        let order = |f: &str| {
            (f == "level").then(|| {
                vec![
                    json!("low"),
                    json!("medium"),
                    json!("high"),
                    json!("critical"),
                ]
            })
        };
        let m = merge(
            &answers,
            &fields(&["party", "deadline", "penalty", "level", "tags"]),
            |f| match f {
                "level" => MergeRule::Max,
                "tags" => MergeRule::Union,
                _ => MergeRule::First,
            },
            order,
        );
        assert_eq!(
            Value::Object(m.value.clone()),
            json!({"party": "ACME GmbH", "deadline": "2027-03-31", "penalty": 25000, "level": "critical", "tags": ["a", "b"]})
        );
        let page = |f: &str| m.sources[f]["page"].clone();
        assert_eq!(page("party"), 1);
        assert_eq!(page("deadline"), 37, "an ISO date found as printed");
        assert_eq!(page("penalty"), 49, "a number found with its separators");
        // With no value found in its text, the made-up one is all there is.
        let alone = merge(
            &answers[..1],
            &fields(&["deadline"]),
            |_| MergeRule::First,
            order,
        );
        assert_eq!(alone.value["deadline"], "2026-12-07");
        assert_eq!(m.sources["tags"][1]["page"], Value::Null);
        assert_eq!(m.sources["tags"][1]["pages"], json!([36, 37]));

        let pick = |rule| merge(&answers, &fields(&["party", "level"]), |_| rule, order).value;
        assert_eq!(pick(MergeRule::Last)["party"], "Other Ltd");
        assert_eq!(pick(MergeRule::Min)["level"], "low");
        assert_eq!(pick(MergeRule::Max)["party"], "Other Ltd", "text order");
        let r = merge(
            &answers,
            &fields(&["party"]),
            |_| MergeRule::Reconcile,
            order,
        );
        assert_eq!(r.reconcile, ["party"]);
        assert!(r.value.is_empty());
    }

    #[test]
    fn the_most_frequent_value_wins_and_ties_go_to_the_first() {
        let c = chunk("c.pdf", &[(1, "x")]);
        let answer = |v: Value| ChunkAnswer {
            chunk: &c,
            value: json!({"f": v}),
        };
        let answers = [
            answer(json!("b")),
            answer(json!("a")),
            answer(json!("a")),
            answer(Value::Null),
        ];
        let m = merge(
            &answers,
            &fields(&["f"]),
            |_| MergeRule::MostFrequent,
            |_| None,
        );
        assert_eq!(m.value["f"], "a");
        let answers = [answer(json!("b")), answer(json!("a"))];
        let m = merge(
            &answers,
            &fields(&["f"]),
            |_| MergeRule::MostFrequent,
            |_| None,
        );
        assert_eq!(m.value["f"], "b");
        let none = [answer(Value::Null)];
        assert_eq!(
            merge(&none, &fields(&["f"]), |_| MergeRule::First, |_| None).value["f"],
            Value::Null
        );
    }

    #[test]
    fn chunk_schemas_let_fields_but_not_labels_be_null() {
        let schema = json!({"type": "object", "required": ["a", "level"], "properties": {
            "a": {"type": "string"}, "n": {"type": ["number", "integer"]},
            "e": {"enum": ["x", "y"]}, "level": {"type": "string", "enum": ["low", "high"]}}});
        let s = chunk_schema(&schema, &fields(&["level"]));
        assert_eq!(s["properties"]["a"]["type"], json!(["string", "null"]));
        assert_eq!(
            s["properties"]["n"]["type"],
            json!(["number", "integer", "null"])
        );
        assert_eq!(s["properties"]["e"]["enum"], json!(["x", "y", null]));
        assert_eq!(s["properties"]["level"], schema["properties"]["level"]);
        let validator = jsonschema::validator_for(&s).unwrap();
        assert!(validator.is_valid(&json!({"a": null, "level": "low"})));
        assert!(!validator.is_valid(&json!({"a": null, "level": null})));
        let r = reconcile_schema(&schema, &fields(&["a"]));
        assert_eq!(r["required"], json!(["a"]));
        assert_eq!(r["properties"].as_object().unwrap().len(), 1);
    }
}
