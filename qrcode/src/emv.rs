//! EMVCo merchant-presented mode (MPM) QR payloads: a typed model, an encoder and a strict or
//! lenient decoder.
//!
//! A payload is an ordered list of data objects `ID LL VALUE`: a two-digit ID, a two-digit length
//! that counts Unicode characters (code points, not bytes), and the value. IDs 26–51, 62, 64 and
//! 80–99 are templates whose value is itself a list of `ID LL VALUE` sub-objects (split one level);
//! every other ID, including 02–25, is primitive. The last object is the CRC (ID 63, length 04):
//! CRC-16/CCITT-FALSE over the UTF-8 bytes of everything up to and including `6304`, written as
//! four uppercase hex digits.
//!
//! # Decoding order and rules
//!
//! [`decode`] checks, in this order, and stops at the first failure:
//!
//! 1. fewer than 4 characters → [`EmvError::TooShort`]; more than [`MAX_PAYLOAD_CHARS`] →
//!    [`EmvError::TooLong`]; only white space → [`EmvError::Blank`]; not starting with ID `00` →
//!    [`EmvError::NotStartingWithFormatIndicator`].
//! 2. Framing, from the left, top level and inside templates: a non-numeric ID →
//!    [`EmvError::InvalidId`]; a non-numeric length → [`EmvError::BadLength`]; a value that runs past
//!    the end → [`EmvError::Truncated`]; 1–3 characters left where a header was expected →
//!    [`EmvError::TooShort`]; an ID seen twice in the same scope → [`EmvError::Duplicate`]. An
//!    incomplete CRC object at the end (the tail starts with `63` but is not a whole `6304XXXX`) is
//!    reported as [`EmvError::CrcMissing`].
//! 3. CRC: the last object must be ID 63 → else [`EmvError::CrcMissing`]; its value must be 4 hex
//!    digits (uppercase in strict mode, either case in lenient mode) → else
//!    [`EmvError::CrcMalformed`]; it must equal the computed CRC → else [`EmvError::Crc`].
//! 4. Content rules, which depend on the [`Mode`]:
//!
//! | rule | [`Mode::Strict`] | [`Mode::Lenient`] |
//! |---|---|---|
//! | 00 is first and equals `01` | yes | yes |
//! | 01, if present, is `11` (static) or `12` (dynamic) | yes | yes |
//! | 52 (if present) is 4 digits, 53 is 3 digits, 54 is an amount (digits, at most one `.`, ≤ 13 chars), 58 is 2 uppercase letters | yes | yes |
//! | 53 and 58 present | yes | yes |
//! | at least one merchant account object (ID 02–51) | yes | yes |
//! | 52, 59 and 60 present | yes | **no** (PromptPay, VietQR omit them) |
//! | every template 26–51 has a GUI (sub-ID 00) | yes | **no** |
//! | no empty value (length `00`) | yes | **no** |
//! | CRC hex digits uppercase | yes | **no** |
//!
//! A missing required field is [`EmvError::MissingField`] (or [`EmvError::MissingMerchantAccount`]),
//! a bad value is [`EmvError::InvalidValue`]; both name the field.

use std::collections::HashSet;
use std::fmt;

use paymux_model::{Currency, Money};

/// The maximum length of an MPM payload in characters.
pub const MAX_PAYLOAD_CHARS: usize = 512;
/// The maximum length of one value in characters (the length field has two digits).
pub const MAX_VALUE_CHARS: usize = 99;
/// Our default globally unique identifier for the template that carries the static-code URL.
pub const DEFAULT_GUI: &str = "dev.paymux";

const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_IBM_3740);

/// CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no xorout) over the UTF-8 bytes of
/// `input`, as four uppercase hex digits.
pub fn crc16_hex(input: &str) -> String {
    format!("{:04X}", CRC16.checksum(input.as_bytes()))
}

/// How strictly [`decode`] checks the content (see the module docs for the exact rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The EMVCo rules: 52, 53, 58, 59, 60 and a merchant account are required.
    Strict,
    /// As strict, but accepts payloads without 52/59/60 (national formats such as PromptPay, VietQR),
    /// templates 26–51 without a GUI, empty values and lowercase CRC hex.
    Lenient,
}

/// A data object ID, 00–99.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(u8);

impl Id {
    pub fn new(id: u8) -> Option<Id> {
        (id <= 99).then_some(Id(id))
    }

    pub fn get(self) -> u8 {
        self.0
    }

    /// Whether values under this top-level ID are templates (26–51, 62, 64, 80–99).
    pub fn is_template(self) -> bool {
        matches!(self.0, 26..=51 | 62 | 64 | 80..=99)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}", self.0)
    }
}

/// Names a field: a top-level ID, or a sub-object inside a template (`62.07`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldPath {
    pub id: Id,
    pub sub: Option<Id>,
}

impl FieldPath {
    fn top(id: Id) -> FieldPath {
        FieldPath { id, sub: None }
    }

    fn sub(id: Id, sub: Id) -> FieldPath {
        FieldPath { id, sub: Some(sub) }
    }

    fn of(id: u8) -> FieldPath {
        FieldPath::top(Id(id))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.sub {
            None => write!(f, "{}", self.id),
            Some(sub) => write!(f, "{}.{}", self.id, sub),
        }
    }
}

/// Why a payload was rejected (or could not be built). Every variant that concerns one field names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmvError {
    /// Fewer than 4 characters where a data object header (2-digit ID + 2-digit length) was expected.
    /// `within` is the template being split, `None` at the top level.
    #[error(
        "too short: {remaining} character(s) at position {at_char} cannot hold an ID and a length"
    )]
    TooShort {
        within: Option<Id>,
        at_char: usize,
        remaining: usize,
    },
    #[error("payload has {chars} characters, more than {MAX_PAYLOAD_CHARS}")]
    TooLong { chars: usize },
    #[error("payload is blank")]
    Blank,
    #[error("payload does not start with the payload format indicator (ID 00)")]
    NotStartingWithFormatIndicator,
    /// An ID that is not two decimal digits.
    #[error("invalid data object ID {found:?} at position {at_char}")]
    InvalidId {
        within: Option<Id>,
        at_char: usize,
        found: String,
    },
    /// A length that is not two decimal digits.
    #[error("field {id}: length {found:?} is not two digits")]
    BadLength { id: FieldPath, found: String },
    /// The value is shorter than its declared length.
    #[error("field {id}: declares {declared} characters, only {available} remain")]
    Truncated {
        id: FieldPath,
        declared: usize,
        available: usize,
    },
    #[error("field {id} appears more than once")]
    Duplicate { id: FieldPath },
    #[error("required field {id} is missing")]
    MissingField { id: FieldPath },
    #[error("no merchant account information (IDs 02-51)")]
    MissingMerchantAccount,
    #[error("field {id}: {reason}")]
    InvalidValue { id: FieldPath, reason: &'static str },
    /// The payload does not end with a complete CRC object `6304XXXX`.
    #[error("the payload does not end with a CRC object (6304 + 4 hex digits)")]
    CrcMissing,
    #[error("CRC value {found:?} is not 4 hex digits")]
    CrcMalformed { found: String },
    /// `expected` is what the payload's content gives, `actual` what the payload says.
    #[error("CRC mismatch: payload says {actual}, content gives {expected}")]
    Crc { expected: String, actual: String },
    /// Building: a value longer than 99 characters (for a template: its encoded sub-objects).
    #[error("field {id}: value has {chars} characters, more than {MAX_VALUE_CHARS}")]
    ValueTooLong { id: FieldPath, chars: usize },
    /// Building: a primitive value under a template ID, or a template under a primitive ID.
    #[error("field {id}: IDs 26-51, 62, 64 and 80-99 are templates, the others primitive")]
    WrongKind { id: FieldPath },
}

/// A sub-object of a template. Its value is kept as a string (templates are split one level).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubObject {
    id: Id,
    value: String,
}

impl SubObject {
    pub fn new(id: u8, value: impl Into<String>) -> Result<SubObject, EmvError> {
        let id = Id::new(id).ok_or(EmvError::InvalidId {
            within: None,
            at_char: 0,
            found: id.to_string(),
        })?;
        let value = value.into();
        let chars = value.chars().count();
        if chars > MAX_VALUE_CHARS {
            return Err(EmvError::ValueTooLong {
                id: FieldPath::top(id),
                chars,
            });
        }
        Ok(SubObject { id, value })
    }

    pub fn id(&self) -> Id {
        self.id
    }

    pub fn value(&self) -> &str {
        &self.value
    }
}

/// The value of a top-level data object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Primitive(String),
    Template(Vec<SubObject>),
}

/// One top-level data object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataObject {
    id: Id,
    value: Value,
}

impl DataObject {
    /// A primitive object; fails for template IDs and values over 99 characters.
    pub fn primitive(id: u8, value: impl Into<String>) -> Result<DataObject, EmvError> {
        let id = top_id(id)?;
        if id.is_template() {
            return Err(EmvError::WrongKind {
                id: FieldPath::top(id),
            });
        }
        let value = value.into();
        let chars = value.chars().count();
        if chars > MAX_VALUE_CHARS {
            return Err(EmvError::ValueTooLong {
                id: FieldPath::top(id),
                chars,
            });
        }
        Ok(DataObject {
            id,
            value: Value::Primitive(value),
        })
    }

    /// A template; fails for primitive IDs, duplicate sub-IDs and an encoding over 99 characters.
    pub fn template(id: u8, subs: Vec<SubObject>) -> Result<DataObject, EmvError> {
        let id = top_id(id)?;
        if !id.is_template() {
            return Err(EmvError::WrongKind {
                id: FieldPath::top(id),
            });
        }
        let mut seen = HashSet::new();
        for s in &subs {
            if !seen.insert(s.id) {
                return Err(EmvError::Duplicate {
                    id: FieldPath::sub(id, s.id),
                });
            }
        }
        let object = DataObject {
            id,
            value: Value::Template(subs),
        };
        let chars = object.value_chars();
        if chars > MAX_VALUE_CHARS {
            return Err(EmvError::ValueTooLong {
                id: FieldPath::top(id),
                chars,
            });
        }
        Ok(object)
    }

    pub fn id(&self) -> Id {
        self.id
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    fn value_chars(&self) -> usize {
        match &self.value {
            Value::Primitive(v) => v.chars().count(),
            Value::Template(subs) => subs.iter().map(|s| 4 + s.value.chars().count()).sum(),
        }
    }

    fn write(&self, out: &mut String) {
        write_header(out, self.id, self.value_chars());
        match &self.value {
            Value::Primitive(v) => out.push_str(v),
            Value::Template(subs) => {
                for s in subs {
                    write_header(out, s.id, s.value.chars().count());
                    out.push_str(&s.value);
                }
            }
        }
    }
}

fn write_header(out: &mut String, id: Id, chars: usize) {
    debug_assert!(
        chars <= MAX_VALUE_CHARS,
        "lengths are checked when building"
    );
    out.push_str(&format!("{id}{chars:02}"));
}

fn top_id(id: u8) -> Result<Id, EmvError> {
    Id::new(id).ok_or(EmvError::InvalidId {
        within: None,
        at_char: 0,
        found: id.to_string(),
    })
}

/// An MPM payload: an ordered list of data objects with unique IDs. A decoded payload keeps its CRC
/// object (63); [`encode`] ignores any 63 object and appends a freshly computed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    objects: Vec<DataObject>,
}

impl Payload {
    /// Builds a payload; fails on duplicate IDs or when the encoding would exceed 512 characters.
    pub fn new(objects: Vec<DataObject>) -> Result<Payload, EmvError> {
        let mut seen = HashSet::new();
        for o in &objects {
            if !seen.insert(o.id) {
                return Err(EmvError::Duplicate {
                    id: FieldPath::top(o.id),
                });
            }
        }
        let payload = Payload { objects };
        let chars = encode(&payload).chars().count();
        if chars > MAX_PAYLOAD_CHARS {
            return Err(EmvError::TooLong { chars });
        }
        Ok(payload)
    }

    pub fn objects(&self) -> &[DataObject] {
        &self.objects
    }

    pub fn get(&self, id: u8) -> Option<&DataObject> {
        self.objects.iter().find(|o| o.id.0 == id)
    }

    /// The value of a primitive object.
    pub fn primitive(&self, id: u8) -> Option<&str> {
        match self.get(id).map(|o| &o.value) {
            Some(Value::Primitive(v)) => Some(v),
            _ => None,
        }
    }

    /// The sub-objects of a template.
    pub fn template(&self, id: u8) -> Option<&[SubObject]> {
        match self.get(id).map(|o| &o.value) {
            Some(Value::Template(subs)) => Some(subs),
            _ => None,
        }
    }

    /// The value of sub-object `sub` of template `id`.
    pub fn sub(&self, id: u8, sub: u8) -> Option<&str> {
        self.template(id)?
            .iter()
            .find(|s| s.id.0 == sub)
            .map(|s| s.value.as_str())
    }

    /// The payload without its CRC object.
    pub fn without_crc(&self) -> Payload {
        Payload {
            objects: self
                .objects
                .iter()
                .filter(|o| o.id.0 != 63)
                .cloned()
                .collect(),
        }
    }

    /// Point of initiation `12`: a per-transaction (dynamic) code.
    pub fn is_dynamic(&self) -> bool {
        self.primitive(1) == Some("12")
    }

    /// The transaction amount (54) in the currency of 53, exactly. `Ok(None)` without an amount;
    /// an error when 53 is not a currency the platform knows or 54 has more decimals than it allows.
    pub fn amount(&self) -> Result<Option<Money>, EmvError> {
        let Some(text) = self.primitive(54) else {
            return Ok(None);
        };
        let currency =
            self.primitive(53)
                .and_then(Currency::from_numeric)
                .ok_or(EmvError::InvalidValue {
                    id: FieldPath::of(53),
                    reason: "not a supported currency",
                })?;
        Money::parse_major(text, currency, false)
            .map(Some)
            .map_err(|_| EmvError::InvalidValue {
                id: FieldPath::of(54),
                reason: "not an amount in the currency of 53",
            })
    }
}

/// Encodes a payload and appends the CRC (any 63 object in `payload` is skipped).
pub fn encode(payload: &Payload) -> String {
    let mut out = String::new();
    for o in payload.objects.iter().filter(|o| o.id.0 != 63) {
        o.write(&mut out);
    }
    out.push_str("6304");
    let crc = crc16_hex(&out);
    out.push_str(&crc);
    out
}

/// One framed `ID LL VALUE`, positions in characters.
struct Raw<'a> {
    id: Id,
    value: &'a str,
}

/// Splits `text` into data objects. `within` is the enclosing template (for error paths);
/// `offset_chars` is the position of `text` in the payload.
fn frame<'a>(
    text: &'a str,
    within: Option<Id>,
    offset_chars: usize,
) -> Result<Vec<Raw<'a>>, EmvError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let byte_at = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut i = 0;
    while i < chars.len() {
        let remaining = chars.len() - i;
        let tail = &text[byte_at(i)..];
        if within.is_none() && tail.starts_with("63") && remaining < 8 {
            return Err(EmvError::CrcMissing);
        }
        if remaining < 4 {
            return Err(EmvError::TooShort {
                within,
                at_char: offset_chars + i,
                remaining,
            });
        }
        let id_text = &text[byte_at(i)..byte_at(i + 2)];
        let id = two_digits(id_text).ok_or_else(|| EmvError::InvalidId {
            within,
            at_char: offset_chars + i,
            found: id_text.to_string(),
        })?;
        let id = Id(id);
        let path = match within {
            None => FieldPath::top(id),
            Some(parent) => FieldPath::sub(parent, id),
        };
        let len_text = &text[byte_at(i + 2)..byte_at(i + 4)];
        let len = usize::from(two_digits(len_text).ok_or_else(|| EmvError::BadLength {
            id: path,
            found: len_text.to_string(),
        })?);
        let start = i + 4;
        let available = chars.len() - start;
        if len > available {
            return Err(EmvError::Truncated {
                id: path,
                declared: len,
                available,
            });
        }
        if !seen.insert(id) {
            return Err(EmvError::Duplicate { id: path });
        }
        out.push(Raw {
            id,
            value: &text[byte_at(start)..byte_at(start + len)],
        });
        i = start + len;
    }
    Ok(out)
}

fn two_digits(s: &str) -> Option<u8> {
    match s.as_bytes() {
        [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => Some((a - b'0') * 10 + (b - b'0')),
        _ => None,
    }
}

/// Decodes and checks a payload (see the module docs for the order of checks and the mode rules).
pub fn decode(text: &str, mode: Mode) -> Result<Payload, EmvError> {
    let chars = text.chars().count();
    if chars < 4 {
        return Err(EmvError::TooShort {
            within: None,
            at_char: 0,
            remaining: chars,
        });
    }
    if chars > MAX_PAYLOAD_CHARS {
        return Err(EmvError::TooLong { chars });
    }
    if text.chars().all(char::is_whitespace) {
        return Err(EmvError::Blank);
    }
    if !text.starts_with("00") {
        return Err(EmvError::NotStartingWithFormatIndicator);
    }

    // Framing, top level then templates (positions of template contents in characters).
    let raws = frame(text, None, 0)?;
    let mut objects = Vec::with_capacity(raws.len());
    let mut position = 0;
    for raw in &raws {
        let value_at = position + 4;
        let value = if raw.id.is_template() {
            let subs = frame(raw.value, Some(raw.id), value_at)?
                .into_iter()
                .map(|s| SubObject {
                    id: s.id,
                    value: s.value.to_string(),
                })
                .collect();
            Value::Template(subs)
        } else {
            Value::Primitive(raw.value.to_string())
        };
        position = value_at + raw.value.chars().count();
        objects.push(DataObject { id: raw.id, value });
    }

    // CRC.
    let crc_value = match raws.last() {
        Some(last) if last.id.0 == 63 => last.value,
        _ => return Err(EmvError::CrcMissing),
    };
    let hex_ok = crc_value.len() == 4
        && crc_value.chars().all(|c| match mode {
            Mode::Strict => c.is_ascii_digit() || ('A'..='F').contains(&c),
            Mode::Lenient => c.is_ascii_hexdigit(),
        });
    if !hex_ok {
        return Err(EmvError::CrcMalformed {
            found: crc_value.chars().take(8).collect(),
        });
    }
    // The CRC object is the last 8 characters, all ASCII after the check above.
    let covered = &text[..text.len() - 4];
    let expected = crc16_hex(covered);
    if !expected.eq_ignore_ascii_case(crc_value) {
        return Err(EmvError::Crc {
            expected,
            actual: crc_value.to_string(),
        });
    }

    let payload = Payload { objects };
    check_content(&payload, mode)?;
    Ok(payload)
}

fn invalid(id: u8, reason: &'static str) -> EmvError {
    EmvError::InvalidValue {
        id: FieldPath::of(id),
        reason,
    }
}

fn all_digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_amount(s: &str) -> bool {
    let dots = s.bytes().filter(|&b| b == b'.').count();
    !s.is_empty()
        && s.len() <= 13
        && dots <= 1
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && s.bytes().any(|b| b.is_ascii_digit())
}

fn check_content(p: &Payload, mode: Mode) -> Result<(), EmvError> {
    let strict = mode == Mode::Strict;
    match p.objects.first() {
        Some(o) if o.id.0 == 0 => {}
        _ => return Err(EmvError::NotStartingWithFormatIndicator),
    }
    if p.primitive(0) != Some("01") {
        return Err(invalid(0, "must be \"01\""));
    }
    if let Some(v) = p.primitive(1)
        && v != "11"
        && v != "12"
    {
        return Err(invalid(1, "must be 11 (static) or 12 (dynamic)"));
    }
    let required: &[u8] = if strict {
        &[52, 53, 58, 59, 60]
    } else {
        &[53, 58]
    };
    if !p.objects.iter().any(|o| (2..=51).contains(&o.id.0)) {
        return Err(EmvError::MissingMerchantAccount);
    }
    for &id in required {
        if p.get(id).is_none() {
            return Err(EmvError::MissingField {
                id: FieldPath::of(id),
            });
        }
    }
    if let Some(v) = p.primitive(52)
        && !all_digits(v, 4)
    {
        return Err(invalid(52, "merchant category code must be 4 digits"));
    }
    if let Some(v) = p.primitive(53)
        && !all_digits(v, 3)
    {
        return Err(invalid(53, "currency must be 3 digits (ISO 4217 numeric)"));
    }
    if let Some(v) = p.primitive(54)
        && !is_amount(v)
    {
        return Err(invalid(
            54,
            "amount must be digits with at most one '.', up to 13 characters",
        ));
    }
    if let Some(v) = p.primitive(58)
        && !(v.len() == 2 && v.bytes().all(|b| b.is_ascii_uppercase()))
    {
        return Err(invalid(58, "country must be 2 uppercase letters"));
    }
    if strict {
        for o in &p.objects {
            if (26..=51).contains(&o.id.0)
                && let Value::Template(subs) = &o.value
                && !subs.iter().any(|s| s.id.0 == 0)
            {
                return Err(EmvError::MissingField {
                    id: FieldPath::sub(o.id, Id(0)),
                });
            }
            match &o.value {
                Value::Primitive(v) if v.is_empty() => {
                    return Err(invalid(o.id.0, "empty value (length 00)"));
                }
                Value::Template(subs) => {
                    if let Some(s) = subs.iter().find(|s| s.value.is_empty()) {
                        return Err(EmvError::InvalidValue {
                            id: FieldPath::sub(o.id, s.id),
                            reason: "empty value (length 00)",
                        });
                    }
                }
                Value::Primitive(_) => {}
            }
        }
    }
    Ok(())
}

/// Our own static (or fixed-amount) merchant code, see [`static_merchant_code`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticCode {
    /// Globally unique identifier in sub-field 00 of template 26; [`DEFAULT_GUI`] by default.
    pub gui: String,
    /// The URL the scanning app opens (sub-field 01 of template 26).
    pub url: String,
    /// Merchant name (59), at most 25 characters.
    pub merchant_name: String,
    /// City (60), at most 15 characters.
    pub city: String,
    /// Merchant category code (52), 4 digits.
    pub mcc: String,
    /// A fixed amount in CNY (54); makes the code point-of-initiation 12.
    pub amount: Option<Money>,
    /// Store label (62.03).
    pub store_label: Option<String>,
    /// Terminal label (62.07).
    pub terminal_label: Option<String>,
}

impl StaticCode {
    pub fn new(
        url: impl Into<String>,
        merchant_name: impl Into<String>,
        city: impl Into<String>,
        mcc: impl Into<String>,
    ) -> StaticCode {
        StaticCode {
            gui: DEFAULT_GUI.to_string(),
            url: url.into(),
            merchant_name: merchant_name.into(),
            city: city.into(),
            mcc: mcc.into(),
            amount: None,
            store_label: None,
            terminal_label: None,
        }
    }

    pub fn with_amount(mut self, amount: Money) -> StaticCode {
        self.amount = Some(amount);
        self
    }

    pub fn with_store_label(mut self, label: impl Into<String>) -> StaticCode {
        self.store_label = Some(label.into());
        self
    }

    pub fn with_terminal_label(mut self, label: impl Into<String>) -> StaticCode {
        self.terminal_label = Some(label.into());
        self
    }

    pub fn with_gui(mut self, gui: impl Into<String>) -> StaticCode {
        self.gui = gui.into();
        self
    }
}

/// Builds the payload of our own merchant code: 00=01, 01=11 (12 with an amount), 26={00: GUI,
/// 01: URL}, 52=MCC, 53=156, 54=amount (if any), 58=CN, 59=name, 60=city, 62={03: store,
/// 07: terminal} (if any). The result decodes in [`Mode::Strict`].
pub fn static_merchant_code(spec: &StaticCode) -> Result<Payload, EmvError> {
    if spec.gui.is_empty() {
        return Err(EmvError::InvalidValue {
            id: FieldPath::sub(Id(26), Id(0)),
            reason: "GUI must not be empty",
        });
    }
    if spec.url.is_empty() {
        return Err(EmvError::InvalidValue {
            id: FieldPath::sub(Id(26), Id(1)),
            reason: "URL must not be empty",
        });
    }
    if !all_digits(&spec.mcc, 4) {
        return Err(invalid(52, "merchant category code must be 4 digits"));
    }
    let name_chars = spec.merchant_name.chars().count();
    if name_chars == 0 || name_chars > 25 {
        return Err(invalid(59, "merchant name must have 1 to 25 characters"));
    }
    let city_chars = spec.city.chars().count();
    if city_chars == 0 || city_chars > 15 {
        return Err(invalid(60, "city must have 1 to 15 characters"));
    }
    let mut objects = vec![
        DataObject::primitive(0, "01")?,
        DataObject::primitive(1, if spec.amount.is_some() { "12" } else { "11" })?,
        DataObject::template(
            26,
            vec![
                SubObject::new(0, spec.gui.clone())?,
                SubObject::new(1, spec.url.clone())?,
            ],
        )?,
        DataObject::primitive(52, spec.mcc.clone())?,
        DataObject::primitive(53, Currency::Cny.numeric())?,
    ];
    if let Some(amount) = spec.amount {
        if amount.currency() != Currency::Cny {
            return Err(invalid(54, "our codes are in CNY"));
        }
        if amount.amount_minor() <= 0 {
            return Err(invalid(54, "a fixed amount must be positive"));
        }
        let text = amount.format_major();
        if !is_amount(&text) {
            return Err(invalid(54, "amount does not fit in 13 characters"));
        }
        objects.push(DataObject::primitive(54, text)?);
    }
    objects.push(DataObject::primitive(58, "CN")?);
    objects.push(DataObject::primitive(59, spec.merchant_name.clone())?);
    objects.push(DataObject::primitive(60, spec.city.clone())?);
    let mut additional = Vec::new();
    for (sub, label) in [(3, &spec.store_label), (7, &spec.terminal_label)] {
        if let Some(label) = label {
            if label.is_empty() {
                return Err(EmvError::InvalidValue {
                    id: FieldPath::sub(Id(62), Id(sub)),
                    reason: "label must not be empty",
                });
            }
            additional.push(SubObject::new(sub, label.clone())?);
        }
    }
    if !additional.is_empty() {
        objects.push(DataObject::template(62, additional)?);
    }
    Payload::new(objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_our_static_code() {
        let spec = StaticCode::new(
            "https://pay.example.cn/s/ABC123",
            "示例餐厅",
            "上海",
            "5812",
        )
        .with_store_label("南京路店")
        .with_terminal_label("T01");
        let payload = static_merchant_code(&spec).expect("valid spec");
        let text = encode(&payload);
        assert!(text.starts_with("000201010211"), "{text}");
        assert!(text.contains("26490010dev.paymux0131https://pay.example.cn/s/ABC123"));
        let back = decode(&text, Mode::Strict).expect("our code decodes strictly");
        assert_eq!(back.without_crc(), payload);
        assert_eq!(back.sub(26, 0), Some(DEFAULT_GUI));
        assert_eq!(back.sub(62, 3), Some("南京路店"));
        assert_eq!(back.amount(), Ok(None));
        assert!(!back.is_dynamic());
    }

    #[test]
    fn fixed_amount_code_is_dynamic_and_carries_the_amount() {
        let spec = StaticCode::new("https://p.example/x", "Shop", "Beijing", "5411")
            .with_amount(Money::cny(1234))
            .with_gui("cn.example.pay");
        let payload = static_merchant_code(&spec).expect("valid spec");
        let back = decode(&encode(&payload), Mode::Strict).expect("decodes");
        assert!(back.is_dynamic());
        assert_eq!(back.primitive(54), Some("12.34"));
        assert_eq!(back.amount(), Ok(Some(Money::cny(1234))));
        assert_eq!(back.sub(26, 0), Some("cn.example.pay"));
    }

    #[test]
    fn builder_rejects_bad_input_naming_the_field() {
        let base = || StaticCode::new("https://p.example/x", "Shop", "Beijing", "5411");
        let err = |s: StaticCode| static_merchant_code(&s).unwrap_err();
        assert!(matches!(err(StaticCode { mcc: "54a1".into(), ..base() }),
            EmvError::InvalidValue { id, .. } if id.to_string() == "52"));
        assert!(
            matches!(err(StaticCode { merchant_name: "x".repeat(26), ..base() }),
            EmvError::InvalidValue { id, .. } if id.to_string() == "59")
        );
        assert!(matches!(err(base().with_amount(Money::cny(0))),
            EmvError::InvalidValue { id, .. } if id.to_string() == "54"));
        assert!(matches!(
            err(base().with_amount(Money::new(100, Currency::Usd))),
            EmvError::InvalidValue { id, .. } if id.to_string() == "54"
        ));
        assert!(matches!(
            err(StaticCode { url: "u".repeat(90), ..base() }),
            EmvError::ValueTooLong { id, .. } if id.to_string() == "26"
        ));
        assert!(matches!(
            err(base().with_store_label("")),
            EmvError::InvalidValue { id, .. } if id.to_string() == "62.03"
        ));
    }

    #[test]
    fn construction_checks_kinds_and_duplicates() {
        assert!(matches!(
            DataObject::primitive(62, "x"),
            Err(EmvError::WrongKind { .. })
        ));
        assert!(matches!(
            DataObject::template(59, vec![]),
            Err(EmvError::WrongKind { .. })
        ));
        assert!(DataObject::primitive(100, "x").is_err());
        let a = DataObject::primitive(59, "A").expect("ok");
        assert!(matches!(
            Payload::new(vec![a.clone(), a]),
            Err(EmvError::Duplicate { .. })
        ));
        let s = SubObject::new(1, "x").expect("ok");
        assert!(matches!(
            DataObject::template(62, vec![s.clone(), s]),
            Err(EmvError::Duplicate { id }) if id.to_string() == "62.01"
        ));
    }

    #[test]
    fn errors_name_the_field() {
        let e = decode("000201520A", Mode::Strict).unwrap_err();
        assert_eq!(
            e,
            EmvError::BadLength {
                id: FieldPath::of(52),
                found: "0A".into()
            }
        );
        let e = decode("0002016204X101", Mode::Strict).unwrap_err();
        assert!(matches!(e, EmvError::InvalidId { within: Some(id), .. } if id.get() == 62));
        assert_eq!(
            e.to_string(),
            "invalid data object ID \"X1\" at position 10"
        );
        let e = decode("000201620201", Mode::Strict).unwrap_err();
        assert!(matches!(
            e,
            EmvError::TooShort {
                within: Some(_),
                at_char: 10,
                remaining: 2
            }
        ));
    }

    #[test]
    fn content_rules_depend_on_the_mode() {
        let with = |extra: &[(u8, &str)]| {
            let mut objects = vec![
                DataObject::primitive(0, "01").expect("ok"),
                DataObject::template(29, vec![SubObject::new(0, "A0000006").expect("ok")])
                    .expect("ok"),
                DataObject::primitive(53, "156").expect("ok"),
                DataObject::primitive(58, "CN").expect("ok"),
            ];
            for (id, v) in extra {
                objects.push(DataObject::primitive(*id, *v).expect("ok"));
            }
            encode(&Payload::new(objects).expect("ok"))
        };
        let minimal = with(&[]);
        assert!(decode(&minimal, Mode::Lenient).is_ok());
        assert_eq!(
            decode(&minimal, Mode::Strict),
            Err(EmvError::MissingField {
                id: FieldPath::of(52)
            })
        );
        let full = with(&[(52, "5812"), (59, "X"), (60, "Y")]);
        assert!(decode(&full, Mode::Strict).is_ok());
        let bad_amount = with(&[(54, "1.2.3")]);
        assert!(matches!(
            decode(&bad_amount, Mode::Lenient),
            Err(EmvError::InvalidValue { id, .. }) if id == FieldPath::of(54)
        ));
        let empty = with(&[(52, "5812"), (59, ""), (60, "Y")]);
        assert!(decode(&empty, Mode::Lenient).is_ok());
        assert!(matches!(
            decode(&empty, Mode::Strict),
            Err(EmvError::InvalidValue { id, .. }) if id == FieldPath::of(59)
        ));
        // Lowercase CRC hex: lenient only.
        let lower = format!(
            "{}{}",
            &full[..full.len() - 4],
            full[full.len() - 4..].to_lowercase()
        );
        if lower != full {
            assert!(decode(&lower, Mode::Lenient).is_ok());
            assert!(matches!(
                decode(&lower, Mode::Strict),
                Err(EmvError::CrcMalformed { .. })
            ));
        }
        let no_account = encode(
            &Payload::new(vec![
                DataObject::primitive(0, "01").expect("ok"),
                DataObject::primitive(53, "156").expect("ok"),
                DataObject::primitive(58, "CN").expect("ok"),
            ])
            .expect("ok"),
        );
        assert_eq!(
            decode(&no_account, Mode::Lenient),
            Err(EmvError::MissingMerchantAccount)
        );
    }
}
