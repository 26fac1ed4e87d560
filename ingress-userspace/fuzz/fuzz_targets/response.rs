//! An endpoint's response: the fast client and hyper's read it alike, or
//! both refuse it. The first byte says whether it answers a HEAD.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let Some((&first, wire)) = input.split_first() else {
        return;
    };
    if let Err(why) = ingressd::l7::differential::response(wire, first & 1 == 1) {
        panic!("{}\n{why}", wire.escape_ascii());
    }
});
