//! RSA2 signing and verification (SHA256withRSA, base64) and certificate serial numbers.
//!
//! The sign string: every parameter except `sign` (and, for notifications, `sign_type`), empty
//! values dropped, sorted by key in byte order, `k=v` joined by `&`, raw values (not URL-encoded).
//!
//! Responses are signed over the exact raw JSON text of their `<method_underscored>_response` (or
//! `error_response`) node. That text is located in the raw body by a small JSON scanner and never
//! re-serialised: a single changed byte of whitespace or escaping would break the signature.

use std::collections::BTreeMap;
use std::ops::Range;

use md5::{Digest as _, Md5};

use crate::ChannelError;
use crate::crypto::{Certificate, KeyError, RsaSigner, RsaVerifier, pem_blocks};

/// The sign string of `params`: `sign` dropped, `sign_type` dropped unless `keep_sign_type`, empty
/// values dropped, sorted by key (byte order), `k=v` joined by `&`.
pub fn sign_content<'a, I>(params: I, keep_sign_type: bool) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut pairs: Vec<(&str, &str)> = params
        .into_iter()
        .filter(|(k, v)| *k != "sign" && (keep_sign_type || *k != "sign_type") && !v.is_empty())
        .collect();
    // `str`'s ordering is byte order, which is what Alipay's SDKs use.
    pairs.sort_unstable();
    let mut out = String::with_capacity(pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Signs request parameters (everything but `sign`, `sign_type` kept) and returns the base64
/// signature to send as `sign`.
pub fn sign_request<'a, I>(signer: &RsaSigner, params: I) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    signer.sign_base64(sign_content(params, true).as_bytes())
}

/// Verifies a request's `sign` (what the gateway does; the sandbox uses it).
pub fn verify_request(verifier: &RsaVerifier, params: &BTreeMap<String, String>) -> bool {
    let Some(sign) = params.get("sign") else {
        return false;
    };
    let content = sign_content(params.iter().map(|(k, v)| (k.as_str(), v.as_str())), true);
    verifier.verify_base64(content.as_bytes(), sign)
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// Why a response body could not be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("response is not a JSON object: {message} at byte {offset}")]
    Json {
        offset: usize,
        message: &'static str,
    },
    #[error("response has no `{expected}` or `error_response` node")]
    NoResponseNode { expected: String },
    #[error("response has the top-level key `{0}` twice")]
    DuplicateKey(String),
    #[error("response field `{0}` is not a JSON string")]
    NotAString(&'static str),
    #[error("response node `{node}` carries no `sign`")]
    MissingSign { node: String },
    #[error("response signature does not verify over `{node}`")]
    Signature { node: String },
}

impl From<ResponseError> for ChannelError {
    fn from(e: ResponseError) -> Self {
        match e {
            ResponseError::Signature { .. } | ResponseError::MissingSign { .. } => {
                ChannelError::Signature(e.to_string())
            }
            _ => ChannelError::Protocol(e.to_string()),
        }
    }
}

/// A response body split into its signed node and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedResponse<'a> {
    /// The node's name: `<method_underscored>_response` or `error_response`.
    pub node: String,
    /// The exact raw bytes of the node's JSON value, as signed.
    pub content: &'a [u8],
    /// The `sign` field, if present.
    pub sign: Option<String>,
    /// `alipay_cert_sn` (public-key-certificate mode): which Alipay certificate signed.
    pub alipay_cert_sn: Option<String>,
}

impl SignedResponse<'_> {
    /// Whether the node is `error_response` (gateway-level errors such as a bad `app_id`).
    pub fn is_error_node(&self) -> bool {
        self.node == "error_response"
    }
}

/// The response node name of a method: `alipay.trade.pay` → `alipay_trade_pay_response`.
pub fn response_node_name(method: &str) -> String {
    format!("{}_response", method.replace('.', "_"))
}

/// Finds the method's response node (or `error_response`) and the `sign` in a raw body.
pub fn split_response<'a>(
    body: &'a [u8],
    method: &str,
) -> Result<SignedResponse<'a>, ResponseError> {
    let members = top_level_members(body)?;
    let expected = response_node_name(method);
    let find = |name: &str| {
        members
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, r)| r.clone())
    };
    let (node, range) = match (find(&expected), find("error_response")) {
        (Some(r), _) => (expected, r),
        (None, Some(r)) => ("error_response".to_string(), r),
        (None, None) => return Err(ResponseError::NoResponseNode { expected }),
    };
    let string_field = |name: &'static str| -> Result<Option<String>, ResponseError> {
        match find(name) {
            None => Ok(None),
            Some(r) => serde_json::from_slice::<String>(&body[r])
                .map(Some)
                .map_err(|_| ResponseError::NotAString(name)),
        }
    };
    Ok(SignedResponse {
        node,
        content: &body[range],
        sign: string_field("sign")?,
        alipay_cert_sn: string_field("alipay_cert_sn")?,
    })
}

/// Verifies a response body: the signature in `sign` over the exact raw text of the method's
/// response node (or `error_response`). Returns the split response; parse `content` afterwards.
pub fn verify_response<'a>(
    verifier: &RsaVerifier,
    body: &'a [u8],
    method: &str,
) -> Result<SignedResponse<'a>, ResponseError> {
    let resp = split_response(body, method)?;
    let Some(sign) = resp.sign.as_deref() else {
        return Err(ResponseError::MissingSign { node: resp.node });
    };
    if verifier.verify_base64(resp.content, sign) {
        Ok(resp)
    } else {
        Err(ResponseError::Signature { node: resp.node })
    }
}

/// Renders a signed response body `{"<node>":<content>,"sign":"…"}` (what the gateway sends; the
/// sandbox uses it). `content` must be a JSON object's text; it is embedded verbatim.
pub fn render_response(signer: &RsaSigner, node: &str, content: &str) -> String {
    let sign = signer.sign_base64(content.as_bytes());
    let node = serde_json::Value::String(node.to_string());
    format!("{{{node}:{content},\"sign\":\"{sign}\"}}")
}

/// Nesting deeper than this is rejected (Alipay responses nest a few levels).
const MAX_DEPTH: usize = 128;

/// The top-level members of a JSON object: decoded key and the byte range of the raw value.
fn top_level_members(body: &[u8]) -> Result<Vec<(String, Range<usize>)>, ResponseError> {
    let mut s = Scanner { b: body, i: 0 };
    s.ws();
    s.expect(b'{', "expected `{`")?;
    let mut members: Vec<(String, Range<usize>)> = Vec::new();
    // Keys seen, for the duplicate check in constant time per member (a body of many keys must
    // not cost their square).
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            s.ws();
            let key_range = s.string()?;
            let key: String = serde_json::from_slice(&body[key_range.clone()]).map_err(|_| {
                ResponseError::Json {
                    offset: key_range.start,
                    message: "invalid key string",
                }
            })?;
            s.ws();
            s.expect(b':', "expected `:`")?;
            s.ws();
            let value = s.value()?;
            if !seen.insert(key.clone()) {
                return Err(ResponseError::DuplicateKey(key));
            }
            members.push((key, value));
            s.ws();
            match s.peek() {
                Some(b',') => s.i += 1,
                Some(b'}') => {
                    s.i += 1;
                    break;
                }
                _ => return Err(s.err("expected `,` or `}`")),
            }
        }
    }
    s.ws();
    if s.i != body.len() {
        return Err(s.err("trailing bytes after the object"));
    }
    Ok(members)
}

/// A byte scanner that finds the extent of JSON values without building them.
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn err(&self, message: &'static str) -> ResponseError {
        ResponseError::Json {
            offset: self.i,
            message,
        }
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, byte: u8, message: &'static str) -> Result<(), ResponseError> {
        if self.peek() == Some(byte) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(message))
        }
    }

    /// A string, quotes included; escapes are checked for shape, control characters rejected.
    fn string(&mut self) -> Result<Range<usize>, ResponseError> {
        let start = self.i;
        self.expect(b'"', "expected a string")?;
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(start..self.i);
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            for _ in 0..4 {
                                match self.peek() {
                                    Some(c) if c.is_ascii_hexdigit() => self.i += 1,
                                    _ => return Err(self.err("bad \\u escape")),
                                }
                            }
                        }
                        _ => return Err(self.err("bad escape")),
                    }
                }
                Some(c) if c < 0x20 => return Err(self.err("control character in string")),
                Some(_) => self.i += 1,
            }
        }
    }

    /// A literal or number: its bytes must form `true`, `false`, `null` or a JSON number.
    fn scalar(&mut self) -> Result<(), ResponseError> {
        let start = self.i;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        {
            self.i += 1;
        }
        let token = &self.b[start..self.i];
        let ok = match token {
            b"true" | b"false" | b"null" => true,
            [] => false,
            _ => serde_json::from_slice::<serde_json::Number>(token).is_ok(),
        };
        if ok {
            Ok(())
        } else {
            self.i = start;
            Err(self.err("expected a JSON value"))
        }
    }

    /// One complete value (iteratively, so deep nesting cannot overflow the stack).
    fn value(&mut self) -> Result<Range<usize>, ResponseError> {
        let start = self.i;
        let mut closers: Vec<u8> = Vec::new();
        loop {
            // Parse the start of a value.
            self.ws();
            match self.peek() {
                Some(open @ (b'{' | b'[')) => {
                    if closers.len() >= MAX_DEPTH {
                        return Err(self.err("nesting too deep"));
                    }
                    self.i += 1;
                    self.ws();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.i += 1;
                    } else {
                        closers.push(close);
                        if close == b'}' {
                            self.member_key()?;
                        }
                        continue;
                    }
                }
                Some(b'"') => {
                    self.string()?;
                }
                _ => self.scalar()?,
            }
            // A value is complete: close containers or move to the next element.
            loop {
                let Some(&close) = closers.last() else {
                    return Ok(start..self.i);
                };
                self.ws();
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        if close == b'}' {
                            self.ws();
                            self.member_key()?;
                        }
                        break;
                    }
                    Some(c) if c == close => {
                        self.i += 1;
                        closers.pop();
                    }
                    _ => return Err(self.err("expected `,` or a closing bracket")),
                }
            }
        }
    }

    /// `"key" :` inside an object.
    fn member_key(&mut self) -> Result<(), ResponseError> {
        self.ws();
        self.string()?;
        self.ws();
        self.expect(b':', "expected `:`")
    }
}

// ---------------------------------------------------------------------------------------------
// Notifications (form bodies)
// ---------------------------------------------------------------------------------------------

/// Why a form-encoded notification could not be decoded or trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("malformed percent escape at byte {offset}")]
    MalformedPercent { offset: usize },
    #[error("field starting at byte {offset} is not valid {charset} text")]
    Undecodable {
        offset: usize,
        charset: &'static str,
    },
    #[error("unsupported charset `{0}`")]
    Charset(String),
    #[error("field `{0}` appears twice")]
    DuplicateKey(String),
    #[error("no `sign` field")]
    MissingSign,
    #[error("notification signature does not verify")]
    Signature,
}

impl From<FormError> for ChannelError {
    fn from(e: FormError) -> Self {
        match e {
            FormError::MissingSign | FormError::Signature => ChannelError::Signature(e.to_string()),
            _ => ChannelError::Protocol(e.to_string()),
        }
    }
}

/// Decodes an `application/x-www-form-urlencoded` body (or a query string) strictly: `+` is a space,
/// `%XX` a byte, a `%` not followed by two hex digits is an error (the Node SDK's "URI malformed"),
/// and the bytes must be text in the body's own `charset` field (UTF-8 unless it says GBK).
/// A literal `+` arrives as `%2B` and stays a `+`. A repeated key is an error.
pub fn parse_form(body: &[u8]) -> Result<BTreeMap<String, String>, FormError> {
    // Percent-decoded bytes with the offset where they start in the body.
    type Decoded = (Vec<u8>, usize);
    let mut raw: Vec<(Decoded, Decoded)> = Vec::new();
    let mut offset = 0usize;
    for segment in body.split(|&b| b == b'&') {
        if !segment.is_empty() {
            let (k, v, v_off) = match segment.iter().position(|&b| b == b'=') {
                Some(eq) => (&segment[..eq], &segment[eq + 1..], offset + eq + 1),
                None => (segment, &segment[segment.len()..], offset + segment.len()),
            };
            raw.push((
                (percent_decode_form(k, offset)?, offset),
                (percent_decode_form(v, v_off)?, v_off),
            ));
        }
        offset += segment.len() + 1;
    }
    let charset = raw
        .iter()
        .find(|((k, _), _)| k == b"charset")
        .map(|(_, (v, _))| String::from_utf8_lossy(v).to_ascii_lowercase());
    let gbk = match charset.as_deref() {
        None | Some("utf-8" | "utf8") => false,
        Some("gbk" | "gb2312" | "gb18030") => true,
        Some(other) => return Err(FormError::Charset(other.chars().take(32).collect())),
    };
    let decode = |bytes: Vec<u8>, offset: usize| -> Result<String, FormError> {
        if gbk {
            encoding_rs::GBK
                .decode_without_bom_handling_and_without_replacement(&bytes)
                .map(|c| c.into_owned())
                .ok_or(FormError::Undecodable {
                    offset,
                    charset: "GBK",
                })
        } else {
            String::from_utf8(bytes).map_err(|_| FormError::Undecodable {
                offset,
                charset: "UTF-8",
            })
        }
    };
    let mut out = BTreeMap::new();
    for ((k, k_off), (v, v_off)) in raw {
        let key = decode(k, k_off)?;
        let value = decode(v, v_off)?;
        if out.contains_key(&key) {
            return Err(FormError::DuplicateKey(key));
        }
        out.insert(key, value);
    }
    Ok(out)
}

/// `+` → space and `%XX` → byte; `offset` is where `bytes` starts in the body (for errors).
fn percent_decode_form(bytes: &[u8], offset: usize) -> Result<Vec<u8>, FormError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
                match (hex(i + 1), hex(i + 2)) {
                    (Some(h), Some(l)) => {
                        // Two hex digits are at most 0xFF.
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => return Err(FormError::MalformedPercent { offset: offset + i }),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}

/// Verifies decoded notification parameters: `sign` and `sign_type` dropped first; if that fails,
/// with `sign_type` kept (some notifications, e.g. service-market ones, are signed that way; the
/// Node SDK tries both).
pub fn verify_notify_params(
    verifier: &RsaVerifier,
    params: &BTreeMap<String, String>,
) -> Result<(), FormError> {
    let sign = params.get("sign").ok_or(FormError::MissingSign)?;
    let pairs = || params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let verified = [false, true].into_iter().any(|keep_sign_type| {
        verifier.verify_base64(sign_content(pairs(), keep_sign_type).as_bytes(), sign)
    });
    if verified {
        Ok(())
    } else {
        Err(FormError::Signature)
    }
}

/// Decodes and verifies a notification body (or a return-URL query string); returns all its
/// parameters (including `sign` and `sign_type`).
pub fn verify_notify(
    verifier: &RsaVerifier,
    body: &[u8],
) -> Result<BTreeMap<String, String>, FormError> {
    let params = parse_form(body)?;
    verify_notify_params(verifier, &params)?;
    Ok(params)
}

// ---------------------------------------------------------------------------------------------
// Certificate serial numbers (public-key-certificate mode)
// ---------------------------------------------------------------------------------------------

/// Why a certificate SN could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertSnError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("no RSA-signed certificate in the root bundle")]
    NoRsaCertificate,
}

/// A certificate's SN: md5 hex of its issuer DN (RDNs in reverse order, `CN=…,OU=…,O=…,C=…`)
/// followed by its serial number in decimal.
pub fn cert_sn(cert: &Certificate) -> String {
    let mut md5 = Md5::new();
    md5.update(cert.issuer_reversed.as_bytes());
    md5.update(cert.serial_decimal.as_bytes());
    hex::encode(md5.finalize())
}

/// `app_cert_sn` (or the SN of Alipay's public-key certificate): the SN of the first certificate in
/// the PEM text.
pub fn app_cert_sn(pem: &str) -> Result<String, CertSnError> {
    let certs = Certificate::from_pem(pem)?;
    // `from_pem` never returns an empty list.
    certs
        .first()
        .map(cert_sn)
        .ok_or(CertSnError::NoRsaCertificate)
}

/// `alipay_root_cert_sn`: the SNs of the root bundle's certificates signed with RSA
/// (sha1WithRSA, sha256WithRSA, …) joined by `_`, in file order. The bundle's SM2- and
/// ECDSA-signed certificates are skipped without being parsed further.
pub fn root_cert_sn(pem: &str) -> Result<String, CertSnError> {
    let mut sns = Vec::new();
    for (label, der) in pem_blocks(pem)? {
        if !(label == "CERTIFICATE" || label.is_empty()) || !is_rsa_signed(&der) {
            continue;
        }
        sns.push(cert_sn(&Certificate::from_der(&der)?));
    }
    if sns.is_empty() {
        return Err(CertSnError::NoRsaCertificate);
    }
    Ok(sns.join("_"))
}

/// Whether a certificate's outer `signatureAlgorithm` is in the PKCS#1 arc 1.2.840.113549.1.1.
/// Read straight from the DER (Certificate ::= SEQUENCE { tbs, signatureAlgorithm, signature }) so
/// that certificates with algorithms a strict X.509 parser rejects are still recognised and skipped.
fn is_rsa_signed(der: &[u8]) -> bool {
    const PKCS1_ARC: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01];
    let inner = |bytes: &[u8]| -> Option<bool> {
        let (cert, _) = der_tlv(bytes, 0x30)?;
        let (_tbs, rest) = der_tlv(cert, 0x30)?;
        let (alg, _) = der_tlv(rest, 0x30)?;
        let (oid, _) = der_tlv(alg, 0x06)?;
        Some(oid.len() == PKCS1_ARC.len() + 1 && oid.starts_with(PKCS1_ARC))
    };
    inner(der).unwrap_or(false)
}

/// One DER TLV with the expected tag: `(contents, rest)`.
fn der_tlv(bytes: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = bytes.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_content_sorts_drops_and_keeps() {
        let params = [
            ("b", "2"),
            ("a", "1"),
            ("sign", "x"),
            ("sign_type", "RSA2"),
            ("empty", ""),
            ("A", "0"),
        ];
        assert_eq!(sign_content(params, true), "A=0&a=1&b=2&sign_type=RSA2");
        assert_eq!(sign_content(params, false), "A=0&a=1&b=2");
    }

    #[test]
    fn scanner_returns_exact_spans() {
        let body =
            br#" { "x_response" : {"a":"}\"{","b":[1,{"c":null}],"d":-1.5e3} , "sign":"c2ln" } "#;
        let r = split_response(body, "x").unwrap();
        assert_eq!(r.node, "x_response");
        assert_eq!(r.content, br#"{"a":"}\"{","b":[1,{"c":null}],"d":-1.5e3}"#);
        assert_eq!(r.sign.as_deref(), Some("c2ln"));
    }

    #[test]
    fn scanner_rejects_garbage_precisely() {
        let cases: &[&[u8]] = &[
            b"",
            b"[]",
            b"{",
            b"{\"a\":}",
            b"{\"a\":tru}",
            b"{\"a\":1,}",
            b"{\"a\":\"\\x\"}",
            b"{\"a\":1}x",
            b"{\"a\":[1,2}",
            b"{\"a\":{\"b\" 1}}",
        ];
        for case in cases {
            assert!(
                matches!(top_level_members(case), Err(ResponseError::Json { .. })),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            top_level_members(deep.as_bytes()),
            Err(ResponseError::Json {
                message: "nesting too deep",
                ..
            })
        ));
        assert_eq!(
            split_response(br#"{"a_response":{},"a_response":{}}"#, "a"),
            Err(ResponseError::DuplicateKey("a_response".into()))
        );
        assert_eq!(
            split_response(br#"{"other":{}}"#, "a.b"),
            Err(ResponseError::NoResponseNode {
                expected: "a_b_response".into()
            })
        );
    }

    #[test]
    fn error_response_node_is_used_when_the_method_node_is_absent() {
        let r = split_response(
            br#"{"error_response":{"code":"40002"},"sign":"x"}"#,
            "alipay.trade.pay",
        )
        .unwrap();
        assert!(r.is_error_node());
        assert_eq!(r.content, br#"{"code":"40002"}"#);
    }

    #[test]
    fn form_decoding_is_strict() {
        let p = parse_form(b"a=x+y&b=1%2B1&c=&d&&e=%E4%B8%AD").unwrap();
        assert_eq!(p["a"], "x y");
        assert_eq!(p["b"], "1+1");
        assert_eq!(p["c"], "");
        assert_eq!(p["d"], "");
        assert_eq!(p["e"], "中");
        assert_eq!(
            parse_form(b"a=1&b=%2"),
            Err(FormError::MalformedPercent { offset: 6 })
        );
        assert_eq!(
            parse_form(b"a=%zz"),
            Err(FormError::MalformedPercent { offset: 2 })
        );
        assert_eq!(
            parse_form(b"a=%FF"),
            Err(FormError::Undecodable {
                offset: 2,
                charset: "UTF-8"
            })
        );
        assert_eq!(
            parse_form(b"a=1&a=2"),
            Err(FormError::DuplicateKey("a".into()))
        );
        assert_eq!(
            parse_form(b"charset=latin1"),
            Err(FormError::Charset("latin1".into()))
        );
        // GBK: 中 is D6 D0.
        assert_eq!(parse_form(b"charset=gbk&s=%D6%D0").unwrap()["s"], "中");
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let (private, public) = crate::crypto::generate_rsa_keypair();
        let signer = RsaSigner::from_pem(&private).unwrap();
        let verifier = RsaVerifier::from_pem(&public).unwrap();

        let mut params: BTreeMap<String, String> = [
            ("app_id", "1"),
            ("method", "alipay.trade.query"),
            ("sign_type", "RSA2"),
            ("biz_content", "{\"a\":\"b+c\"}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let sign = sign_request(
            &signer,
            params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        params.insert("sign".into(), sign);
        assert!(verify_request(&verifier, &params));
        params.insert("app_id".into(), "2".into());
        assert!(!verify_request(&verifier, &params));

        let body = render_response(
            &signer,
            "alipay_trade_query_response",
            r#"{"code":"10000","msg":"Success"}"#,
        );
        let r = verify_response(&verifier, body.as_bytes(), "alipay.trade.query").unwrap();
        assert_eq!(r.content, br#"{"code":"10000","msg":"Success"}"#);
        let tampered = body.replace("Success", "Succes5");
        assert_eq!(
            verify_response(&verifier, tampered.as_bytes(), "alipay.trade.query"),
            Err(ResponseError::Signature {
                node: "alipay_trade_query_response".into()
            })
        );
    }

    #[test]
    fn der_walk_survives_garbage() {
        assert!(!is_rsa_signed(&[]));
        assert!(!is_rsa_signed(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]));
        assert!(!is_rsa_signed(&[0x30, 0x80]));
        assert!(der_tlv(&[0x06, 0x01], 0x06).is_none());
    }
}
