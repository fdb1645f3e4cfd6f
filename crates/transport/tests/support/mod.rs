//! A connector whose every attempt is scripted, and what it saw.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyvault_invalidator_core::SourceError;
use keyvault_invalidator_transport::{
    Attempt, CloseReason, Connector, Generation, Incoming, Lifecycle,
};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

pub type Item = Result<u32, SourceError>;

/// What the connector does at one attempt.
pub enum Step {
    Connect,
    Fail(SourceError),
    /// Connects once notified, giving up when the lifecycle closes.
    WaitFor(Arc<Notify>),
    /// Connects once notified, whatever happens meanwhile.
    WaitIgnoringClose(Arc<Notify>),
    Panic,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An attempt began: its generation, and the milliseconds since the test began.
    Open(u64, u64),
    Close(u64, CloseReason),
}

pub struct Fake {
    started: Instant,
    script: Mutex<VecDeque<Step>>,
    events: Arc<Mutex<Vec<Event>>>,
    /// Feeds each connection's incoming side, by generation (index 0: generation 1).
    feeds: Arc<Mutex<Vec<mpsc::UnboundedSender<Item>>>>,
    pub shutdown_error: Option<&'static str>,
}

pub struct Probe {
    events: Arc<Mutex<Vec<Event>>>,
    feeds: Arc<Mutex<Vec<mpsc::UnboundedSender<Item>>>>,
}

impl Probe {
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    pub fn send(&self, generation: u64, item: Item) {
        let feeds = self.feeds.lock().unwrap();
        feeds[usize::try_from(generation - 1).unwrap()]
            .send(item)
            .unwrap();
    }
}

pub fn fake(script: Vec<Step>) -> (Fake, Probe) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let feeds = Arc::new(Mutex::new(Vec::new()));
    let fake = Fake {
        started: Instant::now(),
        script: Mutex::new(script.into()),
        events: events.clone(),
        feeds: feeds.clone(),
        shutdown_error: None,
    };
    (fake, Probe { events, feeds })
}

pub struct FakeConnection(pub Generation);

pub struct Feed(mpsc::UnboundedReceiver<Item>);

impl Incoming for Feed {
    type Item = u32;

    async fn next(&mut self) -> Item {
        let ended = || Err(SourceError::transient("the feed ended"));
        self.0.recv().await.unwrap_or_else(ended)
    }

    fn next_if_ready(&mut self) -> Option<Item> {
        self.0.try_recv().ok()
    }
}

impl Fake {
    fn connection(&self, attempt: &Attempt) -> (FakeConnection, Feed) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut feeds = self.feeds.lock().unwrap();
        let index = usize::try_from(attempt.generation().get() - 1).unwrap();
        while feeds.len() <= index {
            feeds.push(mpsc::unbounded_channel().0);
        }
        feeds[index] = sender;
        (FakeConnection(attempt.generation()), Feed(receiver))
    }
}

impl Connector for Fake {
    const NAME: &'static str = "Fake";
    const METRICS_PREFIX: &'static str = "fake";
    type Connection = FakeConnection;
    type Incoming = Feed;

    async fn open(&self, attempt: &Attempt) -> Result<(FakeConnection, Feed), SourceError> {
        let at = u64::try_from(self.started.elapsed().as_millis()).unwrap();
        self.events
            .lock()
            .unwrap()
            .push(Event::Open(attempt.generation().get(), at));
        let step = self.script.lock().unwrap().pop_front();
        match step.unwrap_or(Step::Connect) {
            Step::Connect => Ok(self.connection(attempt)),
            Step::Fail(error) => Err(error),
            Step::WaitFor(notify) => {
                attempt
                    .unless_closed(async {
                        notify.notified().await;
                        Ok(())
                    })
                    .await?;
                Ok(self.connection(attempt))
            }
            Step::WaitIgnoringClose(notify) => {
                notify.notified().await;
                Ok(self.connection(attempt))
            }
            Step::Panic => panic!("the connector panicked"),
        }
    }

    async fn close(
        &self,
        connection: Arc<FakeConnection>,
        reason: CloseReason,
    ) -> Result<(), SourceError> {
        self.events
            .lock()
            .unwrap()
            .push(Event::Close(connection.0.get(), reason));
        match (reason, self.shutdown_error) {
            (CloseReason::Shutdown, Some(message)) => Err(SourceError::transient(message)),
            _ => Ok(()),
        }
    }

    fn peer(&self) -> String {
        "the fake".to_owned()
    }
}

/// 100 ms, 200 ms, 400 ms, ...: exact, so the tests can tell every pause.
pub fn doubling(failures: u32) -> Duration {
    Duration::from_millis(100 << (failures - 1).min(10))
}

pub fn lifecycle(fake: Fake) -> Lifecycle<Fake> {
    Lifecycle::builder(fake).pause_with(doubling).build()
}

pub fn refused(n: u32) -> SourceError {
    SourceError::transient(format!("refused {n}"))
}
