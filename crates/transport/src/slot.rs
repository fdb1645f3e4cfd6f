//! [`ConnectSlot`]: the live connection of a transport, and the attempt to open one.

use std::future::Future;

use keyvault_invalidator_core::SourceError;

/// Holds a transport's live connection, and the attempt under way to open one.
///
/// The attempt runs in its own task. [`EventSource::receive`] must be cancel safe, and the job
/// drops it at shutdown: connecting inside it would either leave a half-open connection (holding
/// prefetched messages) or start over at every call. Here a dropped caller leaves the attempt
/// running, and the next caller awaits the same one.
///
/// [`Lifecycle`](crate::Lifecycle) is built on it; use it alone for a transport whose
/// connection needs none of the rest.
///
/// [`EventSource::receive`]: keyvault_invalidator_core::EventSource::receive
///
/// ```
/// use keyvault_invalidator_transport::ConnectSlot;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), keyvault_invalidator_core::SourceError> {
/// let mut slot = ConnectSlot::new();
/// let connection: &mut String = slot.get_or_open(|| async { Ok("connected".to_owned()) }).await?;
/// assert_eq!(connection, "connected");
/// assert_eq!(slot.take().as_deref(), Some("connected"));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ConnectSlot<T> {
    current: Option<T>,
    opening: Option<tokio::task::JoinHandle<Result<T, SourceError>>>,
}

impl<T> Default for ConnectSlot<T> {
    fn default() -> Self {
        ConnectSlot {
            current: None,
            opening: None,
        }
    }
}

impl<T: Send + 'static> ConnectSlot<T> {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// The live connection, or a new one from `open`, run in its own task (or the attempt an
    /// earlier, dropped caller started). A task that panicked is a transient error.
    pub async fn get_or_open<F, Fut>(&mut self, open: F) -> Result<&mut T, SourceError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, SourceError>> + Send + 'static,
    {
        let connection = match self.current.take() {
            Some(connection) => connection,
            None => {
                let opening = self.opening.get_or_insert_with(|| tokio::spawn(open()));
                let opened = opening.await;
                self.opening = None;
                opened.map_err(|e| {
                    SourceError::transient(format!("the connection task failed: {e}"))
                })??
            }
        };
        Ok(self.current.insert(connection))
    }

    /// The live connection, if any.
    pub fn current(&mut self) -> Option<&mut T> {
        self.current.as_mut()
    }

    /// Takes the live connection out (it is lost, or being closed).
    pub fn take(&mut self) -> Option<T> {
        self.current.take()
    }
}
