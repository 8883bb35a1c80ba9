//! Test support shared with the crates built on this one (the merge's kernels test against the
//! same bit patterns). Not part of the API.

/// xorshift64: a seeded, repeatable source of bit patterns.
pub struct Bits(pub u64);
impl Bits {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A random f64 bit pattern, half the time uniform (NaN, Inf, f64 subnormals and huge
    /// exponents included), half the time with its exponent near bf16's and f16's ranges and
    /// their subnormals, and now and then one of the special values.
    pub fn f64_bits(&mut self) -> u64 {
        let r = self.next_u64();
        const SPECIAL: [u64; 8] = [
            0,
            1 << 63,
            0x7ff0_0000_0000_0000,
            0xfff0_0000_0000_0000,
            0x7ff8_0000_0000_0000,
            0x7ff0_0000_0000_0001,
            1,
            0x7fef_ffff_ffff_ffff,
        ];
        match r & 15 {
            0 => SPECIAL[(r >> 4) as usize & 7],
            1..=7 => r,
            _ => {
                // Exponent in [1023-160, 1023+140): bf16 subnormals to beyond its overflow.
                let exp = 1023 - 160 + (self.next_u64() % 300);
                let man = self.next_u64() >> 12;
                // Sometimes keep only a few low bits set: ties and near-ties.
                let man = if r & 0x30 == 0 { man & !((1u64 << (r >> 58)) - 1) } else { man };
                (r & (1 << 63)) | (exp << 52) | man
            }
        }
    }
}
