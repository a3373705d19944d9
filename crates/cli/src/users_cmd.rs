//! `verre users add|list|remove`: the review UI's accounts, kept in verre's database.

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};

use crate::intake_cmd::{DbArgs, open_store, runtime};

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Add a reviewer (the password is asked for, or read from stdin).
    Add(AddArgs),
    /// List accounts: name, role, created.
    List {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        json: bool,
    },
    /// Remove an account and end its sessions.
    Remove {
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Role {
    /// Reviews messages: edits drafts and payloads, approves, rejects, re-runs stages.
    Reviewer,
    /// A reviewer who may also retry failed deliveries and re-enable endpoints.
    Admin,
}

#[derive(Args)]
pub struct AddArgs {
    pub name: String,
    #[arg(long, value_enum)]
    pub role: Role,
    /// Read the password from the first line of stdin instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

pub fn users(command: UsersCommand) -> Result<()> {
    let rt = runtime()?;
    match command {
        UsersCommand::Add(args) => {
            let password = read_password(args.password_stdin)?;
            let hash = verre_server::review::auth::hash_password(&password)?;
            let role = match args.role {
                Role::Reviewer => "reviewer",
                Role::Admin => "admin",
            };
            rt.block_on(async {
                let store = open_store(&args.db).await?;
                store.add_user(&args.name, &hash, role).await
            })
            .with_context(|| format!("adding user {:?}", args.name))?;
            eprintln!("verre users: added {} ({role})", args.name);
            Ok(())
        }
        UsersCommand::List { db, json } => {
            let users = rt.block_on(async { open_store(&db).await?.users().await })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                for u in users {
                    println!(
                        "{}\t{}\t{}",
                        u.name,
                        u.role,
                        verre_server::review::utc_time(Some(u.created_at))
                    );
                }
            }
            Ok(())
        }
        UsersCommand::Remove { name, db } => {
            let removed = rt.block_on(async { open_store(&db).await?.remove_user(&name).await })?;
            if !removed {
                bail!("there is no user {name:?} (see `verre users list`)");
            }
            eprintln!("verre users: removed {name} and ended their sessions");
            Ok(())
        }
    }
}

fn read_password(from_stdin: bool) -> Result<String> {
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        let password = line.trim_end_matches(['\r', '\n']).to_string();
        if password.is_empty() {
            bail!("no password on stdin");
        }
        return Ok(password);
    }
    let first = rpassword::prompt_password("Password: ").context("reading the password")?;
    let again = rpassword::prompt_password("Again: ").context("reading the password")?;
    if first != again {
        bail!("the two passwords differ");
    }
    Ok(first)
}
