//! Fault injection for the tests of panic safety (issue 11): compiled in only
//! with the `testkit` feature, which production builds never enable.
//!
//! A message body equal to [`PANIC_BODY`] makes the send path panic where it
//! is checked (the HTTP handler, the WebSocket frame handler), so a test can
//! show that one panic answers 500 or closes that one socket with 1011 while
//! everything else keeps serving.

/// The body that panics in test builds.
pub const PANIC_BODY: &str = "chatpool-test-panic";

/// Panics when `body` is [`PANIC_BODY`] and the `testkit` feature is on.
#[inline]
pub fn maybe_panic(body: &str) {
    if cfg!(feature = "testkit") && body == PANIC_BODY {
        panic!("injected panic (testkit fault hook)");
    }
}
