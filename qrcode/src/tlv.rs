//! EMV BER-TLV as read from contactless (NFC) cards and consumer-presented QR codes (CPM).
//!
//! [`decode`] splits bytes into a tree of [`Tlv`]: tags of one to four bytes (first byte `xxx11111`
//! continues, then every byte with bit 8 set continues), short lengths (`0x00`–`0x7F`) and long
//! lengths (`0x81`–`0x84` followed by 1–4 bytes), constructed objects (bit 6 of the first tag byte)
//! split recursively up to [`MAX_DEPTH`] levels. `0x00` bytes between objects are padding, as EMV
//! allows. Indefinite lengths (`0x80`) are refused: EMV does not use them.
//!
//! Card data is sensitive. [`card_data`] extracts the PAN (tag 5A) and the track 2 equivalent data
//! (tag 57) into [`Pan`] and [`Track2`], whose `Debug` and `Display` show only the last four digits;
//! [`Pan::token`] gives a keyed token to store instead of the number. The `Debug` of a [`Tlv`] hides
//! the values of 5A, 57, 56, 9F6B, 9F1F, 9F20 and 5F20 (PAN, tracks, cardholder name).

use std::fmt;

use ring::hmac;

/// How deeply constructed objects may nest.
pub const MAX_DEPTH: usize = 16;

/// A tag, its bytes packed big-endian (`0x9F26`). Displays as uppercase hex (`9F26`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub u32);

impl Tag {
    fn first_byte(self) -> u8 {
        let bytes = self.0.to_be_bytes();
        bytes.into_iter().find(|b| *b != 0).unwrap_or(0)
    }

    /// Bit 6 of the first byte: the value is a list of objects.
    pub fn is_constructed(self) -> bool {
        self.first_byte() & 0x20 != 0
    }

    fn is_sensitive(self) -> bool {
        matches!(
            self.0,
            0x5A | 0x57 | 0x56 | 0x9F6B | 0x9F1F | 0x9F20 | 0x5F20
        )
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0.to_be_bytes();
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(3);
        for b in &bytes[start..] {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({self})")
    }
}

/// The value of a TLV object.
#[derive(Clone, PartialEq, Eq)]
pub enum TlvValue {
    Primitive(Vec<u8>),
    Constructed(Vec<Tlv>),
}

/// One BER-TLV object.
#[derive(Clone, PartialEq, Eq)]
pub struct Tlv {
    pub tag: Tag,
    /// The length of the value in bytes, as encoded.
    pub len: usize,
    pub value: TlvValue,
}

impl Tlv {
    /// The primitive value, if this object is primitive.
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.value {
            TlvValue::Primitive(b) => Some(b),
            TlvValue::Constructed(_) => None,
        }
    }

    /// The children, if this object is constructed.
    pub fn children(&self) -> &[Tlv] {
        match &self.value {
            TlvValue::Primitive(_) => &[],
            TlvValue::Constructed(c) => c,
        }
    }
}

impl fmt::Debug for Tlv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            TlvValue::Primitive(_) if self.tag.is_sensitive() => {
                write!(f, "{} <{} bytes redacted>", self.tag, self.len)
            }
            TlvValue::Primitive(b) => {
                write!(f, "{} ", self.tag)?;
                for byte in b {
                    write!(f, "{byte:02X}")?;
                }
                Ok(())
            }
            TlvValue::Constructed(children) => {
                write!(f, "{} ", self.tag)?;
                f.debug_list().entries(children).finish()
            }
        }
    }
}

/// Why bytes are not BER-TLV. `at` is a byte offset from the start of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlvError {
    #[error("input ends inside a tag at byte {at}")]
    TruncatedTag { at: usize },
    #[error("tag at byte {at} is longer than 4 bytes")]
    TagTooLong { at: usize },
    #[error("tag {tag}: input ends inside the length at byte {at}")]
    TruncatedLength { tag: Tag, at: usize },
    #[error("tag {tag}: indefinite length at byte {at} is not used by EMV")]
    IndefiniteLength { tag: Tag, at: usize },
    #[error("tag {tag}: length at byte {at} uses more than 4 bytes")]
    LengthTooLong { tag: Tag, at: usize },
    #[error("tag {tag}: value of {declared} bytes at byte {at}, only {available} remain")]
    TruncatedValue {
        tag: Tag,
        at: usize,
        declared: usize,
        available: usize,
    },
    #[error("constructed objects nest deeper than {MAX_DEPTH} at byte {at}")]
    TooDeep { at: usize },
}

/// Decodes a sequence of BER-TLV objects (see the module docs).
pub fn decode(bytes: &[u8]) -> Result<Vec<Tlv>, TlvError> {
    decode_at(bytes, 0, 0)
}

fn decode_at(bytes: &[u8], offset: usize, depth: usize) -> Result<Vec<Tlv>, TlvError> {
    if depth > MAX_DEPTH {
        return Err(TlvError::TooDeep { at: offset });
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0x00 {
            i += 1;
            continue;
        }
        // Tag.
        let tag_at = offset + i;
        let first = bytes[i];
        let mut tag = u32::from(first);
        i += 1;
        if first & 0x1F == 0x1F {
            let mut tag_len = 1;
            loop {
                let Some(&b) = bytes.get(i) else {
                    return Err(TlvError::TruncatedTag { at: tag_at });
                };
                tag_len += 1;
                if tag_len > 4 {
                    return Err(TlvError::TagTooLong { at: tag_at });
                }
                tag = (tag << 8) | u32::from(b);
                i += 1;
                if b & 0x80 == 0 {
                    break;
                }
            }
        }
        let tag = Tag(tag);
        // Length.
        let len_at = offset + i;
        let Some(&l) = bytes.get(i) else {
            return Err(TlvError::TruncatedLength { tag, at: len_at });
        };
        i += 1;
        let len = match l {
            0x00..=0x7F => usize::from(l),
            0x80 => return Err(TlvError::IndefiniteLength { tag, at: len_at }),
            0x81..=0x84 => {
                let n = usize::from(l & 0x7F);
                let Some(len_bytes) = bytes.get(i..i + n) else {
                    return Err(TlvError::TruncatedLength { tag, at: len_at });
                };
                i += n;
                len_bytes
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
            }
            _ => return Err(TlvError::LengthTooLong { tag, at: len_at }),
        };
        // Value.
        let available = bytes.len() - i;
        if len > available {
            return Err(TlvError::TruncatedValue {
                tag,
                at: offset + i,
                declared: len,
                available,
            });
        }
        let value_bytes = &bytes[i..i + len];
        let value = if tag.is_constructed() {
            TlvValue::Constructed(decode_at(value_bytes, offset + i, depth + 1)?)
        } else {
            TlvValue::Primitive(value_bytes.to_vec())
        };
        i += len;
        out.push(Tlv { tag, len, value });
    }
    Ok(out)
}

/// The first object with `tag`, searching depth-first.
pub fn find(tlvs: &[Tlv], tag: Tag) -> Option<&Tlv> {
    tlvs.iter().find_map(|t| {
        if t.tag == tag {
            Some(t)
        } else {
            find(t.children(), tag)
        }
    })
}

/// A primary account number. Never printed in clear: `Debug` and `Display` show `****3458`.
#[derive(Clone, PartialEq, Eq)]
pub struct Pan(String);

impl Pan {
    /// Parses 12–19 decimal digits.
    pub fn parse(digits: &str) -> Result<Pan, CardError> {
        if (12..=19).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Pan(digits.to_string()))
        } else {
            Err(CardError::BadPan {
                digits: digits.len(),
            })
        }
    }

    pub fn last_four(&self) -> &str {
        &self.0[self.0.len() - 4..]
    }

    /// `****` followed by the last four digits.
    pub fn masked(&self) -> String {
        format!("****{}", self.last_four())
    }

    /// A keyed token for the PAN: HMAC-SHA256 under `key`, first 16 bytes in lowercase hex. Store
    /// this with [`Pan::last_four`], never the number.
    pub fn token(&self, key: &[u8]) -> String {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), self.0.as_bytes());
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether the Luhn check digit is right.
    pub fn luhn_ok(&self) -> bool {
        let sum: u32 = self
            .0
            .bytes()
            .rev()
            .enumerate()
            .map(|(i, b)| {
                let d = u32::from(b - b'0');
                if i % 2 == 1 {
                    let d2 = d * 2;
                    if d2 > 9 { d2 - 9 } else { d2 }
                } else {
                    d
                }
            })
            .sum();
        sum.is_multiple_of(10)
    }

    /// The clear number, for the channel request that must carry it and nothing else.
    pub fn expose_for_channel(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pan({})", self.masked())
    }
}

impl fmt::Display for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Track 2 equivalent data (tag 57): PAN, `D`, expiry YYMM, service code, discretionary data. The
/// discretionary data is not kept.
#[derive(Clone, PartialEq, Eq)]
pub struct Track2 {
    pub pan: Pan,
    pub expiry_yymm: String,
    pub service_code: String,
}

impl fmt::Debug for Track2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Track2")
            .field("pan", &self.pan)
            .field("expiry_yymm", &"****")
            .field("service_code", &self.service_code)
            .finish()
    }
}

impl fmt::Display for Track2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "track2 of {}", self.pan)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    #[error("PAN must be 12 to 19 digits, got {digits} characters")]
    BadPan { digits: usize },
    #[error("tag {tag} is not packed decimal")]
    NotBcd { tag: Tag },
    #[error("track 2 data has no field separator D")]
    NoSeparator,
    #[error("track 2 data is too short after the separator")]
    ShortTrack2,
    #[error("PAN in 5A and PAN in track 2 differ")]
    PanMismatch,
}

/// The card data of a contactless read or a CPM code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardData {
    /// Tag 5A, or else the PAN of track 2.
    pub pan: Option<Pan>,
    pub track2: Option<Track2>,
}

/// Nibbles of packed data as characters 0–9, A–F; trailing `F` padding removed.
fn nibbles(bytes: &[u8]) -> String {
    let mut s: String = bytes
        .iter()
        .flat_map(|b| [b >> 4, b & 0x0F])
        .map(|n| char::from_digit(u32::from(n), 16).map_or('?', |c| c.to_ascii_uppercase()))
        .collect();
    while s.ends_with('F') {
        s.pop();
    }
    s
}

/// Extracts the PAN (5A) and track 2 (57) from decoded objects, anywhere in the tree.
pub fn card_data(tlvs: &[Tlv]) -> Result<CardData, CardError> {
    let pan = match find(tlvs, Tag(0x5A)).and_then(Tlv::bytes) {
        Some(b) => {
            let digits = nibbles(b);
            if !digits.bytes().all(|c| c.is_ascii_digit()) {
                return Err(CardError::NotBcd { tag: Tag(0x5A) });
            }
            Some(Pan::parse(&digits)?)
        }
        None => None,
    };
    let track2 = match find(tlvs, Tag(0x57)).and_then(Tlv::bytes) {
        Some(b) => Some(parse_track2(&nibbles(b))?),
        None => None,
    };
    if let (Some(p), Some(t)) = (&pan, &track2)
        && p != &t.pan
    {
        return Err(CardError::PanMismatch);
    }
    let pan = pan.or_else(|| track2.as_ref().map(|t| t.pan.clone()));
    Ok(CardData { pan, track2 })
}

fn parse_track2(text: &str) -> Result<Track2, CardError> {
    let (pan, rest) = text.split_once('D').ok_or(CardError::NoSeparator)?;
    let pan = Pan::parse(pan)?;
    if rest.len() < 7 {
        return Err(CardError::ShortTrack2);
    }
    let (expiry, rest) = rest.split_at(4);
    let service_code = &rest[..3];
    if !expiry
        .bytes()
        .chain(service_code.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return Err(CardError::NotBcd { tag: Tag(0x57) });
    }
    Ok(Track2 {
        pan,
        expiry_yymm: expiry.to_string(),
        service_code: service_code.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn multi_byte_tags_and_long_lengths() {
        let mut bytes = hex("9F02060000000012349F1A020156");
        bytes.extend(hex("DF8101")); // three-byte tag
        bytes.extend([0x81, 0x80]);
        bytes.extend([0xAB; 0x80]);
        bytes.extend(hex("0000")); // padding
        bytes.extend(hex("9F36820002ABCD"));
        let tlvs = decode(&bytes).expect("valid");
        let tags: Vec<String> = tlvs.iter().map(|t| t.tag.to_string()).collect();
        assert_eq!(tags, ["9F02", "9F1A", "DF8101", "9F36"]);
        assert_eq!(tlvs[2].len, 128);
        assert_eq!(tlvs[3].bytes(), Some(&[0xAB, 0xCD][..]));
    }

    #[test]
    fn errors_say_where() {
        assert_eq!(decode(&hex("9F")), Err(TlvError::TruncatedTag { at: 0 }));
        assert_eq!(
            decode(&hex("9F8181818101")),
            Err(TlvError::TagTooLong { at: 0 })
        );
        assert_eq!(
            decode(&hex("5A")),
            Err(TlvError::TruncatedLength {
                tag: Tag(0x5A),
                at: 1
            })
        );
        assert_eq!(
            decode(&hex("5A80")),
            Err(TlvError::IndefiniteLength {
                tag: Tag(0x5A),
                at: 1
            })
        );
        assert_eq!(
            decode(&hex("5A850000000001")),
            Err(TlvError::LengthTooLong {
                tag: Tag(0x5A),
                at: 1
            })
        );
        assert_eq!(
            decode(&hex("5A0812")),
            Err(TlvError::TruncatedValue {
                tag: Tag(0x5A),
                at: 2,
                declared: 8,
                available: 1
            })
        );
        assert_eq!(
            decode(
                &hex("6104" /* constructed */)
                    .into_iter()
                    .chain(hex("5A03"))
                    .collect::<Vec<_>>()
            ),
            Err(TlvError::TruncatedValue {
                tag: Tag(0x61),
                at: 2,
                declared: 4,
                available: 2
            })
        );
        let mut deep = Vec::new();
        for _ in 0..40 {
            deep.extend([0x61, 0x02]);
        }
        // Lengths do not add up, but the depth limit or a truncation stops it without panicking.
        assert!(decode(&deep).is_err());
        let mut nested = vec![0x01, 0x00];
        for _ in 0..(MAX_DEPTH + 2) {
            let mut outer = vec![0x61, nested.len() as u8];
            outer.extend(nested);
            nested = outer;
        }
        assert!(matches!(decode(&nested), Err(TlvError::TooDeep { .. })));
    }

    #[test]
    fn pan_is_masked_everywhere_but_its_explicit_accessor() {
        let tlvs = decode(&hex("62105A0812345678901234585F2403251231")).expect("valid");
        let card = card_data(&tlvs).expect("card data");
        let pan = card.pan.expect("pan");
        assert_eq!(pan.last_four(), "3458");
        assert_eq!(pan.to_string(), "****3458");
        let shown = format!("{pan:?} {pan} {tlvs:?}");
        assert!(!shown.contains("1234567890123458"), "{shown}");
        assert!(shown.contains("5A <8 bytes redacted>"), "{shown}");
        assert_eq!(pan.expose_for_channel(), "1234567890123458");
        assert!(!pan.luhn_ok(), "the EMVCo example PAN fails Luhn");
        let token = pan.token(b"tokenisation key");
        assert_eq!(token.len(), 32);
        assert_eq!(token, pan.token(b"tokenisation key"));
        assert_ne!(token, pan.token(b"another key"));
        assert!(!Pan::parse("4111111111111112").expect("digits").luhn_ok());
        assert!(Pan::parse("4111111111111111").expect("digits").luhn_ok());
    }

    #[test]
    fn track2_gives_pan_expiry_and_service_code() {
        let tlvs = decode(&hex("570F1234567890123458D191220112345F")).expect("valid");
        let card = card_data(&tlvs).expect("card data");
        let t2 = card.track2.expect("track2");
        assert_eq!(t2.pan.last_four(), "3458");
        assert_eq!(t2.expiry_yymm, "1912");
        assert_eq!(t2.service_code, "201");
        assert_eq!(card.pan, Some(t2.pan.clone()));
        assert!(!format!("{t2:?} {t2}").contains("1234567890123458"));
        assert_eq!(
            card_data(&decode(&hex("5703123456")).expect("valid")),
            Err(CardError::NoSeparator)
        );
        assert_eq!(
            card_data(
                &decode(&hex(
                    "5A081234567890123458570F4111111111111111D191220112345F"
                ))
                .expect("valid")
            ),
            Err(CardError::PanMismatch)
        );
        assert_eq!(
            card_data(&decode(&hex("5A021234")).expect("valid")),
            Err(CardError::BadPan { digits: 4 })
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(tlvs) = decode(&bytes) {
                let _ = card_data(&tlvs);
                let _ = format!("{tlvs:?}");
            }
        }

        #[test]
        fn constructed_garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..120)) {
            let mut bytes = vec![0x62, body.len() as u8];
            bytes.extend(body);
            if let Ok(tlvs) = decode(&bytes) {
                let _ = card_data(&tlvs);
            }
        }
    }
}
