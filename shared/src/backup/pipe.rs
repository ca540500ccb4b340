//! The two bridges backup bytes cross, both bounded so memory stays flat whatever the size:
//!
//! - [`pipe`]: chunks from the task writing a backup to [`ObjectStore::upload`] reading it.
//!   Unlike a plain in-memory pipe it carries the writer's failure, so an upload whose
//!   source broke fails (and aborts its multipart upload) instead of storing a truncated
//!   backup that looks complete.
//! - [`BlockingReader`]: an async download read from a blocking thread, where the restore
//!   decompresses and parses it with plain `std::io`.
//!
//! [`ObjectStore::upload`]: crate::objects::ObjectStore::upload

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

/// The reading side stopped (the upload failed or was dropped).
#[derive(Debug, thiserror::Error)]
#[error("the upload stopped reading the backup")]
pub struct PipeClosed;

/// A pipe holding at most `chunks` chunks in flight.
pub fn pipe(chunks: usize) -> (PipeWriter, PipeReader) {
    let (sender, receiver) = mpsc::channel(chunks.max(1));
    (
        PipeWriter { sender },
        PipeReader {
            receiver,
            chunk: Vec::new(),
            offset: 0,
        },
    )
}

/// The writing side. Dropping it ends the stream normally: call [`PipeWriter::fail`] when
/// the data is not complete.
#[derive(Debug)]
pub struct PipeWriter {
    sender: mpsc::Sender<Result<Vec<u8>, String>>,
}

impl PipeWriter {
    /// Sends one chunk, waiting while the pipe is full.
    pub async fn send(&self, chunk: Vec<u8>) -> Result<(), PipeClosed> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.sender.send(Ok(chunk)).await.map_err(|_| PipeClosed)
    }

    /// Makes the reader's next read fail with `reason`.
    pub async fn fail(self, reason: String) {
        let _ = self.sender.send(Err(reason)).await;
    }
}

/// The reading side, an [`AsyncRead`].
#[derive(Debug)]
pub struct PipeReader {
    receiver: mpsc::Receiver<Result<Vec<u8>, String>>,
    chunk: Vec<u8>,
    offset: usize,
}

impl AsyncRead for PipeReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.offset == self.chunk.len() {
            match ready!(self.receiver.poll_recv(cx)) {
                Some(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.offset = 0;
                }
                Some(Err(reason)) => return Poll::Ready(Err(io::Error::other(reason))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let available = &self.chunk[self.offset..];
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        self.offset += n;
        Poll::Ready(Ok(()))
    }
}

/// A blocking [`io::Read`] over an async reader, for use on a blocking thread
/// (`tokio::task::spawn_blocking`) only. Counts the bytes read, for progress.
pub struct BlockingReader<R> {
    inner: R,
    runtime: Handle,
    read: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> BlockingReader<R> {
    /// `runtime` is the runtime `inner` belongs to; `read` grows by every byte read.
    pub fn new(inner: R, runtime: Handle, read: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            runtime,
            read,
        }
    }
}

impl<R: AsyncRead + Unpin> io::Read for BlockingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.runtime.block_on(self.inner.read(buf))?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[tokio::test]
    async fn the_reader_sees_the_chunks_then_the_end() {
        let (writer, mut reader) = pipe(1);
        let writing = tokio::spawn(async move {
            writer.send(b"abc".to_vec()).await.unwrap();
            writer.send(Vec::new()).await.unwrap();
            writer.send(b"de".to_vec()).await.unwrap();
        });
        let mut all = Vec::new();
        reader.read_to_end(&mut all).await.unwrap();
        writing.await.unwrap();
        assert_eq!(all, b"abcde");
    }

    #[tokio::test]
    async fn a_failed_writer_fails_the_reader() {
        let (writer, mut reader) = pipe(2);
        writer.send(b"abc".to_vec()).await.unwrap();
        writer.fail("the database went away".into()).await;
        let error = reader.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(error.to_string(), "the database went away");
    }

    #[tokio::test]
    async fn a_dropped_reader_stops_the_writer() {
        let (writer, reader) = pipe(1);
        drop(reader);
        assert!(writer.send(b"x".to_vec()).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocking_thread_reads_an_async_source() {
        let counter = Arc::new(AtomicU64::new(0));
        let source: &'static [u8] = b"hello";
        let mut reader = BlockingReader::new(source, Handle::current(), counter.clone());
        let text = tokio::task::spawn_blocking(move || {
            let mut text = String::new();
            reader.read_to_string(&mut text).map(|_| text)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(text, "hello");
        assert_eq!(counter.load(Ordering::Relaxed), 5);
    }
}
