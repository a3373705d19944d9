//! What AMX would give attention on this CPU: the rate of `tdpbf16ps` (bf16 tiles, f32
//! sums) against 512-bit f32 FMAs on one core, and whether f16 dot products computed as
//! bf16 tile products of split values are exact.
//!
//! An f16 value has an 11-bit significand; its bf16 rounding `hi` keeps 8 bits and the
//! rest, `lo = x - hi`, has at most 3 significant bits, so it is a bf16 too, exactly. Each
//! product of parts is exact in f32, so `hi·hi + hi·lo + lo·hi + lo·lo` is the f32 dot
//! product up to the order of the sums (and `lo·lo`, 2^-16 of the product, can be dropped).
//! The engine's attention kernels multiply f16 queries by f16 keys and f16 weights by f16
//! values in f32 FMAs; this bench measures the case for moving them to AMX. It uses
//! nothing of the engine.
//!
//! `cargo bench -p verre-engine --bench amx` (prints why and exits 0 where the CPU or the
//! kernel has no AMX).

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx {
    use std::arch::asm;
    use std::arch::x86_64::__cpuid_count;
    use std::time::Instant;

    use half::{bf16, f16};

    /// Tile configuration, palette 1: every tile 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    impl TileConfig {
        fn all_16x64() -> Self {
            let mut c = [0u8; 64];
            c[0] = 1;
            for t in 0..8 {
                c[16 + 2 * t] = 64;
                c[48 + t] = 16;
            }
            TileConfig(c)
        }
    }

    /// Whether the CPU has AMX-TILE and AMX-BF16 and the kernel lets this process use the
    /// tile registers (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`).
    pub fn available() -> Result<(), String> {
        let edx = __cpuid_count(7, 0).edx;
        if edx & (1 << 24) == 0 || edx & (1 << 22) == 0 {
            return Err("this CPU has no AMX-TILE/AMX-BF16".into());
        }
        let ret: i64;
        // SAFETY: the arch_prctl system call (158) with two integer arguments.
        unsafe {
            asm!("syscall", inlateout("rax") 158i64 => ret, in("rdi") 0x1023i64,
                 in("rsi") 18i64, lateout("rcx") _, lateout("r11") _);
        }
        if ret != 0 {
            return Err(format!("the kernel refused the AMX tile state ({ret})"));
        }
        Ok(())
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

    /// `x` (an f16) as `hi + lo`, both bf16, exactly.
    fn split(x: f16) -> (bf16, bf16) {
        let x = x.to_f32();
        let hi = bf16::from_f32(x);
        let lo = bf16::from_f32(x - hi.to_f32());
        assert_eq!(hi.to_f32() + lo.to_f32(), x, "split of {x} is not exact");
        (hi, lo)
    }

    /// `C[i][j] = sum over k < 32 of A[i][k] * B[k][j]` for 16 x 16, from the given pairs of
    /// parts (A row-major 16 x 32; B as `b[j][k]`, laid out here in pairs for the tile).
    fn tile_product(terms: &[(&[bf16], &[bf16])]) -> [f32; 256] {
        let cfg = TileConfig::all_16x64();
        let mut c = [0f32; 256];
        // SAFETY: `available()` passed; every tile is 16 rows of 64 bytes, read from and
        // written to buffers of 1 KB.
        unsafe {
            asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr());
            asm!("tilezero tmm0");
            for (a, b) in terms {
                // B in pairs: row r holds (b[j][2r], b[j][2r + 1]) for j = 0..16.
                let mut pairs = [bf16::ZERO; 512];
                for r in 0..16 {
                    for j in 0..16 {
                        pairs[r * 32 + 2 * j] = b[j * 32 + 2 * r];
                        pairs[r * 32 + 2 * j + 1] = b[j * 32 + 2 * r + 1];
                    }
                }
                asm!("tileloadd tmm1, [{0} + {1}]", in(reg) a.as_ptr(), in(reg) 64usize);
                asm!("tileloadd tmm2, [{0} + {1}]", in(reg) pairs.as_ptr(), in(reg) 64usize);
                asm!("tdpbf16ps tmm0, tmm1, tmm2");
            }
            asm!("tilestored [{0} + {1}], tmm0", in(reg) c.as_mut_ptr(), in(reg) 64usize);
            asm!("tilerelease");
        }
        c
    }

    /// Largest error of the split tile products (3 and 4 terms) and of sequential f32 FMAs,
    /// against the exact dot products, relative to the sum of the products' magnitudes.
    pub fn exactness() {
        let q: Vec<f16> = random(512, 1)
            .iter()
            .map(|&x| f16::from_f32(4.0 * x))
            .collect();
        let k: Vec<f16> = random(512, 2)
            .iter()
            .map(|&x| f16::from_f32(3.0 * x))
            .collect();
        let (qh, ql): (Vec<bf16>, Vec<bf16>) = q.iter().map(|&x| split(x)).unzip();
        let (kh, kl): (Vec<bf16>, Vec<bf16>) = k.iter().map(|&x| split(x)).unzip();
        let three = tile_product(&[(&qh, &kh), (&qh, &kl), (&ql, &kh)]);
        let four = tile_product(&[(&qh, &kh), (&qh, &kl), (&ql, &kh), (&ql, &kl)]);
        let (mut worst3, mut worst4, mut worst_fma) = (0f64, 0f64, 0f64);
        for i in 0..16 {
            for j in 0..16 {
                let (qi, kj) = (&q[i * 32..][..32], &k[j * 32..][..32]);
                let exact: f64 = qi
                    .iter()
                    .zip(kj)
                    .map(|(a, b)| a.to_f64() * b.to_f64())
                    .sum();
                let size: f64 = qi
                    .iter()
                    .zip(kj)
                    .map(|(a, b)| (a.to_f64() * b.to_f64()).abs())
                    .sum();
                let fma = qi
                    .iter()
                    .zip(kj)
                    .fold(0f32, |s, (a, b)| a.to_f32().mul_add(b.to_f32(), s));
                worst3 = worst3.max((three[i * 16 + j] as f64 - exact).abs() / size);
                worst4 = worst4.max((four[i * 16 + j] as f64 - exact).abs() / size);
                worst_fma = worst_fma.max((fma as f64 - exact).abs() / size);
            }
        }
        println!(
            "f16 dot products of 32, largest error / sum of |products|: AMX 4 terms {worst4:.2e}, \
             3 terms {worst3:.2e}, f32 FMAs in order {worst_fma:.2e}"
        );
    }

    /// `n` rounds of 8 independent 512-bit FMAs (0.001 times 1 added to zeros).
    #[target_feature(enable = "avx512f")]
    unsafe fn fma_loop(n: u64) {
        use std::arch::x86_64::_mm512_set1_ps;
        let (x, y) = (_mm512_set1_ps(0.001), _mm512_set1_ps(1.0));
        // SAFETY: register arithmetic and a counter.
        unsafe {
            asm!(
                "vxorps zmm0, zmm0, zmm0", "vxorps zmm1, zmm1, zmm1",
                "vxorps zmm2, zmm2, zmm2", "vxorps zmm3, zmm3, zmm3",
                "vxorps zmm4, zmm4, zmm4", "vxorps zmm5, zmm5, zmm5",
                "vxorps zmm6, zmm6, zmm6", "vxorps zmm7, zmm7, zmm7",
                "2:",
                "vfmadd231ps zmm0, {x}, {y}", "vfmadd231ps zmm1, {x}, {y}",
                "vfmadd231ps zmm2, {x}, {y}", "vfmadd231ps zmm3, {x}, {y}",
                "vfmadd231ps zmm4, {x}, {y}", "vfmadd231ps zmm5, {x}, {y}",
                "vfmadd231ps zmm6, {x}, {y}", "vfmadd231ps zmm7, {x}, {y}",
                "dec {n}",
                "jnz 2b",
                x = in(zmm_reg) x, y = in(zmm_reg) y, n = inout(reg) n => _,
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
            );
        }
    }

    /// Multiply-adds a second on one core: `tdpbf16ps` into four accumulator tiles, and
    /// 512-bit FMAs into eight accumulator registers.
    pub fn rates() {
        let cfg = TileConfig::all_16x64();
        let a = vec![bf16::ONE; 512];
        let iters = 5_000_000u64;
        let t = Instant::now();
        // SAFETY: `available()` passed; the tiles read 1 KB from `a`.
        unsafe {
            asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr());
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3"
            );
            for tmm in 0..4 {
                match tmm {
                    0 => asm!("tileloadd tmm4, [{0} + {1}]", in(reg) a.as_ptr(), in(reg) 64usize),
                    1 => asm!("tileloadd tmm5, [{0} + {1}]", in(reg) a.as_ptr(), in(reg) 64usize),
                    2 => asm!("tileloadd tmm6, [{0} + {1}]", in(reg) a.as_ptr(), in(reg) 64usize),
                    _ => asm!("tileloadd tmm7, [{0} + {1}]", in(reg) a.as_ptr(), in(reg) 64usize),
                }
            }
            for _ in 0..iters {
                asm!(
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7"
                );
            }
            asm!("tilerelease");
        }
        let amx = (iters * 4 * 16 * 16 * 32) as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        // SAFETY: the CPU has AVX-512 where it has AMX.
        unsafe { fma_loop(iters * 4) };
        let fma = (iters * 4 * 8 * 16) as f64 / t.elapsed().as_secs_f64();
        println!(
            "one core: tdpbf16ps {:.1} G multiply-adds/s, 512-bit FMA {:.1} G/s ({:.1}x; \
             split f16 products take 3-4 tile products each)",
            amx / 1e9,
            fma / 1e9,
            amx / fma
        );
    }
}

fn main() {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    match amx::available() {
        Ok(()) => {
            amx::exactness();
            amx::rates();
        }
        Err(why) => println!("amx: not measured: {why}"),
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    println!("amx: not measured: x86-64 Linux only");
}
