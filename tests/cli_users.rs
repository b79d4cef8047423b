//! `herald user`, `herald token` and `herald sign-in` as a person runs them: the real
//! binary, passwords on standard input, against a real server.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, PASSWORD};

const BIN: &str = env!("CARGO_BIN_EXE_herald");

/// What one run of the CLI did.
struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `herald <args>` against `base`, with `stdin` as its standard input.
fn herald(base: &str, auth: Auth, args: &[&str], stdin: &str) -> Run {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("HERALD_URL", base)
        .env_remove("HERALD_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match auth {
        Auth::Token(token) => command.env("HERALD_TOKEN", token),
        Auth::DataDir(dir) => command.env("HERALD_DATA_DIR", dir),
    };
    let mut child = command.spawn().expect("herald runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    Run {
        ok: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    Token(&'a str),
    DataDir(&'a Path),
}

/// Runs the CLI on a blocking thread, so the in-process server keeps answering.
async fn cli(server: &TestServer, token: &str, args: &[&str], stdin: &str) -> Run {
    let (base, token) = (server.base.clone(), token.to_string());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        herald(&base, Auth::Token(&token), &args, &stdin)
    })
    .await
    .unwrap()
}

fn id_in(text: &str, prefix: &str) -> String {
    let start = text
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix} in {text}"));
    text[start..]
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn the_first_start_log_says_how_to_set_the_first_super_admin_and_that_works() {
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log_path = data.path().join("serve.log");
    let mut serve = Command::new(BIN)
        .arg("serve")
        .env("HERALD_DATA_DIR", data.path())
        .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "herald did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let initial = Auth::DataDir(data.path());

    let set_email = instruction(&log, "set_email=", " set_password=");
    let set_email = set_email.replace("you@example.com", "ops@example.com");
    let out = herald(&base, initial, &words(&set_email), "");
    assert!(
        out.ok && out.stdout.contains("email:    ops@example.com"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let set_password = instruction(&log, "set_password=", "\n");
    let out = herald(
        &base,
        initial,
        &words(&set_password),
        &format!("{PASSWORD}\n"),
    );
    assert!(
        out.ok && out.stdout.contains("password set"),
        "{}{}",
        out.stdout,
        out.stderr
    );

    let out = herald(
        &base,
        initial,
        &["sign-in", "ops@example.com"],
        &format!("{PASSWORD}\n"),
    );
    assert!(out.ok, "{}", out.stderr);
    let token = out.stdout.trim().to_string();
    assert!(token.starts_with("hrld_"), "{}", out.stdout);
    let out = herald(&base, Auth::Token(&token), &["user", "list"], "");
    assert!(
        out.ok && out.stdout.contains("super_admin ops@example.com"),
        "{}",
        out.stdout
    );

    serve.kill().unwrap();
    serve.wait().unwrap();
}

/// The text of a log field, from its name to the next field.
fn instruction(log: &str, field: &str, until: &str) -> String {
    let start = log
        .find(field)
        .unwrap_or_else(|| panic!("no {field} in the log:\n{log}"))
        + field.len();
    let rest = &log[start..];
    rest[..rest.find(until).unwrap_or(rest.len())]
        .trim()
        .to_string()
}

/// The arguments of a logged command line, without its leading `herald`.
fn words(command: &str) -> Vec<&str> {
    let mut words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words.remove(0), "herald", "{command}");
    words
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_added_listed_changed_and_removed_from_the_command_line() {
    let server = TestServer::start().await;
    let root = server.token.clone();
    let password = format!("{PASSWORD}\n");

    let add = [
        "user",
        "add",
        "ops@example.com",
        "--name",
        "Ops",
        "--super-admin",
    ];
    let out = cli(&server, &root, &add, &password).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("added user usr_"), "{}", out.stdout);
    assert!(
        out.stdout.contains("role:     super_admin"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("password: set"), "{}", out.stdout);
    assert!(!out.stdout.contains(PASSWORD));
    let add = ["user", "add", "dev@example.com", "--name", "Dev"];
    let dev = id_in(&cli(&server, &root, &add, &password).await.stdout, "usr_");

    let list = cli(&server, &root, &["user", "list"], "").await;
    assert!(
        list.stdout.contains("admin       dev@example.com"),
        "{}",
        list.stdout
    );
    assert!(
        list.stdout.contains("super_admin ops@example.com"),
        "{}",
        list.stdout
    );

    let promote = ["user", "update", "dev@example.com", "--role", "super_admin"];
    let out = cli(&server, &root, &promote, "").await;
    assert!(
        out.stdout.contains(&format!("changed user {dev}")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("role:     super_admin"));
    let passwd = ["user", "passwd", "dev@example.com"];
    let out = cli(&server, &root, &passwd, "a new long password\n").await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        server
            .sign_in("dev@example.com", "a new long password")
            .await
            .0,
        200
    );

    let out = cli(&server, &root, &["user", "remove", "dev@example.com"], "").await;
    assert!(
        out.ok && out.stdout.contains(&format!("removed user {dev}")),
        "{}",
        out.stderr
    );
    let list = cli(&server, &root, &["user", "list"], "").await;
    assert!(!list.stdout.contains("dev@example.com"), "{}", list.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_command_line_gets_the_api_code_and_exit_code_1() {
    let server = TestServer::start().await;
    let root = server.token.clone();
    let cases: [(&[&str], &str, &str); 3] = [
        (
            &["user", "add", "not-an-address", "--name", "X"],
            PASSWORD,
            "invalid_email",
        ),
        (
            &["user", "add", "x@example.com", "--name", "X"],
            "short",
            "invalid_password",
        ),
        (
            &["user", "remove", "ghost@example.com"],
            "",
            "no user has the e-mail",
        ),
    ];
    for (args, stdin, expected) in cases {
        let out = cli(&server, &root, args, &format!("{stdin}\n")).await;
        assert!(
            !out.ok && out.stderr.contains(expected),
            "{args:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("short\n"));
    }
    let out = cli(&server, &root, &["user", "remove", "usr_nope"], "").await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_made_on_the_command_line_is_printed_once_listed_and_revoked() {
    let server = TestServer::start().await;
    let (_, session) = server.user_with_token("dev@example.com", "admin").await;

    let created = cli(&server, &session, &["token", "create", "ci"], "").await;
    assert!(created.ok, "{}", created.stderr);
    let token = created.stdout.trim().to_string();
    assert!(
        token.starts_with("hrld_") && !token.contains('\n'),
        "{}",
        created.stdout
    );
    assert!(
        created.stderr.contains("shown only this once"),
        "{}",
        created.stderr
    );
    let id = id_in(&created.stderr, "tok_");

    let me = cli(&server, &token, &["user", "show", "me"], "").await;
    assert!(
        me.stdout.contains("email:    dev@example.com"),
        "{}",
        me.stdout
    );
    let list = cli(&server, &token, &["token", "list"], "").await;
    let line = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap()
        .to_string();
    assert!(
        line.contains(" ci ") && !line.contains("last_used=-"),
        "{line}"
    );
    assert!(!list.stdout.contains(&token));

    let revoked = cli(&server, &session, &["token", "revoke", &id], "").await;
    assert!(revoked.ok && revoked.stdout.contains(&format!("revoked token {id}")));
    let after = cli(&server, &token, &["token", "list"], "").await;
    assert!(
        !after.ok && after.stderr.contains("unauthorized"),
        "{}",
        after.stderr
    );

    let passwd = cli(
        &server,
        &session,
        &["user", "passwd"],
        "my own new password\n",
    )
    .await;
    assert!(
        passwd.ok,
        "an admin sets their own password: {}",
        passwd.stderr
    );
    let (status, _) = server
        .sign_in("dev@example.com", "my own new password")
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn client_commands_exit_with_the_documented_codes() {
    let server = TestServer::start().await;
    let token = server.token.clone();

    // A flag whose value must be JSON and is not: a usage mistake, 2.
    let run = cli(
        &server,
        &token,
        &[
            "emit",
            "account.created",
            "--object-id",
            "1",
            "--current",
            "notjson",
        ],
        "",
    )
    .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--current 'notjson'"), "{}", run.stderr);

    // An endpoint that does not exist: the server's 404, 1.
    let run = cli(
        &server,
        &token,
        &["deliveries", "--endpoint", "ep_nope"],
        "",
    )
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("ep_nope"), "{}", run.stderr);

    // Alerts are summarized, one line each, unless --json is given.
    let run = cli(&server, &token, &["alerts"], "").await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "no alerts");
    let run = cli(&server, &token, &["alerts", "--json"], "").await;
    let answer: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(answer["data"], serde_json::json!([]));

    // The catalog, every page of it, one line per type or all of it as JSON.
    let run = cli(&server, &token, &["event-types", "add", "zz.last"], "").await;
    assert!(run.ok, "{}", run.stderr);
    let run = cli(&server, &token, &["event-types", "list"], "").await;
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.lines().count() > 30, "{}", run.stdout);
    assert!(run.stdout.lines().last().unwrap().starts_with("zz.last"));
    let run = cli(&server, &token, &["event-types", "list", "--json"], "").await;
    let answer: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        answer["data"].as_array().unwrap().last().unwrap()["name"],
        "zz.last"
    );
    // A reader that stops reading (`| head`) ends the listing quietly, with success.
    let (base, token) = (server.base.clone(), token.to_string());
    let (status, stderr) = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(["event-types", "list"])
            .env("HERALD_URL", base)
            .env("HERALD_TOKEN", token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("herald runs");
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}
