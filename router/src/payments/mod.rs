//! Payments: the merchant API (`api`), the stored row and its view (`model`), and its SQL (`repo`).

pub mod api;
pub mod model;
pub mod repo;
