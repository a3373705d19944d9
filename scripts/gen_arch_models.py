#!/usr/bin/env python3
"""Write small random-weight GGUF files with the shapes of the architectures verre runs.

No Mistral, Gemma or Qwen weights can be downloaded where verre is tested, so this script
builds stand-ins: the real GGUF keys and tensor names of each architecture (read from
llama.cpp's source: src/llama-arch.cpp, src/models/<arch>.cpp, conversion/*.py), tiny
dimensions, and seeded random weights. verre's tests load them and compare their logits with
llama.cpp's (crates/engine/tests/architectures.rs against the fixtures that
scripts/gen_arch_fixtures.py writes).

Usage:  gen_arch_models.py VOCAB_DIR OUT_DIR [--reference]

  VOCAB_DIR  llama.cpp's vocab-only GGUF files (models/ggml-vocab-*.gguf of the
             llama-cpp-python 0.3.36 sdist; scripts/test.sh extracts them into
             target/llama-vocab): llama-spm, llama-bpe and qwen2 are used.
  OUT_DIR    where the models go (CI: target/arch-models). The file names are fixed, the
             bytes are deterministic: the fixtures pin each file's sha256, so a changed
             generator, numpy or gguf version shows up as a loud test failure, not as a
             silent drift.
  --reference  also write OUT_DIR/reference/: the files only the fixture generator needs
             (llama.cpp twins of the windowed models, ablations). CI does not need them.

Requirements: numpy and gguf (pip install gguf==0.19.0 numpy; the versions the fixtures
were made with are in crates/engine/tests/fixtures/README.md). llama.cpp is not needed:
every weight is quantized with gguf-py's own quantizers, which are bit-exact with
llama-quantize for the types used here (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; checked by
comparing bytes, see the README).

Weights: zero-mean Gaussian, scaled by 1/sqrt(fan-in) (a token embedding's fan-in is 1 when
it is only looked up; a table that doubles as the output projection is scaled by
1/sqrt(n_embd) so that logits have unit spread), drawn in float32, then quantized. Norm
weights are 1 + N(0, 0.1^2) so that a norm applied wrongly shows. Biases (qwen2) are
N(0, 0.5^2) on K and N(0, 0.1^2) on Q and V (larger V biases make it collapse). With weights like these the next-token distribution depends on the prompt
(the fixture generator checks that its top-1 varies); larger weights make the model
collapse onto one token and a comparison with llama.cpp prove nothing.

The models (dimensions are tiny; what matters is which code paths they take):

  mistral-7b-v0.3-like  llama arch, SentencePiece vocab (Llama 2's 32000 pieces), GQA 4:1,
                        RoPE base 1e6, a sliding window of 32 on every layer
                        (llama.attention.sliding_window), untied output.
  mistral-nemo-like     llama arch, SentencePiece vocab, head_dim 16
                        given by attention.key_length/value_length while n_embd / n_head
                        is 24 (Nemo: 128 vs 5120/32 = 160), RoPE base 1e6, tied output.
  ministral-3-like      mistral3 arch (llama.cpp's Ministral 3 / Mistral 3 text models): YaRN
                        (factor 16 over an original context of 32 so that positions past 32
                        exercise it; beta_fast 32, beta_slow 1, yarn_log_multiplier 1) and
                        Llama-4-style attention temperature (attention.temperature_scale
                        0.1, floor scale = the original context), RoPE base 1e9,
                        head_dim 32 with n_embd 64 and 4 heads (q_dim 128 > n_embd, as in
                        Ministral 3 3B: 32 x 128 > 3072).
  ministral-8b-iswa-like  llama arch with interleaved sliding windows: window 16 on layers
                        0-2, full attention on layer 3, written the way llama.cpp expresses
                        per-layer windows: llama.attention.sliding_window = 16 and
                        llama.attention.sliding_window_pattern = [true, true, true, false]
                        (an array of bools, one per layer, true = windowed). RoPE base 1e8.
  qwen2-like            qwen2 arch, Qwen2 BPE vocab, Q/K/V biases, NeoX RoPE base 1e6, tied
                        output (as Qwen2.5 0.5B/1.5B).
  gemma3-like           gemma3 arch: 6 layers, layers 0-4 sliding (window 16, RoPE base
                        10000) and layer 5 global (RoPE base 1e6) -- llama.cpp's default
                        pattern of 6 and default local base, as in the real GGUFs, which
                        write neither key; GeGLU, q/k norms, post-attention and post-FFN
                        norms, embeddings scaled by sqrt(n_embd), tied output, SentencePiece
                        vocab without a space prefix.

llama.cpp's `llama` architecture ignores sliding_window, so it cannot be the reference for
the two windowed llama files. --reference writes a twin of each as llama.cpp's
`granite_swa` architecture, which is Llama's block with per-layer standard sliding windows:
the same tensors, plus attention sinks of -1e30 (exp(-1e30 - max) is exactly 0, so the
softmax is unchanged), logit_scale 1, and the window pattern as a bool array. The fixture
generator evaluates the twin and pins the llama file's sha256.

Ablations (also under reference/, for the fixture generator's sensitivity figures): each
windowed model without its window, ministral-3-like without attention temperature and
without YaRN. They show how far the logits move when a feature is dropped, i.e. whether a
comparison within the tolerance can tell that feature is implemented.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V


@dataclass(frozen=True)
class Spec:
    name: str
    arch: str
    vocab: str  # llama.cpp vocab file: models/ggml-vocab-<vocab>.gguf
    seed: int
    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int
    head_dim: int
    n_ff: int
    context_length: int
    rope_base: float
    rms_eps: float
    tied_output: bool
    # Quantization per tensor class: embd, output, q, k, v, o, gate, up, down.
    types: dict
    window: int | None = None
    # Per-layer windows (None: every layer windowed when `window` is set).
    window_pattern: tuple | None = None
    extra_keys: dict = field(default_factory=dict)  # key suffix -> (value, GGUFValueType)
    qkv_bias: bool = False
    gemma: bool = False
    add_space_prefix: bool | None = None


def q_all(t: Q, **over) -> dict:
    d = {k: t for k in ("embd", "output", "q", "k", "v", "o", "gate", "up", "down")}
    d.update(over)
    return d


MODELS = [
    Spec(
        name="mistral-7b-v0.3-like", arch="llama", vocab="llama-spm", seed=7,
        n_layer=4, n_embd=128, n_head=8, n_kv_head=2, head_dim=16, n_ff=384,
        context_length=1024, rope_base=1e6, rms_eps=1e-5, tied_output=False,
        types=q_all(Q.Q4_0, output=Q.Q5_1, down=Q.Q4_1),
        window=32,
    ),
    Spec(
        name="mistral-nemo-like", arch="llama", vocab="llama-spm", seed=12,
        n_layer=3, n_embd=96, n_head=4, n_kv_head=1, head_dim=16, n_ff=256,
        context_length=1024, rope_base=1e6, rms_eps=1e-5, tied_output=True,
        types=q_all(Q.Q8_0, embd=Q.Q4_0, output=Q.Q4_0),
    ),
    Spec(
        name="ministral-3-like", arch="mistral3", vocab="llama-bpe", seed=3,
        n_layer=3, n_embd=64, n_head=4, n_kv_head=1, head_dim=32, n_ff=192,
        context_length=512, rope_base=1e9, rms_eps=1e-5, tied_output=True,
        types=q_all(Q.Q5_0, embd=Q.Q4_0, output=Q.Q4_0, down=Q.Q8_0),
        extra_keys={
            "rope.scaling.type": ("yarn", V.STRING),
            "rope.scaling.factor": (16.0, V.FLOAT32),
            "rope.scaling.original_context_length": (32, V.UINT32),
            "rope.scaling.yarn_beta_fast": (32.0, V.FLOAT32),
            "rope.scaling.yarn_beta_slow": (1.0, V.FLOAT32),
            "rope.scaling.yarn_log_multiplier": (1.0, V.FLOAT32),
            "attention.temperature_scale": (0.1, V.FLOAT32),
        },
    ),
    Spec(
        name="ministral-8b-iswa-like", arch="llama", vocab="llama-spm", seed=8,
        n_layer=4, n_embd=128, n_head=4, n_kv_head=2, head_dim=32, n_ff=256,
        context_length=1024, rope_base=1e8, rms_eps=1e-5, tied_output=True,
        types=q_all(Q.F16, embd=Q.Q8_0, output=Q.Q8_0, gate=Q.Q4_1, up=Q.Q4_1, down=Q.Q5_0),
        window=16, window_pattern=(True, True, True, False),
    ),
    Spec(
        name="qwen2-like", arch="qwen2", vocab="qwen2", seed=2,
        n_layer=3, n_embd=64, n_head=4, n_kv_head=2, head_dim=16, n_ff=160,
        context_length=1024, rope_base=1e6, rms_eps=1e-6, tied_output=True,
        types=q_all(Q.Q8_0, embd=Q.Q4_1, output=Q.Q4_1),
        qkv_bias=True,
    ),
    Spec(
        name="gemma3-like", arch="gemma3", vocab="llama-spm", seed=270,
        n_layer=6, n_embd=128, n_head=4, n_kv_head=1, head_dim=32, n_ff=256,
        context_length=1024, rope_base=1e6, rms_eps=1e-6, tied_output=True,
        types=q_all(Q.Q4_0, embd=Q.Q8_0, output=Q.Q8_0, gate=Q.Q8_0, up=Q.Q8_0, down=Q.Q8_0),
        window=16, gemma=True, add_space_prefix=False,
    ),
]

# Sinks that take no probability mass: exp(-1e30 - max) == 0 in float32.
NO_SINK = -1e30


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def vocab_fields(vocab_dir: Path, vocab: str):
    """The tokenizer.* keys of a llama.cpp vocab file, with their GGUF types."""
    path = vocab_dir / f"ggml-vocab-{vocab}.gguf"
    if not path.is_file():
        sys.exit(f"gen_arch_models: {path} is missing (scripts/test.sh extracts llama.cpp's vocab files)")
    reader = gguf.GGUFReader(path)
    out = []
    for key, f in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        sub = f.types[1] if vtype == V.ARRAY else None
        out.append((key, f.contents(), vtype, sub))
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].contents())
    return out, n_vocab


class Weights:
    """Seeded draws, in a fixed order, so the bytes never depend on anything else."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def matrix(self, rows: int, cols: int, scale: float | None = None) -> np.ndarray:
        s = 1.0 / np.sqrt(cols) if scale is None else scale
        return (self.rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(s)).astype(np.float32)

    def norm(self, n: int) -> np.ndarray:
        return (1.0 + 0.1 * self.rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    def bias(self, n: int, scale: float) -> np.ndarray:
        return (scale * self.rng.standard_normal(n, dtype=np.float32)).astype(np.float32)


def draw_tensors(spec: Spec, n_vocab: int):
    """name -> (float32 array in (rows, cols) = GGUF (ne1, ne0) order, quant type)."""
    w = Weights(spec.seed)
    d, hd, t = spec.n_embd, spec.head_dim, spec.types
    q_dim, kv_dim = spec.n_head * hd, spec.n_kv_head * hd
    out = {}
    embd_scale = 1.0 / np.sqrt(d) if spec.tied_output else 1.0
    out["token_embd.weight"] = (w.matrix(n_vocab, d, embd_scale), t["embd"])
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        out[p + "attn_norm.weight"] = (w.norm(d), Q.F32)
        out[p + "attn_q.weight"] = (w.matrix(q_dim, d), t["q"])
        out[p + "attn_k.weight"] = (w.matrix(kv_dim, d), t["k"])
        out[p + "attn_v.weight"] = (w.matrix(kv_dim, d), t["v"])
        if spec.qkv_bias:
            # Large on K as in Qwen2 (rotated with the keys, so not softmax-invariant),
            # small on Q and V: a large V bias is a constant the whole residual stream
            # would carry, and the model would predict the same tokens everywhere.
            out[p + "attn_q.bias"] = (w.bias(q_dim, 0.1), Q.F32)
            out[p + "attn_k.bias"] = (w.bias(kv_dim, 0.5), Q.F32)
            out[p + "attn_v.bias"] = (w.bias(kv_dim, 0.1), Q.F32)
        if spec.gemma:
            out[p + "attn_q_norm.weight"] = (w.norm(hd), Q.F32)
            out[p + "attn_k_norm.weight"] = (w.norm(hd), Q.F32)
        out[p + "attn_output.weight"] = (w.matrix(d, q_dim), t["o"])
        if spec.gemma:
            out[p + "post_attention_norm.weight"] = (w.norm(d), Q.F32)
        out[p + "ffn_norm.weight"] = (w.norm(d), Q.F32)
        out[p + "ffn_gate.weight"] = (w.matrix(spec.n_ff, d), t["gate"])
        out[p + "ffn_up.weight"] = (w.matrix(spec.n_ff, d), t["up"])
        out[p + "ffn_down.weight"] = (w.matrix(d, spec.n_ff), t["down"])
        if spec.gemma:
            out[p + "post_ffw_norm.weight"] = (w.norm(d), Q.F32)
    out["output_norm.weight"] = (w.norm(d), Q.F32)
    if not spec.tied_output:
        out["output.weight"] = (w.matrix(n_vocab, d), t["output"])
    return out


def quantize(arr: np.ndarray, qtype: Q) -> np.ndarray:
    return gguf.quants.quantize(arr, qtype)


def write_gguf(path: Path, arch: str, spec: Spec, keys: list, tensors: dict, extra_tensors: dict | None = None):
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(spec.name)
    for key, value, vtype, sub in keys:
        writer.add_key_value(key, value, vtype, sub)
    for name, (arr, qtype) in tensors.items():
        data = quantize(arr, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype if qtype not in (Q.F32, Q.F16) else None)
    for name, (arr, qtype) in (extra_tensors or {}).items():
        writer.add_tensor(name, quantize(arr, qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def arch_keys(spec: Spec, arch: str, *, window=True, extra=True, iswa_array=False) -> list:
    """The {arch}.* hyper-parameter keys, as llama.cpp's converters write them."""
    k = lambda s: f"{arch}.{s}"
    keys = [
        (k("context_length"), spec.context_length, V.UINT32, None),
        (k("embedding_length"), spec.n_embd, V.UINT32, None),
        (k("block_count"), spec.n_layer, V.UINT32, None),
        (k("feed_forward_length"), spec.n_ff, V.UINT32, None),
        (k("attention.head_count"), spec.n_head, V.UINT32, None),
        (k("attention.head_count_kv"), spec.n_kv_head, V.UINT32, None),
        (k("attention.layer_norm_rms_epsilon"), spec.rms_eps, V.FLOAT32, None),
        (k("rope.freq_base"), spec.rope_base, V.FLOAT32, None),
    ]
    if spec.head_dim * spec.n_head != spec.n_embd or spec.gemma:
        keys += [
            (k("attention.key_length"), spec.head_dim, V.UINT32, None),
            (k("attention.value_length"), spec.head_dim, V.UINT32, None),
        ]
    keys.append((k("rope.dimension_count"), spec.head_dim, V.UINT32, None))
    if window and spec.window:
        keys.append((k("attention.sliding_window"), spec.window, V.UINT32, None))
        pattern = spec.window_pattern
        if pattern is None and iswa_array:
            pattern = (True,) * spec.n_layer
        if pattern is not None:
            keys.append((k("attention.sliding_window_pattern"), [bool(x) for x in pattern], V.ARRAY, V.BOOL))
    if extra:
        for suffix, (value, vtype) in spec.extra_keys.items():
            keys.append((k(suffix), value, vtype, None))
    return keys


def tokenizer_keys(spec: Spec, vocab: list) -> list:
    keys = list(vocab)
    if spec.add_space_prefix is not None:
        keys.append(("tokenizer.ggml.add_space_prefix", spec.add_space_prefix, V.BOOL, None))
    return keys


def check_quantizers(vocab_dir: Path, out_dir: Path, llama_quantize: Path):
    """Quantize every model's float32 weights with llama-quantize --pure to each type used
    here and compare the bytes with gguf-py's quantizers."""
    import subprocess

    types = sorted({t for s in MODELS for t in s.types.values()}, key=lambda t: t.value)
    work = out_dir / "quantizer-check"
    work.mkdir(parents=True, exist_ok=True)
    failures = 0
    for spec in MODELS:
        vocab, n_vocab = vocab_fields(vocab_dir, spec.vocab)
        tensors = draw_tensors(spec, n_vocab)
        f32 = {name: (arr, Q.F32) for name, (arr, _) in tensors.items()}
        src = work / f"{spec.name}.f32.gguf"
        write_gguf(src, spec.arch, spec, arch_keys(spec, spec.arch) + tokenizer_keys(spec, vocab), f32)
        for qtype in types:
            dst = work / f"{spec.name}.{qtype.name}.gguf"
            subprocess.run([str(llama_quantize), "--pure", str(src), str(dst), qtype.name],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            reader = gguf.GGUFReader(dst)
            for t in reader.tensors:
                arr = tensors[t.name][0]
                if arr.ndim != 2:
                    continue
                if t.tensor_type != qtype:
                    sys.exit(f"{dst}: {t.name} is {t.tensor_type.name}, expected {qtype.name}")
                ours = np.ascontiguousarray(quantize(arr, qtype)).view(np.uint8).reshape(-1)
                theirs = np.asarray(t.data).view(np.uint8).reshape(-1)
                if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
                    n = int((ours != theirs).sum()) if ours.shape == theirs.shape else -1
                    print(f"DIFFERS {spec.name} {t.name} {qtype.name}: {n} bytes", file=sys.stderr)
                    failures += 1
            dst.unlink()
        src.unlink()
        print(f"{spec.name}: {', '.join(t.name for t in types)} checked", file=sys.stderr)
    if failures:
        sys.exit(f"{failures} tensors differ from llama-quantize")
    print("gguf-py's quantizers are bit-exact with llama-quantize for every tensor and type", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("vocab_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--reference", action="store_true",
                    help="also write reference/ (llama.cpp twins and ablations for the fixture generator)")
    ap.add_argument("--check-quantizers", type=Path, metavar="LLAMA_QUANTIZE",
                    help="instead of writing the models, check gguf-py's quantizers byte for byte "
                         "against this llama-quantize binary")
    ap.add_argument("--only", nargs="*", help="model names to write (default: all)")
    args = ap.parse_args()
    if args.check_quantizers:
        check_quantizers(args.vocab_dir, args.out_dir, args.check_quantizers)
        return
    args.out_dir.mkdir(parents=True, exist_ok=True)
    ref_dir = args.out_dir / "reference"
    if args.reference:
        ref_dir.mkdir(exist_ok=True)

    for spec in MODELS:
        if args.only and spec.name not in args.only:
            continue
        vocab, n_vocab = vocab_fields(args.vocab_dir, spec.vocab)
        tensors = draw_tensors(spec, n_vocab)
        tok = tokenizer_keys(spec, vocab)
        path = args.out_dir / f"{spec.name}.gguf"
        write_gguf(path, spec.arch, spec, arch_keys(spec, spec.arch) + tok, tensors)
        print(f"{path}  {os.path.getsize(path):>9} bytes  sha256 {sha256_file(path)}")
        if not args.reference:
            continue

        variants = []
        if spec.window and spec.arch == "llama":
            # llama.cpp's reference for a windowed Llama: the same block as granite_swa.
            twin_keys = arch_keys(spec, "granite_swa", iswa_array=True) + [
                ("granite_swa.logit_scale", 1.0, V.FLOAT32, None),
            ]
            sinks = {f"blk.{i}.attn_sinks.weight": (np.full(spec.n_head, NO_SINK, np.float32), Q.F32)
                     for i in range(spec.n_layer)}
            variants.append(("granite-swa-twin", "granite_swa", twin_keys, sinks))
        if spec.window and spec.arch != "llama":
            variants.append(("no-window", spec.arch, arch_keys(spec, spec.arch, window=False), None))
        if spec.arch == "mistral3":
            drop = lambda pred: [kv for kv in arch_keys(spec, spec.arch) if not pred(kv[0])]
            variants.append(("no-temperature", spec.arch, drop(lambda k: k.endswith("temperature_scale")), None))
            variants.append(("no-yarn", spec.arch, drop(lambda k: ".rope.scaling." in k), None))
        for suffix, arch, keys, extra in variants:
            vpath = ref_dir / f"{spec.name}.{suffix}.gguf"
            write_gguf(vpath, arch, spec, keys + tok, tensors, extra)
            print(f"{vpath}  {os.path.getsize(vpath):>9} bytes  sha256 {sha256_file(vpath)}")


if __name__ == "__main__":
    main()
