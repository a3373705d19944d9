//! Issue 22 item 3, retrieval: 1,000 generated documents added through `Archive::add_file`,
//! 50 questions with known answers; hit@5 (the document that answers is among the five
//! passages retrieved) ≥ 0.9 with all-MiniLM-L6, measured for vectors alone, BM25 alone
//! and both fused. Needs `VERRE_MINILM_DIR` (skipped without it).

mod common;

use std::sync::Arc;
use std::time::Instant;

use verre_archive::answer::MIN_COSINE;
use verre_archive::{Archive, Retrieval};
use verre_engine::model::bert::Embedder;
use verre_store::Store;
use verre_store::erase::Subject;

fn minilm() -> Option<Arc<Embedder>> {
    let Some(dir) = std::env::var_os("VERRE_MINILM_DIR").filter(|d| !d.is_empty()) else {
        eprintln!("skipped: VERRE_MINILM_DIR is not set");
        return None;
    };
    Some(Arc::new(Embedder::load(dir).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_at_5_over_a_thousand_documents() {
    let Some(embedder) = minilm() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let paths = common::write(&files, 0..common::DOCUMENTS);
    let store = Store::open_in_home(&dir.path().join("home")).await.unwrap();
    let archive = Archive::new(store.clone(), embedder, "minilm-l6");

    let started = Instant::now();
    let mut chunks = 0;
    for path in &paths {
        let added = archive.add_file(path, "test").await.unwrap();
        assert_eq!(added.outcome, "added", "{}", added.name);
        chunks += added.chunks;
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "added {} documents, {chunks} passages in {seconds:.1} s: {:.1} passages/s (read, cut, embed, store)",
        paths.len(),
        chunks as f64 / seconds
    );
    // Adding the same file again stores nothing.
    assert_eq!(
        archive.add_file(&paths[0], "test").await.unwrap().outcome,
        "exists"
    );

    let asked = common::asked();
    let mut hits = [0usize; 3];
    let mut relevant = 0;
    let mut closest = f32::MAX;
    for &i in &asked {
        let (_, q) = common::document(i);
        for (slot, how) in [Retrieval::Vector, Retrieval::Keyword, Retrieval::Hybrid]
            .into_iter()
            .enumerate()
        {
            let found = archive.search(&q.question, 5, how).await.unwrap();
            if found.iter().any(|p| p.document == q.document) {
                hits[slot] += 1;
            } else if how == Retrieval::Hybrid {
                eprintln!(
                    "missed: {} ({}) -> {:?}",
                    q.question,
                    q.document,
                    found.iter().map(|p| &p.document).collect::<Vec<_>>()
                );
            }
            if how == Retrieval::Hybrid {
                let best = found.iter().map(|p| p.cosine).fold(f32::MIN, f32::max);
                closest = closest.min(best);
                relevant += (best >= MIN_COSINE) as usize;
            }
        }
    }
    let rate = |n: usize| n as f64 / asked.len() as f64;
    eprintln!(
        "hit@5 over {} questions: vector {:.2}, bm25 {:.2}, hybrid {:.2}; relevant (cosine >= {MIN_COSINE}) {:.2}, lowest best cosine {closest:.3}",
        asked.len(),
        rate(hits[0]),
        rate(hits[1]),
        rate(hits[2]),
        rate(relevant)
    );
    assert!(rate(hits[2]) >= 0.9, "hybrid hit@5 {}", rate(hits[2]));
    assert!(
        rate(relevant) >= 0.9,
        "questions taken as relevant {}",
        rate(relevant)
    );

    for question in common::UNRELATED {
        let found = archive
            .search(question, 5, Retrieval::Hybrid)
            .await
            .unwrap();
        let best = found.iter().map(|p| p.cosine).fold(f32::MIN, f32::max);
        eprintln!("unrelated: {question} -> best cosine {best:.3}");
        assert!(best < MIN_COSINE, "{question:?} found {best} close");
    }

    // Erasing the person an offer letter names takes the letter out of the answers.
    let (doc, _) = common::document(3);
    let person = doc
        .text
        .lines()
        .find_map(|l| l.strip_prefix("Dear "))
        .unwrap();
    let person = person.trim_end_matches(',');
    let question = format!("What salary was {person} offered?");
    let before = archive
        .search(&question, 5, Retrieval::Hybrid)
        .await
        .unwrap();
    assert!(before.iter().any(|p| p.document == doc.name));
    let report = store
        .erase(&Subject::parse(person).unwrap(), "test", false)
        .await
        .unwrap();
    assert!(
        report
            .rows
            .get("archive_documents")
            .is_some_and(|&n| n >= 1)
    );
    assert!(report.residual.is_empty(), "{:?}", report.residual);
    let after = archive
        .search(&question, 5, Retrieval::Hybrid)
        .await
        .unwrap();
    assert!(
        after
            .iter()
            .all(|p| p.document != doc.name && !p.text.contains(person))
    );
}
