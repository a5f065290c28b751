//! The service example (`examples/service.rs`) as a client outside this
//! repository sees it: the real binary started on loopback, every endpoint's
//! success and failure cases, real PNG and JPEG files, a decompression bomb,
//! a truncated file, a 200 MB body, QR codes read back by a decoder, PDF
//! text extracted by a parser, the metrics, readiness, and SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Cursor, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::http::{exchange, get, post, read_response};
use common::png::with_dimensions;
use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb, Rgba};

/// The service binary, built by `cargo test` with the example's features.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join("examples").join("service");
    assert!(
        path.exists(),
        "{} is missing: run through `cargo test --all-features`",
        path.display()
    );
    path
}

/// A running service on an ephemeral loopback port; killed on drop.
struct Service {
    child: Child,
    addr: SocketAddr,
}

impl Service {
    fn start(args: &[&str]) -> Service {
        let mut child = Command::new(binary())
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Service { child, addr }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn photo(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(ImageBuffer::from_fn(width, height, |x, y| {
        Rgb([(x * 3) as u8, (y * 5) as u8, (x ^ y) as u8])
    }))
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    image.write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

fn png_of(response: &common::http::Response) -> DynamicImage {
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("image/png"));
    image::load_from_memory_with_format(&response.body, ImageFormat::Png).unwrap()
}

/// Error answers are one plain-text line.
fn assert_error(response: &common::http::Response, status: u16) {
    assert_eq!(response.status, status, "{}", response.text());
    let text = response.text();
    assert!(
        text.ends_with('\n') && text.trim_end().lines().count() == 1,
        "{text:?}"
    );
}

#[test]
fn thumbnails_of_png_jpeg_and_16_bit_png_keep_the_aspect_ratio() {
    let service = Service::start(&[]);
    let rgba16 = DynamicImage::ImageRgba16(ImageBuffer::from_fn(400, 300, |x, y| {
        Rgba([x as u16 * 160, y as u16 * 200, 9000, 65535])
    }));
    let cases = [
        (
            encode(&photo(640, 480), ImageFormat::Png),
            "/thumbnail?width=200",
            (200, 150),
        ),
        (
            encode(&photo(640, 480), ImageFormat::Jpeg),
            "/thumbnail?width=64",
            (64, 48),
        ),
        (encode(&rgba16, ImageFormat::Png), "/thumbnail", (128, 96)),
        (
            encode(&photo(300, 1000), ImageFormat::Png),
            "/thumbnail?width=30",
            (30, 100),
        ),
    ];
    for (file, path, size) in cases {
        let thumb = png_of(&post(service.addr, path, &file));
        assert_eq!((thumb.width(), thumb.height()), size, "{path}");
    }
}

#[test]
fn bad_uploads_get_400_413_and_422() {
    let service = Service::start(&[]);
    let addr = service.addr;
    assert_error(&post(addr, "/thumbnail", b""), 400);
    assert_error(&post(addr, "/thumbnail?width=0", b"x"), 400);
    assert_error(&post(addr, "/thumbnail?width=many", b"x"), 400);
    // Not an image, a truncated PNG, a truncated JPEG.
    assert_error(&post(addr, "/thumbnail", b"definitely not an image"), 422);
    let png = encode(&photo(640, 480), ImageFormat::Png);
    assert_error(&post(addr, "/thumbnail", &png[..png.len() / 2]), 422);
    assert_error(&post(addr, "/thumbnail", &png[..40]), 422);
    let jpeg = encode(&photo(640, 480), ImageFormat::Jpeg);
    let response = post(addr, "/thumbnail", &jpeg[..jpeg.len() / 3]);
    assert_error(&response, 422);
    assert!(response.text().contains("truncated"), "{}", response.text());
    // A decompression bomb: a small PNG whose header claims 60 000 x 60 000.
    let bomb = with_dimensions(&encode(&photo(32, 32), ImageFormat::Png), 60_000, 60_000);
    let response = post(addr, "/thumbnail", &bomb);
    assert_error(&response, 422);
    assert!(response.text().contains("too large"), "{}", response.text());
}

#[test]
fn a_200_mb_body_is_refused_declared_or_not_and_never_read_past_the_limit() {
    let service = Service::start(&[]);
    // Declared: refused from the headers, not a byte of the body sent.
    let head = "POST /thumbnail HTTP/1.1\r\nhost: t\r\ncontent-length: 200000000\r\nconnection: close\r\n\r\n";
    assert_error(&exchange(service.addr, head, b""), 413);
    // Not declared: 200 MB sent chunked; the service stops reading at the
    // limit (32 MiB), answers 413 and closes, so the client cannot push
    // much more than the limit plus the sockets' buffers.
    let mut conn = TcpStream::connect(service.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    conn.write_all(
        b"POST /thumbnail HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    let piece = vec![7u8; 1 << 20];
    let mut sent = 0usize;
    for _ in 0..200 {
        let frame = [format!("{:x}\r\n", piece.len()).as_bytes(), &piece, b"\r\n"].concat();
        if conn.write_all(&frame).is_err() {
            break;
        }
        sent += piece.len();
    }
    let response = read_response(&mut conn);
    assert_error(&response, 413);
    assert!(sent < 100 << 20, "the client could push {sent} bytes");
    // A smaller --max-body applies to every endpoint.
    let small = Service::start(&["--max-body", "1000"]);
    assert_error(&post(small.addr, "/pdf", &[b'a'; 1001]), 413);
    assert_eq!(post(small.addr, "/pdf", &[b'a'; 1000]).status, 200);
}

#[test]
fn qr_codes_decode_back_to_their_text() {
    let service = Service::start(&[]);
    let long: String = "tierpool ".repeat(200);
    for text in ["https://example.org/a?b=c", "grüße, 世界 🦀", &long[..1800]] {
        let qr = png_of(&post(service.addr, "/qr", text.as_bytes())).to_luma8();
        let mut prepared = rqrr::PreparedImage::prepare(qr);
        let grids = prepared.detect_grids();
        assert_eq!(grids.len(), 1);
        let (_, content) = grids[0].decode().unwrap();
        assert_eq!(content, text);
    }
    assert_error(&post(service.addr, "/qr", &[b'x'; 2049]), 413);
    assert_eq!(post(service.addr, "/qr", &[b'x'; 2048]).status, 200);
    assert_error(&post(service.addr, "/qr", b"\xff\xfe not utf-8"), 422);
    assert_error(&post(service.addr, "/qr", b""), 400);
}

#[test]
fn pdfs_hold_the_text_and_paginate() {
    let service = Service::start(&[]);
    let short = "Invoice 2026-12-01\nTotal: 42 EUR (café included)";
    let response = post(service.addr, "/pdf", short.as_bytes());
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/pdf"));
    let doc = lopdf::Document::load_mem(&response.body).unwrap();
    let pages: Vec<u32> = doc.get_pages().keys().copied().collect();
    assert_eq!(pages.len(), 1);
    let text = doc.extract_text(&pages).unwrap();
    for word in ["Invoice", "2026-12-01", "Total:", "42", "EUR", "café"] {
        assert!(text.contains(word), "{word} missing from {text:?}");
    }
    // 300 numbered lines: five pages, the last line on the last page.
    let long: String = (1..=300).map(|i| format!("line number {i}\n")).collect();
    let response = post(service.addr, "/pdf", long.as_bytes());
    let doc = lopdf::Document::load_mem(&response.body).unwrap();
    let pages: Vec<u32> = doc.get_pages().keys().copied().collect();
    assert_eq!(pages.len(), 5);
    let last = doc.extract_text(&pages[4..]).unwrap();
    assert!(last.contains("line number 300"), "{last:?}");
    assert!(!last.contains("line number 280\n"), "{last:?}");
    assert_error(&post(service.addr, "/pdf", b"\xc3\x28"), 422);
    assert_error(&post(service.addr, "/pdf", b""), 400);
}

#[test]
fn metrics_readiness_and_sigterm() {
    let mut service = Service::start(&[]);
    let png = encode(&photo(640, 480), ImageFormat::Png);
    png_of(&post(service.addr, "/thumbnail", &png));
    let metrics = get(service.addr, "/metrics");
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for series in [
        "tierpool_in_use_bytes{pool=\"service\"}",
        "tierpool_retained_bytes{pool=\"service\"}",
        "tierpool_pressure{pool=\"service\"}",
        "tierpool_memory_limit_bytes{pool=\"service\"}",
        "tierpool_misses_total{pool=\"service\",class=",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    assert_eq!(get(service.addr, "/ready").status, 200);
    assert_eq!(get(service.addr, "/live").status, 200);

    // A request in flight when SIGTERM arrives is finished, then the
    // service exits 0.
    let mut conn = TcpStream::connect(service.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let head = format!(
        "POST /thumbnail HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        png.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(&png[..1000]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = service.child.id() as i32;
    // SAFETY: `kill` has no memory preconditions; the pid is our child's.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    std::thread::sleep(Duration::from_millis(200));
    conn.write_all(&png[1000..]).unwrap();
    let thumb = png_of(&read_response(&mut conn));
    assert_eq!(thumb.width(), 128);
    let status = service.terminate_wait();
    assert_eq!(status.code(), Some(0));
    // And it no longer accepts.
    assert!(TcpStream::connect(service.addr).is_err());
}

#[test]
fn without_the_pool_the_bytes_are_the_same() {
    let pooled = Service::start(&[]);
    let plain = Service::start(&["--no-pool"]);
    let jpeg = encode(&photo(500, 400), ImageFormat::Jpeg);
    for (path, body) in [
        ("/thumbnail?width=100", &jpeg[..]),
        ("/qr", b"same bytes".as_slice()),
        ("/pdf", b"same pages".as_slice()),
    ] {
        let a = post(pooled.addr, path, body);
        let b = post(plain.addr, path, body);
        assert_eq!(a.status, 200, "{path}: {}", a.text());
        assert_eq!(a.body, b.body, "{path}");
    }
    assert_error(&post(plain.addr, "/thumbnail", b"garbage"), 422);
    let head = "POST /qr HTTP/1.1\r\nhost: t\r\ncontent-length: 5000\r\nconnection: close\r\n\r\n";
    assert_error(&exchange(plain.addr, head, b""), 413);
}

impl Service {
    /// Waits for the process after a signal was sent.
    fn terminate_wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

#[test]
fn under_critical_pressure_requests_get_503_with_retry_after_and_the_service_recovers() {
    // The memory read from a file: critical, then back to normal.
    let dir = std::env::temp_dir().join(format!("tierpool-service-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("memory");
    std::fs::write(&file, "limit 1000000000\nworking_set 950000000\n").unwrap();
    let service = Service::start(&[
        "--memory-file",
        file.to_str().unwrap(),
        "--queue-timeout",
        "0.3",
    ]);
    let addr = service.addr;
    let jpeg = encode(&photo(640, 480), ImageFormat::Jpeg);
    // A sample (100 ms) sees the pressure.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(addr, "/ready").status, 503);
    assert_eq!(get(addr, "/live").status, 200);
    let response = post(addr, "/thumbnail", &jpeg);
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.header("retry-after"), Some("1"));
    // A large upload refused before it is read is drained, not reset.
    let big = vec![0u8; 8 << 20];
    let response = post(addr, "/pdf", &big);
    assert_eq!(response.status, 503);
    // Memory back: ready and serving again.
    std::fs::write(&file, "limit 1000000000\nworking_set 100000000\n").unwrap();
    let start = std::time::Instant::now();
    while get(addr, "/ready").status != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never ready again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(post(addr, "/thumbnail", &jpeg).status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}
