//! Sending e-mail over SMTP, and the rule that turns `smtp-url` into a connection.
//!
//! The rule, checked when the settings are read:
//!
//! - `smtps://[user:password@]host[:port]`: TLS from the first byte (port 465 by
//!   default).
//! - `smtp://user:password@host[:port]`: STARTTLS is required (port 587 by default); a
//!   server that does not offer it gets nothing, least of all the password.
//! - `smtp://host[:port]` without credentials: STARTTLS is required too, unless the host
//!   is a loopback address (`127.0.0.0/8`, `::1` or `localhost`). Then the connection
//!   stays plain (port 25 by default): that is a relay on this machine, which often
//!   has no certificate, and nothing leaves the machine unencrypted to reach it.
//!
//! Credentials are percent-decoded. Any path, query or other scheme is refused. This
//! module knows nothing about alerts: it sends a text to a list of addresses.

use std::net::IpAddr;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use percent_encoding::percent_decode_str;

/// Longest wait for the SMTP server at each step, so that a server that hangs delays
/// an alert, not the alert task for good.
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid smtp-url '{url}': {why}")]
    InvalidUrl { url: String, why: String },
    #[error("invalid e-mail address '{address}': {why}")]
    InvalidAddress { address: String, why: String },
    #[error("cannot build the message: {0}")]
    Message(String),
    #[error("SMTP server {server} did not take the message: {why}")]
    Send { server: String, why: String },
}

/// How the connection to the SMTP server is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// TLS from the first byte (`smtps://`).
    ImplicitTls,
    /// A plain connection that must be upgraded with STARTTLS before anything else.
    StartTls,
    /// No TLS at all: only for a relay on a loopback address without credentials.
    Plain,
}

/// A parsed `smtp-url`. Its `Debug` and [`SmtpSettings::describe`] never show the
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: Security,
    user: Option<String>,
    password: Option<String>,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl SmtpSettings {
    pub fn parse(text: &str) -> Result<SmtpSettings, MailError> {
        let invalid = |why: &str| MailError::InvalidUrl {
            url: redact(text),
            why: why.to_string(),
        };
        let url = url::Url::parse(text.trim()).map_err(|e| invalid(&e.to_string()))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("it names no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(invalid(
                "only smtp://[user:password@]host[:port] or smtps://… is understood",
            ));
        }
        let (user, password) = credentials(&url).map_err(|why| invalid(&why))?;

        let security = match url.scheme() {
            "smtps" => Security::ImplicitTls,
            "smtp" if user.is_none() && is_loopback(&host) => Security::Plain,
            "smtp" => Security::StartTls,
            other => {
                return Err(invalid(&format!(
                    "scheme '{other}' is neither smtp nor smtps"
                )))
            }
        };
        let port = url.port().unwrap_or(match security {
            Security::ImplicitTls => 465,
            Security::StartTls => 587,
            Security::Plain => 25,
        });
        Ok(SmtpSettings {
            host,
            port,
            security,
            user,
            password,
        })
    }

    /// The server for logs: scheme, user, host, port and protection, never the password.
    pub fn describe(&self) -> String {
        let scheme = match self.security {
            Security::ImplicitTls => "smtps",
            _ => "smtp",
        };
        let user = self
            .user
            .as_ref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let protection = match self.security {
            Security::ImplicitTls => "TLS",
            Security::StartTls => "STARTTLS required",
            Security::Plain => "no TLS, loopback relay",
        };
        format!(
            "{scheme}://{user}{}:{} ({protection})",
            self.host, self.port
        )
    }
}

fn credentials(url: &url::Url) -> Result<(Option<String>, Option<String>), String> {
    let decode = |text: &str| {
        percent_decode_str(text)
            .decode_utf8()
            .map(|t| t.into_owned())
            .map_err(|_| "the credentials are not UTF-8 once percent-decoded".to_string())
    };
    match (url.username(), url.password()) {
        ("", None) => Ok((None, None)),
        ("", Some(_)) => Err("it has a password but no user name".to_string()),
        (_, None) => Err("it has a user name but no password".to_string()),
        (user, Some(password)) => Ok((Some(decode(user)?), Some(decode(password)?))),
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The URL with its password replaced, for error messages.
fn redact(text: &str) -> String {
    match url::Url::parse(text.trim()) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => "(unreadable)".to_string(),
    }
}

/// The sender when `smtp-from` is not set: `herald@` the public URL's host when that is
/// a domain name, otherwise `herald@localhost`.
pub fn default_from(public_url: &str) -> String {
    let host = url::Url::parse(public_url)
        .ok()
        .and_then(|u| match u.host() {
            Some(url::Host::Domain(domain)) => Some(domain.to_string()),
            _ => None,
        });
    format!("Herald <herald@{}>", host.as_deref().unwrap_or("localhost"))
}

pub fn parse_mailbox(text: &str) -> Result<Mailbox, MailError> {
    text.trim()
        .parse::<Mailbox>()
        .map_err(|e| MailError::InvalidAddress {
            address: text.to_string(),
            why: e.to_string(),
        })
}

/// Sends plain-text e-mail through one SMTP server, a new connection per message.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    server: String,
}

impl Mailer {
    pub fn new(smtp: &SmtpSettings, from: &str) -> Result<Mailer, MailError> {
        let tls = |wrap: fn(TlsParameters) -> Tls| {
            TlsParameters::new(smtp.host.clone())
                .map(wrap)
                .map_err(|e| MailError::InvalidUrl {
                    url: smtp.describe(),
                    why: e.to_string(),
                })
        };
        let tls = match smtp.security {
            Security::ImplicitTls => tls(Tls::Wrapper)?,
            Security::StartTls => tls(Tls::Required)?,
            Security::Plain => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
            .port(smtp.port)
            .tls(tls)
            .timeout(Some(SMTP_TIMEOUT));
        if let (Some(user), Some(password)) = (&smtp.user, &smtp.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Mailer {
            transport: builder.build(),
            from: parse_mailbox(from)?,
            server: smtp.describe(),
        })
    }

    /// The server, for logs.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends one message to every address in `to`, in one SMTP transaction.
    pub async fn send(&self, to: &[String], subject: &str, body: String) -> Result<(), MailError> {
        // A Message-ID made from this host's name, as receiving servers expect one.
        let mut message = Message::builder()
            .message_id(None)
            .from(self.from.clone())
            .subject(subject)
            .header(ContentType::TEXT_PLAIN);
        for address in to {
            message = message.to(parse_mailbox(address)?);
        }
        let message = message
            .body(body)
            .map_err(|e| MailError::Message(e.to_string()))?;
        self.transport
            .send(message)
            .await
            .map_err(|e| MailError::Send {
                server: self.server.clone(),
                why: e.to_string(),
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security(url: &str) -> (Security, u16) {
        let s = SmtpSettings::parse(url).unwrap();
        (s.security, s.port)
    }

    #[test]
    fn the_scheme_credentials_and_host_decide_the_protection() {
        let cases = [
            ("smtps://mail.example.com", Security::ImplicitTls, 465),
            (
                "smtps://u:p@mail.example.com:2465",
                Security::ImplicitTls,
                2465,
            ),
            ("smtp://u:p@mail.example.com", Security::StartTls, 587),
            ("smtp://mail.example.com:25", Security::StartTls, 25),
            ("smtp://u:p@127.0.0.1:2525", Security::StartTls, 2525),
            ("smtp://127.0.0.1:2525", Security::Plain, 2525),
            ("smtp://127.8.9.10", Security::Plain, 25),
            ("smtp://[::1]:2525", Security::Plain, 2525),
            ("smtp://LocalHost", Security::Plain, 25),
        ];
        for (url, expected, port) in cases {
            assert_eq!(security(url), (expected, port), "{url}");
        }
    }

    #[test]
    fn credentials_are_percent_decoded_and_never_shown() {
        let s = SmtpSettings::parse("smtp://alerts%40example.com:p%3Ass@mail.example.com").unwrap();
        assert_eq!(s.user.as_deref(), Some("alerts@example.com"));
        assert_eq!(s.password.as_deref(), Some("p:ss"));
        let shown = format!("{} {s:?}", s.describe());
        assert!(
            !shown.contains("p:ss") && !shown.contains("p%3Ass"),
            "{shown}"
        );
    }

    #[test]
    fn other_shapes_are_refused_naming_the_url_without_its_password() {
        for url in [
            "http://mail.example.com",
            "smtp://",
            "smtp://u@mail.example.com",
            "smtp://:secret@mail.example.com",
            "smtp://mail.example.com/path",
            "smtp://mail.example.com?tls=none",
            "not a url",
        ] {
            let err = SmtpSettings::parse(url).unwrap_err().to_string();
            assert!(err.starts_with("invalid smtp-url"), "{url}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn the_default_sender_uses_the_public_host_name() {
        assert_eq!(
            default_from("https://herald.example.com/"),
            "Herald <herald@herald.example.com>"
        );
        assert_eq!(
            default_from("http://127.0.0.1:7070"),
            "Herald <herald@localhost>"
        );
        assert!(parse_mailbox(&default_from("http://127.0.0.1:7070")).is_ok());
    }
}
