//! Evidence and corrections (issue 21): stored with their message, sealed at rest like the
//! extraction, re-encrypted by rekey, and erased with the data subject.

use std::time::Duration;

use serde_json::json;
use sqlx::Row;
use verre_store::erase::Subject;
use verre_store::{FieldCorrection, Keyring, Retention, StageEffects, Store, crypto};

const LEASE: Duration = Duration::from_secs(60);

async fn in_clear_and_sealed<F, Fut>(test: F)
where
    F: Fn(Store, bool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    test(Store::open_in_home(dir.path()).await.unwrap(), false).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = Keyring::parse(&crypto::generate_key().unwrap(), "test").unwrap();
    let store = Store::open_in_home(dir.path()).await.unwrap();
    test(store.with_keys(Some(keys)).await.unwrap(), true).await;
    if let Some(url) = verre_store::testing::postgres_url("evidence").await {
        test(Store::open(&url).await.unwrap(), false).await;
    }
}

/// A message from `name` extracted, with evidence quoting the name.
async fn extracted(store: &Store, name: &str, email: &str) -> i64 {
    let raw = format!("From: {name} <{email}>\r\nSubject: Facture\r\n\r\nBonjour\r\n");
    let id = store
        .ingest("test", email, raw.as_bytes(), "extract", 3)
        .await
        .unwrap()
        .message_id;
    let job = store.claim("w", LEASE).await.unwrap().unwrap();
    let evidence = json!({"fields": [{"field": "customer", "value": name,
        "span": {"start": 6, "end": 6 + name.len(), "quote": name, "place": null},
        "confidence": 0.4, "check": true}], "check_below": 0.5});
    let effects = StageEffects {
        output: json!({"customer": name}),
        evidence: Some(evidence),
        ..Default::default()
    };
    assert!(store.complete(&job, &effects, None, 3).await.unwrap());
    id
}

#[tokio::test]
async fn evidence_and_corrections_are_sealed_and_erased_with_the_subject() {
    in_clear_and_sealed(|store, sealed| async move {
        let jeanne = extracted(&store, "Jeanne Martin", "jeanne@example.fr").await;
        let paul = extracted(&store, "Paul Durand", "paul@example.de").await;
        let e = store.evidence(jeanne).await.unwrap().unwrap();
        assert_eq!(e["fields"][0]["span"]["quote"], "Jeanne Martin");
        assert!(store.evidence(9999).await.unwrap().is_none());

        let correction = FieldCorrection {
            value: json!("Jeanne Martin-Dupont"),
            previous: json!("Jeanne Martin"),
            quote: Some("Jeanne Martin".into()),
            context: Some("From: Jeanne Martin <jeanne@example.fr>".into()),
        };
        store
            .correct_field(jeanne, "customer", &correction, "alice")
            .await
            .unwrap();
        store
            .correct_field(paul, "customer", &FieldCorrection::default(), "alice")
            .await
            .unwrap();
        let got = store.corrections(jeanne).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].field.as_str(), &got[0].correction),
            ("customer", &correction)
        );
        assert_eq!(store.recent_corrections(10).await.unwrap().len(), 2);
        assert!(
            store
                .correct_field(4242, "customer", &correction, "alice")
                .await
                .is_err()
        );

        // At rest: the name is nowhere in clear with a data key.
        for sql in [
            "SELECT body FROM evidence WHERE message_id = $1",
            "SELECT body FROM corrections WHERE message_id = $1",
        ] {
            let body: String = sqlx::query(sql)
                .bind(jeanne)
                .fetch_one(store.pool())
                .await
                .unwrap()
                .try_get("body")
                .unwrap();
            assert_eq!(body.contains("Jeanne"), !sealed, "{sql}: {body}");
        }

        // Each corrected document's embedding, kept for few-shot extraction.
        let vector = [0.25f32, -1.5, 3.0];
        for (id, text) in [(jeanne, "Jeanne Martin facture"), (paul, "Paul Durand")] {
            store
                .keep_correction_embedding(id, "minilm-l6", text, &vector)
                .await
                .unwrap();
        }
        let kept = store
            .correction_embeddings("minilm-l6", &[(jeanne, "Jeanne Martin facture")])
            .await
            .unwrap();
        assert_eq!(kept.get(&jeanne).map(Vec::as_slice), Some(&vector[..]));
        // Another text (the document changed) or another model: nothing kept for it.
        for (model, text) in [
            ("minilm-l6", "Jeanne Martin-Dupont"),
            ("other", "Jeanne Martin facture"),
        ] {
            let kept = store
                .correction_embeddings(model, &[(jeanne, text)])
                .await
                .unwrap();
            assert!(kept.is_empty(), "{model} {text}: {kept:?}");
        }
        let stored: Vec<u8> =
            sqlx::query("SELECT vector FROM correction_embeddings WHERE message_id = $1")
                .bind(jeanne)
                .fetch_one(store.pool())
                .await
                .unwrap()
                .try_get("vector")
                .unwrap();
        let in_clear: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(stored.ends_with(&in_clear), !sealed, "the vector at rest");

        let report = store
            .erase(&Subject::parse("Jeanne Martin").unwrap(), "test", false)
            .await
            .unwrap();
        assert_eq!(report.rows.get("evidence"), Some(&1), "{report:?}");
        assert_eq!(report.rows.get("corrections"), Some(&1), "{report:?}");
        assert_eq!(
            report.rows.get("correction_embeddings"),
            Some(&1),
            "{report:?}"
        );
        let left = |id: i64, text: &'static str| {
            let store = store.clone();
            async move {
                store
                    .correction_embeddings("minilm-l6", &[(id, text)])
                    .await
                    .unwrap()
                    .len()
            }
        };
        assert_eq!(left(jeanne, "Jeanne Martin facture").await, 0);
        assert_eq!(left(paul, "Paul Durand").await, 1);
        assert!(report.residual.is_empty(), "{:?}", report.residual);
        assert!(store.evidence(jeanne).await.unwrap().is_none());
        assert!(store.corrections(jeanne).await.unwrap().is_empty());
        // Another subject's are untouched.
        assert!(store.evidence(paul).await.unwrap().is_some());
        assert_eq!(store.corrections(paul).await.unwrap().len(), 1);

        if !sealed {
            // Rows written in clear are sealed by rekey once a data key is configured.
            let keys = Keyring::parse(&crypto::generate_key().unwrap(), "test").unwrap();
            let keyed = store.clone().with_keys(Some(keys)).await.unwrap();
            let r = keyed.rekey().await.unwrap();
            assert_eq!(
                (r.evidence, r.corrections, r.correction_embeddings),
                (1, 1, 1)
            );
            assert_eq!(keyed.corrections(paul).await.unwrap().len(), 1);
            let kept = keyed
                .correction_embeddings("minilm-l6", &[(paul, "Paul Durand")])
                .await
                .unwrap();
            assert_eq!(kept[&paul], vector);
        }

        // Retention deletes the embedding with its message once it is decided.
        store.reject(paul, "alice", "not an invoice").await.unwrap();
        let purge = store
            .purge_at(
                &Retention {
                    extracted_days: Some(0),
                    ..Default::default()
                },
                verre_store::now_ms() + 1,
                false,
            )
            .await
            .unwrap();
        assert_eq!(
            purge.rows.get("correction_embeddings"),
            Some(&1),
            "{purge:?}"
        );
        assert_eq!(left(paul, "Paul Durand").await, 0);
    })
    .await;
}

#[tokio::test]
async fn an_extraction_run_again_without_evidence_leaves_none_of_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_home(dir.path()).await.unwrap();
    let id = extracted(&store, "Jeanne Martin", "jeanne@example.fr").await;
    assert!(store.evidence(id).await.unwrap().is_some());
    store.rerun_stage(id, "extract", "alice").await.unwrap();
    let job = store.claim("w", LEASE).await.unwrap().unwrap();
    assert_eq!(job.stage, "extract");
    let effects = StageEffects {
        output: json!({"customer": "Jeanne Martin-Dupont"}),
        ..Default::default()
    };
    assert!(store.complete(&job, &effects, None, 3).await.unwrap());
    assert!(
        store.evidence(id).await.unwrap().is_none(),
        "the evidence of the earlier run no longer backs the extraction"
    );
}
