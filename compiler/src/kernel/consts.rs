//! The numbers every backend must agree on, in one place: the f32
//! approximations of exp, ln, tanh and erf (Cephes' and Eigen's/XLA's
//! coefficients, as the CPU's Cranelift code evaluates them and a PTX
//! renderer must), and the splitmix64 hash that decides dropout (the
//! interpreter, every backend, the trainer's per-step seeds and the data
//! generator use the same constants).
#![allow(clippy::excessive_precision)] // coefficients as published; f32 rounds them.

// ------------------------------------------------------------------ exp
/// Below this eˣ is 0 (f32's subnormals flushed), above it e⁸⁸.
pub const EXP_MIN: f32 = -87.336_54;
pub const EXP_MAX: f32 = 88.0;
/// ln 2 split in two (Cody–Waite): the high part is exact in f32.
pub const LN2_HI: f32 = 0.693_359_4;
pub const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2²³: added to and subtracted from x·log₂e, rounds it to the nearest
/// integer n (ties to even, as f32 addition rounds), and the sum's bits less
/// this constant's are n (for |n| < 2²², which the clamp ensures).
pub const EXP_ROUND: f32 = 12_582_912.0;
/// Cephes' expf polynomial in r = x − n·ln2, highest degree first.
pub const EXP_P: [f32; 6] =
    [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];

// ------------------------------------------------------------------ ln
/// Cephes' logf polynomial in m − 1, m in [√½, √2), highest degree first.
pub const LOG_P: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461_0e-1,
    1.167_699_9e-1,
    -1.242_014_1e-1,
    1.424_932_3e-1,
    -1.666_805_8e-1,
    2.000_071_5e-1,
    -2.499_999_4e-1,
    3.333_333_1e-1,
];

// ------------------------------------------------------------------ tanh
/// Below this |x|, tanh is x + x·z·P(z), z = x²; above, 1 − 2/(e^{2|x|} + 1).
pub const TANH_SMALL: f32 = 0.625;
/// Cephes' tanhf polynomial, highest degree first.
pub const TANH_P: [f32; 5] = [-5.704_988_7e-3, 2.063_908_9e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328_2e-1];

// ------------------------------------------------------------------ erf
/// erf's argument is clamped to [−ERF_CLAMP, ERF_CLAMP] (erf is ±1 there in f32).
pub const ERF_CLAMP: f32 = 4.0;
/// erf x = x·P(x²)/Q(x²) (Eigen's and XLA's f32 rational), highest degree first.
pub const ERF_P: [f32; 7] = [
    -2.726_142_3e-10,
    2.770_681_4e-08,
    -2.101_024_1e-06,
    -5.692_506_4e-05,
    -7.349_906_3e-04,
    -2.954_600_0e-03,
    -1.609_603_3e-02,
];
pub const ERF_Q: [f32; 5] = [-1.456_607_2e-05, -2.133_740_6e-04, -1.682_827_0e-03, -7.373_329_2e-03, -1.426_474_0e-02];

// ------------------------------------------------------------------ splitmix64 and dropout
/// splitmix64's increment (the golden ratio) and its two multipliers.
pub const SPLITMIX_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
pub const SPLITMIX_M1: u64 = 0xBF58_476D_1CE4_E5B9;
pub const SPLITMIX_M2: u64 = 0x94D0_49BB_1331_11EB;

/// splitmix64's output function (the finalizer of a state).
pub fn splitmix_mix(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(SPLITMIX_M1);
    let z = (z ^ (z >> 27)).wrapping_mul(SPLITMIX_M2);
    z ^ (z >> 31)
}

/// The 53 random bits that decide whether element `index` of a dropout
/// mask with `salt` is dropped at `seed`: element dropped ⇔ bits <
/// [`dropout_threshold`] (⇔ bits / 2⁵³ < rate).
pub fn dropout_bits(seed: u64, salt: u64, index: u64) -> u64 {
    let z = seed.wrapping_mul(SPLITMIX_GAMMA) ^ salt.wrapping_mul(SPLITMIX_M1) ^ index;
    splitmix_mix(z.wrapping_add(SPLITMIX_GAMMA)) >> 11
}

/// ⌈rate·2⁵³⌉: the integer form of `u < rate` for u = bits / 2⁵³.
pub fn dropout_threshold(rate: f64) -> u64 {
    (rate * (1u64 << 53) as f64).ceil() as u64
}

/// What a kept element is multiplied by: 1 / (1 − rate).
pub fn dropout_keep(rate: f64) -> f64 {
    1.0 / (1.0 - rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The integer threshold decides exactly as the uniform comparison.
    #[test]
    fn dropout_threshold_is_the_uniform_comparison() {
        for rate in [0.0, 0.1, 0.2, 0.5, 0.9, 1.0 / 3.0] {
            for i in 0..2000 {
                let bits = dropout_bits(12345, 2, i);
                let u = bits as f64 / (1u64 << 53) as f64;
                assert_eq!(bits < dropout_threshold(rate), u < rate, "rate {rate}, element {i}");
            }
        }
    }
}
