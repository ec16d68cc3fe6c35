/// A network layer with a hand-written forward/backward pair.
///
/// `forward` caches what `backward` needs when `training` is true. `backward` receives ∂L/∂output,
/// **writes** (overwrites) the layer's parameter gradients in the model's gradient buffer and returns ∂L/∂input
/// (or an empty tensor when `needsInputGradient` is false, as for the first layer).
public protocol Layer: AnyObject {
    var spec: LayerSpec { get }
    /// Output shape (without the batch dimension).
    var outputShape: [Int] { get }
    var needsInputGradient: Bool { get set }
    func forward(_ x: Tensor, training: Bool) -> Tensor
    func backward(_ dy: Tensor) -> Tensor
}

/// Element-wise helpers shared by the layers.
enum Elementwise {
    /// db[c] (+)= Σ_r dy[r, c], rows summed in order 0, 1, … (deterministic).
    @inline(__always)
    static func sumRows(_ dy: UnsafePointer<Float>, rows: Int, cols: Int, into db: UnsafeMutablePointer<Float>,
                        accumulate: Bool) {
        if !accumulate { db.update(repeating: 0, count: cols) }
        for r in 0..<rows {
            let row = dy + r * cols
            for c in 0..<cols { db[c] += row[c] }
        }
    }
}

/// A GEMM operand packed from a layer's parameters, valid while the parameter store's generation is unchanged
/// (any mutable access — an optimizer step, a tampered value, a restore — makes it stale and it is packed anew).
final class PackedCache<Packed>: @unchecked Sendable {
    private var packed: Packed?
    private var generation: UInt64 = 0

    func get(_ store: ParameterStore, _ values: UnsafePointer<Float>,
             make: (UnsafePointer<Float>) -> Packed) -> Packed {
        if let p = packed, generation == store.generation { return p }
        packed = nil
        let p = make(values)
        packed = p
        generation = store.generation
        return p
    }
}
