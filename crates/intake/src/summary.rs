//! Summaries of long documents by map and reduce: each chunk of pages is summarised on its
//! own with its points cited to their pages (`[p. 12]`), every chunk's request at once so
//! the engine batches them; the partial summaries are then joined into one of the length
//! asked for, in groups that fit one call, until one is left. `verre summarize` and the
//! pipeline's `summarize` stage both run [`summarize`].

use serde::Serialize;

use crate::backend::{BoxFuture, CompleteRequest, ModelApi, ModelCallError, complete};
use crate::document::{Budget, Chunk, Page, all_in_order, plan, tokens};

/// What to summarise with, and how long.
#[derive(Debug, Clone)]
pub struct SummaryOptions {
    pub model: String,
    /// About how many words the summary has.
    pub words: usize,
    /// Tokens of text one call reads (a chunk of pages, or a group of partial summaries).
    pub chunk_tokens: usize,
}

/// A summary and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub text: String,
    /// Chunks summarised (map calls), and reduce calls after them.
    pub chunks: usize,
    pub reduce_calls: usize,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

const MAP_SYSTEM: &str = "You summarise documents faithfully. You state only what the text says, and after each point you cite the page it comes from as [p. N], using the [page N] markers of the text.";
const REDUCE_SYSTEM: &str = "You combine summaries of the parts of one document into one summary. Keep every topic the parts name, keep the page citations [p. N] of the points you keep, and add nothing that the parts do not say.";

/// Summarise `pages` (all of them: the caller chooses what to read) in about
/// `options.words` words. `progress(done, total)` is called as calls complete.
pub async fn summarize(
    api: &dyn ModelApi,
    pages: &[Page],
    options: &SummaryOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Summary, ModelCallError> {
    let budget = Budget {
        max_pages: usize::MAX,
        max_tokens: usize::MAX,
        chunk_tokens: options.chunk_tokens,
    };
    let chunks = plan(pages, &budget).chunks;
    let n = chunks.len();
    if n == 0 {
        return Ok(Summary {
            text: String::new(),
            chunks: 0,
            reduce_calls: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
        });
    }
    // A chunk's share of the words, with room for the reduce step to choose.
    let map_words = if n == 1 {
        options.words
    } else {
        (options.words * 2 / n).clamp(40, 150)
    };
    let total = n + reduce_calls_needed(n, map_words, options.chunk_tokens);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let tick = || {
        let d = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        progress(d, total.max(d));
    };
    progress(0, total);

    let prompts: Vec<String> = chunks.iter().map(|c| map_prompt(c, map_words)).collect();
    let calls = prompts
        .iter()
        .map(|prompt| {
            Box::pin(async {
                let c = complete(
                    api,
                    &CompleteRequest {
                        model: &options.model,
                        system: MAP_SYSTEM,
                        prompt,
                        max_tokens: map_words * 2 + 32,
                        repetition_penalty: 1.1,
                    },
                )
                .await;
                tick();
                c
            }) as BoxFuture<'_, Result<crate::backend::Completion, ModelCallError>>
        })
        .collect();
    let mut partials = Vec::with_capacity(n);
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for (chunk, c) in chunks.iter().zip(all_in_order(calls).await) {
        let c = c?;
        prompt_tokens += c.prompt_tokens;
        completion_tokens += c.completion_tokens;
        partials.push(format!("Part ({}): {}", chunk.span(), c.text));
    }
    if n == 1 {
        return Ok(Summary {
            text: partials
                .remove(0)
                .split_once("): ")
                .map_or(String::new(), |(_, t)| t.to_string()),
            chunks: 1,
            reduce_calls: 0,
            prompt_tokens,
            completion_tokens,
        });
    }

    // Reduce: groups of partial summaries that fit one call, until one summary is left.
    let mut reduce_calls = 0;
    loop {
        let groups = group(&partials, options.chunk_tokens);
        let last = groups.len() == 1;
        let words = if last {
            options.words
        } else {
            (options.words * 2 / groups.len()).clamp(60, 300)
        };
        let prompts: Vec<String> = groups
            .iter()
            .map(|g| reduce_prompt(g, words, last))
            .collect();
        let calls = prompts
            .iter()
            .map(|prompt| {
                Box::pin(async {
                    let c = complete(
                        api,
                        &CompleteRequest {
                            model: &options.model,
                            system: REDUCE_SYSTEM,
                            prompt,
                            max_tokens: words * 2 + 64,
                            repetition_penalty: 1.1,
                        },
                    )
                    .await;
                    tick();
                    c
                })
                    as BoxFuture<'_, Result<crate::backend::Completion, ModelCallError>>
            })
            .collect();
        let results = all_in_order(calls).await;
        reduce_calls += results.len();
        let mut next = Vec::with_capacity(results.len());
        for c in results {
            let c = c?;
            prompt_tokens += c.prompt_tokens;
            completion_tokens += c.completion_tokens;
            next.push(c.text);
        }
        if last {
            return Ok(Summary {
                text: next.remove(0),
                chunks: n,
                reduce_calls,
                prompt_tokens,
                completion_tokens,
            });
        }
        partials = next;
    }
}

/// Summarise `pages` in one call, the whole text in one prompt (a document that fits the
/// model's context; `verre summarize --single-pass`, to compare with map and reduce).
pub async fn summarize_single_pass(
    api: &dyn ModelApi,
    pages: &[Page],
    options: &SummaryOptions,
) -> Result<Summary, ModelCallError> {
    let whole = Chunk {
        pages: pages.to_vec(),
    };
    let prompt = map_prompt(&whole, options.words);
    let c = complete(
        api,
        &CompleteRequest {
            model: &options.model,
            system: MAP_SYSTEM,
            prompt: &prompt,
            max_tokens: options.words * 2 + 64,
            repetition_penalty: 1.1,
        },
    )
    .await?;
    Ok(Summary {
        text: c.text,
        chunks: 1,
        reduce_calls: 0,
        prompt_tokens: c.prompt_tokens,
        completion_tokens: c.completion_tokens,
    })
}

fn map_prompt(chunk: &Chunk, words: usize) -> String {
    format!(
        "{}\n\nSummarise the text above ({}) in at most {words} words. Name each section's subject, and cite the page of each point as [p. N].",
        chunk.document(),
        chunk.span()
    )
}

fn reduce_prompt(group: &[String], words: usize, last: bool) -> String {
    let what = if last {
        "the whole document"
    } else {
        "these parts together"
    };
    format!(
        "{}\n\nWrite a summary of {what} in about {words} words from the summaries of its parts above. Name every subject the parts name, and keep their page citations [p. N].",
        group.join("\n\n")
    )
}

/// Consecutive partial summaries in groups of at most `chunk_tokens` (at least two a
/// group, so every round shrinks).
fn group(partials: &[String], chunk_tokens: usize) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut size = 0;
    for p in partials {
        let t = tokens(p);
        match groups.last_mut() {
            Some(g) if size + t <= chunk_tokens || g.len() < 2 => {
                g.push(p.clone());
                size += t;
            }
            _ => {
                groups.push(vec![p.clone()]);
                size = t;
            }
        }
    }
    // A lone last summary joins the group before it.
    if groups.len() > 1 && groups.last().is_some_and(|g| g.len() == 1) {
        let lone = groups.pop().expect("checked");
        groups.last_mut().expect("checked").extend(lone);
    }
    groups
}

/// Reduce calls that `n` partial summaries of about `words` words will take (for the
/// progress bar; an estimate when the model writes more or less than asked).
fn reduce_calls_needed(n: usize, words: usize, chunk_tokens: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let per_group = (chunk_tokens / (words * 2).max(1)).max(2);
    let (mut left, mut calls) = (n, 0);
    while left > 1 {
        let groups = left.div_ceil(per_group).max(1);
        calls += groups;
        left = groups;
        if groups == 1 {
            break;
        }
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_summaries_are_grouped_to_fit_and_every_round_shrinks() {
        let partials: Vec<String> = (0..10)
            .map(|i| format!("{i} {}", "w".repeat(396)))
            .collect();
        // 100 tokens each: three fit in 300.
        let groups = group(&partials, 300);
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 4]);
        assert_eq!(group(&partials[..3], 10).len(), 1, "two at least a group");
        assert_eq!(reduce_calls_needed(1, 50, 1000), 0);
        assert_eq!(reduce_calls_needed(8, 50, 1000), 1);
        assert_eq!(reduce_calls_needed(30, 50, 1000), 4);
    }
}
