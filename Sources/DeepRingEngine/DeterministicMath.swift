/// The engine's own transcendentals, built from IEEE basic operations (+, −, ×, ÷, rounding, exponent bits) in a
/// fixed order, so that they give the same bits on every CPU and with every kernel path.
///
/// The C library's `expf`, `logf` and `powf` are not such functions: glibc picks an implementation per CPU at load
/// time (its FMA variants round differently from the SSE2 ones in rare cases), and other C libraries differ
/// outright. Softmax (the querent's probabilities, Eq. 12's delivery) and the cross-entropy loss go through here,
/// so a ring whose blocks run on different CPUs, and a querent on a third, agree bit for bit.
///
/// Swift never fuses `a * b + c` into an FMA unless asked (`addingProduct`), so the polynomials below round
/// after every operation, the same on every target.
public enum DeterministicMath {
    /// eˣ for Float, within 2 ulp of the exact value for normal results; +∞ above 88.72, +0 below −103.97, NaN
    /// for NaN.
    ///
    /// x = n·ln 2 + r with |r| ≤ ln2/2 (Cody–Waite split of ln 2), eʳ by a degree-7 Taylor polynomial in Horner
    /// form, and 2ⁿ by building the exponent bits (in two steps when the result is subnormal).
    public static func exp(_ x: Float) -> Float {
        if x.isNaN { return x }
        if x > 88.72283 { return .infinity }
        if x < -103.97208 { return 0 }
        let n = (x * 1.442_695_04).rounded(.toNearestOrEven)
        // ln 2 = ln2High + ln2Low, ln2High with 12 significant bits so that n·ln2High is exact for |n| < 2¹².
        let ln2High: Float = 0.693_145_751_953_125
        let ln2Low: Float = 1.428_606_765_330_187e-6
        let r = (x - n * ln2High) - n * ln2Low
        var p: Float = 1.0 / 5040
        p = p * r + 1.0 / 720
        p = p * r + 1.0 / 120
        p = p * r + 1.0 / 24
        p = p * r + 1.0 / 6
        p = p * r + 0.5
        p = p * r + 1
        p = p * r + 1
        let e = Int(n)
        if e > 127 { return (p * 2) * powerOfTwo(127) }   // just below Float.greatestFiniteMagnitude
        if e >= -126 { return p * powerOfTwo(e) }
        // Subnormal result: scale in two exact steps so that only the last multiplication rounds.
        return (p * powerOfTwo(e + 64)) * powerOfTwo(-64)
    }

    /// The natural logarithm for Double, within 2 ulp for positive normal and subnormal x; −∞ at +0, NaN below 0
    /// and for NaN, +∞ at +∞.
    ///
    /// x = 2ᵏ·m with m in [√½, √2), ln m = 2·atanh(s) with s = (m − 1)/(m + 1), |s| ≤ 0.1716, by its odd series to
    /// s²¹ (the next term is below 2⁻⁵⁸ of the result).
    public static func log(_ x: Double) -> Double {
        if x.isNaN || x < 0 { return .nan }
        if x == 0 { return -.infinity }
        if x == .infinity { return x }
        var m = x.significand      // [1, 2)
        var k = Double(x.exponent)
        if m > 1.414_213_562_373_095_1 { m *= 0.5; k += 1 }
        let s = (m - 1) / (m + 1)
        let s2 = s * s
        var series = 1.0 / 21
        for d in stride(from: 19.0, through: 3, by: -2) { series = series * s2 + 1 / d }
        let lnM = 2 * s + 2 * s * s2 * series
        // ln 2 split so that k·ln2High is exact (|k| ≤ 1075 needs 11 bits).
        let ln2High = 0.693_147_180_369_123_816_49
        let ln2Low = 1.908_214_929_270_587_7e-10
        return k * ln2High + (lnM + k * ln2Low)
    }

    /// The natural logarithm for Float (the Double `log`, rounded once).
    public static func log(_ x: Float) -> Float { Float(log(Double(x))) }

    /// xⁿ for a whole n ≥ 0 by repeated squaring in Double, rounded once to Float: Adam's bias corrections
    /// β₁ᵗ and β₂ᵗ.
    public static func power(_ x: Float, _ n: Int) -> Float {
        var result = 1.0, base = Double(x), e = max(n, 0)
        while e > 0 {
            if e & 1 == 1 { result *= base }
            base *= base
            e >>= 1
        }
        return Float(result)
    }

    /// 2ᵉ for −126 ≤ e ≤ 127, from its exponent bits.
    @inline(__always)
    private static func powerOfTwo(_ e: Int) -> Float {
        Float(bitPattern: UInt32(truncatingIfNeeded: e + 127) << 23)
    }
}
