//! `herald user`, `herald token` and `herald sign-in`: clients of the users and tokens
//! API. Passwords are asked for on the terminal without echo, or read as one line from
//! standard input when it is not a terminal (for scripts); they never go on the command
//! line, where other users of the machine could read them.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use super::client::Client;
use super::{print_json, text};

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user; asks for the password, or reads it from standard input
    Add {
        /// The user's e-mail address, with which they sign in
        email: String,
        /// The user's name
        #[arg(long)]
        name: String,
        /// Make a super admin (manages users, gets alert e-mail) instead of an admin
        #[arg(long)]
        super_admin: bool,
    },
    /// List users (super admins only)
    List,
    /// Show a user: an id, an e-mail, or `me`
    Show { user: String },
    /// Change a user's e-mail, name or role; only the given ones change
    Update {
        /// An id, an e-mail, or `me`
        user: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// super_admin or admin
        #[arg(long)]
        role: Option<String>,
    },
    /// Set a password: your own, or (for super admins) another user's
    Passwd {
        /// An id, an e-mail, or `me`
        #[arg(default_value = "me")]
        user: String,
    },
    /// Remove a user and their tokens
    Remove { user: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a personal API token; it is printed this once
    Create { name: String },
    /// List your tokens with their last-used times
    List,
    /// Revoke a token at once
    Revoke { id: String },
}

pub async fn user(command: UserCommand, c: &Client) -> anyhow::Result<ExitCode> {
    match command {
        UserCommand::Add {
            email,
            name,
            super_admin,
        } => {
            let password = read_password("Password for the new user: ", true)?;
            let role = if super_admin { "super_admin" } else { "admin" };
            let body = json!({"email": email, "name": name, "password": password, "role": role});
            let user = c.call(Method::POST, "/users", Some(&body)).await?;
            print_user(c, "added user", &user);
        }
        UserCommand::List => list_users(c).await?,
        UserCommand::Show { user } => {
            let id = resolve(c, &user).await?;
            let user = c.call(Method::GET, &format!("/users/{id}"), None).await?;
            print_user(c, "user", &user);
        }
        UserCommand::Update {
            user,
            email,
            name,
            role,
        } => {
            let id = resolve(c, &user).await?;
            let body = json!({"email": email, "name": name, "role": role});
            let user = c
                .call(
                    Method::PATCH,
                    &format!("/users/{id}"),
                    Some(&without_nulls(body)),
                )
                .await?;
            print_user(c, "changed user", &user);
        }
        UserCommand::Passwd { user } => {
            let id = resolve(c, &user).await?;
            let password = read_password("New password: ", true)?;
            let body = json!({"password": password});
            let user = c
                .call(Method::PATCH, &format!("/users/{id}"), Some(&body))
                .await?;
            out!("password set for user {}", text(&user["id"]));
        }
        UserCommand::Remove { user } => {
            let id = resolve(c, &user).await?;
            c.call(Method::DELETE, &format!("/users/{id}"), None)
                .await?;
            out!("removed user {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list_users(c: &Client) -> anyhow::Result<()> {
    let users = all_users(c).await?;
    if c.json {
        print_json(&Value::Array(users));
        return Ok(());
    }
    for u in &users {
        out!(
            "{}  {:<11} {:<32} {}",
            text(&u["id"]),
            text(&u["role"]),
            text(&u["email"]),
            text(&u["name"])
        );
    }
    Ok(())
}

async fn all_users(c: &Client) -> anyhow::Result<Vec<Value>> {
    super::all_pages(c, "/users").await
}

/// A user's id from what was typed: an e-mail is looked up, anything else is an id.
async fn resolve(c: &Client, user: &str) -> anyhow::Result<String> {
    if !user.contains('@') {
        return Ok(user.to_string());
    }
    let wanted = user.trim().to_lowercase();
    let users = all_users(c).await?;
    let found = users.iter().find(|u| u["email"].as_str() == Some(&wanted));
    match found {
        Some(u) => Ok(text(&u["id"])),
        None => bail!("no user has the e-mail '{user}'"),
    }
}

fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    }
}

fn print_user(c: &Client, what: &str, u: &Value) {
    if c.json {
        return print_json(u);
    }
    out!("{what} {}", text(&u["id"]));
    out!("email:    {}", text(&u["email"]));
    out!("name:     {}", text(&u["name"]));
    out!("role:     {}", text(&u["role"]));
    out!(
        "password: {}",
        if u["has_password"] == json!(true) {
            "set"
        } else {
            "not set"
        }
    );
}

pub async fn token(command: TokenCommand, c: &Client) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create { name } => {
            let body = json!({"name": name});
            let token = c.call(Method::POST, "/tokens", Some(&body)).await?;
            print_new_token(c, &token, "created token");
        }
        TokenCommand::List => {
            let list = c.call(Method::GET, "/tokens?limit=250", None).await?;
            if c.json {
                print_json(&list);
                return Ok(ExitCode::SUCCESS);
            }
            for t in list["data"].as_array().into_iter().flatten() {
                out!(
                    "{}  {:<24} created={} last_used={} expires={}",
                    text(&t["id"]),
                    text(&t["name"]),
                    text(&t["created_at"]),
                    text(&t["last_used_at"]),
                    text(&t["expires_at"])
                );
            }
        }
        TokenCommand::Revoke { id } => {
            c.call(Method::DELETE, &format!("/tokens/{id}"), None)
                .await?;
            out!("revoked token {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn sign_in(email: &str, c: &Client) -> anyhow::Result<ExitCode> {
    let password = read_password("Password: ", false)?;
    let body = json!({"email": email, "password": password});
    let answer = c.call(Method::POST, "/sign-in", Some(&body)).await?;
    print_new_token(c, &answer, "signed in; token");
    Ok(ExitCode::SUCCESS)
}

/// The token alone on standard output, so `HERALD_TOKEN=$(herald token create ci)`
/// works; what it is goes to standard error.
fn print_new_token(c: &Client, token: &Value, what: &str) {
    if c.json {
        return print_json(token);
    }
    out!("{}", text(&token["token"]));
    let expires = match token["expires_at"].as_str() {
        Some(at) => format!("; it expires at {at}"),
        None => String::new(),
    };
    eprintln!(
        "{what} {} '{}' is shown only this once{expires}",
        text(&token["id"]),
        text(&token["name"])
    );
}

/// A password from the terminal (asked twice when `confirm`) or one line of stdin.
fn read_password(prompt: &str, confirm: bool) -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let password = rpassword::prompt_password(prompt).context("cannot read the password")?;
    if confirm {
        let again =
            rpassword::prompt_password("Once more: ").context("cannot read the password")?;
        if again != password {
            bail!("the two passwords differ");
        }
    }
    Ok(password)
}
