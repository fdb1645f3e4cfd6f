//! A wrong password against the real broker: the source's error says the login was refused
//! (not that permissions are missing), is fatal, and never holds the password. Skipped loudly
//! without a broker on 127.0.0.1:5672 unless `KVI_REQUIRE_RABBITMQ=1`.

mod support;

use std::time::Duration;

use keyvault_invalidator_core::SourceErrorKind;
use keyvault_invalidator_rabbitmq::{RabbitMqConfig, RabbitMqSource};

const WRONG_PASSWORD: &str = "not-the-guest-password-5d1c";

#[tokio::test]
async fn a_wrong_password_is_reported_as_a_refused_login() {
    let Some(url) = support::broker().await else {
        return;
    };
    let mut wrong = url::Url::parse(&url).expect("the broker URL is a URL");
    wrong
        .set_password(Some(WRONG_PASSWORD))
        .expect("an amqp URL takes a password");
    let config = RabbitMqConfig::new(wrong.as_str())
        .and_then(|c| c.instance_prefix(&support::unique("login")))
        .unwrap();
    let source = RabbitMqSource::new(config);

    let error = tokio::time::timeout(Duration::from_secs(30), source.connect())
        .await
        .expect("the broker answers a refused login within 30 s")
        .expect_err("a wrong password must not connect");

    assert_eq!(error.kind, SourceErrorKind::Fatal);
    assert!(
        error.message.starts_with(
            "connecting to RabbitMQ: login refused: check the user name and password ("
        ),
        "{}",
        error.message
    );
    let shown = format!("{error} {error:?} {source:?}");
    assert!(
        !shown.contains(WRONG_PASSWORD),
        "the password leaked: {shown}"
    );
}
