//! Corrections that teach: when a pipeline opts in (`[extract] few_shot_from_corrections =
//! N`), the extraction prompt shows the fields reviewers corrected in the N earlier
//! documents most like this one (by the cosine of their embeddings, `few_shot_model`,
//! minilm-l6 by default), each with the words of the document the right value stood in.
//! Documents less similar than `few_shot_min_similarity` (0.7) are not shown: corrections
//! of another layout do not carry over (measured on the invoices of five issuers: their
//! corrections made a 0.5B model take the wrong date; QualityHosting and AzureInterior are
//! still 0.71 apart, and Azure's corrections turned the 0.5B's EUR into USD, see
//! docs/PERFORMANCE.md).
//! With `few_shot_per_field = true` the examples are chosen field by field instead: for
//! each field reviewers corrected, its corrections in the N most similar documents that
//! corrected it, with no floor, told as a rule (the label the value was printed after, its
//! form) without the value: where and how a field is printed carries over to other
//! issuers' layouts, while their values, shown, were copied.
//! Each corrected document is embedded once per embedding model and kept in the store
//! (sealed, erased with its message): an extraction embeds only its own document, and a
//! corrected one again only when its text changed.

use std::collections::BTreeMap;

use serde_json::Value;
use verre_store::{Correction, Store};

use crate::backend::{ModelApi, ModelCallError, embeddings};

/// The most recent corrections considered (the documents compared with each new one).
const CANDIDATES: i64 = 200;

/// How much of each document is compared (the embedding model reads about 256 tokens).
const COMPARED_CHARS: usize = 1500;

/// One corrected field, as the prompt shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub field: String,
    pub value: Value,
    pub previous: Value,
    /// The lines of the corrected document around the right value (empty: not found).
    pub context: String,
    /// The right value as the corrected document prints it (empty: not found).
    pub quote: String,
    /// The corrected message, and how like this document its document is (the cosine).
    pub message_id: i64,
    pub similarity: f32,
}

fn head(text: &str) -> String {
    text.chars().take(COMPARED_CHARS).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let n = norm(a) * norm(b);
    if n > 0.0 { dot / n } else { 0.0 }
}

/// Which corrections a prompt shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Selection {
    /// Documents (per field, with `per_field`) whose corrections are shown; 0: none.
    pub n: usize,
    /// The least cosine of a document whose corrections are shown (not with `per_field`).
    pub min_similarity: f32,
    /// For each corrected field, its corrections in the `n` most similar documents that
    /// have one; otherwise every corrected field of the `n` most similar documents.
    pub per_field: bool,
}

/// The corrections shown with `document` (never those of `message_id` itself), as
/// `selection` says, most similar documents first: each field once per document, its latest
/// correction; only the fields `schema` has (a correction of a field since removed teaches
/// nothing). Similarity is the cosine of the documents' embeddings.
pub async fn examples(
    store: &Store,
    api: &dyn ModelApi,
    model: &str,
    message_id: i64,
    document: &str,
    schema: &Value,
    selection: Selection,
) -> Result<Vec<Example>, ExamplesError> {
    let Selection {
        n,
        min_similarity,
        per_field,
    } = selection;
    if n == 0 {
        return Ok(Vec::new());
    }
    let properties = schema["properties"].as_object();
    let mut by_message: BTreeMap<i64, Vec<Correction>> = BTreeMap::new();
    for c in store.recent_corrections(CANDIDATES).await? {
        let in_schema = properties.is_some_and(|p| p.contains_key(&c.field));
        if c.message_id != message_id && in_schema {
            by_message.entry(c.message_id).or_default().push(c);
        }
    }
    if by_message.is_empty() {
        return Ok(Vec::new());
    }
    let mut documents: Vec<(i64, String)> = Vec::new();
    for (id, corrections) in &by_message {
        let text = match store.evidence(*id).await? {
            Some(e) if e["document"].as_str().is_some_and(|d| !d.is_empty()) => {
                head(e["document"].as_str().unwrap_or(""))
            }
            // Evidence gone or never kept: the corrected words are all there is.
            _ => corrections
                .iter()
                .filter_map(|c| c.correction.context.clone())
                .collect::<Vec<_>>()
                .join("\n"),
        };
        documents.push((*id, text));
    }
    // Each corrected document is embedded once (again when its text changes), then kept.
    let texts: Vec<(i64, &str)> = documents.iter().map(|(id, t)| (*id, t.as_str())).collect();
    let mut vectors = store.correction_embeddings(model, &texts).await?;
    let missing: Vec<&(i64, String)> = documents
        .iter()
        .filter(|(id, _)| !vectors.contains_key(id))
        .collect();
    let mut inputs = vec![head(document)];
    inputs.extend(missing.iter().map(|(_, t)| t.clone()));
    let mut embedded = embeddings(api, model, &inputs).await?.into_iter();
    let this = embedded.next().unwrap_or_default();
    for ((id, text), vector) in missing.into_iter().zip(embedded) {
        // An answer without this document's vector is not kept: it is asked again next time.
        if !vector.is_empty() {
            store
                .keep_correction_embedding(*id, model, text, &vector)
                .await?;
        }
        vectors.insert(*id, vector);
    }
    let mut ranked: Vec<(f32, i64)> = vectors
        .iter()
        .map(|(id, v)| (cosine(&this, v), *id))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let floor = if per_field {
        f32::NEG_INFINITY
    } else {
        min_similarity
    };
    let near = ranked
        .into_iter()
        .filter(|(similarity, _)| *similarity >= floor);
    let mut out = Vec::new();
    // Per field: how many documents' corrections of it are shown.
    let mut shown: BTreeMap<String, usize> = BTreeMap::new();
    for (documents, (similarity, id)) in near.enumerate() {
        if !per_field && documents == n {
            break;
        }
        // Newest first from the store: the first of each field is its latest correction.
        let mut seen = Vec::new();
        let mut fields: Vec<Example> = Vec::new();
        for c in &by_message[&id] {
            if seen.contains(&c.field) {
                continue;
            }
            seen.push(c.field.clone());
            let count = shown.entry(c.field.clone()).or_default();
            if per_field && *count == n {
                continue;
            }
            *count += 1;
            fields.push(Example {
                field: c.field.clone(),
                value: c.correction.value.clone(),
                previous: c.correction.previous.clone(),
                context: c.correction.context.clone().unwrap_or_default(),
                quote: c.correction.quote.clone().unwrap_or_default(),
                message_id: id,
                similarity,
            });
        }
        fields.reverse();
        out.extend(fields);
    }
    if per_field {
        // Field by field, in the schema's order, most similar document first.
        let order = |f: &str| properties.and_then(|p| p.keys().position(|k| k == f));
        out.sort_by_key(|e| order(&e.field));
    }
    Ok(out)
}

/// Why the examples could not be found.
#[derive(Debug, thiserror::Error)]
pub enum ExamplesError {
    #[error(transparent)]
    Store(#[from] anyhow::Error),
    #[error("the embedding model: {0}")]
    Embed(#[from] ModelCallError),
}

/// The examples as a passage of the extraction's instructions. Chosen `per_field`, they
/// come from other documents, whose values a model copies (another issuer's currency or
/// registration number): each is then told as a rule without its value — the words printed
/// before it, and its form, digits as 9 and letters as A — never as an answer.
pub fn prompt_section(examples: &[Example], per_field: bool) -> String {
    if examples.is_empty() {
        return String::new();
    }
    if per_field {
        return rules_section(examples);
    }
    let mut s = String::from(
        "\n\nReviewers corrected these fields of similar documents; answer as they did:",
    );
    for e in examples {
        let context = e.context.split_whitespace().collect::<Vec<_>>().join(" ");
        if context.is_empty() {
            s.push_str(&format!(
                "\n- {}: {} (not {})",
                e.field, e.value, e.previous
            ));
        } else {
            s.push_str(&format!(
                "\n- where the document reads \"{context}\", {} is {} (not {})",
                e.field, e.value, e.previous
            ));
        }
    }
    s
}

fn rules_section(examples: &[Example]) -> String {
    let mut lines: Vec<String> = Vec::new();
    for e in examples {
        let label = label_of(&e.context, &e.quote);
        let form = form_of(&e.value);
        let mut line = match (&label, &form) {
            (Some(l), Some(f)) => format!("- {}: printed after \"{l}\", in the form {f}", e.field),
            (Some(l), None) => format!("- {}: printed after \"{l}\"", e.field),
            (None, Some(f)) => format!("- {}: in the form {f}", e.field),
            (None, None) => continue,
        };
        match (&e.previous, form_of(&e.previous)) {
            (Value::Null, _) => line.push_str(" (the model had answered null)"),
            (_, Some(p)) if Some(&p) != form.as_ref() => {
                line.push_str(&format!(" (the model had answered in the form {p})"))
            }
            _ => {}
        }
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "\n\nReviewers corrected these fields in other documents. Where and in what form \
         each was printed there (not its value; answer with this document's own):\n{}",
        lines.join("\n")
    )
}

/// The words printed before `quote` in `context`, on its line or, when it starts the line,
/// at the end of the line above: the label a value stands next to.
fn label_of(context: &str, quote: &str) -> Option<String> {
    const MOST: usize = 40;
    let at = context.find(quote).filter(|_| !quote.is_empty())?;
    let before = &context[..at];
    let line = before.rsplit('\n').next().unwrap_or("").trim();
    let label = if line.is_empty() {
        before.trim_end().rsplit('\n').next().unwrap_or("").trim()
    } else {
        line
    };
    let words: Vec<&str> = label.split_whitespace().collect();
    let mut out = String::new();
    for w in words.iter().rev() {
        if out.chars().count() + w.chars().count() > MOST {
            break;
        }
        out = if out.is_empty() {
            w.to_string()
        } else {
            format!("{w} {out}")
        };
    }
    (!out.is_empty()).then_some(out)
}

/// A code's form: digits as 9, letters as A, the rest as printed ("3012 CN" is "9999 AA");
/// None for a value without digits (a name) or that is not a string.
fn form_of(value: &Value) -> Option<String> {
    let s = value.as_str()?;
    s.chars().any(|c| c.is_ascii_digit()).then(|| {
        s.chars()
            .map(|c| match c {
                c if c.is_ascii_digit() => '9',
                c if c.is_alphabetic() => 'A',
                c => c,
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use verre_store::{FieldCorrection, StageEffects};

    use super::*;
    use crate::StubBackend;

    /// A message whose extraction kept `document` as its evidence.
    async fn extracted(store: &Store, document: &str) -> i64 {
        let id = store
            .ingest("t", document, document.as_bytes(), "extract", 1)
            .await
            .unwrap()
            .message_id;
        let job = store
            .claim("w", std::time::Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        let effects = StageEffects {
            output: json!({}),
            evidence: Some(json!({"fields": [], "document": document})),
            ..Default::default()
        };
        assert!(store.complete(&job, &effects, None, 1).await.unwrap());
        id
    }

    async fn correct(store: &Store, id: i64, field: &str, value: &str, context: &str) {
        let c = FieldCorrection {
            value: json!(value),
            previous: json!("wrong"),
            quote: Some(value.into()),
            context: Some(context.into()),
        };
        store.correct_field(id, field, &c, "rita").await.unwrap();
    }

    /// The stub's embeddings, refusing a request that does not allow truncation (a
    /// document is longer than minilm-l6's 256 tokens; the server refuses it then).
    struct Truncating(StubBackend);

    impl ModelApi for Truncating {
        fn chat(&self, request: Value) -> crate::BoxFuture<'_, Result<Value, ModelCallError>> {
            self.0.chat(request)
        }

        fn embed(&self, request: Value) -> crate::BoxFuture<'_, Result<Value, ModelCallError>> {
            if request["truncate"] != json!(true) {
                return Box::pin(async {
                    Err(ModelCallError::permanent("context_length_exceeded"))
                });
            }
            self.0.embed(request)
        }
    }

    /// The stub's embeddings, counting the texts it was asked to embed.
    #[derive(Default)]
    struct Counting {
        stub: StubBackend,
        embedded: std::sync::Mutex<Vec<String>>,
    }

    impl ModelApi for Counting {
        fn chat(&self, request: Value) -> crate::BoxFuture<'_, Result<Value, ModelCallError>> {
            self.stub.chat(request)
        }

        fn embed(&self, request: Value) -> crate::BoxFuture<'_, Result<Value, ModelCallError>> {
            let inputs = request["input"].as_array().cloned().unwrap_or_default();
            self.embedded
                .lock()
                .unwrap()
                .extend(inputs.iter().map(|i| i.as_str().unwrap_or("").to_string()));
            self.stub.embed(request)
        }
    }

    impl Counting {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.embedded.lock().unwrap())
        }
    }

    #[tokio::test]
    async fn a_corrected_document_is_embedded_once_until_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_home(dir.path()).await.unwrap();
        let acme = extracted(&store, "ACME GmbH Rechnung Rechnungsnr 1 Summe EUR").await;
        let shop = extracted(&store, "Flipkart order invoice INR retail").await;
        correct(&store, acme, "invoice_number", "A-1", "Rechnungsnr A-1").await;
        correct(&store, shop, "issuer", "Flipkart", "Sold by Flipkart").await;
        let api = Counting::default();
        let schema = invoice_schema(&["invoice_number", "issuer"]);
        let first = "ACME GmbH Rechnung Rechnungsnr 7 Summe EUR 12";
        let got = examples(&store, &api, "m", 0, first, &schema, by_document(5, 0.0))
            .await
            .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            api.take().len(),
            3,
            "the new document and both corrected ones"
        );

        // The next extraction embeds only its own document, and ranks as before.
        let second = "ACME GmbH Rechnung Rechnungsnr 8 Summe EUR 13";
        let again = examples(&store, &api, "m", 0, second, &schema, by_document(5, 0.0))
            .await
            .unwrap();
        assert_eq!(api.take(), [second]);
        let fields = |e: &[Example]| e.iter().map(|x| x.field.clone()).collect::<Vec<_>>();
        assert_eq!(fields(&again), fields(&got));
        assert_eq!(again[0].message_id, acme);
        assert!(again[0].similarity > again[1].similarity, "{again:?}");

        // Another embedding model has its own vectors.
        examples(
            &store,
            &api,
            "other",
            0,
            second,
            &schema,
            by_document(5, 0.0),
        )
        .await
        .unwrap();
        assert_eq!(api.take().len(), 3);

        // Without evidence a document is its corrections' words: a new correction
        // changes them, and that document alone is embedded again.
        let bare = store
            .ingest("t", "bare", b"Lieferschein", "extract", 1)
            .await
            .unwrap()
            .message_id;
        correct(&store, bare, "issuer", "Bauhaus", "Lieferant Bauhaus").await;
        examples(&store, &api, "m", 0, second, &schema, by_document(5, 0.0))
            .await
            .unwrap();
        assert_eq!(api.take(), [second, "Lieferant Bauhaus"]);
        correct(&store, bare, "invoice_number", "L-2", "Lieferschein L-2").await;
        examples(&store, &api, "m", 0, second, &schema, by_document(5, 0.0))
            .await
            .unwrap();
        assert_eq!(api.take(), [second, "Lieferschein L-2\nLieferant Bauhaus"]);
    }

    fn by_document(n: usize, min_similarity: f32) -> Selection {
        Selection {
            n,
            min_similarity,
            per_field: false,
        }
    }

    #[test]
    fn a_rule_names_the_label_and_the_form_of_a_value() {
        assert_eq!(
            label_of("Weena 664\n3012 CN Rotterdam\nKvK: 24330087", "24330087").as_deref(),
            Some("KvK:")
        );
        assert_eq!(
            label_of("Invoice date\n2023-03-20", "2023-03-20").as_deref(),
            Some("Invoice date")
        );
        assert_eq!(label_of("no value here", "42"), None);
        assert_eq!(form_of(&json!("3012 CN")).as_deref(), Some("9999 AA"));
        assert_eq!(form_of(&json!("Coolblue B.V.")), None);
        assert_eq!(form_of(&json!(12.5)), None);
    }

    fn invoice_schema(fields: &[&str]) -> Value {
        let properties: serde_json::Map<String, Value> = fields
            .iter()
            .map(|f| (f.to_string(), json!({"type": "string"})))
            .collect();
        json!({"type": "object", "properties": properties})
    }

    /// Per field: each corrected field from the most similar documents that corrected it,
    /// however unlike this one, in the schema's order; never the message's own.
    #[tokio::test]
    async fn per_field_each_corrected_field_comes_from_the_nearest_document_that_has_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_home(dir.path()).await.unwrap();
        let acme = extracted(&store, "ACME GmbH Rechnung Rechnungsnr 1 Summe EUR").await;
        let shop = extracted(&store, "Flipkart order invoice INR retail").await;
        correct(&store, shop, "invoice_number", "F-9", "Invoice No F-9").await;
        correct(&store, shop, "issuer", "Flipkart", "Sold by Flipkart").await;
        correct(&store, acme, "date", "2014-05-07", "Datum 07.05.2014").await;
        correct(&store, acme, "invoice_number", "A-1", "Rechnungsnr A-1").await;
        let api = Truncating(StubBackend::default());
        let doc = "ACME GmbH Rechnung Rechnungsnr 7 Summe EUR 12";
        let schema = invoice_schema(&["issuer", "invoice_number", "date"]);
        let per_field = |n| Selection {
            n,
            min_similarity: 0.7,
            per_field: true,
        };
        let shown = |e: &[Example]| {
            e.iter()
                .map(|x| (x.field.clone(), x.message_id))
                .collect::<Vec<_>>()
        };
        let one = examples(&store, &api, "m", 0, doc, &schema, per_field(1))
            .await
            .unwrap();
        // The shop is below the floor, yet the only document that corrected the issuer.
        assert_eq!(
            shown(&one),
            [
                ("issuer".to_string(), shop),
                ("invoice_number".to_string(), acme),
                ("date".to_string(), acme)
            ]
        );
        let two = examples(&store, &api, "m", 0, doc, &schema, per_field(2))
            .await
            .unwrap();
        assert_eq!(
            shown(&two)[1..3],
            [
                ("invoice_number".to_string(), acme),
                ("invoice_number".to_string(), shop)
            ]
        );
        assert_eq!(two.len(), 4);
        let own = examples(&store, &api, "m", acme, doc, &schema, per_field(2))
            .await
            .unwrap();
        assert!(own.iter().all(|e| e.message_id == shop), "{own:?}");
        let section = prompt_section(&one, true);
        assert!(section.contains("in other documents"), "{section}");
        assert!(
            section.contains("- issuer: printed after \"Sold by\"\n"),
            "{section}"
        );
        assert!(
            section.contains("- invoice_number: printed after \"Rechnungsnr\", in the form A-9"),
            "{section}"
        );
        // Rules, not answers: no other document's value is shown.
        for value in ["Flipkart\"", "A-1", "2014-05-07"] {
            assert!(!section.contains(value), "{value} in {section}");
        }
    }

    #[tokio::test]
    async fn corrections_of_fields_the_schema_no_longer_has_are_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_home(dir.path()).await.unwrap();
        let old = extracted(&store, "ACME GmbH Rechnung Rechnungsnr 1 Bestellnr 9").await;
        // The document most like the new one (the same words).
        let dropped = extracted(&store, "ACME GmbH Rechnung Rechnungsnr 7 Bestellnr 7").await;
        correct(&store, old, "invoice_number", "A-1", "Rechnungsnr A-1").await;
        correct(&store, old, "po_number", "P-9", "Bestellnr P-9").await;
        correct(&store, dropped, "po_number", "P-8", "Bestellnr P-8").await;
        let api = Truncating(StubBackend::default());
        let doc = "ACME GmbH Rechnung Rechnungsnr 7 Bestellnr 7";
        let schema = invoice_schema(&["invoice_number", "date"]);
        let got = examples(&store, &api, "m", 0, doc, &schema, by_document(5, 0.0))
            .await
            .unwrap();
        let fields: Vec<&str> = got.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["invoice_number"], "{got:?}");
        // A document whose corrections are all of dropped fields takes no one's place.
        let one = examples(&store, &api, "m", 0, doc, &schema, by_document(1, 0.0))
            .await
            .unwrap();
        assert_eq!(one.len(), 1, "{one:?}");
    }

    #[tokio::test]
    async fn the_most_similar_documents_corrections_come_first_and_the_latest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in_home(dir.path()).await.unwrap();
        let acme = extracted(&store, "ACME GmbH Rechnung Rechnungsnr 1 Summe EUR").await;
        let shop = extracted(&store, "Flipkart order invoice INR retail").await;
        correct(&store, acme, "invoice_number", "A-0", "Rechnungsnr A-0").await;
        correct(&store, acme, "invoice_number", "A-1", "Rechnungsnr A-1").await;
        correct(&store, acme, "date", "2014-05-07", "Datum 07.05.2014").await;
        correct(&store, shop, "issuer", "Flipkart", "Sold by Flipkart").await;
        let api = Truncating(StubBackend::default());
        let doc = "ACME GmbH Rechnung Rechnungsnr 7 Summe EUR 12";
        let schema = invoice_schema(&["invoice_number", "date", "issuer"]);
        let got = examples(&store, &api, "m", 0, doc, &schema, by_document(1, 0.0))
            .await
            .unwrap();
        let fields: Vec<(&str, &Value)> =
            got.iter().map(|e| (e.field.as_str(), &e.value)).collect();
        assert_eq!(
            fields,
            [
                ("invoice_number", &json!("A-1")),
                ("date", &json!("2014-05-07"))
            ]
        );
        let both = examples(&store, &api, "m", 0, doc, &schema, by_document(5, 0.0))
            .await
            .unwrap();
        assert_eq!(both.len(), 3);
        assert_eq!(both[2].field, "issuer");
        // A message's own corrections are not its examples; none asked, none given.
        let own = examples(&store, &api, "m", acme, doc, &schema, by_document(5, 0.0))
            .await
            .unwrap();
        assert_eq!(own.len(), 1);
        assert!(
            examples(&store, &api, "m", 0, doc, &schema, by_document(0, 0.0))
                .await
                .unwrap()
                .is_empty()
        );

        // Below the similarity floor a document teaches nothing: the shop's layout is
        // unlike the ACME invoice.
        let near = examples(&store, &api, "m", 0, doc, &schema, by_document(5, 0.7))
            .await
            .unwrap();
        assert_eq!(near.len(), 2, "{near:?}");
        assert!(near.iter().all(|e| e.field != "issuer"));

        let section = prompt_section(&got, false);
        assert!(
            section.contains(
                "where the document reads \"Rechnungsnr A-1\", invoice_number is \"A-1\" (not \"wrong\")"
            ),
            "{section}"
        );
        assert_eq!(prompt_section(&[], false), "");
    }
}
