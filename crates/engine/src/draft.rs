//! Draft tokens for speculative decoding by prompt lookup: the tokens that followed the
//! last time the sequence's latest few tokens appeared earlier in it (its prompt or its own
//! output). Extraction copies invoice numbers, names and amounts out of the document, so
//! these guesses are often right; the engine checks every one of them against the model in
//! a single forward and keeps only what the model would have produced itself.

/// Longest and shortest tail looked up, in tokens: a longer match is a better guess, a
/// one-token match too often a wrong one.
const MAX_NGRAM: usize = 4;
const MIN_NGRAM: usize = 2;

/// Up to `max` tokens that followed the latest earlier occurrence of `context`'s last
/// `MAX_NGRAM` tokens (or fewer, down to `MIN_NGRAM`), the longest tail that occurs first.
/// Empty when no tail of that length occurs earlier.
pub(crate) fn prompt_lookup(context: &[u32], max: usize) -> Vec<u32> {
    if max == 0 {
        return Vec::new();
    }
    let len = context.len();
    for n in (MIN_NGRAM..=MAX_NGRAM.min(len.saturating_sub(1))).rev() {
        let tail = &context[len - n..];
        // Latest occurrence first: an earlier start `i` whose match ends before the tail.
        let found = (0..len - n)
            .rev()
            .find(|&i| &context[i..i + n] == tail)
            .map(|i| i + n);
        if let Some(next) = found {
            return context[next..(next + max).min(len)].to_vec();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tokens_after_the_latest_match_of_the_longest_tail_are_drafted() {
        // "... 7 8 9 | 1 2 3 4 5 | 7 8 9": the tail 7 8 9 was followed by 1 2 3.
        let ctx = [7, 8, 9, 1, 2, 3, 4, 5, 7, 8, 9];
        assert_eq!(prompt_lookup(&ctx, 3), vec![1, 2, 3]);
        assert_eq!(prompt_lookup(&ctx, 100), vec![1, 2, 3, 4, 5, 7, 8, 9]);
        // Two earlier matches: the latest one wins.
        let ctx = [5, 6, 1, 9, 9, 5, 6, 2, 0, 5, 6];
        assert_eq!(prompt_lookup(&ctx, 2), vec![2, 0]);
        // The longer tail wins over a later shorter one: 4 5 6 -> 7, though 5 6 -> 3 is later.
        let ctx = [4, 5, 6, 7, 1, 5, 6, 3, 4, 5, 6];
        assert_eq!(prompt_lookup(&ctx, 1), vec![7]);
    }

    #[test]
    fn no_match_or_no_room_drafts_nothing() {
        assert!(prompt_lookup(&[1, 2, 3, 4, 5], 4).is_empty());
        // A one-token tail is not looked up.
        assert!(prompt_lookup(&[1, 2, 3, 1], 4).is_empty());
        assert!(prompt_lookup(&[1, 2, 1, 2], 0).is_empty());
        assert!(prompt_lookup(&[], 4).is_empty());
        assert!(prompt_lookup(&[3], 4).is_empty());
        // A run of one token: the tail overlaps its own match and still drafts.
        assert_eq!(prompt_lookup(&[0, 0, 0, 0], 2), vec![0]);
    }
}
