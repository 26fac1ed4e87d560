//! A request head: the fast server and hyper's (behind its guard) read it
//! alike, or both refuse it.
#![no_main]

libfuzzer_sys::fuzz_target!(|wire: &[u8]| {
    if let Err(why) = ingressd::l7::differential::request(wire) {
        panic!("{}\n{why}", wire.escape_ascii());
    }
});
