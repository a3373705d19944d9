//! AVX-512 VNNI kernels over weights in the packed layout (see `packed`): one group of 16
//! weight rows against `R` activation rows. Lane `l` of every vector belongs to weight row
//! `16g + l`; a (weight row, activation row) pair sees the same instructions whatever `R`
//! is, so batched products are bit-identical to one row at a time.
//!
//! Per block: the block's exact integer sum per lane (8 `vpdpbusd` in two chains, started
//! at the activation's integer sum times the weight offset), converted to f32 and added
//! with one FMA by `d_w * d_a`; Q4_1 adds its minimum times the activation's scaled sum.
//!
//! Callers guarantee AVX-512 F/BW/VNNI and F16C (see `super::isa`), that `g` points at
//! the group's `k / 32` blocks of `stride` bytes, that the activations hold rows
//! `row0..row0 + R`, and that `out + r * n` has room for `lanes` floats for each `r < R`.

use std::arch::x86_64::*;

use super::acts::{Q8Acts, QK8};

macro_rules! packed_q8_kernel {
    ($name:ident, offset: $offset:expr, min: $min:expr, quants_at: $quants_at:expr,
        |$q:ident, $u:ident| $unpack:block) => {
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
        pub(crate) unsafe fn $name<const R: usize>(
            g: *const u8,
            stride: usize,
            a: &Q8Acts<'_>,
            row0: usize,
            out: *mut f32,
            n: usize,
            lanes: usize,
        ) {
            let nb = a.k / QK8;
            debug_assert!(a.qs.len() >= (row0 + R) * a.k && a.isum.len() >= (row0 + R) * nb);
            debug_assert!((1..=16).contains(&lanes));
            let mut acc = [_mm512_setzero_ps(); R];
            unsafe {
                let (qs, ad, asum, isum) =
                    (a.qs.as_ptr(), a.d.as_ptr(), a.s.as_ptr(), a.isum.as_ptr());
                for b in 0..nb {
                    let blk = g.add(b * stride);
                    let dw = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
                    let mw = if $min {
                        _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(32).cast()))
                    } else {
                        _mm512_setzero_ps()
                    };
                    let $q = blk.add($quants_at);
                    let mut $u = [_mm512_setzero_si512(); 8];
                    $unpack
                    for r in 0..R {
                        let at = (row0 + r) * nb + b;
                        let x = qs.add(at * QK8).cast::<i32>();
                        let mut s0 = _mm512_set1_epi32($offset * *isum.add(at));
                        let mut s1 = _mm512_setzero_si512();
                        for c in (0..8).step_by(2) {
                            let x0 = _mm512_set1_epi32(x.add(c).read_unaligned());
                            let x1 = _mm512_set1_epi32(x.add(c + 1).read_unaligned());
                            s0 = _mm512_dpbusd_epi32(s0, $u[c], x0);
                            s1 = _mm512_dpbusd_epi32(s1, $u[c + 1], x1);
                        }
                        let p = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                        let d = _mm512_mul_ps(dw, _mm512_set1_ps(*ad.add(at)));
                        acc[r] = _mm512_fmadd_ps(d, p, acc[r]);
                        if $min {
                            acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*asum.add(at)), acc[r]);
                        }
                    }
                }
                let mask = ((1u32 << lanes) - 1) as u16;
                for (r, acc) in acc.iter().enumerate() {
                    _mm512_mask_storeu_ps(out.add(r * n), mask, *acc);
                }
            }
        }
    };
}

/// Chunks `c` and `c + 4` from the low and high nibbles of 64 packed bytes each.
macro_rules! unpack_nibbles {
    ($q:ident, $u:ident) => {{
        let m4 = _mm512_set1_epi8(0x0F);
        for c in 0..4 {
            let x = _mm512_loadu_si512($q.add(64 * c).cast());
            $u[c] = _mm512_and_si512(x, m4);
            $u[c + 4] = _mm512_and_si512(_mm512_srli_epi16(x, 4), m4);
        }
    }};
}

packed_q8_kernel!(q4_0, offset: -8, min: false, quants_at: 32, |q, u| {
    unpack_nibbles!(q, u)
});

packed_q8_kernel!(q4_1, offset: 0, min: true, quants_at: 64, |q, u| {
    unpack_nibbles!(q, u)
});

packed_q8_kernel!(q8_0, offset: -128, min: false, quants_at: 32, |q, u| {
    for c in 0..8 {
        u[c] = _mm512_loadu_si512(q.add(64 * c).cast());
    }
});

/// A packed kernel for one group against `R` activation rows.
pub(crate) type PackedFn = unsafe fn(*const u8, usize, &Q8Acts<'_>, usize, *mut f32, usize, usize);

/// The 1-row and 4-row kernels of a packed type.
pub(crate) fn kernels(qtype: super::QuantType) -> (PackedFn, PackedFn) {
    use super::QuantType as Q;
    match qtype {
        Q::Q4_0 => (q4_0::<1>, q4_0::<4>),
        Q::Q4_1 => (q4_1::<1>, q4_1::<4>),
        Q::Q8_0 => (q8_0::<1>, q8_0::<4>),
        other => unreachable!("{other} has no packed kernel"),
    }
}
