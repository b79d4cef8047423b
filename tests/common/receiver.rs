//! A scripted webhook receiver on loopback, written on raw TCP so that tests can make it
//! misbehave in ways a well-behaved HTTP server never would: stall after the headers,
//! stream forever, reset mid-reply.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// How the receiver answers one POST.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    /// A status with extra headers.
    WithHeaders(u16, Vec<(&'static str, String)>),
    /// Waits, then answers with the status.
    Delayed(Duration, u16),
    /// Reads the request and never answers.
    Hang,
    /// Sends the status line and headers, then nothing more.
    HeadersThenStall,
    /// Sends a chunked body that never ends.
    StreamForever,
    /// A 500 whose body is this many bytes.
    Huge(usize),
    /// Sends half a status line and closes the connection.
    CloseMidway,
    /// A 200 whose body is these bytes, as they are (NULs, invalid UTF-8), with a
    /// header `x-raw` whose value is not UTF-8 either.
    RawBody(Vec<u8>),
}

#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("webhook body is JSON")
    }
}

struct State {
    script: VecDeque<Reply>,
    default: Reply,
    head_status: u16,
    requests: Vec<Received>,
    body_bytes_sent: usize,
    /// POSTs being answered now, and the most there ever were at once.
    in_flight: usize,
    max_in_flight: usize,
    connections: usize,
}

pub struct Receiver {
    pub port: u16,
    pub url: String,
    state: Arc<Mutex<State>>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver::start_on(0, Reply::Status(200)).await
    }

    pub async fn answering(reply: Reply) -> Receiver {
        Receiver::start_on(0, reply).await
    }

    pub async fn start_on(port: u16, default: Reply) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("receiver binds");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            script: VecDeque::new(),
            default,
            head_status: 200,
            requests: Vec::new(),
            body_bytes_sent: 0,
            in_flight: 0,
            max_in_flight: 0,
            connections: 0,
        }));
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let (accept_state, accept_tasks) = (state.clone(), tasks.clone());
        tasks.lock().unwrap().spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = accept_state.clone();
                state.lock().unwrap().connections += 1;
                accept_tasks
                    .lock()
                    .unwrap()
                    .spawn(serve_connection(stream, state));
            }
        });
        Receiver {
            port,
            url: format!("http://127.0.0.1:{port}/hook"),
            state,
            tasks,
        }
    }

    /// The next POSTs get these replies, in order; then the default again.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    pub fn set_default(&self, reply: Reply) {
        self.state.lock().unwrap().default = reply;
    }

    pub fn set_head_status(&self, status: u16) {
        self.state.lock().unwrap().head_status = status;
    }

    pub fn posts(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect()
    }

    pub fn requests(&self) -> Vec<Received> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The most POSTs this receiver was ever answering at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }

    /// How many TCP connections were accepted, whether or not they carried a request.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    pub fn body_bytes_sent(&self) -> usize {
        self.state.lock().unwrap().body_bytes_sent
    }

    pub async fn wait_posts(&self, n: usize) -> Vec<Received> {
        for _ in 0..600 {
            let posts = self.posts();
            if posts.len() >= n {
                return posts;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("receiver got {} POSTs, expected {n}", self.posts().len());
    }

    /// Closes the port and every open connection.
    pub fn stop(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve_connection(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    // Without this, a reply written in two parts waits for a delayed ACK (about 40 ms).
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buffer).await {
        let is_post = request.method == "POST";
        let (reply, head_status) = {
            let mut s = state.lock().unwrap();
            s.requests.push(request);
            let reply = if is_post {
                s.script.pop_front().unwrap_or_else(|| s.default.clone())
            } else {
                Reply::Hang
            };
            (reply, s.head_status)
        };
        if !is_post {
            if !write_reply(&mut stream, head_status, &[], "").await {
                return;
            }
            continue;
        }
        {
            let mut s = state.lock().unwrap();
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
        }
        let open = answer(&mut stream, reply, &state).await;
        state.lock().unwrap().in_flight -= 1;
        if !open {
            return;
        }
    }
}

async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Received> {
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let total = head_end + 4 + length;
    while buffer.len() < total {
        let mut chunk = [0u8; 65536];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buffer[head_end + 4..total]).into_owned();
    buffer.drain(..total);
    Some(Received {
        method,
        path,
        headers,
        body,
        at: Instant::now(),
    })
}

/// Writes the reply; false when the connection must close.
async fn answer(stream: &mut TcpStream, reply: Reply, state: &Arc<Mutex<State>>) -> bool {
    match reply {
        Reply::Status(status) => write_reply(stream, status, &[], "{\"ok\":true}").await,
        Reply::WithHeaders(status, headers) => write_reply(stream, status, &headers, "{}").await,
        Reply::Delayed(wait, status) => {
            tokio::time::sleep(wait).await;
            write_reply(stream, status, &[], "{\"ok\":true}").await
        }
        Reply::Hang => {
            std::future::pending::<()>().await;
            false
        }
        Reply::HeadersThenStall => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
                .await;
            std::future::pending::<()>().await;
            false
        }
        Reply::StreamForever => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            loop {
                if stream.write_all(b"10\r\n").await.is_err() {
                    return false;
                }
                let _ = stream.write_all(&[b'x'; 16]).await;
                let _ = stream.write_all(b"\r\n").await;
                state.lock().unwrap().body_bytes_sent += 16;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Reply::Huge(size) => {
            let head =
                format!("HTTP/1.1 500 Internal Server Error\r\nContent-Length: {size}\r\n\r\n");
            if stream.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            let block = vec![b'e'; 64 * 1024];
            let mut sent = 0;
            while sent < size {
                let n = block.len().min(size - sent);
                if stream.write_all(&block[..n]).await.is_err() {
                    return false;
                }
                sent += n;
                state.lock().unwrap().body_bytes_sent += n;
            }
            true
        }
        Reply::RawBody(body) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
                body.len()
            );
            let odd_header = b"x-raw: caf\xe9\r\n\r\n";
            stream.write_all(head.as_bytes()).await.is_ok()
                && stream.write_all(odd_header).await.is_ok()
                && stream.write_all(&body).await.is_ok()
        }
        Reply::CloseMidway => {
            let _ = stream.write_all(b"HTTP/1.1 20").await;
            false
        }
    }
}

async fn write_reply(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &str,
) -> bool {
    let mut head = format!(
        "HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.is_ok()
        && stream.write_all(body.as_bytes()).await.is_ok()
}
