//! An image, QR and PDF service on tierpool: uploads read into the pool
//! with a limit, decoded into pooled frames, answered from pooled chunks
//! without a copy; admission under memory pressure; Prometheus metrics;
//! readiness that drains before the OOM killer; graceful SIGTERM.
//!
//! ```sh
//! cargo run --release --example service --features http-body,image,metrics,tokio \
//!     -- --addr 127.0.0.1:8080 [--max-body BYTES] [--no-pool]
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
//!   pressure. Admission refusing memory: 503.
//!
//! `--no-pool` serves the same bytes with plain `Vec`s everywhere, for the
//! load test to compare against. The listening address is printed on
//! stdout's first line (`listening on ADDR`), so `--addr 127.0.0.1:0` works.

#[path = "common/work.rs"]
mod work;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tierpool::{Chunks, Pool, Pressure};
use work::Failure;

/// The largest decoded frame accepted, whatever `--max-body` is: a
/// 10 000 × 10 000 RGBA image is 400 MB, anything larger is refused from
/// its header.
const MAX_FRAME: u64 = 256 << 20;
/// Widths outside this are a bad request.
const MAX_WIDTH: u32 = 4096;

struct App {
    /// `None` with `--no-pool`.
    pool: Option<Pool>,
    max_body: usize,
    metrics: PrometheusHandle,
}

type Shared = State<Arc<App>>;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        let at = args.iter().position(|a| a == flag)?;
        args.get(at + 1).cloned()
    };
    if args.iter().any(|a| a == "--help") {
        println!("service --addr HOST:PORT [--max-body BYTES] [--no-pool]");
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
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .map_err(std::io::Error::other)?;
    // The memory limit is the container's (the default); the name labels
    // the metrics.
    let pool =
        (!args.iter().any(|a| a == "--no-pool")).then(|| Pool::builder().name("service").build());
    let app = Arc::new(App {
        pool,
        max_body,
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
        Err(failure) => return answer(failure),
    };
    let work = match read(&app, request, app.max_body).await {
        Ok(Upload::Pooled(pool, upload)) => {
            blocking(move || work::thumbnail_pool(&pool, upload, width, MAX_FRAME).map(png)).await
        }
        Ok(Upload::Plain(upload)) => {
            blocking(move || work::thumbnail_vec(&upload, width, MAX_FRAME).map(png_vec)).await
        }
        Err(failure) => Err(failure),
    };
    work.unwrap_or_else(answer)
}

async fn qr(State(app): Shared, request: Request) -> Response {
    let work = match read(&app, request, work::QR_MAX_TEXT).await {
        Ok(Upload::Pooled(pool, text)) => {
            blocking(move || work::qr_pool(&pool, &text.into_contiguous()).map(png)).await
        }
        Ok(Upload::Plain(text)) => blocking(move || work::qr_vec(&text).map(png_vec)).await,
        Err(failure) => Err(failure),
    };
    work.unwrap_or_else(answer)
}

async fn pdf(State(app): Shared, request: Request) -> Response {
    let work = match read(&app, request, app.max_body).await {
        Ok(Upload::Pooled(_, text)) => {
            blocking(move || work::pdf(&text.into_contiguous()).map(pdf_response)).await
        }
        Ok(Upload::Plain(text)) => blocking(move || work::pdf(&text).map(pdf_response)).await,
        Err(failure) => Err(failure),
    };
    work.unwrap_or_else(answer)
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

enum Upload {
    Pooled(Pool, Chunks),
    Plain(Bytes),
}

/// Reads the body with `limit`: into the pool (the declared length refused
/// or used as the hint), or with axum's own `to_bytes` for `--no-pool`.
async fn read(app: &App, request: Request, limit: usize) -> Result<Upload, Failure> {
    match &app.pool {
        Some(pool) => match pool.read_body(request.into_body(), limit).await {
            Ok(chunks) => Ok(Upload::Pooled(pool.clone(), chunks)),
            Err(e) => Err(match e.status().as_u16() {
                413 => Failure::TooLarge(e.to_string()),
                503 => Failure::Refused(e.to_string()),
                _ => Failure::BadRequest(e.to_string()),
            }),
        },
        None => {
            let declared = request
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit as u64) {
                return Err(Failure::TooLarge(format!(
                    "request body: {} bytes declared, the limit is {limit}",
                    declared.unwrap_or(0)
                )));
            }
            axum::body::to_bytes(request.into_body(), limit)
                .await
                .map(Upload::Plain)
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
    }
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

/// A failure as its status and one plain-text line.
fn answer(failure: Failure) -> Response {
    let status = StatusCode::from_u16(failure.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut line = failure.message().replace('\n', " ");
    line.push('\n');
    (status, [(header::CONTENT_TYPE, "text/plain")], line).into_response()
}
