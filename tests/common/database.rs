//! The store the tests run on. `HERALD_TEST_STORE=postgres` runs them on the local
//! PostgreSQL (`HERALD_TEST_POSTGRES_URL`, by default the server on 127.0.0.1:5432 as
//! user `postgres`), each test in a fresh database of its own that is dropped when the
//! test ends. Anything else, or nothing, runs them on SQLite in a temporary directory.

use sqlx::Connection;

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Every database the tests create has this prefix, so a leftover is easy to tell.
pub const PREFIX: &str = "herald_test_";

pub fn on_postgres() -> bool {
    std::env::var("HERALD_TEST_STORE").is_ok_and(|store| store == "postgres")
}

fn admin_url() -> String {
    std::env::var("HERALD_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string())
}

/// A database created for one test, dropped (with its connections) when this is.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        TestDatabase::create_on(&admin_url()).await
    }

    /// A new database on the server that `admin_url` reaches.
    pub async fn create_on(admin_url: &str) -> TestDatabase {
        let name = format!("{PREFIX}{}", ulid::Ulid::new().to_string().to_lowercase());
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|err| panic!("cannot reach PostgreSQL at {admin_url}: {err}"));
        sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        let mut url = url::Url::parse(admin_url).expect("admin URL parses");
        url.set_path(&name);
        TestDatabase {
            url: url.to_string(),
            name,
            admin_url: admin_url.to_string(),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which may not block on a future; a thread
        // with a runtime of its own does the dropping.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::Executor::execute(&mut admin, sql.as_str()).await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}
