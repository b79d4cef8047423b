//! A host name that does not resolve, tested inside a network namespace of the test's
//! own so that the lookup cannot leave the machine: the namespace has only a loopback
//! interface, so the resolver's query fails at once.

mod common;

use std::process::Command;

use common::{eventually, Options, TestServer};
use serde_json::json;

#[test]
fn a_name_that_does_not_resolve_is_its_own_error_kind() {
    let outcome = std::thread::spawn(|| {
        // Threads and processes started from this thread inherit its namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) needs root: {}",
            std::io::Error::last_os_error()
        );
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip runs");
        assert!(up.success());

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            // SQLite only: the namespace has nothing but its own loopback, so the shared
            // PostgreSQL server is out of reach from here.
            let server = TestServer::start_with(Options {
                sqlite_only: true,
                ..Options::default()
            })
            .await;
            let endpoint = server
                .endpoint("http://no-such-host.invalid:9/hook", &["account.created"])
                .await;
            server.emit("account.created", json!(1), json!({})).await;
            eventually("an attempt", || async {
                server.deliveries(&endpoint).await[0]["attempt_count"] == 1
            })
            .await;
            server.only_delivery(&endpoint).await
        })
    })
    .join()
    .expect("the test thread finishes");

    assert_eq!(outcome["status"], "pending", "a DNS failure is retried");
    assert_eq!(outcome["attempts"][0]["error_kind"], "dns", "{outcome}");
    assert!(outcome["attempts"][0]["error"]
        .as_str()
        .unwrap()
        .contains("no-such-host.invalid"));
}
