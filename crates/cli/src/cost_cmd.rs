//! `verre cost`: tokens from the ledger, what they cost on local hardware and what they
//! would have cost at API list prices (verre-server's `cost` module does the sums).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use verre_server::cost::{self, CostQuery};
use verre_store::ledger::GroupBy;

#[derive(Args)]
pub struct CostArgs {
    /// From when, UTC: 2024-05-01, 2024-05-01T08:30, or back from now: 7d, 24h, 30m
    /// (default: the first request in the ledger).
    #[arg(long)]
    pub since: Option<String>,
    /// One line per key, model or backend.
    #[arg(long, value_enum)]
    pub by: Option<By>,
    /// The report as JSON (what `GET /v1/verre/usage` returns).
    #[arg(long)]
    pub json: bool,
    /// The verre.toml whose `[cost]` prices hardware and lists API prices (default:
    /// $VERRE_HOME/verre.toml, else ./verre.toml, when there is one). No backend need be
    /// reachable nor its API key set.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub db: crate::intake_cmd::DbArgs,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum By {
    Key,
    Model,
    Backend,
}

pub fn cost(args: CostArgs) -> Result<()> {
    let config = crate::config_file::load(args.config.as_deref())?
        .map(|c| c.cost)
        .unwrap_or_default();
    let since = args
        .since
        .as_deref()
        .map(cost::parse_since)
        .transpose()
        .context("--since")?;
    let query = CostQuery {
        since,
        by: args.by.map(|b| match b {
            By::Key => GroupBy::Key,
            By::Model => GroupBy::Model,
            By::Backend => GroupBy::Backend,
        }),
        api_key: None,
    };
    let url = args.db.url()?;
    let report = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async {
            let store = verre_store::Store::open(&url).await?;
            cost::report(&store, &config, &query).await
        })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", cost::render(&report));
    }
    Ok(())
}
