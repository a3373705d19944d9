use super::*;

/// Positions per paged block in these tests, as the cache has them.
const BLOCK: usize = 16;

/// Plain attention over widened keys and values: all scores, one softmax, the weights
/// rounded to f16 as llama.cpp does.
fn reference(
    shape: &AttentionShape,
    k: &[f32],
    v: &[f32],
    len: usize,
    q: &[f32],
    n_rows: usize,
) -> Vec<f32> {
    let hd = shape.head_dim;
    let kv_dim = shape.n_kv_head * hd;
    let group = shape.n_head / shape.n_kv_head;
    let mut out = vec![0f32; n_rows * shape.n_head * hd];
    for r in 0..n_rows {
        let pos = len - n_rows + r;
        let first = shape.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        for h in 0..shape.n_head {
            let qv: Vec<f32> = q[(r * shape.n_head + h) * hd..][..hd]
                .iter()
                .map(|&x| f16::from_f32(x).to_f32())
                .collect();
            let off = (h / group) * hd;
            let scores: Vec<f32> = (first..=pos)
                .map(|p| {
                    let kr = &k[p * kv_dim + off..][..hd];
                    qv.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() * shape.scale
                })
                .collect();
            let max = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            let o = &mut out[(r * shape.n_head + h) * hd..][..hd];
            for (i, p) in (first..=pos).enumerate() {
                let w = f16::from_f32(e[i] / sum).to_f32();
                for (d, o) in o.iter_mut().enumerate() {
                    *o += w * v[p * kv_dim + off + d];
                }
            }
        }
    }
    out
}

fn widen(x: &[f16]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn run_blocks(
    shape: &AttentionShape,
    k: &[f16],
    v: &[f16],
    len: usize,
    q: &[f32],
    n_rows: usize,
    block_len: usize,
) -> Vec<f32> {
    let kernels = Kernels::for_head_dim(shape.head_dim);
    run_blocks_with(kernels, shape, k, v, len, q, n_rows, block_len)
}

#[allow(clippy::too_many_arguments)]
fn run_blocks_with(
    kernels: Kernels,
    shape: &AttentionShape,
    k: &[f16],
    v: &[f16],
    len: usize,
    q: &[f32],
    n_rows: usize,
    block_len: usize,
) -> Vec<f32> {
    let kv_dim = shape.n_kv_head * shape.head_dim;
    let kb: Vec<KvRows<'_>> = k[..len * kv_dim]
        .chunks(block_len * kv_dim)
        .map(KvRows::F16)
        .collect();
    let vb: Vec<KvRows<'_>> = v[..len * kv_dim]
        .chunks(block_len * kv_dim)
        .map(KvRows::F16)
        .collect();
    let mut out = vec![f32::NAN; q.len()];
    let seq = SeqAttention {
        k: &kb,
        v: &vb,
        block_len,
        len,
        rows: 0..n_rows,
        key_offset: None,
    };
    attention_with(kernels, shape, &[seq], q, &mut out);
    out
}

/// The AMX scores (where this machine has them; from position 40 here): as near plain
/// attention as the FMA kernels are, and each row the same alone as in a batch.
#[test]
fn amx_scores_match_plain_attention_and_the_batch() {
    if !amx_available() {
        eprintln!("no AMX on this machine: not run");
        return;
    }
    for (hd, heads, kv_heads, window) in
        [(128, 12, 2, None), (64, 6, 2, Some(50)), (96, 4, 2, None)]
    {
        let shape = AttentionShape {
            n_head: heads,
            n_kv_head: kv_heads,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            window,
        };
        let mut kernels = Kernels::for_head_dim(hd);
        kernels.amx_from = 40;
        let (len, kv_dim, width) = (300, kv_heads * hd, heads * hd);
        let k: Vec<f16> = random(len * kv_dim, 1)
            .iter()
            .map(|&x| f16::from_f32(3.0 * x))
            .collect();
        let v: Vec<f16> = random(len * kv_dim, 2)
            .iter()
            .map(|&x| f16::from_f32(x))
            .collect();
        let q: Vec<f32> = random(len * width, 3).iter().map(|x| 4.0 * x).collect();
        let want = reference(&shape, &widen(&k), &widen(&v), len, &q, len);
        let all = run_blocks_with(kernels, &shape, &k, &v, len, &q, len, 16);
        let fma = run_blocks_with(
            Kernels {
                amx_from: usize::MAX,
                ..kernels
            },
            &shape,
            &k,
            &v,
            len,
            &q,
            len,
            16,
        );
        for (i, (g, w)) in all.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 5e-4 * w.abs().max(1.0),
                "hd {hd} element {i} (row {}): {g} vs {w}",
                i / width
            );
        }
        // Rows before position 40 take the FMA kernels' scores, bit for bit.
        assert_eq!(all[..40 * width], fma[..40 * width], "hd {hd}");
        for r in [39, 40, 41, 63, 64, 200, 299] {
            let one = run_blocks_with(
                kernels,
                &shape,
                &k,
                &v,
                r + 1,
                &q[r * width..][..width],
                1,
                16,
            );
            assert_eq!(one, all[r * width..][..width], "hd {hd} row {r}");
        }
    }
}

#[test]
fn exp_is_accurate() {
    let xs: Vec<f32> = (0..CHUNK).map(|i| -(i as f32) * 5.3 - 0.01).collect();
    let got = exp16(xs.as_slice().try_into().unwrap());
    for (x, g) in xs.iter().zip(got) {
        let want = x.exp();
        assert!(
            (g - want).abs() <= 4e-7 * want,
            "exp({x}) = {g}, want {want}"
        );
    }
}

#[test]
fn matches_plain_attention() {
    for (hd, heads, kv_heads, window) in [
        (64, 9, 3, None),
        (40, 4, 4, None),
        (128, 8, 2, Some(21)),
        (8, 2, 1, None),
    ] {
        let shape = AttentionShape {
            n_head: heads,
            n_kv_head: kv_heads,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            window,
        };
        let kv_dim = kv_heads * hd;
        for (len, n_rows) in [
            (1, 1),
            (37, 37),
            (70, 5),
            (16, 1),
            (33, 2),
            (300, 300),
            (700, 40),
        ] {
            let k: Vec<f16> = random(len * kv_dim, 1)
                .iter()
                .map(|&x| f16::from_f32(3.0 * x))
                .collect();
            let v: Vec<f16> = random(len * kv_dim, 2)
                .iter()
                .map(|&x| f16::from_f32(x))
                .collect();
            let q: Vec<f32> = random(n_rows * heads * hd, 3)
                .iter()
                .map(|x| 4.0 * x)
                .collect();
            let want = reference(&shape, &widen(&k), &widen(&v), len, &q, n_rows);
            for block_len in [len.max(1), 16, 32] {
                let got = run_blocks(&shape, &k, &v, len, &q, n_rows, block_len);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    // Both round the weights to f16 (2^-11 relative), from differently rounded
                    // scores: a weight may land on either side of a rounding step.
                    assert!(
                        (g - w).abs() <= 5e-4 * w.abs().max(1.0),
                        "hd {hd} len {len} rows {n_rows} blocks {block_len} element {i}: {g} vs {w}"
                    );
                }
            }
        }
    }
}

/// q8_0 and q4_0 caches: the kernel reads their blocks as exactly the dequantised
/// values (plain attention over those values agrees as the f16 case does), and with
/// q8_0 the result stays close to attention over the unquantized f32 keys and values.
#[test]
fn quantized_blocks_match_plain_attention() {
    use crate::kernels::kv_rows::{QK, quantize_q4_0, quantize_q8_0};
    let shape = AttentionShape {
        n_head: 6,
        n_kv_head: 2,
        head_dim: 64,
        scale: 0.125,
        window: None,
    };
    let kv_dim = 2 * 64;
    let mut worst = [0f32; 2];
    for (len, n_rows) in [(1, 1), (45, 45), (300, 3), (600, 1)] {
        let k32: Vec<f32> = random(len * kv_dim, 11).iter().map(|x| 3.0 * x).collect();
        let v32 = random(len * kv_dim, 12);
        let q = random(n_rows * 6 * 64, 13);
        let f32_truth = reference(&shape, &k32, &v32, len, &q, n_rows);
        // Stored rotated per head, as the cache stores them.
        let (mut k_rot, mut v_rot) = (k32.clone(), v32.clone());
        k_rot.chunks_exact_mut(64).for_each(rotate);
        v_rot.chunks_exact_mut(64).for_each(rotate);
        for (t, q4) in [false, true].into_iter().enumerate() {
            let per_block = BLOCK * kv_dim;
            let scales = |x: &[f32]| vec![f16::ZERO; x.len() / QK];
            let (mut kd, mut vd) = (scales(&k32), scales(&v32));
            let (mut k8, mut v8) = (vec![0i8; k32.len()], vec![0i8; v32.len()]);
            let (mut k4, mut v4) = (vec![0u8; k32.len() / 2], vec![0u8; v32.len() / 2]);
            let (kb, vb): (Vec<KvRows<'_>>, Vec<KvRows<'_>>) = if q4 {
                quantize_q4_0(&k_rot, &mut k4, &mut kd);
                quantize_q4_0(&v_rot, &mut v4, &mut vd);
                fn rows<'a>(q: &'a [u8], d: &'a [f16], per_block: usize) -> Vec<KvRows<'a>> {
                    q.chunks(per_block / 2)
                        .zip(d.chunks(per_block / QK))
                        .map(|(quants, scales)| KvRows::Q4_0 { quants, scales })
                        .collect()
                }
                (rows(&k4, &kd, per_block), rows(&v4, &vd, per_block))
            } else {
                quantize_q8_0(&k_rot, &mut k8, &mut kd);
                quantize_q8_0(&v_rot, &mut v8, &mut vd);
                fn rows<'a>(q: &'a [i8], d: &'a [f16], per_block: usize) -> Vec<KvRows<'a>> {
                    q.chunks(per_block)
                        .zip(d.chunks(per_block / QK))
                        .map(|(quants, scales)| KvRows::Q8_0 { quants, scales })
                        .collect()
                }
                (rows(&k8, &kd, per_block), rows(&v8, &vd, per_block))
            };
            let dequantised = |blocks: &[KvRows<'_>]| -> Vec<f32> {
                let mut all = Vec::new();
                for b in blocks {
                    let mut x = vec![0f32; b.len()];
                    b.widen(0, &mut x);
                    all.extend(x);
                }
                all
            };
            let (mut keys, mut values) = (dequantised(&kb), dequantised(&vb));
            keys.chunks_exact_mut(64).for_each(rotate);
            values.chunks_exact_mut(64).for_each(rotate);
            let want = reference(&shape, &keys, &values, len, &q, n_rows);
            let mut got = vec![f32::NAN; q.len()];
            let seq = SeqAttention {
                k: &kb,
                v: &vb,
                block_len: BLOCK,
                len,
                rows: 0..n_rows,
                key_offset: None,
            };
            attention(&shape, &[seq], &q, &mut got);
            // The queries are rounded to f16 after the rotation here, before it in the
            // reference: a little more than the f16 case's 5e-4.
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 2e-3 * w.abs().max(1.0),
                    "q4 {q4} len {len} element {i}: {g} vs {w}"
                );
            }
            for (g, w) in got.iter().zip(&f32_truth) {
                worst[t] = worst[t].max((g - w).abs());
            }
        }
    }
    eprintln!(
        "max |quantized - f32|: q8_0 {}, q4_0 {}",
        worst[0], worst[1]
    );
    // Rotated values of these heads reach about 2.5 in magnitude: a q8_0 step of 0.02.
    assert!(worst[0] <= 0.015, "q8_0 strays {} from f32", worst[0]);
    assert!(
        worst[0] * 4.0 < worst[1],
        "q8_0 is not clearly closer than q4_0"
    );
}

#[test]
fn simd_matches_portable_exactly() {
    for hd in [64, 128, 96, 256] {
        let shape = AttentionShape {
            n_head: 4,
            n_kv_head: 2,
            head_dim: hd,
            scale: 0.1,
            window: None,
        };
        let (len, kv_dim) = (75, 2 * hd);
        let k: Vec<f16> = random(len * kv_dim, 7)
            .iter()
            .map(|&x| f16::from_f32(2.0 * x))
            .collect();
        let v: Vec<f16> = random(len * kv_dim, 8)
            .iter()
            .map(|&x| f16::from_f32(x))
            .collect();
        let q = random(len * 4 * hd, 9);
        let (kb, vb) = ([KvRows::F16(&k)], [KvRows::F16(&v)]);
        let seqs = [SeqAttention {
            k: &kb,
            v: &vb,
            block_len: len,
            len,
            rows: 0..len,
            key_offset: None,
        }];
        let mut simd = vec![0f32; q.len()];
        let mut portable = vec![0f32; q.len()];
        attention(&shape, &seqs, &q, &mut simd);
        attention_with(Kernels::PORTABLE, &shape, &seqs, &q, &mut portable);
        assert!(
            simd.iter()
                .zip(&portable)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "head size {hd}"
        );
    }
}

#[test]
fn rows_do_not_depend_on_the_batch() {
    let shape = AttentionShape {
        n_head: 6,
        n_kv_head: 2,
        head_dim: 64,
        scale: 0.125,
        window: None,
    };
    let kv_dim = 2 * 64;
    let len = 90;
    let k: Vec<f16> = random(len * kv_dim, 4)
        .iter()
        .map(|&x| f16::from_f32(x))
        .collect();
    let v: Vec<f16> = random(len * kv_dim, 5)
        .iter()
        .map(|&x| f16::from_f32(x))
        .collect();
    let q = random(len * 6 * 64, 6);
    let all = run_blocks(&shape, &k, &v, len, &q, len, 32);
    // Each row alone, over the cache as it stood when that row was new.
    let width = 6 * 64;
    for r in [0, 15, 16, 17, 63, 89] {
        let one = run_blocks(&shape, &k, &v, r + 1, &q[r * width..][..width], 1, 32);
        assert_eq!(one, all[r * width..][..width], "row {r}");
    }
}
