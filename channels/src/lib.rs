//! paymux-channels (see README.md).
