//! An image, QR and PDF service on tierpool: uploads read into the pool
//! with a limit, decoded into pooled frames, answered from pooled chunks
//! without a copy; admission under memory pressure; Prometheus metrics;
//! readiness that drains before the OOM killer; graceful SIGTERM.
//!
//! ```sh
//! cargo run --release --example service --features http-body,image,metrics,tokio \
//!     -- --addr 127.0.0.1:8080 [--max-body BYTES] [--queue-timeout SECS] [--memory-file PATH] [--no-pool]
//! curl -s --data-binary @photo.jpg 'localhost:8080/thumbnail?width=200' > thumb.png
//! curl -s --data 'https://example.org' localhost:8080/qr > qr.png
//! curl -s --data-binary @notes.txt localhost:8080/pdf > notes.pdf
//! curl -s localhost:8080/metrics | grep tierpool_
//! ```
//!
//! - `POST /thumbnail?width=W` (default 128): PNG or JPEG in, a W-wide PNG
//!   out. Empty body 400; over `--max-body` (declared or read) 413;
//!   undecodable, truncated or a frame over the limit (a decompression
//!   bomb) 422.
//! - `POST /qr`: UTF-8 text of up to 2 KiB in, a QR code as PNG out; over
//!   2 KiB 413; not UTF-8 422.
//! - `POST /pdf`: UTF-8 text in, a paginated PDF out; the same limits as
//!   uploads.
//! - `GET /metrics`: Prometheus text; `GET /ready`: 503 under critical memory
//!   pressure (with the pool's hysteresis: ready again below 85% of the
//!   limit); `GET /live`: 200 while the process serves (never about
//!   memory: a liveness probe must not restart a busy pod).
//!
//! Every request is admitted by its cost before it works (`Pool::admit`):
//! a thumbnail by its upload, then by what the image's header says its
//! decoding takes; a QR code by the largest code; a PDF by its text. A
//! request waits in arrival order up to `--queue-timeout` seconds (default
//! 10), then gets 503 with `Retry-After`. Whatever it answers, the service
//! reads or drains the request body first, so no client sees its
//! connection reset.
//!
//! `--no-pool` serves the same bytes with plain `Vec`s everywhere, for the
//! load test to compare against. The listening address is printed on
//! stdout's first line (`listening on ADDR`), so `--addr 127.0.0.1:0` works.

#[path = "common/work.rs"]
mod work;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tierpool::{Chunks, Permit, Pool, Pressure};
use tokio::time::Instant;
use work::Failure;

/// The largest decoded frame accepted, whatever `--max-body` is: a
/// 10 000 × 10 000 RGBA image is 400 MB, anything larger is refused from
/// its header.
const MAX_FRAME: u64 = 256 << 20;
/// Widths outside this are a bad request.
const MAX_WIDTH: u32 = 4096;
/// The most bytes of a refused request's body read and dropped before the
/// answer (past it the connection is closed).
const MAX_DRAIN: usize = 256 << 20;

struct App {
    /// `None` with `--no-pool`.
    pool: Option<Pool>,
    max_body: usize,
    /// How long a request waits for admission before its 503.
    queue_timeout: Duration,
    metrics: PrometheusHandle,
}

type Shared = State<Arc<App>>;

/// Every large allocation of the process (the decoders', the resizer's,
/// the encoders', pdf-writer's) goes through tierpool's large tier: reused,
/// given back when idle, and seen by admission. `--no-pool` switches it
/// off, so that mode runs on the system allocator alone.
#[cfg(not(tierpool_global_alloc))]
#[global_allocator]
static GLOBAL: tierpool::GlobalPool = tierpool::GlobalPool::new();

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        let at = args.iter().position(|a| a == flag)?;
        args.get(at + 1).cloned()
    };
    if args.iter().any(|a| a == "--help") {
        println!(
            "service --addr HOST:PORT [--max-body BYTES] [--queue-timeout SECS] [--memory-file PATH] [--no-pool]"
        );
        return Ok(());
    }
    let addr = value("--addr").unwrap_or_else(|| "127.0.0.1:8080".into());
    let max_body = match value("--max-body").map(|v| v.parse::<usize>()) {
        None => 32 << 20,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("service: --max-body takes a positive number of bytes");
            std::process::exit(2);
        }
    };
    let queue_timeout = match value("--queue-timeout").map(|v| v.parse::<f64>()) {
        None => Duration::from_secs(10),
        Some(Ok(s)) if (0.0..=3600.0).contains(&s) => Duration::from_secs_f64(s),
        Some(_) => {
            eprintln!("service: --queue-timeout takes 0 to 3600 seconds");
            std::process::exit(2);
        }
    };
    #[cfg(not(tierpool_global_alloc))]
    if args.iter().any(|a| a == "--no-pool") {
        GLOBAL.set_enabled(false);
    }
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .map_err(std::io::Error::other)?;
    // The memory limit is the container's (the default), or read from
    // `--memory-file` (to test the shedding without a cgroup); the name
    // labels the metrics.
    let memory_file = value("--memory-file");
    let pool = (!args.iter().any(|a| a == "--no-pool")).then(|| {
        let builder = Pool::builder().name("service");
        match memory_file {
            Some(path) => builder.memory_file(path),
            None => builder,
        }
        .build()
    });
    let app = Arc::new(App {
        pool,
        max_body,
        queue_timeout,
        metrics,
    });
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(app, &addr))
}

async fn serve(app: Arc<App>, addr: &str) -> std::io::Result<()> {
    let router = Router::new()
        .route("/thumbnail", post(thumbnail))
        .route("/qr", post(qr))
        .route("/pdf", post(pdf))
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/live", get(|| async { StatusCode::OK }))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown())
        .await?;
    println!("drained; bye");
    Ok(())
}

/// SIGTERM or Ctrl-C: stop accepting; axum finishes what is in flight.
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

// === handlers ===

async fn thumbnail(State(app): Shared, request: Request) -> Response {
    let width = match width(request.uri().query()) {
        Ok(width) => width,
        Err(failure) => return drain_then(request, failure).await,
    };
    let Some(pool) = app.pool.clone() else {
        let work = match read_plain(request, app.max_body).await {
            Ok(upload) => {
                blocking(move || work::thumbnail_vec(&upload, width, MAX_FRAME).map(png_vec)).await
            }
            Err(failure) => Err(failure),
        };
        return work.unwrap_or_else(answer);
    };
    let deadline = Instant::now() + app.queue_timeout;
    // The upload's room first; then, from the image's header, the room its
    // decoding, thumbnail and PNG take.
    let mut upload = match read_admitted(&pool, request, app.max_body, deadline).await {
        Ok(upload) => upload,
        Err(response) => return response,
    };
    let cost = match work::thumbnail_cost(&mut upload, width, MAX_FRAME) {
        Ok(cost) => cost,
        Err(failure) => return answer(failure),
    };
    let permit = match admit(&pool, cost, deadline).await {
        Ok(permit) => permit,
        Err(failure) => return answer(failure),
    };
    blocking(move || work::thumbnail_pool(&permit, upload, width, MAX_FRAME).map(png))
        .await
        .unwrap_or_else(answer)
}

async fn qr(State(app): Shared, request: Request) -> Response {
    let Some(pool) = app.pool.clone() else {
        let work = match read_plain(request, work::QR_MAX_TEXT).await {
            Ok(text) => blocking(move || work::qr_vec(&text).map(png_vec)).await,
            Err(failure) => Err(failure),
        };
        return work.unwrap_or_else(answer);
    };
    let deadline = Instant::now() + app.queue_timeout;
    // A fixed bound: the largest code, and its text.
    let permit = match admit(&pool, work::QR_COST + work::QR_MAX_TEXT, deadline).await {
        Ok(permit) => permit,
        Err(failure) => return drain_then(request, failure).await,
    };
    let text = match permit
        .read_body(request.into_body(), work::QR_MAX_TEXT)
        .await
    {
        Ok(text) => text,
        Err(e) => return answer(body_failure(&e)),
    };
    blocking(move || work::qr_pool(&permit, &text.into_contiguous()).map(png))
        .await
        .unwrap_or_else(answer)
}

async fn pdf(State(app): Shared, request: Request) -> Response {
    let Some(pool) = app.pool.clone() else {
        let work = match read_plain(request, app.max_body).await {
            Ok(text) => blocking(move || work::pdf(&text).map(pdf_response)).await,
            Err(failure) => Err(failure),
        };
        return work.unwrap_or_else(answer);
    };
    let deadline = Instant::now() + app.queue_timeout;
    let text = match read_admitted(&pool, request, app.max_body, deadline).await {
        Ok(text) => text.into_contiguous(),
        Err(response) => return response,
    };
    // pdf-writer builds in its own `Vec`: the permit holds the room for it.
    let permit = match admit(&pool, work::pdf_cost(text.len()), deadline).await {
        Ok(permit) => permit,
        Err(failure) => return answer(failure),
    };
    blocking(move || {
        let pdf = work::pdf(&text).map(pdf_response);
        drop(permit);
        pdf
    })
    .await
    .unwrap_or_else(answer)
}

async fn metrics(State(app): Shared) -> Response {
    if let Some(pool) = &app.pool {
        pool.publish_metrics();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// 503 while the pool reports critical pressure: the load balancer stops
/// routing here until the requests in flight have given their memory back.
async fn ready(State(app): Shared) -> StatusCode {
    match app.pool.as_ref().map(Pool::pressure) {
        Some(Pressure::Critical) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    }
}

// === plumbing ===

/// Waits in admission's queue until `bytes` fit, or `deadline`: a 503
/// (with `Retry-After`) then.
async fn admit(pool: &Pool, bytes: usize, deadline: Instant) -> Result<Permit, Failure> {
    match tokio::time::timeout_at(deadline, pool.admit_async(bytes)).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(e)) => Err(Failure::Refused(e.to_string())),
        Err(_) => Err(Failure::Refused(format!(
            "no memory for this request ({bytes} bytes) within the queue's deadline"
        ))),
    }
}

/// The declared body length, if any.
fn declared_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// Reads the body with `limit` on a permit for it (its declared length,
/// else `limit`): the answer instead, the body drained, when it is too
/// large or admission refuses it within `deadline`.
async fn read_admitted(
    pool: &Pool,
    request: Request,
    limit: usize,
    deadline: Instant,
) -> Result<Chunks, Response> {
    let declared = declared_length(&request);
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        let failure = Failure::TooLarge(format!(
            "request body: {n} bytes declared, the limit is {limit}"
        ));
        return Err(drain_then(request, failure).await);
    }
    let room = declared.map_or(limit, |n| n as usize).max(1);
    let permit = match admit(pool, room, deadline).await {
        Ok(permit) => permit,
        Err(failure) => return Err(drain_then(request, failure).await),
    };
    // The permit's unused room goes back as soon as the body is in.
    permit
        .read_body(request.into_body(), limit)
        .await
        .map_err(|e| answer(body_failure(&e)))
}

/// A failed body read as its answer.
fn body_failure<E: std::fmt::Display>(e: &tierpool::BodyError<E>) -> Failure {
    match e.status().as_u16() {
        413 => Failure::TooLarge(e.to_string()),
        503 => Failure::Refused(e.to_string()),
        _ => Failure::BadRequest(e.to_string()),
    }
}

/// Reads and drops the request's body (up to [`MAX_DRAIN`] bytes), then
/// answers `failure`: a client still sending its upload reads the answer
/// instead of a reset connection.
async fn drain_then(request: Request, failure: Failure) -> Response {
    let mut body = request.into_body();
    let mut drained = 0usize;
    let mut close = false;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(until, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    drained += data.len();
                }
                if drained > MAX_DRAIN {
                    close = true;
                    break;
                }
            }
            Ok(None) => break,
            Ok(Some(Err(_))) | Err(_) => {
                close = true;
                break;
            }
        }
    }
    let mut response = answer(failure);
    if close {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Reads the body with `limit` into plain memory (`--no-pool`): axum's own
/// `to_bytes`.
async fn read_plain(request: Request, limit: usize) -> Result<Bytes, Failure> {
    if let Some(n) = declared_length(&request).filter(|&n| n > limit as u64) {
        return Err(Failure::TooLarge(format!(
            "request body: {n} bytes declared, the limit is {limit}"
        )));
    }
    axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                Failure::TooLarge(format!(
                    "request body: longer than the limit of {limit} bytes"
                ))
            } else {
                Failure::BadRequest(format!("request body: {e}"))
            }
        })
}

/// `?width=W`: 1 to 4096, 128 when absent.
fn width(query: Option<&str>) -> Result<u32, Failure> {
    let Some(value) = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("width="))
    else {
        return Ok(128);
    };
    match value.parse::<u32>() {
        Ok(w) if (1..=MAX_WIDTH).contains(&w) => Ok(w),
        _ => Err(Failure::BadRequest(format!(
            "width must be 1 to {MAX_WIDTH}, not {value:?}"
        ))),
    }
}

/// Runs CPU-bound work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Failure::Unprocessable(format!("the worker failed: {e}"))))
}

fn png(chunks: Chunks) -> Response {
    (
        [(header::CONTENT_TYPE, "image/png")],
        Body::new(chunks.into_body()),
    )
        .into_response()
}

fn png_vec(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "image/png")], bytes).into_response()
}

fn pdf_response(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/pdf")], bytes).into_response()
}

/// A failure as its status and one plain-text line; a 503 says when to
/// try again.
fn answer(failure: Failure) -> Response {
    let status = StatusCode::from_u16(failure.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut line = failure.message().replace('\n', " ");
    line.push('\n');
    let mut response = (status, [(header::CONTENT_TYPE, "text/plain")], line).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}
