//! paymux-loadtest (see README.md).
fn main() {}
