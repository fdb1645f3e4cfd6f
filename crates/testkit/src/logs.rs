//! [`CapturedLogs`]: a log writer that keeps what it is given, for tests that check what was
//! logged (an outage's warning) and what never is (a secret).

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

/// A shared, growing buffer of log output. Clones write to the same buffer, so a
/// `tracing_subscriber::fmt()` subscriber can be handed one per line, as
/// `.with_writer(move || logs.clone())`, while the test keeps another to read.
///
/// ```
/// use std::io::Write;
/// use keyvault_invalidator_testkit::CapturedLogs;
///
/// let logs = CapturedLogs::default();
/// let mut writer = logs.clone();
/// writer.write_all(b"WARN reconnected\nINFO done\n").unwrap();
/// assert_eq!(logs.lines(), ["WARN reconnected", "INFO done"]);
/// assert!(!logs.text().contains("password"));
/// ```
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Everything written so far (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    /// Everything written so far, a line each.
    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }

    fn bytes(&self) -> MutexGuard<'_, Vec<u8>> {
        // A test that panicked while writing still left readable output.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for CapturedLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapturedLogs")
            .field("bytes", &self.bytes().len())
            .finish()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.bytes().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
