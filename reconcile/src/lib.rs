//! paymux-reconcile (see README.md).
