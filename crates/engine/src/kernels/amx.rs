//! Attention scores on AMX tiles (x86-64 Linux, AMX-BF16), for long contexts.
//!
//! Queries and keys are f16 values (the queries rounded as llama.cpp rounds them). Each
//! splits exactly into a bf16 high part and a bf16 low part (the significand's last 3
//! bits), and every product of parts is exact in f32, so the four tile products `hi·hi +
//! hi·lo + lo·hi + lo·lo` give the dot products as f32 FMAs would, summed in the tiles'
//! order (`cargo bench -p verre-engine --bench amx`: largest error 5.6e-8 of the sum of the
//! products' magnitudes, f32 FMAs in order 1.1e-7). A score depends only on its query and
//! its key, never on the other rows of a tile.
//!
//! Layouts (u16 = bf16 bits): a group of 16 queries is, per step of 32 dimensions, a high
//! and a low tile of 16 rows × 32 values; a chunk of 16 keys is, per step, a high and a low
//! tile of 16 rows, row `r` holding the pairs `(k[c][2r], k[c][2r + 1])` of keys `c = 0..16`
//! (the layout `tdpbf16ps` reads its second operand in).

use std::arch::asm;
use std::sync::OnceLock;

/// Values of a tile: 16 rows of 32 bf16.
pub const TILE_VALUES: usize = 512;

/// Whether this process may use AMX-BF16 tiles: the CPU has them and the kernel granted
/// the tile state.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if super::isa() != super::Isa::Avx512Vnni {
            return false;
        }
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        if edx & (1 << 24) == 0 || edx & (1 << 22) == 0 {
            return false;
        }
        let ret: i64;
        // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), system call 158.
        unsafe {
            asm!("syscall", inlateout("rax") 158i64 => ret, in("rdi") 0x1023i64,
                 in("rsi") 18i64, lateout("rcx") _, lateout("r11") _, options(nostack));
        }
        ret == 0
    })
}

/// `x` (an f16 value in an f32) as bf16 bits `(hi, lo)` with `hi + lo == x` exactly.
#[inline(always)]
fn split(x: f32) -> (u16, u16) {
    let bits = x.to_bits();
    // Round to nearest even on the 16 bits dropped (finite values only).
    let hi = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
    let lo = x - f32::from_bits((hi as u32) << 16);
    // `lo` has at most 3 significant bits: its low 16 bits are zero.
    (hi, (lo.to_bits() >> 16) as u16)
}

/// Pack 16 query vectors (`rows[i]`, `steps * 32` values each; missing rows are zeros)
/// into `out`: per step, the high tile then the low tile.
pub fn pack_queries(rows: &[&[f32]], steps: usize, out: &mut [u16]) {
    debug_assert!(rows.len() <= 16 && out.len() >= steps * 2 * TILE_VALUES);
    out[..steps * 2 * TILE_VALUES].fill(0);
    for (i, row) in rows.iter().enumerate() {
        for s in 0..steps {
            let (hi, lo) = out[s * 2 * TILE_VALUES..][..2 * TILE_VALUES].split_at_mut(TILE_VALUES);
            for k in 0..32 {
                let (h, l) = split(row[s * 32 + k]);
                hi[i * 32 + k] = h;
                lo[i * 32 + k] = l;
            }
        }
    }
}

/// Pack a chunk of 16 keys (`keys`: 16 rows of `steps * 32` values) into `out`: per
/// step, the high tile then the low tile, in pairs. `halves` is scratch space.
pub fn pack_keys(keys: &[f32], steps: usize, out: &mut [u32], halves: &mut Vec<u32>) {
    let hd = steps * 32;
    let pairs = 16 * hd / 2;
    assert!(keys.len() >= 16 * hd && out.len() >= steps * TILE_VALUES);
    halves.resize(2 * pairs, 0);
    let (hi, lo) = halves.split_at_mut(pairs);
    // The halves, pair by pair (a loop the compiler vectorises).
    for ((h, l), x) in hi
        .iter_mut()
        .zip(lo.iter_mut())
        .zip(keys[..16 * hd].chunks_exact(2))
    {
        let ((h0, l0), (h1, l1)) = (split(x[0]), split(x[1]));
        *h = h0 as u32 | (h1 as u32) << 16;
        *l = l0 as u32 | (l1 as u32) << 16;
    }
    // Pair `r` of step `s` of key `c` goes to row `r`, column `c` of the step's tile.
    let pairs_per_key = hd / 2;
    for s in 0..steps {
        for (part, half) in [&*hi, &*lo].into_iter().enumerate() {
            let tile = &mut out[(s * 2 + part) * TILE_VALUES / 2..][..TILE_VALUES / 2];
            for (r, row) in tile.chunks_exact_mut(16).enumerate() {
                for (c, t) in row.iter_mut().enumerate() {
                    *t = half[c * pairs_per_key + s * 16 + r];
                }
            }
        }
    }
}

/// Tile configuration, palette 1: every tile 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

/// Load the tile configuration on this thread; [`release`] when done.
///
/// # Safety
/// [`available`] returned true.
pub unsafe fn configure() {
    let mut c = [0u8; 64];
    c[0] = 1;
    for t in 0..8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
    }
    let cfg = TileConfig(c);
    // SAFETY: a valid palette-1 configuration; the caller's.
    unsafe { asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack)) };
}

/// Give the tile state back (after [`configure`]).
///
/// # Safety
/// [`configure`] ran on this thread.
pub unsafe fn release() {
    // SAFETY: the caller's.
    unsafe { asm!("tilerelease", options(nostack)) };
}

/// The 16 × 16 dot products of a packed query group and a packed key chunk, as four
/// partial sums (`hi·hi`, `hi·lo`, `lo·hi`, `lo·lo`, each over the steps in order, in four
/// accumulator tiles so that the tile products overlap) stored to `parts`, 16 × 16 each.
///
/// # Safety
/// [`configure`] ran on this thread; `queries` and `keys` hold `steps` packed steps.
pub unsafe fn scores(queries: &[u16], keys: &[u32], steps: usize, parts: &mut [[f32; 256]; 4]) {
    debug_assert!(queries.len() >= steps * 2 * TILE_VALUES && keys.len() >= steps * TILE_VALUES);
    // SAFETY: the caller's; each tile load reads 16 rows of 64 bytes within the slices, each
    // store writes 1 KB into `parts`.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack)
        );
        for s in 0..steps {
            let q = queries.as_ptr().add(s * 2 * TILE_VALUES);
            let k = keys.as_ptr().add(s * TILE_VALUES);
            asm!(
                "tileloadd tmm4, [{qh} + {row}]",
                "tileloadd tmm6, [{kh} + {row}]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{kl} + {row}]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{ql} + {row}]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                qh = in(reg) q,
                ql = in(reg) q.add(TILE_VALUES),
                kh = in(reg) k,
                kl = in(reg) k.add(TILE_VALUES / 2),
                row = in(reg) 64usize,
                options(nostack),
            );
        }
        let p = parts.as_mut_ptr() as *mut f32;
        asm!(
            "tilestored [{p0} + {row}], tmm0",
            "tilestored [{p1} + {row}], tmm1",
            "tilestored [{p2} + {row}], tmm2",
            "tilestored [{p3} + {row}], tmm3",
            p0 = in(reg) p,
            p1 = in(reg) p.add(256),
            p2 = in(reg) p.add(512),
            p3 = in(reg) p.add(768),
            row = in(reg) 64usize,
            options(nostack),
        );
    }
}

/// Row `i` of the dot products from the four parts of [`scores`]: `(hh + hl) + (lh + ll)`.
#[inline]
pub fn dot_row(parts: &[[f32; 256]; 4], i: usize) -> [f32; 16] {
    std::array::from_fn(|j| {
        let at = i * 16 + j;
        (parts[0][at] + parts[1][at]) + (parts[2][at] + parts[3][at])
    })
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    #[test]
    fn split_is_exact() {
        for i in 0..=u16::MAX {
            let x = f16::from_bits(i);
            if !x.is_finite() {
                continue;
            }
            let (h, l) = split(x.to_f32());
            let back = f32::from_bits((h as u32) << 16) + f32::from_bits((l as u32) << 16);
            assert_eq!(back, x.to_f32(), "{x}");
            assert_eq!(f32::from_bits((l as u32) << 16).to_bits() & 0xFFFF, 0);
        }
    }

    #[test]
    fn tile_scores_are_the_dot_products() {
        if !available() {
            eprintln!("no AMX here: not run");
            return;
        }
        let hd = 128;
        let val = |i: usize, seed: usize| {
            let x = ((i * 7919 + seed * 104_729) % 2003) as f32 / 2003.0 - 0.5;
            f16::from_f32(4.0 * x).to_f32()
        };
        let q: Vec<Vec<f32>> = (0..11)
            .map(|i| (0..hd).map(|d| val(i * hd + d, 1)).collect())
            .collect();
        let k: Vec<f32> = (0..16 * hd).map(|i| val(i, 2)).collect();
        let rows: Vec<&[f32]> = q.iter().map(|r| r.as_slice()).collect();
        let (mut qt, mut kt) = (vec![0u16; 4 * 2 * TILE_VALUES], vec![0u32; 4 * TILE_VALUES]);
        pack_queries(&rows, 4, &mut qt);
        pack_keys(&k, 4, &mut kt, &mut Vec::new());
        let mut parts = [[0f32; 256]; 4];
        // SAFETY: AMX is available; both packings hold 4 steps.
        unsafe {
            configure();
            scores(&qt, &kt, 4, &mut parts);
            release();
        }
        let out: Vec<f32> = (0..16).flat_map(|i| dot_row(&parts, i)).collect();
        for i in 0..16 {
            for j in 0..16 {
                let (exact, size) = if i < 11 {
                    let p = q[i]
                        .iter()
                        .zip(&k[j * hd..][..hd])
                        .map(|(&a, &b)| a as f64 * b as f64);
                    let v: Vec<f64> = p.collect();
                    (
                        v.iter().sum::<f64>(),
                        v.iter().map(|x| x.abs()).sum::<f64>(),
                    )
                } else {
                    (0.0, 0.0)
                };
                let got = out[i * 16 + j] as f64;
                assert!(
                    (got - exact).abs() <= 1e-6 * size,
                    "({i}, {j}): {got} against {exact}"
                );
            }
        }
    }
}
