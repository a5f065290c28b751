//! HTTP bodies (feature `http-body`): request bodies in with a limit and the
//! declared length as the hint, pooled output out without a copy, in memory
//! and through a real axum server on loopback.

mod common;

use std::convert::Infallible;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::body::Body as AxumBody;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, StreamBody};
use tierpool::BodyError;
use tierpool::{Error, Pool};

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A body of `frames` frames of `frame` bytes each, declaring `declared`
/// (or nothing), that counts the frames polled and can fail after some.
struct TestBody {
    frame: usize,
    frames: usize,
    declared: Option<u64>,
    fail_after: Option<usize>,
    polled: Arc<AtomicUsize>,
}

impl TestBody {
    fn new(frame: usize, frames: usize) -> TestBody {
        TestBody {
            frame,
            frames,
            declared: None,
            fail_after: None,
            polled: Arc::default(),
        }
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let n = self.polled.fetch_add(1, Ordering::Relaxed);
        if self.fail_after == Some(n) {
            return Poll::Ready(Some(Err(std::io::Error::other("connection reset"))));
        }
        if n >= self.frames {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![
            n as u8;
            self.frame
        ])))))
    }

    fn size_hint(&self) -> SizeHint {
        match self.declared {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[test]
fn a_declared_length_lands_in_one_chunk() {
    let pool = Pool::new();
    let body = Full::new(Bytes::from(data(300_000)));
    let chunks = block_on(pool.read_body(body, 1 << 20)).unwrap();
    assert_eq!(chunks.iter().count(), 1);
    assert_eq!(chunks.to_vec(), data(300_000));
    let a = pool.stats().adapters;
    assert_eq!(
        (a.reads, a.bytes, a.errors, a.too_large),
        (1, 300_000, 0, 0)
    );
}

#[test]
fn frames_without_a_length_are_gathered_in_order() {
    let pool = Pool::new();
    let chunks = block_on(pool.read_body(TestBody::new(10_000, 50), usize::MAX)).unwrap();
    assert_eq!(chunks.len(), 500_000);
    let expected: Vec<u8> = (0..50u8).flat_map(|n| vec![n; 10_000]).collect();
    assert_eq!(chunks.to_vec(), expected);
    drop(chunks);
    assert_eq!(pool.stats().in_use_bytes, 0);
}

#[test]
fn an_oversized_declared_length_is_refused_before_reading() {
    let pool = Pool::new();
    let mut body = TestBody::new(1000, 10);
    body.declared = Some(200 << 20);
    let polled = body.polled.clone();
    let err = block_on(pool.read_body(body, 1 << 20)).unwrap_err();
    assert!(err.is_too_large());
    assert_eq!(err.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
    assert!(matches!(
        err,
        BodyError::Pool(Error::TooLarge {
            limit: 1_048_576,
            declared: Some(209_715_200)
        })
    ));
    assert_eq!(polled.load(Ordering::Relaxed), 0, "not a byte read");
    let stats = pool.stats();
    assert_eq!(
        stats.in_use_bytes + stats.retained_bytes,
        0,
        "no chunk taken"
    );
    assert_eq!((stats.adapters.too_large, stats.adapters.errors), (1, 0));
}

#[test]
fn an_undeclared_body_stops_at_the_first_frame_past_the_limit() {
    let pool = Pool::new();
    let body = TestBody::new(64 << 10, 10_000); // 640 MB if read to the end
    let polled = body.polled.clone();
    let err = block_on(pool.read_body(body, 1 << 20)).unwrap_err();
    assert!(err.is_too_large(), "{err}");
    assert_eq!(
        polled.load(Ordering::Relaxed),
        17,
        "16 frames fit, the 17th passes"
    );
    assert_eq!(pool.stats().in_use_bytes, 0);
    // A false declared length (smaller than the body) is caught the same way.
    let mut body = TestBody::new(64 << 10, 10_000);
    body.declared = Some(1000);
    assert!(
        block_on(pool.read_body(body, 1 << 20))
            .unwrap_err()
            .is_too_large()
    );
    // Exactly at the limit is fine.
    let chunks = block_on(pool.read_body(TestBody::new(64 << 10, 16), 1 << 20)).unwrap();
    assert_eq!(chunks.len(), 1 << 20);
}

#[test]
fn a_failing_body_is_a_body_error_and_frees_everything() {
    let pool = Pool::new();
    let mut body = TestBody::new(100_000, 10);
    body.fail_after = Some(3);
    let err = block_on(pool.read_body(body, usize::MAX)).unwrap_err();
    assert!(matches!(&err, BodyError::Body(e) if e.to_string() == "connection reset"));
    assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
    assert!(!err.is_too_large());
    let stats = pool.stats();
    assert_eq!(stats.in_use_bytes, 0);
    assert_eq!((stats.adapters.errors, stats.adapters.too_large), (1, 0));
}

#[test]
fn labelled_body_reads_learn_their_size() {
    let pool = Pool::new();
    let label = pool.label("upload");
    let uploads = tierpool::ReadOptions::new().label(&label);
    for _ in 0..10 {
        let chunks = block_on(pool.read_body_with(TestBody::new(30_000, 10), &uploads)).unwrap();
        assert_eq!(chunks.len(), 300_000);
    }
    assert!(label.first_chunk() >= 300_000);
    // Learned: the next undeclared body of that size lands in one chunk.
    let chunks = block_on(pool.read_body_with(TestBody::new(30_000, 10), &uploads)).unwrap();
    assert_eq!(chunks.iter().count(), 1);
    let stats = pool.stats();
    assert_eq!(stats.labels[0].activity.reads, 11);
    assert_eq!(stats.labels[0].max, 300_000);
}

#[test]
fn chunks_go_out_as_a_body_without_a_copy() {
    let pool = Pool::new();
    let mut chunks = pool.read_to_end(&data(200_000)[..]).unwrap();
    let pointers: Vec<*const u8> = chunks.iter().map(<[u8]>::as_ptr).collect();
    std::io::Seek::seek(&mut chunks, std::io::SeekFrom::Start(20_000)).unwrap();
    let body = chunks.into_body();
    assert_eq!(Body::size_hint(&body).exact(), Some(180_000));
    let mut body = body;
    let first = block_on(body.frame())
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    // The cursor was inside the second chunk (16 KiB, then 32 KiB): the
    // piece is that chunk's memory, sliced, not a copy.
    assert_eq!(first.as_ptr(), pointers[1].wrapping_add(20_000 - 16_384));
    let rest = block_on(body.collect()).unwrap().to_bytes();
    let mut all = first.to_vec();
    all.extend_from_slice(&rest);
    assert_eq!(all, &data(200_000)[20_000..]);
    drop((first, rest));
    assert_eq!(pool.stats().in_use_bytes, 0);

    // A writer's output, as a stream of `Bytes`.
    let mut out = pool.writer();
    out.write_all(&data(100_000)).unwrap();
    let stream = out.into_body();
    let pieces: Vec<Result<Bytes, Infallible>> = block_on(async { collect_stream(stream).await });
    let joined: Vec<u8> = pieces.into_iter().flat_map(|p| p.unwrap()).collect();
    assert_eq!(joined, data(100_000));
}

async fn collect_stream<S: futures_core::Stream + Unpin>(mut s: S) -> Vec<S::Item> {
    let mut out = Vec::new();
    while let Some(item) = std::future::poll_fn(|cx| Pin::new(&mut s).poll_next(cx)).await {
        out.push(item);
    }
    out
}

#[test]
fn stream_bodies_from_http_body_util_work() {
    let pool = Pool::new();
    let frames = (0..4).map(|i| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![i; 1000]))));
    let body = StreamBody::new(futures_iter(frames));
    let chunks = block_on(pool.read_body(body, 4000)).unwrap();
    assert_eq!(chunks.len(), 4000);
}

/// An iterator as a `Stream` (without pulling in futures-util).
fn futures_iter<I: Iterator + Unpin>(iter: I) -> IterStream<I> {
    IterStream(iter)
}

struct IterStream<I>(I);

impl<I: Iterator + Unpin> futures_core::Stream for IterStream<I> {
    type Item = I::Item;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<I::Item>> {
        Poll::Ready(self.0.next())
    }
}

// === a real server on loopback ===

const LIMIT: usize = 1 << 20;

async fn echo(State(pool): State<Pool>, request: Request) -> Response {
    match pool.read_body(request.into_body(), LIMIT).await {
        Ok(chunks) => AxumBody::new(chunks.into_body()).into_response(),
        Err(e) => (e.status(), e.to_string()).into_response(),
    }
}

/// Serves `app` on a loopback port from a thread; returns its address.
fn start_server(app: axum::Router) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

/// Sends `head` then `body` and reads the whole response: (status, body).
fn exchange(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let response = common::http::exchange(addr, head, body);
    (response.status, response.body)
}

#[test]
fn a_real_server_echoes_refuses_and_keeps_its_books() {
    let pool = Pool::new();
    let addr = start_server(
        axum::Router::new()
            .route("/echo", axum::routing::post(echo))
            .with_state(pool.clone()),
    );

    // A 300 KB upload with a Content-Length comes back byte for byte.
    let upload = data(300_000);
    let head = format!(
        "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        upload.len()
    );
    let (status, echoed) = exchange(addr, &head, &upload);
    assert_eq!(status, 200);
    assert_eq!(echoed, upload);

    // A declared 200 MB body is refused from its headers: the client sends
    // none of it and still gets its answer.
    let head =
        "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 200000000\r\nconnection: close\r\n\r\n";
    let (status, message) = exchange(addr, head, b"");
    assert_eq!(status, 413);
    let message = String::from_utf8(message).unwrap();
    assert!(message.contains("200000000 bytes declared"), "{message}");

    // A chunked body with no length is stopped once it passes the limit.
    let mut chunked = Vec::new();
    for _ in 0..40 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 << 10).as_bytes());
        chunked.extend_from_slice(&[1u8; 64 << 10]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head =
        "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let (status, _) = exchange(addr, head, &chunked);
    assert_eq!(status, 413);

    // Nothing is left out once the responses are sent.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pool.stats().in_use_bytes != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let stats = pool.stats();
    assert_eq!(stats.in_use_bytes, 0);
    assert_eq!(stats.adapters.reads, 1);
    assert_eq!(stats.adapters.too_large, 2);
    assert_eq!(stats.adapters.errors, 0);
}

// === the whole path: upload in, pooled frame, thumbnail out ===

/// The handler as a service writes it with the features, and no glue:
/// the upload read with a limit, decoded into a pooled frame, resized,
/// encoded into a pooled writer and answered without a copy.
#[cfg(feature = "image")]
async fn thumbnail(State(pool): State<Pool>, request: Request) -> Response {
    let width: u32 = request
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("width="))
        .and_then(|w| w.parse().ok())
        .unwrap_or(128);
    let upload = match pool.read_body(request.into_body(), 32 << 20).await {
        Ok(upload) => upload,
        Err(e) => return (e.status(), e.to_string()).into_response(),
    };
    let image = match pool.decode_image(upload) {
        Ok(image) => image,
        Err(e) => return (http::StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).into_response(),
    };
    let height = (u64::from(image.height()) * u64::from(width) / u64::from(image.width())).max(1);
    let mut out = pool.writer();
    let encoded = image
        .thumbnail(width, height as u32)
        .write_with_encoder(image::codecs::png::PngEncoder::new(&mut out));
    match encoded {
        Ok(()) => (
            [("content-type", "image/png")],
            AxumBody::new(out.into_body()),
        )
            .into_response(),
        Err(e) => (http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(feature = "image")]
#[test]
fn a_thumbnail_server_decodes_into_the_pool_and_answers_from_it() {
    use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb};

    let pool = Pool::new();
    let addr = start_server(
        axum::Router::new()
            .route("/thumbnail", axum::routing::post(thumbnail))
            .with_state(pool.clone()),
    );
    let photo = DynamicImage::ImageRgb8(ImageBuffer::from_fn(1200, 800, |x, y| {
        Rgb([x as u8, y as u8, (x ^ y) as u8])
    }));
    for format in [ImageFormat::Png, ImageFormat::Jpeg] {
        let mut file = Vec::new();
        photo
            .write_to(&mut std::io::Cursor::new(&mut file), format)
            .unwrap();
        let head = format!(
            "POST /thumbnail?width=150 HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            file.len()
        );
        let (status, png) = exchange(addr, &head, &file);
        assert_eq!(status, 200, "{format:?}: {}", String::from_utf8_lossy(&png));
        let thumb = image::load_from_memory_with_format(&png, ImageFormat::Png).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (150, 100), "{format:?}");
    }
    // A truncated upload is a 422 with a one-line reason.
    let truncated = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0";
    let head = format!(
        "POST /thumbnail HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        truncated.len()
    );
    let (status, message) = exchange(addr, &head, truncated);
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&message));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pool.stats().in_use_bytes != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let stats = pool.stats();
    assert_eq!(stats.in_use_bytes, 0);
    // The frames (1200 x 800 x 3 = 2.9 MB) came from the pool's classes.
    let frame_class = pool.size_classes().class_for(1200 * 800 * 3).unwrap();
    let frames = stats
        .classes
        .iter()
        .find(|c| c.capacity == frame_class)
        .unwrap();
    assert_eq!(frames.hits + frames.misses, 2);
}

#[test]
fn a_permit_reads_the_body_where_a_plain_read_is_refused() {
    // The budget holds one request's body, set aside by its permit: a
    // read that was not admitted is refused; the permit's is not.
    let pool = Pool::builder()
        .memory_limit(tierpool::MemoryLimit::Unlimited)
        .max_in_use_bytes(3 << 20)
        .build();
    let permit = pool
        .admit(2 << 20, std::time::Duration::from_secs(1))
        .unwrap();
    let body = data(2 << 20);
    let refused = block_on(pool.read_body(Full::new(Bytes::from(body.clone())), 4 << 20));
    assert!(
        matches!(refused, Err(BodyError::Pool(ref e)) if e.is_refused()),
        "{refused:?}"
    );
    let before = permit.remaining();
    let chunks = block_on(permit.read_body(Full::new(Bytes::from(body.clone())), 4 << 20)).unwrap();
    assert_eq!(chunks.to_vec(), body);
    assert!(
        before - permit.remaining() >= 2 << 20,
        "the body drew on the permit"
    );
    // The limit still applies on a permit.
    let too_long = block_on(permit.read_body(Full::new(Bytes::from(data(100))), 10));
    assert!(matches!(too_long, Err(e) if e.is_too_large()));
    drop((chunks, permit));
    assert_eq!(pool.stats().set_aside_bytes, 0);
}
