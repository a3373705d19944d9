#!/usr/bin/env python3
"""An exact float64 forward pass of verre's decoder architectures, from a GGUF file.

llama.cpp cannot be the reference for everything verre runs: its `llama` architecture
ignores `attention.sliding_window`, so windowed Llama/Mistral files would be checked
against full attention. This script is a second, independent implementation, written from
llama.cpp's source (llama-cpp-python 0.3.36: src/models/{llama,mistral3,qwen2,gemma3}.cpp,
src/llama-context.cpp, src/llama-hparams.cpp, ggml-cpu's rope) in float64 numpy: the
weights are dequantized with gguf-py, everything after that is exact (no activation
quantization, no f16 keys, exact GELU), so it measures how far verre's quantized kernels
land from the mathematics.

Architectures: llama / mistral (sliding window on every layer, or per layer through
`attention.sliding_window_pattern`), mistral3 (YaRN with yarn_log_multiplier, attention
temperature), qwen2 (Q/K/V biases, NeoX RoPE), gemma3 (local/global layers with their own
RoPE bases, q/k norms, post-norms, GeGLU, embedding scale, logit soft-capping).

Usage:
  reference_forward.py gen OUT_DIR
      Write the tiny seeded test models (see MODELS) into OUT_DIR. Deterministic: the same
      numpy and gguf versions give the same bytes; the fixture pins each file's sha256.
  reference_forward.py fixture MODELS_DIR OUT_JSON
      Evaluate every tiny model on its seeded prompt and write the fixture that
      crates/engine/tests/float64_reference.rs checks verre against.
  reference_forward.py logits MODEL.gguf --ids 2,651,... [--positions 500-700] OUT_JSON
      Top-5 log-probabilities of any GGUF (e.g. the real Gemma 3 270M) at the given
      positions, in the same format.
  reference_forward.py beside-llama ARCH_FIXTURE.json MODEL.gguf OUT_JSON
      The exact forward on the tokens of a llama.cpp fixture (tests/fixtures/arch-*.json,
      e.g. the real Qwen2.5 files): per case and position, the exact top-5 and the exact
      log-probabilities of llama.cpp's top-5 tokens, and how far llama.cpp itself is from
      the exact model (mean / max |difference| over llama.cpp's top-5, top-1 agreement where
      llama.cpp leads by >= 0.25). crates/engine/tests/float64_reference.rs then places
      verre on the same scale.

Requirements: numpy, gguf (pip install numpy gguf==0.19.0).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

# ----------------------------------------------------------------------------------------
# Reading a GGUF


class Model:
    """Hyper-parameters and dequantized weights of one GGUF file, as llama.cpp reads them."""

    def __init__(self, path: Path):
        self.path = path
        self.reader = gguf.GGUFReader(path)
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.arch = self.field("general.architecture")
        if self.arch not in ("llama", "mistral", "mistral3", "qwen2", "gemma3"):
            sys.exit(f"{path}: architecture {self.arch!r} is not implemented here")
        a = self.arch
        self.n_layer = int(self.key("block_count"))
        self.n_embd = int(self.key("embedding_length"))
        self.n_head = int(self.key("attention.head_count"))
        self.n_kv_head = int(self.key("attention.head_count_kv", self.n_head))
        self.head_dim = int(self.key("attention.key_length", self.n_embd // self.n_head))
        self.n_rot = int(self.key("rope.dimension_count", self.head_dim))
        self.eps = float(self.key("attention.layer_norm_rms_epsilon", 1e-5))
        self.n_ctx_train = int(self.key("context_length"))
        self.neox = a in ("qwen2", "gemma3")
        self.gemma = a == "gemma3"
        self.qkv_bias = a == "qwen2"

        # RoPE (llama-model.cpp load_hparams, llama-context.cpp).
        self.freq_base = float(self.key("rope.freq_base", 10000.0))
        scaling = self.key("rope.scaling.type", "linear")
        factor = self.key("rope.scaling.factor", None)
        if factor is None:
            factor = self.key("rope.scale_linear", 0.0)
        factor = float(factor)
        self.freq_scale = 1.0 if factor == 0.0 or scaling == "none" else 1.0 / factor
        self.yarn = scaling == "yarn"
        self.n_ctx_orig = int(self.key("rope.scaling.original_context_length", self.n_ctx_train))
        self.beta_fast = float(self.key("rope.scaling.yarn_beta_fast", 32.0))
        self.beta_slow = float(self.key("rope.scaling.yarn_beta_slow", 1.0))
        rope_attn_factor = float(self.key("rope.scaling.attn_factor", 1.0))
        # The magnitude every rotated value is multiplied by. llama.cpp divides by
        # 1 + 0.1 ln(factor) in the context and multiplies it back in the rope kernel; here
        # the two cancel exactly.
        self.rope_mscale = rope_attn_factor
        if self.yarn and factor > 1.0:
            def mscale(m):
                return 0.1 * m * math.log(factor) + 1.0
            log_mul = float(self.key("rope.scaling.yarn_log_multiplier", 0.0)) if a == "mistral3" else 0.0
            if log_mul != 0.0:
                self.rope_mscale *= mscale(1.0) / mscale(log_mul)
            else:
                self.rope_mscale *= mscale(1.0)
        self.freq_factors = self.vector("rope_freqs.weight") if "rope_freqs.weight" in self.tensors else None

        # Attention temperature (mistral3.cpp, llm_graph_input_attn_temp).
        self.temp_scale = float(self.key("attention.temperature_scale", 0.0)) if a == "mistral3" else 0.0

        # Sliding windows (llama-hparams.cpp set_swa_pattern, llama-model.cpp load_swa_pattern).
        window = int(self.key("attention.sliding_window", 0))
        if a in ("llama", "mistral") and window >= self.n_ctx_train:
            window = 0  # verre, like Mistral's reference, treats a window past the context as none
        self.window = window if window > 0 else None
        pattern = self.reader.fields.get(f"{a}.attention.sliding_window_pattern")
        if self.window is None:
            self.swa = [False] * self.n_layer
        elif pattern is not None and pattern.types[0] == V.ARRAY:
            self.swa = [bool(x) for x in pattern.contents()]
            assert len(self.swa) == self.n_layer
        else:
            period = int(pattern.contents()) if pattern is not None else (6 if self.gemma else None)
            if period is None:
                self.swa = [True] * self.n_layer
            else:
                self.swa = [period == 0 or i % period < period - 1 for i in range(self.n_layer)]
        self.freq_base_swa = float(self.key("rope.freq_base_swa", 10000.0)) if self.gemma else None

        if self.gemma:
            self.attn_scale = 1.0 / math.sqrt(self.n_embd // self.n_head if self.n_layer == 62 else self.head_dim)
        else:
            self.attn_scale = 1.0 / math.sqrt(self.head_dim)
        self.softcap = float(self.key("final_logit_softcapping", 0.0)) if self.gemma else 0.0

    def field(self, key, default=None):
        f = self.reader.fields.get(key)
        return default if f is None else f.contents()

    def key(self, k, default=None):
        return self.field(f"{self.arch}.{k}", default)

    def matrix(self, name: str, rows=None) -> np.ndarray:
        """A weight as float64 (rows, cols) = GGUF (ne1, ne0); `rows` selects some rows."""
        t = self.tensors[name]
        data = t.data if rows is None else t.data[rows]
        arr = gguf.quants.dequantize(np.ascontiguousarray(data), t.tensor_type)
        return np.asarray(arr, dtype=np.float64).reshape(-1, int(t.shape[0]))

    def vector(self, name: str) -> np.ndarray:
        return self.matrix(name).reshape(-1)


# ----------------------------------------------------------------------------------------
# The forward pass


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * x * (1.0 + 0.044715 * x * x)))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def yarn_corr_dims(n_rot, n_ctx_orig, base, beta_fast, beta_slow):
    def corr_dim(n_rotations):
        return n_rot * math.log(n_ctx_orig / (n_rotations * 2 * math.pi)) / (2 * math.log(base))
    start = max(0.0, math.floor(corr_dim(beta_fast)))
    end = min(n_rot - 1.0, math.ceil(corr_dim(beta_slow)))
    return start, end


def rope(x: np.ndarray, pos: np.ndarray, m: Model, base: float, freq_scale: float, yarn: bool) -> np.ndarray:
    """Rotate x of shape (n, heads, head_dim) at positions pos (ggml_rope_ext semantics)."""
    half = m.n_rot // 2
    i = np.arange(half, dtype=np.float64)
    inv = base ** (-2.0 * i / m.n_rot)
    if m.freq_factors is not None:
        inv = inv / m.freq_factors[:half]
    theta_extrap = pos[:, None].astype(np.float64) * inv[None, :]
    mscale = 1.0
    if yarn:
        low, high = yarn_corr_dims(m.n_rot, m.n_ctx_orig, base, m.beta_fast, m.beta_slow)
        y = (i - low) / max(0.001, high - low)  # ggml: i0 / 2 for i0 = 2i
        ramp = 1.0 - np.clip(y, 0.0, 1.0)
        theta = freq_scale * theta_extrap * (1.0 - ramp) + theta_extrap * ramp
        mscale = m.rope_mscale
    else:
        theta = freq_scale * theta_extrap
    cos, sin = np.cos(theta)[:, None, :] * mscale, np.sin(theta)[:, None, :] * mscale
    out = x.copy()
    if m.neox:
        a, b = x[..., :half], x[..., half:m.n_rot]
        out[..., :half] = a * cos - b * sin
        out[..., half:m.n_rot] = a * sin + b * cos
    else:
        a, b = x[..., 0:m.n_rot:2], x[..., 1:m.n_rot:2]
        out[..., 0:m.n_rot:2] = a * cos - b * sin
        out[..., 1:m.n_rot:2] = a * sin + b * cos
    return out


def forward(m: Model, ids: list[int], positions: list[int]) -> np.ndarray:
    """Logits (len(positions), vocab) of the sequence `ids` at `positions`."""
    n, d, hd = len(ids), m.n_embd, m.head_dim
    pos = np.arange(n)
    x = m.matrix("token_embd.weight", rows=np.asarray(ids))
    if m.gemma:
        x = x * math.sqrt(d)
    group = m.n_head // m.n_kv_head
    for li in range(m.n_layer):
        p = f"blk.{li}."
        h = rms_norm(x, m.vector(p + "attn_norm.weight"), m.eps)
        q = h @ m.matrix(p + "attn_q.weight").T
        k = h @ m.matrix(p + "attn_k.weight").T
        v = h @ m.matrix(p + "attn_v.weight").T
        if m.qkv_bias:
            q += m.vector(p + "attn_q.bias")
            k += m.vector(p + "attn_k.bias")
            v += m.vector(p + "attn_v.bias")
        q = q.reshape(n, m.n_head, hd)
        k = k.reshape(n, m.n_kv_head, hd)
        v = v.reshape(n, m.n_kv_head, hd)
        if m.gemma:
            q = rms_norm(q, m.vector(p + "attn_q_norm.weight"), m.eps)
            k = rms_norm(k, m.vector(p + "attn_k_norm.weight"), m.eps)
        local = m.swa[li]
        if m.gemma and local:
            base, fscale, yarn = m.freq_base_swa, 1.0, False
        else:
            base, fscale, yarn = m.freq_base, m.freq_scale, m.yarn
        q = rope(q, pos, m, base, fscale, yarn)
        k = rope(k, pos, m, base, fscale, yarn)
        if m.temp_scale != 0.0:
            t = np.log(np.floor(pos / m.n_ctx_orig) + 1.0) * m.temp_scale + 1.0
            q = q * t[:, None, None]

        # Causal mask, and the window: position i sees j when i - window < j <= i.
        ii, jj = np.meshgrid(pos, pos, indexing="ij")
        visible = jj <= ii
        if local and m.window is not None:
            visible &= (ii - jj) < m.window
        attn = np.empty((n, m.n_head, hd))
        for head in range(m.n_head):
            kvh = head // group
            s = (q[:, head, :] @ k[:, kvh, :].T) * m.attn_scale
            s = np.where(visible, s, -np.inf)
            s -= s.max(axis=1, keepdims=True)
            w = np.exp(s)
            w /= w.sum(axis=1, keepdims=True)
            attn[:, head, :] = w @ v[:, kvh, :]
        out = attn.reshape(n, m.n_head * hd) @ m.matrix(p + "attn_output.weight").T
        if m.gemma:
            out = rms_norm(out, m.vector(p + "post_attention_norm.weight"), m.eps)
        x = x + out

        h = rms_norm(x, m.vector(p + "ffn_norm.weight"), m.eps)
        gate = h @ m.matrix(p + "ffn_gate.weight").T
        up = h @ m.matrix(p + "ffn_up.weight").T
        act = (gelu_tanh(gate) if m.gemma else silu(gate)) * up
        out = act @ m.matrix(p + "ffn_down.weight").T
        if m.gemma:
            out = rms_norm(out, m.vector(p + "post_ffw_norm.weight"), m.eps)
        x = x + out

    h = rms_norm(x[np.asarray(positions)], m.vector("output_norm.weight"), m.eps)
    out_name = "output.weight" if "output.weight" in m.tensors else "token_embd.weight"
    n_vocab = int(m.tensors[out_name].shape[1])
    logits = np.empty((len(positions), n_vocab))
    chunk = 16384  # rows of the output matrix dequantized at a time (Gemma's is 262144 x 640)
    for r0 in range(0, n_vocab, chunk):
        rows = np.arange(r0, min(n_vocab, r0 + chunk))
        logits[:, rows] = h @ m.matrix(out_name, rows=rows).T
    if m.softcap:
        logits = np.tanh(logits / m.softcap) * m.softcap
    return logits


def top5_rows(logits: np.ndarray) -> list[dict]:
    """Per row: the five most likely tokens with log-probabilities, and top-1 - top-2."""
    rows = []
    for row in logits:
        lp = row - row.max()
        lp = lp - math.log(np.exp(lp).sum())
        order = np.argsort(-lp, kind="stable")[:5]
        rows.append({
            "top5": [[int(t), round(float(lp[t]), 6)] for t in order],
            "gap": round(float(lp[order[0]] - lp[order[1]]), 6),
        })
    return rows


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------
# The tiny test models


@dataclass(frozen=True)
class Spec:
    name: str
    arch: str
    seed: int
    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int
    head_dim: int
    n_ff: int
    rope_base: float
    window: int | None = None
    pattern: object = None  # list of bools, an int period, or None
    extra: dict = field(default_factory=dict)  # key suffix -> (value, GGUFValueType)
    prompt_len: int = 96
    doc: str = ""


N_VOCAB = 256
CONTEXT = 512

MODELS = [
    Spec(
        name="llama-window", arch="llama", seed=101,
        n_layer=3, n_embd=64, n_head=4, n_kv_head=2, head_dim=16, n_ff=160,
        rope_base=1e6, window=12,
        doc="Mistral 7B v0.1-style: a window of 12 on every layer (no pattern key).",
    ),
    Spec(
        name="llama-iswa", arch="llama", seed=102,
        n_layer=4, n_embd=96, n_head=4, n_kv_head=2, head_dim=32, n_ff=192,
        rope_base=1e9, window=16, pattern=[True, True, True, False],
        doc="Interleaved windows (Ministral 8B's layout, as llama.cpp's sliding_window_pattern "
            "bool array): window 16 on layers 0-2, layer 3 global; head_dim 32 from "
            "key_length so q_dim = 128 != n_embd = 96; RoPE base 1e9.",
    ),
    Spec(
        name="mistral3-yarn", arch="mistral3", seed=103,
        n_layer=3, n_embd=64, n_head=4, n_kv_head=1, head_dim=32, n_ff=192,
        rope_base=1e9,
        extra={
            "rope.scaling.type": ("yarn", V.STRING),
            "rope.scaling.factor": (16.0, V.FLOAT32),
            "rope.scaling.original_context_length": (16, V.UINT32),
            "rope.scaling.yarn_beta_fast": (32.0, V.FLOAT32),
            "rope.scaling.yarn_beta_slow": (1.0, V.FLOAT32),
            "rope.scaling.yarn_log_multiplier": (1.0, V.FLOAT32),
            "attention.temperature_scale": (0.1, V.FLOAT32),
        },
        doc="Ministral 3: YaRN x16 over an original context of 16 (so the 96-token prompt "
            "reaches six temperature steps), yarn_log_multiplier 1, temperature 0.1, "
            "RoPE base 1e9, q_dim 128 > n_embd 64.",
    ),
    Spec(
        name="gemma3-tiny", arch="gemma3", seed=104,
        n_layer=7, n_embd=64, n_head=4, n_kv_head=1, head_dim=32, n_ff=128,
        rope_base=1e6, window=16,
        extra={"final_logit_softcapping": (30.0, V.FLOAT32)},
        doc="Gemma 3: default pattern of 6 (layers 0-4 and 6 local, window 16, RoPE base "
            "10000; layer 5 global, base 1e6), q/k norms, post-norms, GeGLU, scaled "
            "embeddings, logit soft-capping at 30.",
    ),
]


def draw(spec: Spec):
    """name -> (float32 array in (rows, cols) order, quant type), seeded and in fixed order."""
    rng = np.random.default_rng(spec.seed)

    def matrix(rows, cols, scale=None):
        s = 1.0 / math.sqrt(cols) if scale is None else scale
        return (rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(s)).astype(np.float32)

    def norm(n_):
        return (1.0 + 0.1 * rng.standard_normal(n_, dtype=np.float32)).astype(np.float32)

    d, hd = spec.n_embd, spec.head_dim
    q_dim, kv_dim = spec.n_head * hd, spec.n_kv_head * hd
    # Tied output: rows of norm 3, so that logits spread by a few nats and most top-1s
    # lead by more than the test's 0.25.
    # Gemma multiplies the looked-up rows by sqrt(n_embd) and its residual stream then
    # dominates the tied output (the model predicts its input token): a smaller table.
    emb_scale = (1.0 if spec.arch == "gemma3" else 2.0) / math.sqrt(d)
    out = {"token_embd.weight": (matrix(N_VOCAB, d, emb_scale), Q.Q8_0)}
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        out[p + "attn_norm.weight"] = (norm(d), Q.F32)
        out[p + "attn_q.weight"] = (matrix(q_dim, d), Q.Q8_0)
        out[p + "attn_k.weight"] = (matrix(kv_dim, d), Q.Q8_0)
        out[p + "attn_v.weight"] = (matrix(kv_dim, d), Q.Q5_0)
        if spec.arch == "gemma3":
            out[p + "attn_q_norm.weight"] = (norm(hd), Q.F32)
            out[p + "attn_k_norm.weight"] = (norm(hd), Q.F32)
        out[p + "attn_output.weight"] = (matrix(d, q_dim), Q.Q8_0)
        if spec.arch == "gemma3":
            out[p + "post_attention_norm.weight"] = (norm(d), Q.F32)
        out[p + "ffn_norm.weight"] = (norm(d), Q.F32)
        out[p + "ffn_gate.weight"] = (matrix(spec.n_ff, d), Q.Q4_0)
        out[p + "ffn_up.weight"] = (matrix(spec.n_ff, d), Q.Q8_0)
        out[p + "ffn_down.weight"] = (matrix(d, spec.n_ff), Q.Q8_0)
        if spec.arch == "gemma3":
            out[p + "post_ffw_norm.weight"] = (norm(d), Q.F32)
    out["output_norm.weight"] = (norm(d), Q.F32)
    return out


def prompt_of(spec: Spec) -> list[int]:
    rng = np.random.default_rng(1000 + spec.seed)
    return [int(t) for t in rng.integers(0, N_VOCAB, spec.prompt_len)]


def write_model(spec: Spec, path: Path) -> None:
    a = spec.arch
    w = gguf.GGUFWriter(path, a)
    w.add_name(spec.name)
    kv = [
        ("context_length", CONTEXT, V.UINT32),
        ("embedding_length", spec.n_embd, V.UINT32),
        ("block_count", spec.n_layer, V.UINT32),
        ("feed_forward_length", spec.n_ff, V.UINT32),
        ("attention.head_count", spec.n_head, V.UINT32),
        ("attention.head_count_kv", spec.n_kv_head, V.UINT32),
        ("attention.layer_norm_rms_epsilon", 1e-6, V.FLOAT32),
        ("attention.key_length", spec.head_dim, V.UINT32),
        ("attention.value_length", spec.head_dim, V.UINT32),
        ("rope.dimension_count", spec.head_dim, V.UINT32),
        ("rope.freq_base", spec.rope_base, V.FLOAT32),
    ]
    if spec.window:
        kv.append(("attention.sliding_window", spec.window, V.UINT32))
    for k, value, vtype in kv:
        w.add_key_value(f"{a}.{k}", value, vtype)
    if isinstance(spec.pattern, list):
        w.add_key_value(f"{a}.attention.sliding_window_pattern", spec.pattern, V.ARRAY, V.BOOL)
    elif isinstance(spec.pattern, int):
        w.add_key_value(f"{a}.attention.sliding_window_pattern", spec.pattern, V.UINT32)
    for k, (value, vtype) in spec.extra.items():
        w.add_key_value(f"{a}.{k}", value, vtype)
    for name, (arr, qtype) in draw(spec).items():
        data = gguf.quants.quantize(arr, qtype)
        w.add_tensor(name, data, raw_dtype=qtype if qtype not in (Q.F32, Q.F16) else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def cmd_gen(args) -> None:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for spec in MODELS:
        path = args.out_dir / f"{spec.name}.gguf"
        write_model(spec, path)
        print(f"{path}  sha256 {sha256_file(path)}")


def mean_max_abs(a: list[dict], b: np.ndarray) -> tuple[float, float]:
    """|logprob difference| over the reference's top-5 tokens: mean and max."""
    diffs = []
    for row, other in zip(a, b):
        lp = other - other.max()
        lp = lp - math.log(np.exp(lp).sum())
        diffs += [abs(lp[t] - v) for t, v in row["top5"]]
    return float(np.mean(diffs)), float(np.max(diffs))


def ablations(m: Model, ids: list[int], positions: list[int], rows: list[dict]) -> dict:
    """How far the logits move without each feature the model uses: a test's tolerances
    must be well below this, or it could not tell the feature is there."""
    out = {}

    def without(attr, value, name):
        saved = getattr(m, attr)
        setattr(m, attr, value)
        out[name] = mean_max_abs(rows, forward(m, ids, positions))
        setattr(m, attr, saved)

    if m.window is not None:
        without("window", None, "no_window")
    if m.temp_scale:
        without("temp_scale", 0.0, "no_temperature")
    if m.yarn:
        without("yarn", False, "no_yarn")
    if m.gemma and m.window is not None:
        without("freq_base_swa", m.freq_base, "one_rope_base")
    return {k: {"mean": round(v[0], 4), "max": round(v[1], 4)} for k, v in out.items()}


def cmd_fixture(args) -> None:
    cases = []
    for spec in MODELS:
        path = args.models_dir / f"{spec.name}.gguf"
        m = Model(path)
        ids = prompt_of(spec)
        positions = list(range(len(ids)))
        logits = forward(m, ids, positions)
        rows = top5_rows(logits)
        case = {
            "model": f"{spec.name}.gguf",
            "sha256": sha256_file(path),
            "doc": spec.doc,
            "ids": ids,
            "positions": positions,
            "rows": rows,
        }
        case["ablations"] = ablations(m, ids, positions, rows)
        gaps = [r["gap"] for r in rows]
        print(f"{spec.name}: {len(rows)} rows, {sum(g >= 0.25 for g in gaps)} with gap >= 0.25, "
              f"ablations {case['ablations']}", file=sys.stderr)
        cases.append(case)
    fixture = {
        "generator": "scripts/reference_forward.py gen + fixture",
        "numpy": np.__version__,
        "gguf": getattr(gguf, "__version__", None) or _gguf_version(),
        "cases": cases,
    }
    args.out_json.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")


def _gguf_version() -> str:
    try:
        from importlib.metadata import version
        return version("gguf")
    except Exception:
        return "unknown"


def parse_positions(text: str, n: int) -> list[int]:
    out = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += range(int(a), min(int(b), n))
        else:
            out.append(int(part))
    return out


def cmd_logits(args) -> None:
    m = Model(args.model)
    ids = [int(t) for t in args.ids.split(",")]
    positions = parse_positions(args.positions, len(ids)) if args.positions else list(range(len(ids)))
    rows = top5_rows(forward(m, ids, positions))
    out = {
        "model": args.model.name,
        "sha256": sha256_file(args.model),
        "ids": ids,
        "positions": positions,
        "rows": rows,
        "ablations": ablations(m, ids, positions, rows) if args.ablations else {},
    }
    args.out_json.write_text(json.dumps(out, separators=(",", ":")) + "\n")


def cmd_beside_llama(args) -> None:
    fx = json.loads(args.arch_fixture.read_text())
    m = Model(args.model)
    sha = sha256_file(args.model)
    if sha != fx["model_sha256"]:
        sys.exit(f"{args.model} is not the fixture's file (sha256 {sha}, fixture {fx['model_sha256']})")
    cases, diffs, confident, agree = [], [], 0, 0
    for case in fx["cases"]:
        ids = (case["prompt_ids"] + case["continuation_ids"])[: len(case["top5"])]
        positions = list(range(len(ids)))
        logits = forward(m, ids, positions)
        rows = top5_rows(logits)
        at_llama = []
        for row, logit, top, gap in zip(rows, logits, case["top5"], case["gap"]):
            lp = logit - logit.max()
            lp = lp - math.log(np.exp(lp).sum())
            at_llama.append([[int(t), round(float(lp[t]), 6)] for t, _ in top])
            diffs += [abs(float(lp[t]) - v) for t, v in top]
            if gap >= 0.25:
                confident += 1
                agree += int(int(np.argmax(lp)) == top[0][0])
        cases.append({"name": case["name"], "ids": ids, "positions": positions, "rows": rows,
                      "exact_at_llama_top5": at_llama, "llama_top5": case["top5"]})
        print(f"{case['name']}: {len(ids)} positions", file=sys.stderr)
    out = {
        "model": args.model.name,
        "sha256": sha,
        "generator": "scripts/reference_forward.py beside-llama",
        "numpy": np.__version__,
        "llama_cpp_fixture": args.arch_fixture.name,
        "llama_cpp_vs_exact": {"mean": round(float(np.mean(diffs)), 6), "max": round(float(np.max(diffs)), 6),
                               "top1_agree": agree, "confident_rows": confident},
        "cases": cases,
    }
    print(f"llama.cpp vs exact: {out['llama_cpp_vs_exact']}", file=sys.stderr)
    args.out_json.write_text(json.dumps(out, separators=(",", ":")) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen", help="write the tiny test models")
    g.add_argument("out_dir", type=Path)
    f = sub.add_parser("fixture", help="evaluate the tiny models into the test fixture")
    f.add_argument("models_dir", type=Path)
    f.add_argument("out_json", type=Path)
    lg = sub.add_parser("logits", help="top-5 logprobs of any GGUF at some positions")
    lg.add_argument("model", type=Path)
    lg.add_argument("--ids", required=True, help="comma-separated token ids")
    lg.add_argument("--positions", help="e.g. 0-10,500-700 (default: all)")
    lg.add_argument("--ablations", action="store_true", help="also measure each feature's effect")
    lg.add_argument("out_json", type=Path)
    bl = sub.add_parser("beside-llama", help="the exact forward on a llama.cpp fixture's tokens")
    bl.add_argument("arch_fixture", type=Path)
    bl.add_argument("model", type=Path)
    bl.add_argument("out_json", type=Path)
    args = ap.parse_args()
    {"gen": cmd_gen, "fixture": cmd_fixture, "logits": cmd_logits,
     "beside-llama": cmd_beside_llama}[args.cmd](args)


if __name__ == "__main__":
    main()
