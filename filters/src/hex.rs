//! Lower-case hex for the ids edgegate generates (request ids, trace and span ids): one
//! table lookup per byte, two digits at a time.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The two hex digits of every byte value.
const PAIRS: [[u8; 2]; 256] = {
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    table
};

/// `v` as 16 lower-case hex digits, most significant first, into `out`.
pub fn encode_u64(v: u64, out: &mut [u8; 16]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(v.to_be_bytes()) {
        pair.copy_from_slice(&PAIRS[usize::from(byte)]);
    }
}

/// `bytes` as lower-case hex digits, two a byte, appended to `out`.
pub fn push(bytes: &[u8], out: &mut String) {
    out.reserve(bytes.len() * 2);
    for &byte in bytes {
        let [high, low] = PAIRS[usize::from(byte)];
        out.push(char::from(high));
        out.push(char::from(low));
    }
}

/// Fills `out` with random lower-case hex digits, 16 per random `u64` (a length that is
/// not a multiple of 16 leaves the tail as it was).
pub fn fill_random(out: &mut [u8]) {
    for chunk in out.chunks_exact_mut(16) {
        if let Ok(digits) = <&mut [u8; 16]>::try_from(chunk) {
            encode_u64(fastrand::u64(..), digits);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_lower_case_and_in_order() {
        let mut out = [0u8; 16];
        encode_u64(0x0123_4567_89ab_cdef, &mut out);
        assert_eq!(&out, b"0123456789abcdef");
        encode_u64(u64::MAX, &mut out);
        assert_eq!(&out, b"ffffffffffffffff");
        encode_u64(0xa0, &mut out);
        assert_eq!(&out, b"00000000000000a0");
        let mut text = String::from("id:");
        push(&[0x00, 0x0f, 0xa0, 0xff, 0x5c], &mut text);
        assert_eq!(text, "id:000fa0ff5c");
        let every: Vec<u8> = (0..=255).collect();
        let all = crate::audit::record::hex(&every);
        assert_eq!(all.len(), 512);
        for (i, pair) in all.as_bytes().chunks(2).enumerate() {
            assert_eq!(pair, format!("{i:02x}").as_bytes());
        }
    }
}
