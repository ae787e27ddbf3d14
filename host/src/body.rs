//! The body the proxy sends on, both ways: a body known whole (`Full`), or one that streams
//! through a bounded channel (`Channel`) while the proxy is still reading it from the other side.
//!
//! The channel holds at most [`CHANNEL_CHUNKS`] chunks: a sender waits while the receiving side
//! (the client's or the upstream's socket) does not take them, so memory stays bounded and
//! back-pressure reaches the side that sends too fast.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// Chunks a streaming body holds between the two sides.
pub const CHANNEL_CHUNKS: usize = 2;

/// Why a streaming body ended early (the receiving side resets its stream).
#[derive(Debug, thiserror::Error)]
#[error("body aborted: {0}")]
pub struct BodyAbort(pub String);

/// A request or response body as the proxy sends it on.
#[derive(Debug)]
pub enum ProxyBody {
    /// The whole body (`None` once sent).
    Full(Option<Bytes>),
    /// A body that streams from a [`BodySender`].
    Channel(mpsc::Receiver<Result<Bytes, BodyAbort>>),
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(bytes.into()))
    }

    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    /// A streaming body and the sender that feeds it.
    pub fn channel() -> (BodySender, Self) {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        (BodySender(tx), ProxyBody::Channel(rx))
    }

    /// The body, when it is known whole.
    pub fn as_full(&self) -> Option<Bytes> {
        match self {
            ProxyBody::Full(b) => Some(b.clone().unwrap_or_default()),
            ProxyBody::Channel(_) => None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyAbort;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyAbort>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            ProxyBody::Channel(rx) => match rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            ProxyBody::Channel(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Channel(_) => SizeHint::default(),
        }
    }
}

/// Feeds a [`ProxyBody::Channel`]; dropping it ends the body.
#[derive(Debug)]
pub struct BodySender(mpsc::Sender<Result<Bytes, BodyAbort>>);

impl BodySender {
    /// Sends a chunk, waiting while the channel is full; `false` when the other side is gone.
    pub async fn send(&self, chunk: Bytes) -> bool {
        if chunk.is_empty() {
            return !self.0.is_closed();
        }
        self.0.send(Ok(chunk)).await.is_ok()
    }

    /// Resolves when the receiving side is gone.
    pub async fn closed(&self) {
        self.0.closed().await;
    }

    /// Ends the body with an error: the receiving side resets its stream.
    pub async fn abort(self, why: &str) {
        let _ = self.0.send(Err(BodyAbort(why.to_string()))).await;
    }
}
