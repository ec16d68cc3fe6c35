/// How wide one instruction set's register tiles are, in 16-column strips of packed B (and, for the GEMVs, in
/// strips or 16-wide vectors run side by side). Only the shapes change between instruction sets; the chains
/// (`TileKernels`, `GEMVKernels`) do not.
///
/// The plans are computed properties (literals once inlined), so every kernel is compiled for one shape.
@frozen
public struct TilePlan: Sendable {
    /// Strips per whole 6-row tile: 1 (6×16) or 2 (6×32).
    public var wholeTile: Int
    /// Strips per tile of 2 edge rows (when a block's rows leave 2 after the 6-row tiles): 1, 2 or 4.
    public var twoRowTile: Int
    /// Strips per tile of 4 edge rows: 1 or 2.
    public var fourRowTile: Int
    /// Strips of packed B a batch-1 GEMV runs side by side: 4 or 8.
    public var gemvStrips: Int
    /// 16-wide vectors the row-major GEMV runs side by side: 4 or 8.
    public var gemvVectors: Int

    @inlinable
    public init(wholeTile: Int, twoRowTile: Int, fourRowTile: Int, gemvStrips: Int, gemvVectors: Int) {
        self.wholeTile = wholeTile; self.twoRowTile = twoRowTile; self.fourRowTile = fourRowTile
        self.gemvStrips = gemvStrips; self.gemvVectors = gemvVectors
    }

    /// 256-bit registers (16 of them): a SIMD16<Float> is two ymm, so a 6×16 tile holds 12 accumulators and
    /// leaves three for B's two halves and the broadcast A value; 2 edge rows span 2 strips and 4 edge rows 1 (8
    /// accumulators each, enough to keep two FMA pipes of 4-cycle latency busy).
    @inlinable public static var registers256: TilePlan {
        TilePlan(wholeTile: 1, twoRowTile: 2, fourRowTile: 1, gemvStrips: 4, gemvVectors: 4)
    }

    /// 512-bit registers (32 of them): a SIMD16<Float> is one zmm. A 6×32 tile holds 12 accumulators and reads
    /// two 16-wide strips of B per k; its B block (2 strips × 196 deep × 64 bytes = 25 KB) stays in a 48 KB L1
    /// across the A strips, which a 6×64 tile's (50 KB) would not. Edge rows keep 8 accumulators as above.
    @inlinable public static var registers512: TilePlan {
        TilePlan(wholeTile: 2, twoRowTile: 4, fourRowTile: 2, gemvStrips: 8, gemvVectors: 8)
    }
}
