//! Internet checksum arithmetic (RFC 1071 / RFC 1624).
//!
//! One's-complement sums do not depend on byte order as long as every word
//! is read the same way, so fields are used as loaded from the packet.

#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[inline(always)]
fn add32(sum: u64, word: u32) -> u64 {
    sum + (word & 0xffff) as u64 + (word >> 16) as u64
}

/// New checksum after a 32-bit field changed from `from` to `to` (RFC 1624 eq. 3).
#[inline(always)]
pub fn replace4(check: u16, from: u32, to: u32) -> u16 {
    let sum = add32(add32((!check) as u64, !from), to);
    !fold(sum)
}

/// New checksum after a 16-bit field changed from `from` to `to`.
#[inline(always)]
pub fn replace2(check: u16, from: u16, to: u16) -> u16 {
    let sum = (!check) as u64 + (!from) as u64 + to as u64;
    !fold(sum)
}

/// Sum of 16-bit words, for a full checksum.
#[inline(always)]
pub fn sum32(sum: u64, word: u32) -> u64 {
    add32(sum, word)
}
