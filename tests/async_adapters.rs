//! The async adapters (feature `tokio`): same bytes, errors and cursor as
//! the blocking ones.
#![cfg(feature = "tokio")]

use std::future::Future;
use std::io::{self, SeekFrom};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use tierpool::Pool;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, ReadBuf};

/// Polls a future to completion on this thread. The readers here never wait
/// on anything outside the future, so a busy poll is a complete executor
/// (and keeps tokio's runtime out of the dev-dependencies: it does not build
/// under `--cfg loom`).
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Reads at most `step` bytes a call, returning `Pending` every other call.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    step: usize,
    pend: bool,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.pend = !self.pend;
        if self.pend {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = self
            .step
            .min(buf.remaining())
            .min(self.data.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

#[test]
fn async_read_to_end_round_trips() {
    block_on(read_to_end_round_trips());
}

async fn read_to_end_round_trips() {
    let pool = Pool::new();
    for len in [0, 1, 16 << 10, (16 << 10) + 1, 300_000] {
        let reader = Trickle {
            data: data(len),
            at: 0,
            step: 7000,
            pend: false,
        };
        let chunks = pool.read_to_end_async(reader).await.unwrap();
        assert_eq!(chunks.to_vec(), data(len));
    }
    let err = pool
        .read_with_async(
            tokio::io::repeat(1),
            &tierpool::ReadOptions::new().max_len(50_000),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
    assert_eq!(pool.stats().in_use_bytes, 0);
}

#[test]
fn chunks_read_seek_and_lines_async() {
    block_on(chunks_read_seek_and_lines());
}

async fn chunks_read_seek_and_lines() {
    let pool = Pool::new();
    let mut text = Vec::new();
    for i in 0..5000 {
        text.extend_from_slice(format!("line {i}\n").as_bytes());
    }
    let mut chunks = pool.read_to_end(&text[..]).unwrap();
    let mut first = String::new();
    chunks.read_line(&mut first).await.unwrap();
    assert_eq!(first, "line 0\n");
    assert_eq!(
        chunks.seek(SeekFrom::End(-10)).await.unwrap(),
        text.len() as u64 - 10
    );
    let mut tail = Vec::new();
    chunks.read_to_end(&mut tail).await.unwrap();
    assert_eq!(tail, &text[text.len() - 10..]);
    assert!(
        chunks
            .seek(SeekFrom::Current(-(text.len() as i64) - 1))
            .await
            .is_err()
    );
}

#[test]
fn pooled_writer_is_async_write() {
    block_on(pooled_writer_writes());
}

async fn pooled_writer_writes() {
    let pool = Pool::new();
    let mut writer = pool.writer();
    for i in 0..10_000u32 {
        writer.write_all(&i.to_le_bytes()).await.unwrap();
    }
    writer.shutdown().await.unwrap();
    let expected: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
    assert_eq!(writer.into_chunks().to_vec(), expected);
}

#[test]
fn poll_read_copies_without_initialising_the_callers_whole_buffer() {
    let pool = Pool::new();
    let mut chunks = block_on(pool.read_to_end_async(&data(100)[..])).unwrap();
    let mut storage = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    let mut buf = ReadBuf::uninit(&mut storage);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(
        Pin::new(&mut chunks)
            .poll_read(&mut cx, &mut buf)
            .is_ready()
    );
    assert_eq!(buf.filled(), &data(100)[..]);
    // Only what was copied is initialised: the rest of the caller's 4 KiB
    // was neither zeroed nor touched (it was, on every poll, before).
    assert_eq!(buf.initialized().len(), 100);
}

#[test]
fn an_exact_hint_lands_in_one_chunk_and_a_limit_still_holds() {
    let pool = Pool::new();
    for len in [300_000, 3 << 20] {
        let reader = Trickle {
            data: data(len),
            at: 0,
            step: 64 << 10,
            pend: false,
        };
        let chunks = block_on(
            pool.read_with_async(
                reader,
                &tierpool::ReadOptions::new()
                    .size_hint(len)
                    .max_len(usize::MAX),
            ),
        )
        .unwrap();
        assert_eq!(chunks.iter().count(), 1, "{len}");
        assert_eq!(chunks.to_vec(), data(len));
    }
    // A hint past the limit does not let the read past it.
    let err = block_on(pool.read_with_async(
        &data(5000)[..],
        &tierpool::ReadOptions::new().size_hint(5000).max_len(1000),
    ))
    .unwrap_err();
    assert_eq!(
        tierpool::Error::from_io(&err),
        Some(&tierpool::Error::TooLarge {
            limit: 1000,
            declared: None
        })
    );
    // A short hint only costs chunks.
    let chunks = block_on(
        pool.read_with_async(
            &data(70_000)[..],
            &tierpool::ReadOptions::new()
                .size_hint(1000)
                .max_len(usize::MAX),
        ),
    )
    .unwrap();
    assert_eq!(chunks.to_vec(), data(70_000));
    assert_eq!(pool.stats().adapters.too_large, 1);
}

#[test]
fn labelled_async_reads_learn_and_count_under_their_label() {
    let pool = Pool::new();
    let uploads = tierpool::ReadOptions::new().label(&pool.label("upload"));
    for _ in 0..10 {
        let chunks = block_on(pool.read_with_async(&data(200_000)[..], &uploads)).unwrap();
        assert_eq!(chunks.len(), 200_000);
    }
    let chunks = block_on(pool.read_with_async(&data(200_000)[..], &uploads)).unwrap();
    assert_eq!(chunks.iter().count(), 1, "started at the learned size");
    let limited = uploads.clone().max_len(5);
    assert!(block_on(pool.read_with_async(&data(10)[..], &limited)).is_err());
    let label = &pool.stats().labels[0];
    assert_eq!(label.label, "upload");
    assert_eq!((label.activity.reads, label.activity.too_large), (11, 1));
}
