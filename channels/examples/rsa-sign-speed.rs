//! How fast the channels' RSA signer is on this machine: signs a WeChat-v3-sized signing string with a
//! fresh 2048-bit key `N` times (default 3000) on one core and prints the time per signature, to put
//! beside `openssl speed rsa2048` (the RSA bound of the load test assumes OpenSSL's speed).
//!
//! ```sh
//! cargo run --release -p paymux-channels --example rsa-sign-speed [-- N]
//! ```

use std::time::Instant;

use paymux_channels::crypto::{RsaSigner, generate_rsa_keypair};

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3000);
    let (private, _public) = generate_rsa_keypair();
    let signer = RsaSigner::from_pem(&private).expect("a generated key loads");
    let verifier = signer.verifier();
    let mut last = Vec::new();
    let mut message = String::new();
    let start = Instant::now();
    for i in 0..n {
        message.clear();
        message.push_str("POST\n/v3/pay/transactions/codepay\n1700000000\n");
        message.push_str(&format!("{i:032}\n"));
        message.push_str(
            r#"{"appid":"wxd678efh567hg6787","mchid":"1230000109","amount":{"total":100}}"#,
        );
        message.push('\n');
        last = signer.sign(message.as_bytes());
    }
    let elapsed = start.elapsed();
    assert!(
        verifier.verify(message.as_bytes(), &last),
        "the last signature verifies"
    );
    let per = elapsed.as_secs_f64() / f64::from(n.max(1));
    println!(
        "RSA-2048 SHA256withRSA sign: {n} signatures in {:.2} s = {:.1} µs each, {:.0} sign/s on one core",
        elapsed.as_secs_f64(),
        per * 1e6,
        1.0 / per
    );
}
