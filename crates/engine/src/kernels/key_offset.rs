//! Keys stored less their bias's rotation, in a quantized cache.
//!
//! A layer with a large key bias (Qwen2's first layers: biases up to 354 on a few
//! dimensions, keys of norm ~900 that differ by a few units) puts the same big offset in
//! every key before RoPE rotates it by its position. Quantized as they come, those keys
//! spend every 32-block's bits on the offset. RoPE is linear, so a key is `R_p(W x) + R_p(b)`:
//! the cache stores `k - S_p` and attention adds `S_p` back as it widens the keys, where
//! `S_p` is `R_p` applied to the bias's large pairs of dimensions, in f64. What is quantized
//! is then the part that tells keys apart.
//!
//! `S_p` must be the same number when written and when read back, for any split of the
//! positions into calls: each position's angles come from an exact `sin_cos` at the last
//! multiple of [`ANCHOR`] and the same sequence of f64 rotation steps from there.

use std::ops::Range;

use super::kv_rows::rotate;

/// Positions between two exact evaluations of the angles (steps in between).
const ANCHOR: usize = 256;

/// `S_p` for one layer, per KV head: its key bias as RoPE turns it at position `p`.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyOffset {
    head_dim: usize,
    n_kv_head: usize,
    /// The two dimensions of each pair that RoPE rotates together.
    a: Vec<usize>,
    b: Vec<usize>,
    /// The pairs are `(j, j + pairs)`: NeoX's halves.
    halves: bool,
    /// Radians each pair turns per position.
    omega: Vec<f64>,
    /// One position's turn, per pair.
    step_cos: Vec<f32>,
    step_sin: Vec<f32>,
    /// Per KV head and pair: the bias on `a` and on `b`, times RoPE's magnitude scale.
    bias_a: Vec<f32>,
    bias_b: Vec<f32>,
    /// Per KV head, `head_dim` values: the bias of the dimensions that do not rotate, zero
    /// on those that do.
    fixed: Vec<f32>,
}

impl KeyOffset {
    /// The offset of a layer whose key bias is `bias` (`n_kv_head * head_dim` values) and
    /// whose RoPE turns `pairs[i]` by `omegas[i]` radians a position, scaling by `mscale`;
    /// dimensions in no pair keep their bias as it is.
    pub fn new(
        bias: &[f32],
        head_dim: usize,
        pairs: &[(usize, usize)],
        omegas: &[f64],
        mscale: f64,
    ) -> Self {
        assert_eq!(pairs.len(), omegas.len());
        assert!(head_dim > 0 && bias.len().is_multiple_of(head_dim));
        assert!(pairs.iter().all(|&(a, b)| a < head_dim && b < head_dim));
        let heads = || bias.chunks_exact(head_dim);
        let scaled = |x: f32| (x as f64 * mscale) as f32;
        let mut fixed = bias.to_vec();
        for head in fixed.chunks_exact_mut(head_dim) {
            for &(a, b) in pairs {
                (head[a], head[b]) = (0.0, 0.0);
            }
        }
        let np = pairs.len();
        Self {
            head_dim,
            n_kv_head: bias.len() / head_dim,
            halves: pairs.iter().enumerate().all(|(j, &p)| p == (j, j + np)),
            a: pairs.iter().map(|p| p.0).collect(),
            b: pairs.iter().map(|p| p.1).collect(),
            omega: omegas.to_vec(),
            step_cos: omegas.iter().map(|w| w.cos() as f32).collect(),
            step_sin: omegas.iter().map(|w| w.sin() as f32).collect(),
            bias_a: heads()
                .flat_map(|h| pairs.iter().map(|p| scaled(h[p.0])))
                .collect(),
            bias_b: heads()
                .flat_map(|h| pairs.iter().map(|p| scaled(h[p.1])))
                .collect(),
            fixed,
        }
    }

    /// For each position of `positions`, in order: `S_p` of KV heads `heads`, each head's
    /// `head_dim` values in turn, not Hadamard-rotated.
    pub fn each(
        &self,
        positions: Range<usize>,
        heads: Range<usize>,
        mut f: impl FnMut(usize, &[f32]),
    ) {
        assert!(heads.end <= self.n_kv_head);
        let hd = self.head_dim;
        let np = self.omega.len();
        let (mut cos, mut sin) = (vec![0f32; np], vec![0f32; np]);
        let (mut at_a, mut at_b) = (vec![0f32; np], vec![0f32; np]);
        let mut out = vec![0f32; heads.len() * hd];
        let first = positions.start;
        for p in positions {
            if p == first || p.is_multiple_of(ANCHOR) {
                // Exact at the anchor, then the same steps to `p` as any other call takes.
                let anchor = p / ANCHOR * ANCHOR;
                for ((c, s), w) in cos.iter_mut().zip(&mut sin).zip(&self.omega) {
                    let (sw, cw) = (w * anchor as f64).sin_cos();
                    (*c, *s) = (cw as f32, sw as f32);
                }
                for _ in anchor..p {
                    self.turn(&mut cos, &mut sin);
                }
            } else {
                self.turn(&mut cos, &mut sin);
            }
            for (h, head) in heads.clone().zip(out.chunks_exact_mut(hd)) {
                let (ba, bb) = (
                    &self.bias_a[h * np..(h + 1) * np],
                    &self.bias_b[h * np..(h + 1) * np],
                );
                let fixed = &self.fixed[h * hd..(h + 1) * hd];
                if self.halves {
                    // NeoX pairs (j, j + np): straight into the two halves.
                    let (lo, rest) = head.split_at_mut(np);
                    let (hi, rest) = rest.split_at_mut(np);
                    turned(ba, bb, &cos, &sin, lo, hi);
                    rest.copy_from_slice(&fixed[2 * np..]);
                } else {
                    turned(ba, bb, &cos, &sin, &mut at_a, &mut at_b);
                    head.copy_from_slice(fixed);
                    for j in 0..np {
                        head[self.a[j]] = at_a[j];
                        head[self.b[j]] = at_b[j];
                    }
                }
            }
            f(p, &out);
        }
    }

    /// Every pair's angle one position on.
    fn turn(&self, cos: &mut [f32], sin: &mut [f32]) {
        let n = cos.len();
        let (sin, dc, ds) = (&mut sin[..n], &self.step_cos[..n], &self.step_sin[..n]);
        for j in 0..n {
            let (c, s) = (cos[j], sin[j]);
            cos[j] = c * dc[j] - s * ds[j];
            sin[j] = s * dc[j] + c * ds[j];
        }
    }

    /// Subtract `S_p` from the keys of positions `start..` (`rows` of `n_kv_head *
    /// head_dim` values each), as they are about to be stored.
    pub fn subtract(&self, start: usize, rows: &mut [f32]) {
        let w = self.n_kv_head * self.head_dim;
        let n = rows.len() / w;
        let mut rows = rows.chunks_exact_mut(w);
        self.each(start..start + n, 0..self.n_kv_head, |_, s| {
            let row = rows.next().expect("a row per position");
            row.iter_mut().zip(s).for_each(|(x, o)| *x -= o);
        });
    }

    /// Add `S_p`, Hadamard-rotated as the stored keys are, to the widened keys of KV head
    /// `kvh` at `positions` (`head_dim` values per position in `rows`).
    pub fn add_rotated(&self, positions: Range<usize>, kvh: usize, rows: &mut [f32]) {
        let hd = self.head_dim;
        let mut rows = rows.chunks_exact_mut(hd);
        let mut head = vec![0f32; hd];
        self.each(positions, kvh..kvh + 1, |_, s| {
            head.copy_from_slice(s);
            rotate(&mut head);
            let row = &mut rows.next().expect("a row per position")[..hd];
            for (x, o) in row.iter_mut().zip(&head[..hd]) {
                *x += o;
            }
        });
    }
}

/// The pairs' bias `(ba, bb)` turned by their angles: `(ba cos - bb sin, ba sin + bb cos)`.
fn turned(ba: &[f32], bb: &[f32], cos: &[f32], sin: &[f32], a: &mut [f32], b: &mut [f32]) {
    let n = a.len();
    let (ba, bb, cos, sin, b) = (&ba[..n], &bb[..n], &cos[..n], &sin[..n], &mut b[..n]);
    for j in 0..n {
        a[j] = ba[j] * cos[j] - bb[j] * sin[j];
        b[j] = ba[j] * sin[j] + bb[j] * cos[j];
    }
}

// Built from finite weights only: equality is reflexive.
impl Eq for KeyOffset {}

#[cfg(test)]
mod tests {
    use super::*;

    /// NeoX pairs over the first `n_rot` dimensions of a head.
    fn neox(n_rot: usize) -> Vec<(usize, usize)> {
        (0..n_rot / 2).map(|i| (i, i + n_rot / 2)).collect()
    }

    fn omegas(n_rot: usize, base: f64) -> Vec<f64> {
        (0..n_rot / 2)
            .map(|i| base.powf(-2.0 * i as f64 / n_rot as f64))
            .collect()
    }

    /// A Qwen2-like bias: large on the last pairs of each head, small elsewhere.
    fn bias(hd: usize, heads: usize) -> Vec<f32> {
        (0..heads * hd)
            .map(|i| {
                let d = i % hd;
                if d % (hd / 2) >= hd / 2 - 3 {
                    300.0 - 17.0 * d as f32 / hd as f32 + i as f32
                } else {
                    (d as f32 * 0.37).sin() * 3.0
                }
            })
            .collect()
    }

    #[test]
    fn the_offset_is_the_bias_as_rope_turns_it() {
        // 24 of 32 dimensions rotate, the last 8 keep their bias; magnitude scale 1.25.
        let (hd, n_rot, heads, mscale) = (32, 24, 2, 1.25);
        let b = bias(hd, heads);
        let om = omegas(n_rot, 1e6);
        let off = KeyOffset::new(&b, hd, &neox(n_rot), &om, mscale);
        let mut seen = 0;
        off.each(1000..1300, 0..heads, |p, s| {
            for (h, head) in s.chunks_exact(hd).enumerate() {
                let bh = &b[h * hd..(h + 1) * hd];
                for (i, w) in om.iter().enumerate() {
                    let (a, bd) = (i, i + n_rot / 2);
                    let (sin, cos) = (w * p as f64).sin_cos();
                    let (x, y) = (bh[a] as f64 * mscale, bh[bd] as f64 * mscale);
                    // f32 steps from the last exact angle: within 1e-5 of the bias's size.
                    let tol = 1e-5 * (x.abs() + y.abs()) + 1e-6;
                    assert!(
                        (head[a] as f64 - (x * cos - y * sin)).abs() < tol,
                        "p {p} dim {a}"
                    );
                    assert!(
                        (head[bd] as f64 - (x * sin + y * cos)).abs() < tol,
                        "p {p} dim {bd}"
                    );
                }
                assert_eq!(
                    &head[n_rot..],
                    &bh[n_rot..],
                    "dimensions that do not rotate"
                );
            }
            seen += 1;
        });
        assert_eq!(seen, 300);
    }

    #[test]
    fn every_split_of_the_positions_gives_the_same_bits() {
        let (hd, heads) = (64, 2);
        let off = KeyOffset::new(&bias(hd, heads), hd, &neox(hd), &omegas(hd, 1e4), 1.0);
        let collect = |r: Range<usize>, h: Range<usize>| {
            let mut v = Vec::new();
            off.each(r, h, |_, s| v.extend_from_slice(s));
            v
        };
        let whole = collect(0..1000, 0..heads);
        let mut pieces = Vec::new();
        for r in [0..1, 1..255, 255..256, 256..700, 700..1000] {
            pieces.extend(collect(r, 0..heads));
        }
        assert_eq!(whole, pieces);
        // One head alone: the same values as that head of all.
        let second = collect(300..600, 1..2);
        let of_all: Vec<f32> = whole[300 * 2 * hd..600 * 2 * hd]
            .chunks_exact(hd)
            .skip(1)
            .step_by(2)
            .flatten()
            .copied()
            .collect();
        assert_eq!(second, of_all);
    }

    #[test]
    fn subtracted_then_added_rotated_gives_the_rotated_keys_back() {
        let (hd, heads) = (32, 2);
        let off = KeyOffset::new(&bias(hd, heads), hd, &neox(hd), &omegas(hd, 1e6), 1.0);
        let keys: Vec<f32> = (0..40 * heads * hd)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
            .collect();
        let mut stored = keys.clone();
        off.subtract(500, &mut stored);
        for kvh in 0..heads {
            let mut rows: Vec<f32> = stored
                .chunks_exact(hd)
                .skip(kvh)
                .step_by(heads)
                .flat_map(|h| {
                    let mut h = h.to_vec();
                    rotate(&mut h);
                    h
                })
                .collect();
            off.add_rotated(500..540, kvh, &mut rows);
            for (p, (got, want)) in rows
                .chunks_exact(hd)
                .zip(keys.chunks_exact(hd).skip(kvh).step_by(heads))
                .enumerate()
            {
                let mut want = want.to_vec();
                rotate(&mut want);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-3, "position {p}: {g} vs {w}");
                }
            }
        }
    }
}
