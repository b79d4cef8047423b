//! A throwaway PostgreSQL cluster that a test starts, stops and starts again, to see
//! Herald lose its database and get it back. It lives in a temporary directory, listens
//! on loopback on a free port with its socket in that directory, and is stopped when
//! dropped; the shared server on 5432 is never touched.
//!
//! PostgreSQL refuses to run as root, so as root the commands run as the `postgres`
//! user (with `runuser`), in a directory that user owns.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the server binaries are when they are not on the PATH (Debian's layout).
const DEBIAN_BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Cluster {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Cluster {
    /// Makes a new cluster with `initdb` and starts it.
    pub fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("herald-pg-")
            .tempdir()
            .expect("temp dir");
        let cluster = Cluster {
            port: super::process::free_port(),
            dir,
        };
        if as_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(cluster.dir.path()));
        }
        run(cluster
            .command("initdb")
            .args([
                "--auth=trust",
                "--username=postgres",
                "--no-sync",
                "--encoding=UTF8",
            ])
            .arg("--pgdata")
            .arg(cluster.data()));
        cluster.resume();
        cluster
    }

    /// `postgres://` URL of the cluster's `postgres` database, for creating others.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the stopped cluster again and waits until it takes connections.
    pub fn resume(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run(self
            .command("pg_ctl")
            .arg("--pgdata")
            .arg(self.data())
            .arg("--log")
            .arg(self.dir.path().join("server.log"))
            .args(["--wait", "--options", &options, "start"]));
    }

    /// Stops the cluster the way an administrator restarting it would: new connections
    /// are refused and open ones are ended at once.
    pub fn stop(&self) {
        run(self
            .command("pg_ctl")
            .arg("--pgdata")
            .arg(self.data())
            .args(["--wait", "--mode", "fast", "stop"]));
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let program = binary(program);
        if !as_root() {
            return Command::new(program);
        }
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("--pgdata")
            .arg(self.data())
            .args(["--mode", "immediate", "stop"])
            .output();
    }
}

fn binary(program: &str) -> PathBuf {
    let debian = Path::new(DEBIAN_BIN).join(program);
    match debian.exists() {
        true => debian,
        false => PathBuf::from(program),
    }
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
