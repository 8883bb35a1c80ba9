//! The instruction-set tier the hot loops run at: AVX-512, AVX2 (with FMA and F16C) or the
//! x86-64 baseline. Picked once from the CPU, or forced with `CHATVEC_SIMD=baseline|avx2|avx512`
//! (so a machine with AVX-512 can test and time what an AVX2-only laptop runs). A forced tier the
//! CPU lacks is refused by [`SimdTier::from_env`]; the hot loops themselves never run it.
//!
//! Every kernel takes its tier as an argument (tests run each one the machine has against the
//! reference) and the public entry points pass [`SimdTier::active`].

use std::sync::OnceLock;

/// The environment variable that forces a tier.
pub const SIMD_ENV: &str = "CHATVEC_SIMD";

/// An instruction-set tier, from the slowest to the fastest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdTier {
    /// x86-64 (SSE2) or whatever the target's baseline is.
    Baseline,
    /// AVX2 with FMA and F16C (Intel from Haswell, AMD from Zen 1).
    Avx2,
    /// AVX-512 F/BW/VL/DQ, plus AVX2, FMA and F16C (Intel server and Ice Lake+, AMD Zen 4+).
    Avx512,
}

/// Every tier, slowest first.
pub const ALL_TIERS: [SimdTier; 3] = [SimdTier::Baseline, SimdTier::Avx2, SimdTier::Avx512];

/// `CHATVEC_SIMD` holds a name that is not a tier, or a tier this CPU lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{SIMD_ENV}={value:?}: {why}")]
pub struct SimdEnvError {
    /// The variable's value.
    pub value: String,
    /// What is wrong with it.
    pub why: String,
}

impl SimdTier {
    /// The name `CHATVEC_SIMD` takes and the benches print.
    pub fn name(self) -> &'static str {
        match self {
            SimdTier::Baseline => "baseline",
            SimdTier::Avx2 => "avx2",
            SimdTier::Avx512 => "avx512",
        }
    }

    /// The tier named `s` (as [`SimdTier::name`] spells it).
    pub fn parse(s: &str) -> Option<SimdTier> {
        ALL_TIERS.into_iter().find(|t| t.name() == s.trim().to_ascii_lowercase())
    }

    /// Whether this CPU can run code compiled for the tier (`std` caches the CPUID checks).
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            match self {
                SimdTier::Baseline => true,
                SimdTier::Avx2 => avx2,
                SimdTier::Avx512 => avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == SimdTier::Baseline
        }
    }

    /// The fastest tier this CPU runs.
    pub fn detect() -> SimdTier {
        *ALL_TIERS.iter().rev().find(|t| t.supported()).unwrap_or(&SimdTier::Baseline)
    }

    /// Every tier this CPU runs, slowest first (what the tests iterate over).
    pub fn available() -> Vec<SimdTier> {
        ALL_TIERS.into_iter().filter(|t| t.supported()).collect()
    }

    /// The tier `CHATVEC_SIMD` forces, or the fastest the CPU has when it is unset or empty;
    /// an error for an unknown name or a tier the CPU lacks (binaries check this at start).
    pub fn from_env() -> Result<SimdTier, SimdEnvError> {
        let Some(value) = std::env::var_os(SIMD_ENV) else { return Ok(SimdTier::detect()) };
        let value = value.to_string_lossy().into_owned();
        if value.trim().is_empty() {
            return Ok(SimdTier::detect());
        }
        let Some(tier) = SimdTier::parse(&value) else {
            return Err(SimdEnvError { value, why: "expected baseline, avx2 or avx512".into() });
        };
        if !tier.supported() {
            let why = format!("this CPU lacks it (it has {})", SimdTier::detect().name());
            return Err(SimdEnvError { value, why });
        }
        Ok(tier)
    }

    /// The tier every hot loop runs at in this process: [`SimdTier::from_env`], or the CPU's
    /// fastest when that is an error (never a tier the CPU lacks), decided once.
    pub fn active() -> SimdTier {
        static ACTIVE: OnceLock<SimdTier> = OnceLock::new();
        *ACTIVE.get_or_init(|| SimdTier::from_env().unwrap_or_else(|_| SimdTier::detect()))
    }
}

impl std::fmt::Display for SimdTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One line for benchmark output: the CPU model, the SIMD features it has and the tier in use,
/// e.g. `AMD EPYC; avx2 fma f16c avx512f avx512bw avx512vl avx512dq avx512vnni; tier avx512`.
pub fn cpu_line() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("{model}; {}; tier {}", features().join(" "), SimdTier::active())
}

/// The SIMD features of this CPU that chatvec's kernels use.
pub fn features() -> Vec<&'static str> {
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let checks = [
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("f16c", has!("f16c")),
            ("avx512f", has!("avx512f")),
            ("avx512bw", has!("avx512bw")),
            ("avx512vl", has!("avx512vl")),
            ("avx512dq", has!("avx512dq")),
            ("avx512vnni", has!("avx512vnni")),
        ];
        out.extend(checks.into_iter().filter(|c| c.1).map(|c| c.0));
    }
    out
}

/// Runs `$generic($args)` compiled for the tier `$tier` names (`SimdTier`): the same source
/// compiled three times, so the same results, with the compiler's vectorizer using AVX-512
/// (8 f64 lanes), AVX2+FMA (4) or the baseline (2). The caller must pass a tier the CPU supports
/// ([`SimdTier::active`] and [`SimdTier::available`] only give those).
///
/// Hand-written because the portable-SIMD and multiversioning crates need nightly or pull in
/// macros for what is one `#[target_feature]` wrapper per tier here.
#[macro_export]
#[doc(hidden)]
macro_rules! dispatch_simd {
    ($tier:expr, $generic:path, $ret:ty, ($($arg:ident: $ty:ty),*)) => {{
        let tier: $crate::simd::SimdTier = $tier;
        debug_assert!(tier.supported(), "{tier} is not supported by this CPU");
        match tier {
            #[cfg(target_arch = "x86_64")]
            $crate::simd::SimdTier::Avx512 => {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
                fn avx512($($arg: $ty),*) -> $ret {
                    $generic($($arg),*)
                }
                // SAFETY: the caller passes only tiers the CPU supports.
                unsafe { avx512($($arg),*) }
            }
            #[cfg(target_arch = "x86_64")]
            $crate::simd::SimdTier::Avx2 => {
                #[target_feature(enable = "avx2,fma,f16c")]
                fn avx2($($arg: $ty),*) -> $ret {
                    $generic($($arg),*)
                }
                // SAFETY: as above.
                unsafe { avx2($($arg),*) }
            }
            _ => $generic($($arg),*),
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_parse_by_name_and_the_detected_one_is_supported() {
        for t in ALL_TIERS {
            assert_eq!(SimdTier::parse(t.name()), Some(t));
        }
        assert_eq!(SimdTier::parse(" AVX2 "), Some(SimdTier::Avx2));
        assert_eq!(SimdTier::parse("sse9"), None);
        assert!(SimdTier::detect().supported());
        assert!(SimdTier::active().supported());
        assert_eq!(SimdTier::available().last(), Some(&SimdTier::detect()));
        assert!(cpu_line().contains(&format!("tier {}", SimdTier::active())));
    }
}
