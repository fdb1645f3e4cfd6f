//! Pull from an Event Grid namespace topic (HTTP peek-lock).
