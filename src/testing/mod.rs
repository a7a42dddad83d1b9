//! Test-only support compiled into the library: pause points and the deliberately broken
//! orderings the race tests run against. Everything here is inert without the
//! `pause-points` feature.

pub mod pause;
