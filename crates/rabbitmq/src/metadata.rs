//! What a delivery's properties say: its message id, how many times it was delivered, and its
//! headers as text. Everything here came from whoever published the message: nothing is
//! trusted.

use std::collections::BTreeMap;

use lapin::protocol::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::source::DELIVERY_COUNT_HEADER;

/// What a delivery's properties say, read once on arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The `message-id` property.
    pub message_id: Option<String>,
    /// How many times the message was delivered, this one included: at least 1.
    pub delivery_count: u32,
    /// The scalar headers as text, then `content-type` and `routing-key`.
    pub properties: BTreeMap<String, String>,
}

/// Reads the message id, the delivery count and the properties of a delivery. Everything in
/// `properties` came from whoever published the message: nothing is trusted.
pub fn read_metadata(
    properties: &BasicProperties,
    routing_key: &str,
    redelivered: bool,
) -> Metadata {
    let headers = properties.headers().as_ref();
    let mut text = BTreeMap::new();
    if let Some(table) = headers {
        for (key, value) in table.inner() {
            if let Some(value) = scalar_text(value) {
                text.insert(key.to_string(), value);
            }
        }
    }
    if let Some(content_type) = properties.content_type() {
        text.insert("content-type".to_owned(), content_type.to_string());
    }
    text.insert("routing-key".to_owned(), routing_key.to_owned());
    Metadata {
        message_id: properties.message_id().as_ref().map(|id| id.to_string()),
        delivery_count: delivery_count(headers, redelivered),
        properties: text,
    }
}

/// How many times this message has been delivered, this time included: one more than
/// [`DELIVERY_COUNT_HEADER`] (what this source counted before it republished the message), one
/// more again if the broker flags it redelivered (a delivery lost with a connection, which the
/// header does not know of), or a quorum queue's `x-delivery-count` (prior deliveries) plus one
/// if that is higher.
///
/// The headers come from whoever published the message, so they are untrusted: the arithmetic
/// saturates at `u32::MAX` (a message delivered that often is dead-lettered by any
/// `max_attempts` anyway), and see [`header_count`] for what a header may hold. The result is
/// always at least 1.
fn delivery_count(headers: Option<&FieldTable>, redelivered: bool) -> u32 {
    let republished = header_count(headers, DELIVERY_COUNT_HEADER).unwrap_or(0);
    let ours = republished
        .saturating_add(1)
        .saturating_add(u32::from(redelivered));
    let quorum = header_count(headers, "x-delivery-count").map(|prior| prior.saturating_add(1));
    quorum.map_or(ours, |q| q.max(ours))
}

/// A count from header `name`: an AMQP integer of any width, or a string holding one (a
/// publisher that writes headers as text); clamped into `u32` (negatives count as 0, values
/// above `u32::MAX` as `u32::MAX`). Anything else (floats, booleans, tables, text that is no
/// integer) is ignored, as if the header were absent, rather than guessed at.
fn header_count(headers: Option<&FieldTable>, name: &str) -> Option<u32> {
    let value = headers?.inner().get(&ShortString::from(name))?;
    let count = match value {
        AMQPValue::ShortString(text) => text_count(text.as_str())?,
        AMQPValue::LongString(text) => text_count(std::str::from_utf8(text.as_bytes()).ok()?)?,
        other => i128::from(header_i64(other)?),
    };
    Some(u32::try_from(count.max(0)).unwrap_or(u32::MAX))
}

/// An integer written as text: trimmed, an optional sign, digits. One of any length counts:
/// past what `i128` holds it stands for the largest (or smallest) value, which clamps the same.
fn text_count(text: &str) -> Option<i128> {
    let text = text.trim();
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    // Checked first: `parse` reports an overflow before it sees a later character that is no
    // digit.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<i128>().unwrap_or(if text.starts_with('-') {
        i128::MIN
    } else {
        i128::MAX
    }))
}

fn scalar_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortShortInt(_)
        | AMQPValue::ShortShortUInt(_)
        | AMQPValue::ShortInt(_)
        | AMQPValue::ShortUInt(_)
        | AMQPValue::LongInt(_)
        | AMQPValue::LongUInt(_)
        | AMQPValue::LongLongInt(_) => header_i64(value)?.to_string(),
        _ => return None,
    })
}

fn header_i64(value: &AMQPValue) -> Option<i64> {
    Some(match value {
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const QUORUM: &str = "x-delivery-count";

    fn table(headers: &[(&str, AMQPValue)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (name, value) in headers {
            table.insert(ShortString::from(*name), value.clone());
        }
        table
    }

    #[test]
    fn the_delivery_count_saturates_and_ignores_what_is_not_an_integer() {
        use AMQPValue as V;
        let long = |text: &str| V::LongString(text.into());
        let short = |text: &str| V::ShortString(text.into());
        // (our header, the quorum header, redelivered, expected count)
        let cases: Vec<(Option<V>, Option<V>, bool, u32)> = vec![
            (None, None, false, 1),
            (None, None, true, 2),
            (Some(V::LongUInt(2)), None, false, 3),
            (Some(V::LongUInt(2)), None, true, 4),
            (Some(V::ShortShortUInt(7)), None, false, 8),
            (Some(V::ShortInt(7)), None, false, 8),
            (Some(V::LongLongInt(7)), None, false, 8),
            // The overflow this function exists for: `u32::MAX + 1` panicked.
            (Some(V::LongUInt(u32::MAX)), None, false, u32::MAX),
            (Some(V::LongUInt(u32::MAX)), None, true, u32::MAX),
            (Some(V::LongUInt(u32::MAX - 1)), None, false, u32::MAX),
            (Some(V::LongUInt(u32::MAX - 1)), None, true, u32::MAX),
            (Some(V::LongLongInt(i64::MAX)), None, false, u32::MAX),
            (None, Some(V::LongUInt(u32::MAX)), false, u32::MAX),
            (None, Some(V::LongLongInt(i64::MAX)), true, u32::MAX),
            // Negatives count as 0.
            (Some(V::LongInt(-5)), None, false, 1),
            (Some(V::LongLongInt(i64::MIN)), None, true, 2),
            (Some(V::ShortShortInt(-1)), Some(V::LongInt(-1)), false, 1),
            // Integers written as text are read, clamped the same way.
            (Some(long("4")), None, false, 5),
            (Some(short(" 4 ")), None, false, 5),
            (Some(long("-3")), None, false, 1),
            (Some(long("4294967295")), None, false, u32::MAX),
            (Some(long("99999999999999999999")), None, false, u32::MAX),
            (None, Some(short("6")), false, 7),
            // Anything else is as if absent.
            (Some(long("four")), None, false, 1),
            (Some(long("4.5")), None, true, 2),
            (Some(long("")), None, false, 1),
            (Some(V::LongString(vec![0xff, 0xfe].into())), None, false, 1),
            (Some(V::Float(9.0)), None, false, 1),
            (Some(V::Double(f64::NAN)), None, false, 1),
            (Some(V::Boolean(true)), None, false, 1),
            (Some(V::Timestamp(9)), None, false, 1),
            (
                Some(V::Void),
                Some(V::FieldTable(FieldTable::default())),
                false,
                1,
            ),
            (
                Some(V::FieldArray(vec![V::LongUInt(9)].into())),
                None,
                false,
                1,
            ),
            // The higher of the two counts wins.
            (Some(V::LongUInt(1)), Some(V::LongUInt(5)), false, 6),
            (Some(V::LongUInt(5)), Some(V::LongUInt(1)), true, 7),
            (Some(V::LongUInt(5)), Some(V::Float(100.0)), false, 6),
        ];
        for (ours, quorum, redelivered, expected) in cases {
            let mut headers = Vec::new();
            if let Some(value) = &ours {
                headers.push((DELIVERY_COUNT_HEADER, value.clone()));
            }
            if let Some(value) = &quorum {
                headers.push((QUORUM, value.clone()));
            }
            let headers = table(&headers);
            assert_eq!(
                delivery_count(Some(&headers), redelivered),
                expected,
                "ours {ours:?}, quorum {quorum:?}, redelivered {redelivered}"
            );
        }
        assert_eq!(delivery_count(None, false), 1, "no headers at all");
        assert_eq!(delivery_count(None, true), 2);
    }

    /// Found by the `rabbitmq_metadata` fuzz target: integer text longer than `i128` holds was
    /// ignored (count 1) instead of clamped to `u32::MAX` as the documentation says. Its second
    /// find: such text followed by what is no digit is still no integer (`parse` reports the
    /// overflow first, so a fix that trusted its error kind alone counted it as `u32::MAX`).
    #[test]
    fn integer_text_too_long_for_any_integer_type_still_counts() {
        use AMQPValue as V;
        // The fuzzer's input: a quorum count of 41 digits, not flagged redelivered.
        let found = V::ShortString("+97755555555555555555555555555555555155580".into());
        assert_eq!(
            delivery_count(Some(&table(&[(QUORUM, found)])), false),
            u32::MAX
        );
        let digits = "9".repeat(200);
        for text in [
            digits.clone(),
            format!("  +{digits}\t"),
            format!("000{digits}"),
        ] {
            for value in [
                V::ShortString(text.as_str().into()),
                V::LongString(text.as_str().into()),
            ] {
                assert_eq!(
                    delivery_count(
                        Some(&table(&[(DELIVERY_COUNT_HEADER, value.clone())])),
                        false
                    ),
                    u32::MAX
                );
                assert_eq!(
                    delivery_count(Some(&table(&[(QUORUM, value)])), false),
                    u32::MAX
                );
            }
        }
        // As long and negative: no prior deliveries.
        let negative = V::LongString(format!("-{digits}").as_str().into());
        assert_eq!(
            delivery_count(Some(&table(&[(DELIVERY_COUNT_HEADER, negative)])), true),
            2
        );
        // The second input: past the overflow, characters that are no digits (NULs, which `trim`
        // keeps). Not an integer, so ignored: this delivery and the redelivery make 2.
        let found = format!(
            "{}{}{}\0\0\0\0",
            "\u{c}".repeat(44),
            "6".repeat(123),
            "\u{c}".repeat(19)
        );
        let value = V::ShortString(found.as_str().into());
        assert_eq!(
            delivery_count(Some(&table(&[(DELIVERY_COUNT_HEADER, value)])), true),
            2
        );
        // Still not integers: a sign alone, digits with a letter, inner spaces.
        let overflowing_then_letter = format!("{digits}x");
        for text in ["+", "-", "1 2", "12a", "++1", "", &overflowing_then_letter] {
            let value = V::ShortString(text.into());
            assert_eq!(
                delivery_count(Some(&table(&[(QUORUM, value)])), false),
                1,
                "{text:?}"
            );
        }
    }

    /// Every AMQP integer type, any value, with the edges weighted up: uniform values almost
    /// never hit them.
    fn integer_value() -> impl Strategy<Value = AMQPValue> {
        use AMQPValue as V;
        prop_oneof![
            1 => any::<i8>().prop_map(V::ShortShortInt),
            1 => any::<u8>().prop_map(V::ShortShortUInt),
            1 => any::<i16>().prop_map(V::ShortInt),
            1 => any::<u16>().prop_map(V::ShortUInt),
            1 => any::<i32>().prop_map(V::LongInt),
            1 => any::<u32>().prop_map(V::LongUInt),
            1 => any::<i64>().prop_map(V::LongLongInt),
            3 => prop_oneof![Just(0), Just(u32::MAX - 1), Just(u32::MAX)].prop_map(V::LongUInt),
            3 => prop_oneof![
                Just(i64::MIN),
                Just(-1),
                Just(i64::from(u32::MAX) + 1),
                Just(i64::MAX)
            ]
            .prop_map(V::LongLongInt),
        ]
    }

    /// Any scalar AMQP value; integers (the values that matter) about as often as all the
    /// rest together.
    fn scalar() -> impl Strategy<Value = AMQPValue> {
        use AMQPValue as V;
        prop_oneof![
            9 => integer_value(),
            1 => any::<bool>().prop_map(V::Boolean),
            1 => any::<f32>().prop_map(V::Float),
            1 => any::<f64>().prop_map(V::Double),
            1 => any::<u64>().prop_map(V::Timestamp),
            1 => Just(V::Void),
            1 => ".{0,24}".prop_map(|s| V::ShortString(s.into())),
            1 => "[ +-]?[0-9]{0,25} ?".prop_map(|s| V::LongString(s.into())),
            1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(|b| V::LongString(b.into())),
            1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(|b| V::ByteArray(b.into())),
        ]
    }

    fn value() -> impl Strategy<Value = AMQPValue> {
        scalar().prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|values| AMQPValue::FieldArray(values.into())),
                proptest::collection::vec(("[a-z-]{1,8}", inner), 0..4).prop_map(|entries| {
                    let mut table = FieldTable::default();
                    for (name, value) in entries {
                        table.insert(name.into(), value);
                    }
                    AMQPValue::FieldTable(table)
                }),
            ]
        })
    }

    /// Header tables with any values under any names, our two names included often.
    fn headers() -> impl Strategy<Value = FieldTable> {
        let name = prop_oneof![
            Just(DELIVERY_COUNT_HEADER.to_owned()),
            Just(QUORUM.to_owned()),
            "[a-z-]{1,12}",
        ];
        proptest::collection::vec((name, value()), 0..6).prop_map(|entries| {
            let mut table = FieldTable::default();
            for (name, value) in entries {
                table.insert(name.into(), value);
            }
            table
        })
    }

    /// The count a header value stands for, computed independently: any integer width, clamped.
    fn integer(value: &AMQPValue) -> Option<i128> {
        use AMQPValue as V;
        Some(match value {
            V::ShortShortInt(n) => (*n).into(),
            V::ShortShortUInt(n) => (*n).into(),
            V::ShortInt(n) => (*n).into(),
            V::ShortUInt(n) => (*n).into(),
            V::LongInt(n) => (*n).into(),
            V::LongUInt(n) => (*n).into(),
            V::LongLongInt(n) => (*n).into(),
            _ => return None,
        })
    }

    proptest! {
        #[test]
        fn any_header_table_gives_a_count_of_at_least_one_without_panicking(
            headers in headers(),
            redelivered in any::<bool>(),
        ) {
            let count = delivery_count(Some(&headers), redelivered);
            prop_assert!(count >= 1);
            // A message the broker flags redelivered was delivered at least twice.
            prop_assert!(count > u32::from(redelivered));
        }

        #[test]
        fn numeric_headers_give_the_exact_count(
            ours in proptest::option::of(integer_value()),
            quorum in proptest::option::of(integer_value()),
            redelivered in any::<bool>(),
            others in proptest::collection::vec(("[a-z]{1,12}", value()), 0..4),
        ) {
            let ours_n = ours.as_ref().map(|v| integer(v).expect("an integer"));
            let quorum_n = quorum.as_ref().map(|v| integer(v).expect("an integer"));
            // Headers under other names change nothing.
            let mut entries: Vec<(&str, AMQPValue)> =
                others.iter().map(|(name, value)| (name.as_str(), value.clone())).collect();
            if let Some(value) = ours {
                entries.push((DELIVERY_COUNT_HEADER, value));
            }
            if let Some(value) = quorum {
                entries.push((QUORUM, value));
            }
            let clamp = |n: i128| n.clamp(0, i128::from(u32::MAX));
            let by_us = clamp(ours_n.unwrap_or(0)) + 1 + i128::from(redelivered);
            let expected = match quorum_n {
                Some(prior) => by_us.max(clamp(prior) + 1),
                None => by_us,
            }
            .min(i128::from(u32::MAX));
            prop_assert_eq!(
                i128::from(delivery_count(Some(&table(&entries)), redelivered)),
                expected
            );
        }
    }
}
