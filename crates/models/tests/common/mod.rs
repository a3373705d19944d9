//! Shared by the integration tests: a tiny GGUF, and a stand-in for the Hugging Face hub on
//! 127.0.0.1 that serves fixed responses and records what it was asked.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

/// A complete little GGUF: llama, `general.file_type` Q4_1, context 256, two Q4_1 matrices
/// and an F32 norm.
pub fn tiny_gguf() -> Vec<u8> {
    let device = Device::Cpu;
    let matrix = Tensor::zeros((4, 64), DType::F32, &device).unwrap();
    let q = QTensor::quantize(&matrix, GgmlDType::Q4_1).unwrap();
    let k = QTensor::quantize(&matrix, GgmlDType::Q4_1).unwrap();
    let norm = QTensor::quantize(
        &Tensor::ones(64, DType::F32, &device).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let arch = Value::String("llama".into());
    let context = Value::U32(256);
    let file_type = Value::U32(3);
    let metadata = [
        ("general.architecture", &arch),
        ("llama.context_length", &context),
        ("general.file_type", &file_type),
    ];
    let tensors = [
        ("blk.0.attn_q.weight", &q),
        ("blk.0.attn_k.weight", &k),
        ("output_norm.weight", &norm),
    ];
    let mut bytes = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut bytes, &metadata, &tensors).unwrap();
    bytes.into_inner()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One canned response.
#[derive(Clone, Default)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send only this many body bytes (Content-Length still says the full length), then close.
    pub cut_body_at: Option<usize>,
    /// Answer 401 unless the request carries `Authorization: Bearer TOKEN`.
    pub require_token: Option<String>,
}

impl Reply {
    pub fn ok(body: Vec<u8>) -> Self {
        Reply {
            status: 200,
            body,
            ..Reply::default()
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// What the stand-in was asked.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub path: String,
    pub authorization: Option<String>,
}

/// The stand-in server; stops when dropped.
pub struct StandIn {
    pub base_url: String,
    port: u16,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StandIn {
    /// Serves `routes` (path -> reply); any other path gets a 404 like the hub's.
    pub fn start(routes: HashMap<String, Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        serve_one(stream, &routes, &seen);
                    }
                }
            })
        };
        StandIn {
            base_url: format!("http://127.0.0.1:{port}"),
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_one(
    mut stream: TcpStream,
    routes: &HashMap<String, Reply>,
    seen: &Mutex<Vec<SeenRequest>>,
) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.lines();
    let path = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    let authorization = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value.trim().to_string());
    seen.lock().unwrap().push(SeenRequest {
        path: path.clone(),
        authorization: authorization.clone(),
    });

    let not_found = Reply {
        status: 404,
        body: b"Entry not found".to_vec(),
        ..Reply::default()
    }
    .header("X-Error-Code", "EntryNotFound");
    let unauthorized = Reply {
        status: 401,
        body: b"Invalid credentials".to_vec(),
        ..Reply::default()
    };
    let mut reply = routes.get(&path).unwrap_or(&not_found);
    if let Some(token) = &reply.require_token
        && authorization.as_deref() != Some(&format!("Bearer {token}"))
    {
        reply = &unauthorized;
    }

    let reason = match reply.status {
        200 => "OK",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Other",
    };
    let mut response = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    let body = &reply.body[..reply.cut_body_at.unwrap_or(reply.body.len())];
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}
