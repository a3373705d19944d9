//! Causal attention of new query rows over a sequence's cached keys and values, read as a
//! list of blocks (a paged cache's blocks, or one block for a contiguous cache) in the
//! cache's storage type (f16, q8_0 or q4_0: [`KvRows`]).
//!
//! Blocked: a task is one KV head of up to [`TASK_ROWS`] query rows, that is every query
//! head of the group for those rows. The keys are read in blocks of [`KEY_BLOCK`]
//! positions: each block is widened to f32 once (from f16, or dequantised per 32-block from
//! q8_0/q4_0) into a per-thread buffer that stays in L2. Chunk by chunk of [`CHUNK`] keys
//! (8 KB at a head size of 128, in L1), every tile of [`TILE`] query vectors that reads the
//! chunk takes its scores from it: on AVX-512 each key row is loaded once for the tile's
//! queries, one FMA per 16 dimensions, and the 16 keys' lane sums are folded together by
//! shuffles. The values are then read the same way, block by block and [`VALUE_RUN`]
//! positions at a time, and added into each output. Work per task is
//! O(rows × context) and the memory a thread holds is the task's score rows plus one block
//! of keys or values: a 16K-token context is read from the cache once per task, never
//! widened whole.
//!
//! The softmax is exact two-pass over each query's stored scores rather than online
//! (flash-style): llama.cpp (without flash attention, as verre's fixtures were made)
//! rounds the *normalised* weights to f16, and this small model's logits are sensitive
//! enough for that to matter. The maximum is kept as the scores are made; one pass turns
//! the scores into exponentials and their sum, and each weight, `f16(e / sum)`, is made
//! where the values are read.
//!
//! Quantized keys and values are stored rotated by a Hadamard transform per head (see
//! `kv_rows`): the queries are rotated the same way before they meet them, and the outputs
//! rotated back.
//!
//! Numerics follow llama.cpp: the query meets the keys rounded to f16, the softmax
//! weights meet the values rounded to f16, sums in f32 (quantized keys and values are
//! widened exactly: `d * q` is exact in f32). Chunks sit at fixed absolute positions and
//! masked keys weigh exactly 0, so a row's output depends only on its own position and the
//! cache: the same whether its sequence is prefilled, decoded one token at a time or
//! batched with others.
//!
//! The code is plain Rust over fixed-size arrays, which the compiler vectorises for the
//! build's target (AVX2 on x86-64-v3, NEON on aarch64); the exponential is a polynomial
//! that vectorises with it. AVX-512 inner loops where the CPU has them, bit-identical.

use std::cell::RefCell;
use std::ops::Range;

use half::f16;
use rayon::prelude::*;

use super::key_offset::KeyOffset;
pub use super::kv_rows::KvRows;
use super::kv_rows::rotate;

/// Positions per key chunk; KV blocks hold a multiple of this many positions.
pub const CHUNK: usize = 16;

/// Largest head size the kernel takes.
pub const MAX_HEAD_DIM: usize = 256;

/// Query vectors (row, head) that share each chunk of widened keys in registers.
const TILE: usize = 4;

/// Query rows per parallel task. Each task widens the context's keys and values once, so
/// more rows would widen less, but their score rows (at 16K positions and 6 query heads a
/// KV head, 12.6 MB for 32 rows) leave the caches: 64 rows measured faster in the attention
/// bench with warm caches (216-219 ms against 229-236 a 16K call) and slower in a real 8K
/// prefill of the 1.5B (attention samples per matmul sample 0.894 against 0.845).
const TASK_ROWS: usize = 32;

/// Positions of keys (or values) widened at a time: 128 KB of f32 at a head size of 128,
/// which stays in L2 while every query vector of a task reads it.
const KEY_BLOCK: usize = 256;

/// Positions of values that every tile passes over before the next ones: 32 KB of f32 at
/// a head size of 128, which stay in L1 (measured at a 16K context: 32 positions 234 ms a
/// call, 64 positions 219-224 ms, 128 positions 262 ms).
const VALUE_RUN: usize = 4 * CHUNK;

/// The shape of one layer's attention.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Multiplies every score (usually `1 / sqrt(head_dim)`).
    pub scale: f32,
    /// A position attends to at most this many positions, itself included.
    pub window: Option<usize>,
}

/// One sequence's part of an attention call.
pub struct SeqAttention<'a> {
    /// Key blocks: each `block_len` positions (the last may hold fewer) of
    /// `n_kv_head * head_dim` values, position-major.
    pub k: &'a [KvRows<'a>],
    /// Value blocks, laid out as the keys.
    pub v: &'a [KvRows<'a>],
    /// Positions per block, a multiple of [`CHUNK`] (a single block may hold any number).
    pub block_len: usize,
    /// Positions in the cache, the new ones included.
    pub len: usize,
    /// The stacked query rows of this sequence: rows `rows.start + i` is at position
    /// `len - rows.len() + i`.
    pub rows: Range<usize>,
    /// Quantized keys stored less their bias's rotation: added back as they are widened.
    pub key_offset: Option<&'a KeyOffset>,
}

/// `out[row] = softmax(q[row] K^T * scale) V` for every stacked query row of every
/// sequence, heads in order. `q` and `out` hold rows of `n_head * head_dim` values.
pub fn attention(shape: &AttentionShape, seqs: &[SeqAttention<'_>], q: &[f32], out: &mut [f32]) {
    attention_with(Kernels::for_head_dim(shape.head_dim), shape, seqs, q, out);
}

fn attention_with(
    kernels: Kernels,
    shape: &AttentionShape,
    seqs: &[SeqAttention<'_>],
    q: &[f32],
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let width = shape.n_head * hd;
    assert!(
        hd <= MAX_HEAD_DIM && shape.n_kv_head > 0 && shape.n_head.is_multiple_of(shape.n_kv_head),
        "attention: unsupported shape {shape:?}"
    );
    assert_eq!(q.len(), out.len(), "attention: query and output sizes");
    for s in seqs {
        assert!(s.rows.len() <= s.len && s.rows.end * width <= q.len());
        assert!(
            s.k.len() == 1 || s.block_len.is_multiple_of(CHUNK),
            "attention: blocks of {} positions are not whole chunks",
            s.block_len
        );
        assert!(
            s.k.iter()
                .all(|b| matches!(b, KvRows::F16(_)) || hd.is_multiple_of(super::kv_rows::QK)),
            "attention: quantized keys and values need a head size that is a multiple of {}",
            super::kv_rows::QK
        );
    }
    // Tasks: (sequence, kv head, slice of up to TASK_ROWS query rows), slices cut where the
    // rows reach `amx_from`, so that a task's rows all take one kind of scores.
    let mut tasks: Vec<(usize, usize, Range<usize>)> = Vec::new();
    for (si, s) in seqs.iter().enumerate() {
        let first_pos = s.len - s.rows.len();
        let cut = s.rows.start + kernels.amx_from.saturating_sub(first_pos).min(s.rows.len());
        for kvh in 0..shape.n_kv_head {
            for part in [s.rows.start..cut, cut..s.rows.end] {
                for start in part.clone().step_by(TASK_ROWS) {
                    tasks.push((si, kvh, start..part.end.min(start + TASK_ROWS)));
                }
            }
        }
    }
    let total = tasks.len();
    let out_ptr = OutPtr(out.as_mut_ptr());
    let run = |t: usize| {
        let (si, kvh, rows) = tasks[t].clone();
        let s = &seqs[si];
        SCRATCH.with_borrow_mut(|scratch| {
            // SAFETY: each task writes the heads of KV head `kvh` of its own rows only.
            unsafe { attend(shape, s, kvh, rows, q, out_ptr, scratch, kernels) }
        });
    };
    if total == 1 {
        run(0);
    } else {
        (0..total).into_par_iter().for_each(run);
    }
}

/// A thread's buffers for the task it runs; they grow to the largest task seen, then stay.
#[derive(Default)]
struct Scratch {
    /// One block of widened keys (transposed per chunk) or values.
    block: Vec<f32>,
    /// Per query vector of the task, its scores over the task's span, then its
    /// exponentials (rows up to a multiple of 16 on the AMX path).
    scores: Vec<f32>,
    queries: Vec<Query>,
    /// AMX path: the task's query groups and one chunk of keys, packed in tiles.
    amx_queries: Vec<u16>,
    amx_keys: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint parts and `attention` waits for all of them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// One query vector of a task.
#[derive(Clone)]
struct Query {
    q: [f32; MAX_HEAD_DIM],
    pos: usize,
    first: usize,
    /// Where its output goes: stacked row and head.
    row: usize,
    head: usize,
    /// Lane `j`: the largest of its scores at positions `j (mod 16)`, kept as the scores
    /// are made, so that the softmax needs no pass of its own to find it.
    max: [f32; CHUNK],
    /// One over the sum of its exponentials: its weights are `f16(e * inv)`.
    inv: f32,
}

impl Query {
    const EMPTY: Query = Query {
        q: [0.0; MAX_HEAD_DIM],
        pos: 0,
        first: 0,
        row: 0,
        head: 0,
        max: [f32::NEG_INFINITY; CHUNK],
        inv: 0.0,
    };
}

/// Attention of rows `rows` of `s`, the query heads of KV head `kvh`.
///
/// # Safety
/// `out` holds as many floats as `q`, and nothing else writes those heads of these rows.
#[allow(clippy::too_many_arguments)]
unsafe fn attend(
    shape: &AttentionShape,
    s: &SeqAttention<'_>,
    kvh: usize,
    rows: Range<usize>,
    q: &[f32],
    out: OutPtr,
    scratch: &mut Scratch,
    kernels: Kernels,
) {
    let hd = shape.head_dim;
    let width = shape.n_head * hd;
    let group = shape.n_head / shape.n_kv_head;
    let pos_of = |row: usize| s.len - s.rows.len() + (row - s.rows.start);
    let first_of = |pos: usize| shape.window.map_or(0, |w| (pos + 1).saturating_sub(w));

    // The positions this task reads: whole chunks from an aligned start.
    let start = first_of(pos_of(rows.start)) / CHUNK * CHUNK;
    let end = (pos_of(rows.end - 1) + 1).next_multiple_of(CHUNK);
    let n = end - start;
    let n_vectors = rows.len() * group;
    // Quantized keys are stored rotated (see `kv_rows`): rotate the queries to meet them.
    let rotated_keys = !matches!(s.k.first(), Some(KvRows::F16(_)) | None);
    let Scratch {
        block,
        scores,
        queries,
        amx_queries,
        amx_keys,
    } = scratch;
    // AMX scores need keys of f16 values (whose bf16 halves are exact): an f16 cache.
    let amx = pos_of(rows.start) >= kernels.amx_from && matches!(s.k.first(), Some(KvRows::F16(_)));
    block.resize(KEY_BLOCK.min(n) * hd, 0.0);
    scores.resize(n_vectors.next_multiple_of(16) * n, 0.0);
    queries.resize(n_vectors, Query::EMPTY);
    for (i, qv) in queries.iter_mut().enumerate() {
        let (row, head) = (rows.start + i / group, kvh * group + i % group);
        qv.pos = pos_of(row);
        qv.first = first_of(qv.pos);
        qv.max = [f32::NEG_INFINITY; CHUNK];
        (qv.row, qv.head) = (row, head);
        qv.q[..hd].copy_from_slice(&q[row * width + head * hd..][..hd]);
        if rotated_keys {
            rotate(&mut qv.q[..hd]);
        }
        for d in &mut qv.q[..hd] {
            *d = f16::from_f32(*d).to_f32();
        }
    }
    // Per tile: the chunk-aligned span (relative to `start`) that any of its queries reads.
    let tile_span = |tile: &[Query]| {
        let first = tile.iter().map(|qv| qv.first).min().unwrap_or(0);
        let last = tile.iter().map(|qv| qv.pos).max().unwrap_or(0);
        (first / CHUNK * CHUNK - start)..((last / CHUNK + 1) * CHUNK - start)
    };

    let spans: Vec<Range<usize>> = queries.chunks(TILE).map(tile_span).collect();
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if amx {
        amx_scores(
            shape,
            s,
            kvh,
            start..end,
            queries,
            scores,
            block,
            amx_queries,
            amx_keys,
        );
    }
    // Scores, key block by key block (unless the tiles made them).
    let fma_keys = if amx { start..start } else { start..end };
    for b0 in fma_keys.step_by(KEY_BLOCK) {
        let b1 = (b0 + KEY_BLOCK).min(end);
        widen_block(s, shape, kvh, b0..b1, true, block);
        // Chunk by chunk, every tile that reads it: the chunk's 16 keys stay in L1.
        for c0 in (b0..b1).step_by(CHUNK) {
            let k_chunk = &block[(c0 - b0) * hd..][..hd * CHUNK];
            for (t, (tile, span)) in queries.chunks_mut(TILE).zip(&spans).enumerate() {
                if !span.contains(&(c0 - start)) {
                    continue;
                }
                // Each query's scores of the chunk, masked, into its row.
                let dst = &mut scores[t * TILE * n + c0 - start..];
                assert!(dst.len() > (tile.len() - 1) * n + CHUNK - 1);
                // SAFETY: `Kernels::for_head_dim` chose kernels this CPU runs; `dst` holds
                // 16 floats at every multiple of `n` up to the tile's last query (checked).
                unsafe { (kernels.dots)(tile, k_chunk, hd, shape.scale, c0, dst.as_mut_ptr(), n) };
            }
        }
    }

    // Softmax per query over its own span: the exponentials, and one over their sum (the
    // weights are made from both as the values are read); zeros elsewhere in its tile's
    // span, so that the tile's values are read once for all its queries. The outputs
    // start at zero.
    for (t, (tile, tile_span)) in queries.chunks_mut(TILE).zip(&spans).enumerate() {
        for (i, qv) in tile.iter_mut().enumerate() {
            let span = (qv.first / CHUNK * CHUNK - start)..((qv.pos / CHUNK + 1) * CHUNK - start);
            let row = &mut scores[(t * TILE + i) * n..][..n];
            let max = qv.max.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            // SAFETY: `Kernels::for_head_dim` chose kernels this CPU runs.
            qv.inv = unsafe { (kernels.softmax_f16)(&mut row[span.clone()], max) };
            row[tile_span.start..span.start].fill(0.0);
            row[span.end..tile_span.end].fill(0.0);
            // SAFETY: `out` holds every row; this task alone writes head `qv.head` of `qv.row`.
            unsafe { std::ptr::write_bytes(out.0.add(qv.row * width + qv.head * hd), 0, hd) };
        }
    }

    // Weighted values, value block by value block, added into the outputs in position order.
    for b0 in (start..end).step_by(KEY_BLOCK) {
        let b1 = (b0 + KEY_BLOCK).min(end);
        widen_block(s, shape, kvh, b0..b1, false, block);
        // A few chunks at a time, every tile that reads them: their values stay in L1.
        for c0 in (b0..b1).step_by(VALUE_RUN) {
            let c1 = (c0 + VALUE_RUN).min(b1);
            for (t, (tile, tile_span)) in queries.chunks(TILE).zip(&spans).enumerate() {
                let span = tile_span.start.max(c0 - start)..tile_span.end.min(c1 - start);
                if span.is_empty() {
                    continue;
                }
                let mut dsts = [std::ptr::null_mut(); TILE];
                for (d, qv) in dsts.iter_mut().zip(tile) {
                    // SAFETY: as above.
                    *d = unsafe { out.0.add(qv.row * width + qv.head * hd) };
                }
                let invs: [f32; TILE] = std::array::from_fn(|i| tile.get(i).map_or(0.0, |q| q.inv));
                let values = &block[(span.start + start - b0) * hd..(span.end + start - b0) * hd];
                let e = &scores[t * TILE * n..];
                let outs = &dsts[..tile.len()];
                // SAFETY: as above; `outs` each have room for `hd` floats.
                unsafe { (kernels.weighted_sum)(e, &invs, n, span, values, outs, hd) };
            }
        }
    }
    // Quantized values are stored rotated too: rotate the weighted sums back.
    if !matches!(s.v.first(), Some(KvRows::F16(_)) | None) {
        for qv in queries.iter() {
            // SAFETY: as above.
            let o = unsafe {
                std::slice::from_raw_parts_mut(out.0.add(qv.row * width + qv.head * hd), hd)
            };
            rotate(o);
        }
    }
}

/// The scores phase of `attend` on AMX tiles: per key chunk, every group of 16 query
/// vectors whose span reads it gets its 16 × 16 dot products from `kernels::amx`, then
/// scaled, masked and folded into the maxima as `dots` does.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(clippy::too_many_arguments)]
fn amx_scores(
    shape: &AttentionShape,
    s: &SeqAttention<'_>,
    kvh: usize,
    range: Range<usize>,
    queries: &mut [Query],
    scores: &mut [f32],
    block: &mut [f32],
    packed_queries: &mut Vec<u16>,
    packed_keys: &mut Vec<u32>,
) {
    use super::amx;
    let (hd, start, n) = (shape.head_dim, range.start, range.len());
    let steps = hd / 32;
    let per_group = steps * 2 * amx::TILE_VALUES;
    let groups = queries.len().div_ceil(16);
    assert!(scores.len() >= groups * 16 * n);
    packed_queries.resize(groups * per_group, 0);
    packed_keys.resize(per_group / 2, 0);
    let mut parts = [[0f32; 256]; 4];
    let mut halves = Vec::new();
    let mut spans = Vec::with_capacity(groups);
    for (g, group) in queries.chunks(16).enumerate() {
        let rows: Vec<&[f32]> = group.iter().map(|qv| &qv.q[..hd]).collect();
        amx::pack_queries(
            &rows,
            steps,
            &mut packed_queries[g * per_group..][..per_group],
        );
        let first = group.iter().map(|qv| qv.first).min().unwrap_or(0);
        let last = group.iter().map(|qv| qv.pos).max().unwrap_or(0);
        spans.push(first / CHUNK * CHUNK..(last / CHUNK + 1) * CHUNK);
    }
    // SAFETY: `Kernels::for_head_dim` chose this path only where `amx::available()`.
    unsafe { amx::configure() };
    for b0 in range.clone().step_by(KEY_BLOCK) {
        let b1 = (b0 + KEY_BLOCK).min(range.end);
        widen_block(s, shape, kvh, b0..b1, true, block);
        for c0 in (b0..b1).step_by(CHUNK) {
            amx::pack_keys(
                &block[(c0 - b0) * hd..][..hd * CHUNK],
                steps,
                packed_keys,
                &mut halves,
            );
            for (g, span) in spans.iter().enumerate() {
                if !span.contains(&c0) {
                    continue;
                }
                // SAFETY: configured above; both packings hold `steps` steps.
                unsafe {
                    amx::scores(
                        &packed_queries[g * per_group..],
                        packed_keys,
                        steps,
                        &mut parts,
                    )
                };
                for (i, qv) in queries[g * 16..].iter_mut().take(16).enumerate() {
                    let dots = amx::dot_row(&parts, i);
                    let row: &mut [f32; CHUNK] = (&mut scores[(g * 16 + i) * n + c0 - start..]
                        [..CHUNK])
                        .try_into()
                        .unwrap();
                    let visible = qv.visible(c0);
                    let mut max = qv.max;
                    for (j, ((o, m), d)) in row.iter_mut().zip(max.iter_mut()).zip(dots).enumerate()
                    {
                        *o = if visible.contains(&j) {
                            d * shape.scale
                        } else {
                            f32::NEG_INFINITY
                        };
                        *m = if *o > *m { *o } else { *m };
                    }
                    qv.max = max;
                }
            }
        }
    }
    // SAFETY: configured above on this thread.
    unsafe { amx::release() };
}

/// Widen KV head `kvh` of positions `range` (whole chunks) of the keys (or the values)
/// into `dst`, one row of `head_dim` floats per position. Positions past the sequence are
/// zeros.
fn widen_block(
    s: &SeqAttention<'_>,
    shape: &AttentionShape,
    kvh: usize,
    range: Range<usize>,
    keys: bool,
    dst: &mut [f32],
) {
    let hd = shape.head_dim;
    let kv_dim = shape.n_kv_head * hd;
    let block_len = if s.k.len() == 1 {
        usize::MAX
    } else {
        s.block_len
    };
    let blocks = if keys { s.k } else { s.v };
    for (p, row) in range.clone().zip(dst.chunks_exact_mut(hd)) {
        if p < s.len {
            blocks[p / block_len].widen((p % block_len) * kv_dim + kvh * hd, row);
        } else {
            row.fill(0.0);
        }
    }
    if let Some(offset) = s.key_offset.filter(|_| keys) {
        let cached = range.start..range.end.min(s.len);
        if !cached.is_empty() {
            offset.add_rotated(cached.clone(), kvh, &mut dst[..cached.len() * hd]);
        }
    }
}

/// Lanes of the partial sums that llama.cpp's CPU kernels keep per score (16 f32 lanes of
/// a 512-bit vector, element `i` in lane `i % 16`), summed in its order: lanes in sequence,
/// then halves folded (8, 4, 2, 1). Summing as the reference sums keeps this small model,
/// whose logits are sensitive to rounding, near where llama.cpp puts it.
const LANES: usize = 16;

impl Query {
    /// The positions of keys `c0..c0 + CHUNK` that this query sees: `visible.start <= j <
    /// visible.end` for key `c0 + j` (an empty range where it sees none).
    fn visible(&self, c0: usize) -> Range<usize> {
        let lo = self.first.saturating_sub(c0).min(CHUNK);
        let hi = (self.pos + 1).saturating_sub(c0).min(CHUNK);
        lo..hi.max(lo)
    }
}

/// See `Kernels::dots`.
type DotsFn = unsafe fn(&mut [Query], &[f32], usize, f32, usize, *mut f32, usize);

/// See `Kernels::weighted_sum`.
type WeightedSumFn =
    unsafe fn(&[f32], &[f32; TILE], usize, Range<usize>, &[f32], &[*mut f32], usize);

/// The three inner loops, portable or for this CPU.
#[derive(Clone, Copy)]
struct Kernels {
    /// `dots(queries, keys, hd, scale, c0, dst, n)`: the dot products of each query `i`
    /// (at most [`TILE`]) with the chunk of 16 keys at positions `c0..` given as rows of
    /// `hd`, each summed as [`LANES`] describes, times `scale`, into `dst[i * n..][..16]`,
    /// minus infinity where the query does not see the key; each query's `max` takes the
    /// lane-wise maximum.
    dots: DotsFn,
    /// `softmax_f16(scores, max)`: see [`softmax_f16`].
    softmax_f16: unsafe fn(&mut [f32], f32) -> f32,
    /// `weighted_sum(e, invs, n, span, values, outs, hd)`: for each query `i`,
    /// `outs[i] += sum over p in span of w * values[p - span.start]` with the weight
    /// `w = f16(e[i * n + p] * invs[i])`, added one position at a time (so that a span
    /// summed in pieces gives the same bits).
    weighted_sum: WeightedSumFn,
    /// Query rows at this position or later take their scores from AMX tiles
    /// (`kernels::amx`); `usize::MAX` where there are none.
    amx_from: usize,
}

/// From this position on, scores come from AMX tiles where the CPU has them: the tiles sum
/// in another order than the FMA kernels, so the choice goes by position alone (a row's
/// output stays a function of its position and the cache), and the short prompts of the
/// accuracy fixtures keep the FMA kernels' numbers.
const AMX_FROM: usize = 2048;

/// Whether `VERRE_AMX=1` asks for AMX scores (off by default: see [`AMX_FROM`]).
fn amx_wanted() -> bool {
    static WANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WANTED.get_or_init(|| std::env::var("VERRE_AMX").is_ok_and(|v| v == "1"))
}

/// Whether `kernels::amx` may run here.
fn amx_available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    return super::amx::available();
    #[allow(unreachable_code)]
    false
}

impl Kernels {
    fn for_head_dim(hd: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if super::isa() == super::Isa::Avx512Vnni && hd.is_multiple_of(16) {
            return Kernels {
                dots: match hd / 16 {
                    4 => avx512::dots::<4, 4>,
                    6 => avx512::dots::<6, 2>,
                    8 => avx512::dots::<8, 4>,
                    16 => avx512::dots::<16, 1>,
                    _ => dots,
                },
                softmax_f16: avx512::softmax_f16,
                weighted_sum: match hd / 16 {
                    4 => avx512::weighted_sum::<4>,
                    6 => avx512::weighted_sum::<6>,
                    8 => avx512::weighted_sum::<8>,
                    16 => avx512::weighted_sum::<16>,
                    _ => weighted_sum,
                },
                amx_from: if hd.is_multiple_of(32) && amx_wanted() && amx_available() {
                    AMX_FROM
                } else {
                    usize::MAX
                },
            };
        }
        let _ = hd;
        Self::PORTABLE
    }

    const PORTABLE: Kernels = Kernels {
        dots,
        softmax_f16,
        weighted_sum,
        amx_from: usize::MAX,
    };
}

/// Portable `Kernels::dots`.
///
/// # Safety
/// `dst` has room for 16 floats at every multiple of `n` up to the last query's.
unsafe fn dots(
    queries: &mut [Query],
    keys: &[f32],
    hd: usize,
    scale: f32,
    c0: usize,
    dst: *mut f32,
    n: usize,
) {
    for (i, qv) in queries.iter_mut().enumerate() {
        // lanes[l][j]: key j's partial sum over the dimensions d = l (mod 16), d ascending.
        let mut lanes = [[0f32; CHUNK]; LANES];
        for (j, k) in keys.chunks_exact(hd).take(CHUNK).enumerate() {
            for (d, (&x, &y)) in qv.q[..hd].iter().zip(k).enumerate() {
                let lane = &mut lanes[d % LANES][j];
                *lane = x.mul_add(y, *lane);
            }
        }
        fold_lanes(&mut lanes);
        let visible = qv.visible(c0);
        // SAFETY: the caller's.
        let out = unsafe { std::slice::from_raw_parts_mut(dst.add(i * n), CHUNK) };
        for (j, (o, &s)) in out.iter_mut().zip(&lanes[0]).enumerate() {
            *o = if visible.contains(&j) {
                s * scale
            } else {
                f32::NEG_INFINITY
            };
            let m = &mut qv.max[j];
            *m = if *o > *m { *o } else { *m };
        }
    }
}

/// `lanes[0] = sum of lanes`, folding halves: `l += l + 8`, then 4, 2, 1.
fn fold_lanes<const W: usize>(lanes: &mut [[f32; W]; LANES]) {
    let mut half = LANES / 2;
    while half > 0 {
        for l in 0..half {
            let (lo, hi) = lanes.split_at_mut(half);
            for (a, b) in lo[l].iter_mut().zip(&hi[l]) {
                *a += b;
            }
        }
        half /= 2;
    }
}

/// The 16 values summed as `fold_lanes` sums lanes.
fn fold16(x: &[f32]) -> f32 {
    let mut v: [f32; LANES] = x.try_into().unwrap();
    let mut half = LANES / 2;
    while half > 0 {
        for l in 0..half {
            v[l] += v[l + half];
        }
        half /= 2;
    }
    v[0]
}

/// Scores (whole chunks from a multiple of 16, masked ones at minus infinity, `max` the
/// largest) into their exponentials `e` (`e^(s - max)`, 0 where masked); returns `inv`,
/// one over their sum (in f64, 16 at a time). The softmax weights are `f16(e * inv)`,
/// rounded as llama.cpp hands them to its f16 product with the values; `weighted_sum`
/// makes them as it reads them.
fn softmax_f16(scores: &mut [f32], max: f32) -> f32 {
    let mut sum = 0f64;
    for chunk in scores.chunks_exact_mut(CHUNK) {
        let mut shifted = [0f32; CHUNK];
        for (x, &s) in shifted.iter_mut().zip(chunk.iter()) {
            *x = s - max;
        }
        let e = exp16(&shifted);
        for (s, e) in chunk.iter_mut().zip(e) {
            *s = if *s == f32::NEG_INFINITY { 0.0 } else { e };
        }
        sum += fold16(chunk) as f64;
    }
    (1.0 / sum) as f32
}

/// Portable `Kernels::weighted_sum`: per query, one running sum per output element, from
/// what the output holds, positions in order, zero weights skipped. (Summing in llama.cpp's 16 lanes here, as the
/// scores do, measured further from the fixtures, by chance: this model amplifies any
/// rounding change.)
///
/// # Safety
/// Each of `outs` points to `hd` floats that nothing else touches.
unsafe fn weighted_sum(
    e: &[f32],
    invs: &[f32; TILE],
    n: usize,
    span: Range<usize>,
    values: &[f32],
    outs: &[*mut f32],
    hd: usize,
) {
    for (i, &out) in outs.iter().enumerate() {
        let mut acc = [0f32; MAX_HEAD_DIM];
        let acc = &mut acc[..hd];
        // SAFETY: the caller's.
        unsafe { std::ptr::copy_nonoverlapping(out, acc.as_mut_ptr(), hd) };
        let e = &e[i * n..][span.clone()];
        for (&ep, v) in e.iter().zip(values.chunks_exact(hd)) {
            let wp = f16::from_f32(ep * invs[i]).to_f32();
            if wp == 0.0 {
                continue;
            }
            for (a, &x) in acc.iter_mut().zip(v) {
                *a = wp.mul_add(x, *a);
            }
        }
        // SAFETY: the caller's.
        unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), out, hd) };
    }
}

/// `e^x` for 16 values (relative error about 2e-7), written to vectorise; `x <= 0` here.
fn exp16(x: &[f32; CHUNK]) -> [f32; CHUNK] {
    let mut out = [0f32; CHUNK];
    for j in 0..CHUNK {
        let v = x[j].clamp(-87.0, 88.0);
        let z = v.mul_add(std::f32::consts::LOG2_E, EXP_ROUND);
        let n = z - EXP_ROUND;
        let r = n.mul_add(-EXP_LN2_LO, n.mul_add(-EXP_LN2_HI, v));
        let mut p = EXP_POLY[0];
        for &c in &EXP_POLY[1..] {
            p = p.mul_add(r, c);
        }
        let e = (p * r).mul_add(r, r) + 1.0;
        // n, an integer in [-126, 127], sits in the low mantissa bits of `z`.
        let n_int = z.to_bits().wrapping_sub(EXP_ROUND.to_bits());
        out[j] = e * f32::from_bits(n_int.wrapping_add(127) << 23);
    }
    out
}

/// Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
const EXP_ROUND: f32 = 12_582_912.0;
/// ln 2 in two parts, for an exact range reduction.
const EXP_LN2_HI: f32 = 0.693_359_4;
const EXP_LN2_LO: f32 = -2.121_944_4e-4;
/// Minimax polynomial for (e^r - 1 - r) / r^2 on [-ln2/2, ln2/2] (Cephes expf), highest
/// degree first.
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_66,
    0.5,
];

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests;
