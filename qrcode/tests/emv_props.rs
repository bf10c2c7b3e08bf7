//! Property tests of the EMV MPM codec: encode → decode round trips, and decoding garbage never
//! panics.

use paymux_qrcode::emv::{self, DataObject, EmvError, Mode, Payload, SubObject};
use proptest::prelude::*;

/// Values mixing ASCII, CJK, Hangul and combining marks.
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            proptest::char::range(' ', '~'),
            proptest::char::range('一', '龥'),
            proptest::char::range('가', '힣'),
            Just('\u{17D2}'),
        ],
        1..=max,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

/// IDs free for random objects: not 52/53/54/58/59/60 (fixed below, they have formats) nor 63.
fn free_id() -> impl Strategy<Value = u8> {
    (2u8..=99).prop_filter("fixed or CRC", |id| {
        !matches!(id, 52 | 53 | 54 | 58 | 59 | 60 | 63)
    })
}

fn object(id: u8) -> BoxedStrategy<DataObject> {
    let is_template = matches!(id, 26..=51 | 62 | 64 | 80..=99);
    if is_template {
        proptest::collection::btree_map(0u8..=99, text(12), 1..4)
            .prop_map(move |subs| {
                let mut subs: Vec<SubObject> = subs
                    .into_iter()
                    .map(|(sid, v)| SubObject::new(sid, v).expect("short sub-object"))
                    .collect();
                // Strict mode wants a GUI in merchant-account templates.
                if (26..=51).contains(&id) && !subs.iter().any(|s| s.id().get() == 0) {
                    subs.insert(0, SubObject::new(0, "A000000001").expect("gui"));
                }
                DataObject::template(id, subs).expect("fits in 99")
            })
            .boxed()
    } else {
        text(30)
            .prop_map(move |v| DataObject::primitive(id, v).expect("fits in 99"))
            .boxed()
    }
}

prop_compose! {
    fn payload()(
        ids in proptest::collection::btree_set(free_id(), 0..6),
        account in 2u8..=51,
        amount in proptest::option::of("[0-9]{1,7}(\\.[0-9]{2})?"),
        name in text(25),
        city in text(15),
        dynamic in any::<bool>(),
    )(
        objects in ids.into_iter().filter(move |id| *id != account).map(object).collect::<Vec<_>>(),
        account_object in object(account),
        amount in Just(amount),
        name in Just(name),
        city in Just(city),
        dynamic in Just(dynamic),
    ) -> Payload {
        let mut all = vec![
            DataObject::primitive(0, "01").expect("ok"),
            DataObject::primitive(1, if dynamic { "12" } else { "11" }).expect("ok"),
            account_object,
            DataObject::primitive(52, "5812").expect("ok"),
            DataObject::primitive(53, "156").expect("ok"),
        ];
        if let Some(a) = amount {
            all.push(DataObject::primitive(54, a).expect("ok"));
        }
        all.push(DataObject::primitive(58, "CN").expect("ok"));
        all.push(DataObject::primitive(59, name).expect("ok"));
        all.push(DataObject::primitive(60, city).expect("ok"));
        // Random extra objects go after the fixed ones (the decoder keeps any order).
        all.extend(objects.into_iter().filter(|o| o.id().get() != 1));
        Payload::new(all).expect("under 512 characters")
    }
}

/// One `ID LL VALUE` object with a two-digit id: the value is text or itself a run of objects (as
/// template contents are), and the length is right most of the time, so framing goes deep.
fn raw_object() -> impl Strategy<Value = String> {
    let sub = (0u8..=99, text(8)).prop_map(|(id, v)| format!("{id:02}{:02}{v}", v.chars().count()));
    let value = prop_oneof![
        3 => text(20),
        1 => proptest::collection::vec(sub, 0..4).prop_map(|subs| subs.concat()),
        1 => Just(String::new()),
    ];
    let wrong_length = prop_oneof![4 => Just(None), 1 => (0usize..=99).prop_map(Some)];
    (0u8..=99, value, wrong_length).prop_map(|(id, v, len)| {
        format!("{id:02}{:02}{v}", len.unwrap_or_else(|| v.chars().count()))
    })
}

/// How a framed string ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    NoCrc,
    Crc,
    LowercaseCrc,
    WrongCrc,
}

/// Runs of objects, mostly after the format indicator `000201`, ending with a CRC object (right,
/// lowercase or wrong) or none: past the first checks, into framing, templates, the CRC and content.
fn framed() -> impl Strategy<Value = (String, Ending)> {
    (
        prop_oneof![3 => Just(true), 1 => Just(false)],
        proptest::collection::vec(raw_object(), 0..8),
        prop_oneof![
            Just(Ending::NoCrc),
            Just(Ending::Crc),
            Just(Ending::LowercaseCrc),
            Just(Ending::WrongCrc),
        ],
    )
        .prop_map(|(indicator, objects, ending)| {
            let mut s = if indicator {
                "000201".to_string()
            } else {
                String::new()
            };
            s.push_str(&objects.concat());
            match ending {
                Ending::NoCrc => {}
                Ending::Crc | Ending::LowercaseCrc => {
                    s.push_str("6304");
                    let crc = emv::crc16_hex(&s);
                    s.push_str(&if matches!(ending, Ending::Crc) {
                        crc
                    } else {
                        crc.to_lowercase()
                    });
                }
                Ending::WrongCrc => {
                    s.push_str("6304");
                    let crc = u16::from_str_radix(&emv::crc16_hex(&s), 16).expect("hex") ^ 1;
                    s.push_str(&format!("{crc:04X}"));
                }
            }
            (s, ending)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decoding_framed_garbage_never_panics((s, ending) in framed()) {
        let strict = emv::decode(&s, Mode::Strict);
        let lenient = emv::decode(&s, Mode::Lenient);
        // A CRC computed over the text is never the reason for a rejection (framing and content may
        // be); a wrong one always is, when nothing before it fails.
        let crc_error = |r: &Result<Payload, EmvError>| matches!(r, Err(EmvError::Crc { .. }));
        match ending {
            Ending::Crc => {
                prop_assert!(!crc_error(&strict), "{s}: {strict:?}");
                prop_assert!(!crc_error(&lenient), "{s}: {lenient:?}");
            }
            Ending::LowercaseCrc => prop_assert!(!crc_error(&lenient), "{s}: {lenient:?}"),
            Ending::WrongCrc => prop_assert!(lenient.is_err(), "{s}"),
            Ending::NoCrc => prop_assert!(lenient.is_err(), "{s}"),
        }
    }

    #[test]
    fn encode_then_decode_round_trips(p in payload()) {
        let text = emv::encode(&p);
        for mode in [Mode::Strict, Mode::Lenient] {
            let back = emv::decode(&text, mode);
            prop_assert!(back.is_ok(), "{text}: {back:?}");
            let back = back.expect("checked");
            prop_assert_eq!(back.without_crc(), p.clone());
            prop_assert_eq!(emv::encode(&back), text.clone());
        }
    }

    #[test]
    fn decoding_arbitrary_strings_never_panics(s in ".{0,600}") {
        let _ = emv::decode(&s, Mode::Strict);
        let _ = emv::decode(&s, Mode::Lenient);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let s = String::from_utf8_lossy(&bytes);
        let _ = emv::decode(&s, Mode::Strict);
        let _ = emv::decode(&s, Mode::Lenient);
    }

    #[test]
    fn mutated_payloads_are_rejected_without_panics(
        p in payload(),
        cut in 0usize..600,
        flip in 0usize..600,
        c in prop_oneof![any::<char>(), proptest::char::range('0', 'Z')],
    ) {
        let text = emv::encode(&p);
        let chars: Vec<char> = text.chars().collect();
        let mut mutated: Vec<char> = chars.iter().copied().take(cut.max(1)).collect();
        let at = flip % mutated.len().max(1);
        let original = mutated.get(at).copied();
        if let Some(slot) = mutated.get_mut(at) {
            *slot = c;
        }
        let mutated: String = mutated.into_iter().collect();
        let strict = emv::decode(&mutated, Mode::Strict);
        let lenient = emv::decode(&mutated, Mode::Lenient);
        // A one-byte substitution in a full-length payload is always caught (framing, CRC or
        // content): CRC-16 detects every burst error of up to 16 bits. The only change accepted is
        // lowercasing a CRC hex digit, in lenient mode.
        let one_byte = original.is_some_and(|o| o.is_ascii()) && c.is_ascii();
        if one_byte && mutated != text && mutated.chars().count() == chars.len() {
            prop_assert!(strict.is_err(), "{mutated}");
            prop_assert!(
                lenient.is_err() || mutated.to_uppercase() == text.to_uppercase(),
                "{mutated}"
            );
        }
    }
}
