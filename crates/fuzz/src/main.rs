//! `verre-fuzz [--seconds N] [--execs N] [--seed N] [--root DIR] [--memory-mib N]
//! [--timeout-ms N] [--list] [--show-classes] [--replay TARGET FILE] [TARGET...]`: fuzz the named targets (all without a name),
//! one after the other, and print executions per target. `scripts/fuzz.sh` runs each target
//! in its own process, so that one that dies does not stop the others.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use verre_fuzz::TARGETS;
use verre_fuzz::run::{Options, limit_memory, run};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        duration: Duration::from_secs(10),
        max_execs: u64::MAX,
        seed: 1,
        root: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz")),
        exec_timeout: Duration::from_secs(20),
    };
    let mut memory_mib = 2048u64;
    let mut names = Vec::new();
    let mut show_classes = false;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<String> {
            args.next().with_context(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            // The mime-child target runs this binary as the mail parser's child.
            verre_intake::isolation::SUBCOMMAND => {
                return verre_intake::isolation::serve_child(&value("the mode")?);
            }
            "--seconds" => {
                options.duration = Duration::from_secs_f64(value(&arg)?.parse()?);
            }
            "--execs" => options.max_execs = value(&arg)?.parse()?,
            "--seed" => options.seed = value(&arg)?.parse()?,
            "--root" => options.root = PathBuf::from(value(&arg)?),
            "--memory-mib" => memory_mib = value(&arg)?.parse()?,
            "--timeout-ms" => {
                options.exec_timeout = Duration::from_millis(value(&arg)?.parse()?);
            }
            // Run one saved input through a target: `--replay TARGET FILE`.
            "--replay" => {
                let name = value(&arg)?;
                let file = PathBuf::from(value(&arg)?);
                let target = TARGETS
                    .iter()
                    .find(|t| t.name == name)
                    .with_context(|| format!("no target {name:?}"))?;
                let input =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                match verre_fuzz::run::run_one(target, &input) {
                    Ok(outcome) => println!("{}: {outcome}", file.display()),
                    Err(panic) => bail!("{}: panic: {panic}", file.display()),
                }
                return Ok(());
            }
            "--show-classes" => show_classes = true,
            "--list" => {
                for t in TARGETS {
                    println!("{}\t{}", t.name, t.about);
                }
                return Ok(());
            }
            "-h" | "--help" => {
                println!(
                    "verre-fuzz [--seconds N] [--execs N] [--seed N] [--root DIR] [--memory-mib N] [--timeout-ms N] [--list] [--show-classes] [--replay TARGET FILE] [TARGET...]"
                );
                return Ok(());
            }
            name if !name.starts_with('-') => names.push(name.to_string()),
            other => bail!("unknown option {other}"),
        }
    }
    limit_memory(memory_mib << 20)?;
    let chosen: Vec<_> = if names.is_empty() {
        TARGETS.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                TARGETS
                    .iter()
                    .find(|t| t.name == n)
                    .with_context(|| format!("no target {n:?} (--list names them)"))
            })
            .collect::<Result<_>>()?
    };
    let mut panicked = false;
    for target in chosen {
        let stats = run(target, &options)?;
        println!("{}", stats.line(target.name));
        if show_classes {
            for class in &stats.class_names {
                println!("  class: {class}");
            }
        }
        for (path, why) in &stats.panics {
            println!("  panic: {why}\n    input: {}", path.display());
        }
        panicked |= !stats.panics.is_empty();
    }
    if panicked {
        bail!(
            "panics found: each input is saved; add it to fuzz/regressions/<target>/ with the fix"
        );
    }
    Ok(())
}
