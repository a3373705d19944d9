//! What the tokens in the ledger cost here, and what they would have cost at an API
//! provider: `verre cost` prints it, `GET /v1/verre/usage` returns it as JSON.
//!
//! The local cost of a period is the hardware's price for that period (`[cost]
//! eur_per_month` or `eur_per_hour`) plus its energy (`watts` × hours × `eur_per_kwh`),
//! spread evenly over every token (prompt and completion) that backends with `local =
//! true` served in the period. Hardware is priced in euros, API list prices in dollars;
//! `usd_per_eur` converts for the saving, and both currencies are reported as they are.

use anyhow::Result;
use chrono::{DateTime, NaiveDate, NaiveTime};
use serde::Serialize;
use verre_store::ledger::{GroupBy, UsageQuery, UsageRow};
use verre_store::{Store, now_ms};

/// `[cost]` in `verre.toml`, as verre-config parses and checks it.
pub use verre_config::{CostConfig, ListPrice};

/// A slice of the ledger to price.
#[derive(Debug, Clone, Default)]
pub struct CostQuery {
    /// Unix ms; `None`: from the first request in the ledger.
    pub since: Option<i64>,
    pub by: Option<GroupBy>,
    /// Only this key's requests (they still share the hardware with every other key).
    pub api_key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CostReport {
    /// The period priced, Unix ms.
    pub since: i64,
    pub until: i64,
    pub hours: f64,
    pub by: Option<GroupBy>,
    pub currencies: Currencies,
    pub local: LocalCost,
    pub list_prices: Vec<ListPrice>,
    pub total: CostLine,
    pub groups: Vec<CostLine>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Currencies {
    /// Local cost: hardware and energy.
    pub local_cost: &'static str,
    /// List prices.
    pub list_prices: &'static str,
    pub usd_per_eur: f64,
}

/// The hardware's cost over the period and the tokens it is spread over.
#[derive(Debug, Clone, Serialize)]
pub struct LocalCost {
    pub hardware_eur: f64,
    pub energy_eur: f64,
    pub total_eur: f64,
    /// Every token local backends served in the period, whoever asked.
    pub tokens: u64,
    pub eur_per_mtok: Option<f64>,
}

/// One group (a key, a model, a backend) or the total.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CostLine {
    pub group: String,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The part served by `local = true` backends.
    pub local_prompt_tokens: u64,
    pub local_completion_tokens: u64,
    /// Its share of the local cost.
    pub local_cost_eur: f64,
    /// One per list price, in its order.
    pub api_equivalent: Vec<Equivalent>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Equivalent {
    pub name: String,
    /// Every token of the line at this list price.
    pub usd: f64,
    /// The locally served tokens at this price, in euros, less their local cost.
    pub saving_eur: f64,
}

/// Price the ledger from `query.since` until now.
pub async fn report(store: &Store, config: &CostConfig, query: &CostQuery) -> Result<CostReport> {
    let until = now_ms() + 1;
    // Every key's local tokens share the hardware, so spread it over all of them.
    let everyone = store
        .ledger_usage(&UsageQuery {
            since: query.since,
            until: Some(until),
            by: None,
            api_key: None,
        })
        .await?;
    let rows = store
        .ledger_usage(&UsageQuery {
            since: query.since,
            until: Some(until),
            by: query.by,
            api_key: query.api_key.clone(),
        })
        .await?;
    let since = query
        .since
        .or(everyone.first_at)
        .unwrap_or(until)
        .min(until);
    let hours = (until - since) as f64 / 3_600_000.0;
    let local_tokens: u64 = everyone
        .rows
        .iter()
        .filter(|r| r.local)
        .map(|r| r.prompt_tokens + r.completion_tokens)
        .sum();
    let hardware_eur = config.hardware_eur(hours);
    let energy_eur = config.energy_eur(hours);
    let total_eur = hardware_eur + energy_eur;
    let per_token = (local_tokens > 0).then(|| total_eur / local_tokens as f64);

    let mut groups: Vec<CostLine> = Vec::new();
    for row in &rows.rows {
        let index = match groups.iter().position(|g| g.group == row.group) {
            Some(i) => i,
            None => {
                groups.push(CostLine {
                    group: row.group.clone(),
                    ..Default::default()
                });
                groups.len() - 1
            }
        };
        add(&mut groups[index], row);
    }
    let mut total = CostLine {
        group: "total".into(),
        ..Default::default()
    };
    for row in &rows.rows {
        add(&mut total, row);
    }
    for line in groups.iter_mut().chain(std::iter::once(&mut total)) {
        price(line, config, per_token);
    }
    Ok(CostReport {
        since,
        until,
        hours,
        by: query.by,
        currencies: Currencies {
            local_cost: "EUR",
            list_prices: "USD",
            usd_per_eur: config.usd_per_eur,
        },
        local: LocalCost {
            hardware_eur,
            energy_eur,
            total_eur,
            tokens: local_tokens,
            eur_per_mtok: per_token.map(|t| t * 1e6),
        },
        list_prices: config.list_price.clone(),
        total,
        groups: if query.by.is_some() {
            groups
        } else {
            Vec::new()
        },
    })
}

fn add(line: &mut CostLine, row: &UsageRow) {
    line.requests += row.requests;
    line.errors += row.errors;
    line.prompt_tokens += row.prompt_tokens;
    line.completion_tokens += row.completion_tokens;
    if row.local {
        line.local_prompt_tokens += row.prompt_tokens;
        line.local_completion_tokens += row.completion_tokens;
    }
}

fn price(line: &mut CostLine, config: &CostConfig, per_token: Option<f64>) {
    let local_tokens = line.local_prompt_tokens + line.local_completion_tokens;
    line.local_cost_eur = per_token.map_or(0.0, |t| t * local_tokens as f64);
    line.api_equivalent = config
        .list_price
        .iter()
        .map(|p| {
            let at_price = |input: u64, output: u64| {
                (input as f64 * p.input_usd_per_mtok + output as f64 * p.output_usd_per_mtok) / 1e6
            };
            let local_usd = at_price(line.local_prompt_tokens, line.local_completion_tokens);
            Equivalent {
                name: p.name.clone(),
                usd: at_price(line.prompt_tokens, line.completion_tokens),
                saving_eur: local_usd / config.usd_per_eur - line.local_cost_eur,
            }
        })
        .collect();
}

/// The report as a table for a terminal.
pub fn render(report: &CostReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let local = &report.local;
    let _ = writeln!(
        out,
        "{} to {} UTC ({:.1} h)",
        format_ms(report.since),
        format_ms(report.until),
        report.hours
    );
    let _ = writeln!(
        out,
        "local cost: hardware €{:.2} + energy €{:.2} = €{:.2}, spread over {} tokens served locally{}",
        local.hardware_eur,
        local.energy_eur,
        local.total_eur,
        local.tokens,
        local
            .eur_per_mtok
            .map(|c| format!(" (€{c:.4} per million)"))
            .unwrap_or_default()
    );
    if local.total_eur == 0.0 {
        let _ = writeln!(
            out,
            "  (no hardware cost configured: set [cost] eur_per_month or eur_per_hour, watts and eur_per_kwh)"
        );
    }
    let prices: Vec<String> = report
        .list_prices
        .iter()
        .map(|p| {
            format!(
                "{} ${}/${}",
                p.name, p.input_usd_per_mtok, p.output_usd_per_mtok
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "list prices per million input/output tokens: {}; saving at ${} = €1",
        prices.join(", "),
        report.currencies.usd_per_eur
    );
    out.push('\n');

    let mut header = vec![
        match report.by {
            Some(GroupBy::Key) => "KEY",
            Some(GroupBy::Model) => "MODEL",
            Some(GroupBy::Backend) => "BACKEND",
            None => "",
        }
        .to_string(),
        "REQUESTS".into(),
        "ERRORS".into(),
        "PROMPT".into(),
        "COMPLETION".into(),
        "LOCAL".into(),
        "LOCAL COST €".into(),
    ];
    for p in &report.list_prices {
        header.push(format!("{} $", p.name));
        header.push("SAVING €".into());
    }
    let mut table = vec![header];
    for line in report.groups.iter().chain(std::iter::once(&report.total)) {
        let mut cells = vec![
            if line.group.is_empty() {
                "(none)".to_string()
            } else {
                line.group.clone()
            },
            line.requests.to_string(),
            line.errors.to_string(),
            line.prompt_tokens.to_string(),
            line.completion_tokens.to_string(),
            (line.local_prompt_tokens + line.local_completion_tokens).to_string(),
            format!("{:.2}", line.local_cost_eur),
        ];
        for e in &line.api_equivalent {
            cells.push(format!("{:.2}", e.usd));
            cells.push(format!("{:.2}", e.saving_eur));
        }
        table.push(cells);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| match c {
                0 => format!("{cell:<w$}", w = widths[c]),
                _ => format!("{cell:>w$}", w = widths[c]),
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// A time for `--since` or `?since=`, in UTC: `2024-05-01`, `2024-05-01T08:30`,
/// `2024-05-01T08:30:00Z`, or a span back from now: `7d`, `24h`, `30m`.
pub fn parse_since(text: &str) -> Result<i64> {
    let text = text.trim();
    let bad = || {
        anyhow::anyhow!(
            "{text:?} is not a time: use a UTC date (2024-05-01), date and time (2024-05-01T08:30) or a span back from now (7d, 24h, 30m)"
        )
    };
    if let Some(unit) = text.chars().last().filter(|c| "dhm".contains(*c)) {
        let n: i64 = text[..text.len() - 1].parse().map_err(|_| bad())?;
        let ms = match unit {
            'd' => 86_400_000,
            'h' => 3_600_000,
            _ => 60_000,
        };
        return Ok(now_ms() - n.checked_mul(ms).ok_or_else(bad)?);
    }
    let text = text.trim_end_matches('Z');
    let (date, time) = text.split_once(['T', ' ']).unwrap_or((text, "00:00"));
    let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| bad())?;
    let time = NaiveTime::parse_from_str(time, "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(time, "%H:%M"))
        .map_err(|_| bad())?;
    Ok(date.and_time(time).and_utc().timestamp_millis())
}

/// `2024-05-01 08:30` (UTC) for Unix ms.
pub fn format_ms(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms"),
        |t| t.format("%Y-%m-%d %H:%M").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_as_utc() {
        assert_eq!(parse_since("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(parse_since("2024-05-01").unwrap(), 1_714_521_600_000);
        assert_eq!(
            parse_since("2024-05-01T08:30:15Z").unwrap(),
            1_714_521_600_000 + (8 * 3600 + 30 * 60 + 15) * 1000
        );
        assert_eq!(
            format_ms(1_714_521_600_000 + 90 * 60_000),
            "2024-05-01 01:30"
        );
        assert_eq!(
            format_ms(parse_since("2000-02-29").unwrap()),
            "2000-02-29 00:00"
        );
        let week = now_ms() - parse_since("7d").unwrap();
        assert!((7 * 86_400_000..7 * 86_400_000 + 5_000).contains(&week));
        for bad in [
            "yesterday",
            "2024-13-01",
            "2024-05",
            "7w",
            "d",
            "2023-02-29",
            "2024-04-31",
            "2024-05-01T24:00",
        ] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lines_are_priced_by_their_local_share() {
        let config = CostConfig {
            usd_per_eur: 2.0,
            ..Default::default()
        };
        let mut line = CostLine::default();
        add(
            &mut line,
            &UsageRow {
                group: "a".into(),
                local: true,
                requests: 1,
                errors: 0,
                prompt_tokens: 1_000_000,
                completion_tokens: 1_000_000,
            },
        );
        add(
            &mut line,
            &UsageRow {
                group: "a".into(),
                local: false,
                requests: 1,
                errors: 0,
                prompt_tokens: 1_000_000,
                completion_tokens: 0,
            },
        );
        // €1 per million local tokens: €2 for these.
        price(&mut line, &config, Some(1e-6));
        assert!((line.local_cost_eur - 2.0).abs() < 1e-9);
        let gpt = &line.api_equivalent[0];
        // All tokens: 2M in × $10 + 1M out × $30 = $50.
        assert!((gpt.usd - 50.0).abs() < 1e-9);
        // Local tokens: $10 + $30 = $40 = €20, less €2.
        assert!((gpt.saving_eur - 18.0).abs() < 1e-9);
    }
}
