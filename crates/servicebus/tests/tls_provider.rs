//! Connecting over `amqps` installs no process-wide rustls crypto provider: the connection's TLS
//! configuration names its own. This binary holds one test only, so nothing else in the process
//! could have installed (or relied on) one.

use keyvault_invalidator_core::{EventSource, SourceErrorKind};
use keyvault_invalidator_servicebus::{ServiceBusConfig, ServiceBusSource};
use keyvault_invalidator_testkit::servicebus_emulator::ServiceBusEmulator;
use keyvault_invalidator_testkit::EVENTUALLY_TIMEOUT;
use tokio::io::AsyncReadExt;

/// A TLS record's content type for a handshake message (RFC 8446, section 5.1), and the
/// handshake type of a ClientHello (section 4).
const HANDSHAKE_RECORD: u8 = 0x16;
const CLIENT_HELLO: u8 = 0x01;

#[tokio::test]
async fn an_amqps_connection_starts_tls_without_a_process_wide_provider() {
    assert!(rustls::crypto::CryptoProvider::get_default().is_none());
    // The management API on the emulator (so the subscription is created), AMQP on a listener
    // that reads what the client sends first and then hangs up: no AMQP TLS peer is needed to
    // see the handshake begin.
    let emulator = ServiceBusEmulator::start().await.unwrap();
    emulator.create_topic("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let first_bytes = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut header = [0u8; 6];
        stream.read_exact(&mut header).await.unwrap();
        header
    });
    let config = ServiceBusConfig::connection_string(&emulator.connection_string(Some("tls")))
        .unwrap()
        .management_endpoint(emulator.management_endpoint())
        .unwrap()
        // A name, not an address: TLS needs a server name to send.
        .amqp_endpoint(&format!("amqps://localhost:{port}"))
        .unwrap();
    let source = ServiceBusSource::new(config);

    let error = tokio::time::timeout(EVENTUALLY_TIMEOUT, source.connect())
        .await
        .expect("connecting ends once the listener hangs up")
        .expect_err("the listener speaks no TLS");
    assert_eq!(error.kind, SourceErrorKind::Transient, "{error}");
    let header = first_bytes.await.unwrap();
    assert_eq!(header[0], HANDSHAKE_RECORD, "first bytes: {header:?}");
    assert_eq!(header[5], CLIENT_HELLO, "first bytes: {header:?}");
    assert!(
        rustls::crypto::CryptoProvider::get_default().is_none(),
        "connecting installed a process-wide crypto provider"
    );
    let _ = source.close().await;
}
