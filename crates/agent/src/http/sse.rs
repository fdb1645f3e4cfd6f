//! `GET /v1/watch?name=a&name=b`: Server-Sent Events, one `{"name","version"}` event per
//! rotation of a watched secret (never a value), keep-alive comments between them.
//!
//! A task per client merges the cache's watch channels and writes frames into a small channel
//! the response body reads; when the client goes away hyper drops the body, the channel closes
//! and the task ends, releasing its watcher slot.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use hyper::body::{Body, Frame};
use keyvault_invalidator_core::CancellationToken;
use serde::Serialize;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

/// How often a comment line is sent while nothing rotates, so proxies and clients keep the
/// connection open and a client that went away is noticed.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The first frame, sent once every watch channel is subscribed: a client may rotate (or wait
/// for a rotation) from then on without missing it.
pub const READY_COMMENT: &str = ": watching\n\n";

/// The streaming body of an SSE response.
#[derive(Debug)]
pub struct SseBody {
    frames: mpsc::Receiver<Bytes>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.frames
            .poll_recv(cx)
            .map(|frame| frame.map(|bytes| Ok(Frame::data(bytes))))
    }
}

#[derive(Serialize)]
struct Rotation<'a> {
    name: &'a str,
    version: &'a str,
}

/// One watched secret: its name as the client gave it, its channel, and the version the client
/// already knows (the one cached when the stream started).
pub struct Watched {
    /// The name, as asked for.
    pub name: String,
    /// The cache's channel for it.
    pub versions: watch::Receiver<Option<String>>,
    /// The version current when watching began.
    pub known: Option<String>,
}

/// Starts the task feeding an SSE body; `permit` (a watcher slot) is held until it ends.
pub fn start(
    watched: Vec<Watched>,
    permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) -> SseBody {
    let (frames, receiver) = mpsc::channel(16);
    tokio::spawn(feed(watched, frames, permit, shutdown));
    SseBody { frames: receiver }
}

async fn feed(
    watched: Vec<Watched>,
    frames: mpsc::Sender<Bytes>,
    permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let _permit = permit;
    let _gauge = super::WatcherGauge::enter();
    if frames
        .send(Bytes::from_static(READY_COMMENT.as_bytes()))
        .await
        .is_err()
    {
        return;
    }
    let mut rotations = stream::select_all(watched.into_iter().map(rotations));
    let mut keep_alive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    loop {
        let frame = tokio::select! {
            _ = frames.closed() => return,
            _ = shutdown.cancelled() => return,
            _ = keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
            rotation = rotations.next() => match rotation {
                Some(frame) => frame,
                // Every channel closed: the cache is gone.
                None => return,
            },
        };
        if frames.send(frame).await.is_err() {
            return;
        }
    }
}

/// The frames of one secret's rotations: one per version that differs from the last one sent.
fn rotations(watched: Watched) -> BoxStream<'static, Bytes> {
    let Watched {
        name,
        versions,
        known,
    } = watched;
    stream::unfold(
        (name, versions, known),
        |(name, mut versions, mut last)| async move {
            loop {
                let current = versions.borrow_and_update().clone();
                if let Some(version) = current {
                    let news = last
                        .as_deref()
                        .is_none_or(|last| !last.eq_ignore_ascii_case(&version));
                    if news {
                        let frame = event_frame(&name, &version);
                        last = Some(version);
                        return Some((frame, (name, versions, last)));
                    }
                }
                versions.changed().await.ok()?;
            }
        },
    )
    .boxed()
}

fn event_frame(name: &str, version: &str) -> Bytes {
    // Two strings: serialising cannot fail.
    let data = serde_json::to_string(&Rotation { name, version }).unwrap_or_default();
    Bytes::from(format!("data: {data}\n\n"))
}
