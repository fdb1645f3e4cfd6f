//! A client that pushes to a webhook as Event Grid does (handshakes, headers, retries by status).
