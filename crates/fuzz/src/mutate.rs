//! The mutations: small, structure-blind edits of a byte string, with a target's
//! dictionary of tokens that mean something to its parser.

/// A small deterministic generator (xorshift64*): a run is repeated by its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Integers that sit on parsers' edges: zero, one, signs, powers of two, the maxima.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// Edits inputs with a fixed dictionary; see the module documentation.
#[derive(Debug, Clone)]
pub struct Mutator {
    pub rng: Rng,
    tokens: Vec<Vec<u8>>,
    max_len: usize,
}

impl Mutator {
    pub fn new(seed: u64, tokens: &[&[u8]], max_len: usize) -> Self {
        Self {
            rng: Rng::new(seed),
            tokens: tokens.iter().map(|t| t.to_vec()).collect(),
            max_len,
        }
    }

    /// A mutant of `input`: one to eight edits stacked, `other` (another corpus entry)
    /// available for splicing.
    pub fn mutate(&mut self, input: &[u8], other: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        let edits = 1 << self.rng.below(4);
        for _ in 0..edits {
            self.edit(&mut out, other);
        }
        out.truncate(self.max_len);
        out
    }

    fn edit(&mut self, b: &mut Vec<u8>, other: &[u8]) {
        let r = &mut self.rng;
        match r.below(13) {
            // Flip a bit.
            0 if !b.is_empty() => {
                let i = r.below(b.len());
                b[i] ^= 1 << r.below(8);
            }
            // A random byte, or an interesting one.
            1 if !b.is_empty() => {
                let i = r.below(b.len());
                b[i] = match r.below(4) {
                    0 => r.next_u64() as u8,
                    1 => 0,
                    2 => 0xff,
                    _ => *b"\0\n\r\"\\{}[]<>:=;%'&\x7f\x80"
                        .get(r.below(18))
                        .unwrap_or(&0),
                };
            }
            // Overwrite with an interesting integer, little or big endian, 1 to 8 bytes.
            2 if !b.is_empty() => {
                let v = INTERESTING[r.below(INTERESTING.len())];
                let width = [1, 2, 4, 8][r.below(4)];
                let bytes = if r.chance(2) {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                let bytes = if r.chance(2) {
                    &bytes[..width]
                } else {
                    &bytes[8 - width..]
                };
                let at = r.below(b.len());
                for (k, x) in bytes.iter().enumerate() {
                    if let Some(slot) = b.get_mut(at + k) {
                        *slot = *x;
                    }
                }
            }
            // A decimal number where digits were.
            3 => {
                let v = INTERESTING[r.below(INTERESTING.len())];
                let text = match r.below(3) {
                    0 => v.to_string(),
                    1 => format!("-{v}"),
                    _ => format!("{v}e{}", r.below(400)),
                };
                let at = r.below(b.len() + 1);
                b.splice(at..at, text.into_bytes());
            }
            // Delete a range.
            4 if !b.is_empty() => {
                let at = r.below(b.len());
                let n = 1 + r.below((b.len() - at).min(64));
                b.drain(at..at + n);
            }
            // Duplicate a range, sometimes many times (nesting, repetition).
            5 if !b.is_empty() => {
                let at = r.below(b.len());
                let n = 1 + r.below((b.len() - at).min(256));
                let chunk = b[at..at + n].to_vec();
                let times = if r.chance(8) { 1 + r.below(64) } else { 1 };
                let to = r.below(b.len() + 1);
                for _ in 0..times {
                    b.splice(to..to, chunk.iter().copied());
                }
            }
            // Insert or overwrite with a dictionary token.
            6 | 7 if !self.tokens.is_empty() => {
                let t = self.tokens[r.below(self.tokens.len())].clone();
                let at = r.below(b.len() + 1);
                if r.chance(3) && at + t.len() <= b.len() {
                    b[at..at + t.len()].copy_from_slice(&t);
                } else {
                    b.splice(at..at, t);
                }
            }
            // Splice: our head, the other's tail.
            8 if !other.is_empty() => {
                let keep = r.below(b.len() + 1);
                let from = r.below(other.len());
                b.truncate(keep);
                b.extend_from_slice(&other[from..]);
            }
            // Truncate.
            9 if !b.is_empty() => {
                let n = r.below(b.len());
                b.truncate(n);
            }
            // Swap two bytes.
            10 if b.len() > 1 => {
                let i = r.below(b.len());
                let j = r.below(b.len());
                b.swap(i, j);
            }
            // Insert random bytes.
            11 => {
                let at = r.below(b.len() + 1);
                let n = 1 + r.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| r.next_u64() as u8).collect();
                b.splice(at..at, bytes);
            }
            // Repeat a token many times (deep nesting).
            _ if !self.tokens.is_empty() => {
                let t = self.tokens[r.below(self.tokens.len())].clone();
                let at = r.below(b.len() + 1);
                let times = 1 + r.below(300);
                b.splice(at..at, t.repeat(times));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_repeats_its_mutants_and_lengths_stay_bounded() {
        let mut a = Mutator::new(7, &[b"{{", b"}}"], 100);
        let mut b = Mutator::new(7, &[b"{{", b"}}"], 100);
        let seed = b"hello {{ world }}".to_vec();
        let mut changed = 0;
        for _ in 0..1000 {
            let x = a.mutate(&seed, b"other");
            assert_eq!(x, b.mutate(&seed, b"other"));
            assert!(x.len() <= 100);
            changed += usize::from(x != seed);
        }
        assert!(
            changed > 900,
            "most mutants differ from the seed: {changed}"
        );
    }
}
