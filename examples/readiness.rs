//! Drain before the OOM killer: a readiness endpoint that turns unready
//! under critical memory pressure, and requests admitted whole.
//!
//! ```sh
//! cargo run --release --example readiness -- 127.0.0.1:8080
//! curl -s -o /dev/null -w '%{http_code}\n' localhost:8080/ready
//! curl -s -X POST --data-binary @photo.jpg localhost:8080/work
//! ```
//!
//! When the container's working set nears its limit, `/ready` answers 503:
//! Kubernetes stops routing new requests here, the requests in flight
//! finish, their memory goes back, pressure falls, and `/ready` answers 200
//! again: no OOM kill, no restart loop. Meanwhile admission holds back (or
//! refuses with 503) what would not fit. SIGTERM or Ctrl-C: stop accepting,
//! finish what is in flight, exit 0.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tierpool::{Pool, Pressure};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    // The default memory limit is the container's; a name labels metrics.
    let pool = Pool::builder().name("readiness-example").build();
    let app = Router::new()
        .route("/ready", get(ready))
        .route("/work", post(work))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await
}

/// 503 while the pool reports critical pressure: the load balancer stops
/// sending until memory comes back down.
async fn ready(State(pool): State<Pool>) -> StatusCode {
    match pool.pressure() {
        Pressure::Critical => StatusCode::SERVICE_UNAVAILABLE,
        Pressure::Normal | Pressure::Elevated => StatusCode::OK,
    }
}

/// A stand-in for decoding an image: the body, a 3x frame and an output,
/// admitted together so a request never waits while holding memory.
async fn work(State(pool): State<Pool>, body: Bytes) -> Result<String, StatusCode> {
    let need = 5 * body.len().max(1);
    let admitted = tokio::time::timeout(Duration::from_secs(2), pool.admit_async(need)).await;
    let permit = match admitted {
        Ok(Ok(permit)) => permit,
        Ok(Err(e)) if !e.is_refused() => return Err(StatusCode::INTERNAL_SERVER_ERROR),
        _ => return Err(StatusCode::SERVICE_UNAVAILABLE), // shed load, retry elsewhere
    };
    let mut frame = permit.get(3 * body.len());
    for _ in 0..3 {
        frame.extend_from_slice(&body);
    }
    let mut output = permit.get(body.len());
    output.extend_from_slice(&frame[..body.len()]);
    Ok(format!(
        "{} bytes in, {} bytes out\n",
        body.len(),
        output.len()
    ))
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
