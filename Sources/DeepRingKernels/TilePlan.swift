/// How wide one instruction set's register tiles are, in 16-column strips of packed B (and, for the GEMVs, in
/// strips or 16-wide vectors run side by side). Only the shapes change between instruction sets; the chains
/// (`TileKernels`, `GEMVKernels`) do not.
///
/// The plans are computed properties (literals once inlined), so every kernel is compiled for one shape.
@frozen
public struct TilePlan: Sendable {
    /// Strips per whole 6-row tile: 1 (6×16), 2 (6×32) or 4 (6×64).
    public var wholeTile: Int
    /// The deepest k block (kc) this plan is meant for: its B group (`wholeTile` strips × kc × 64 bytes) must stay
    /// in L1 across the block's A strips. A kernel set runs deeper blocks with `halved` (the tile shape never
    /// changes a result, since every element is one chain over k whatever tile it is in; only the speed).
    public var wholeTileMaxDepth: Int
    /// Strips per tile of 2 edge rows (when a block's rows leave 2 after the 6-row tiles): 1, 2 or 4.
    public var twoRowTile: Int
    /// Strips per tile of 4 edge rows: 1 or 2.
    public var fourRowTile: Int
    /// The longest K block the GEMM makes for this plan (`GEMM.kStep`: k is split into blocks of nearly equal
    /// length up to this). Where to split never changes a result — a block ends by storing each chain's exact
    /// partial value, the next one continues from it — only how long B's group must stay in L1.
    public var kBlockDepth: Int
    /// Strips of packed B a batch-1 GEMV runs side by side: 4 or 8.
    public var gemvStrips: Int
    /// 16-wide vectors the row-major GEMV runs side by side: 4 or 8.
    public var gemvVectors: Int

    @inlinable
    public init(wholeTile: Int, wholeTileMaxDepth: Int = .max, kBlockDepth: Int = 256, twoRowTile: Int, fourRowTile: Int,
                gemvStrips: Int, gemvVectors: Int) {
        self.wholeTile = wholeTile; self.wholeTileMaxDepth = wholeTileMaxDepth; self.kBlockDepth = kBlockDepth
        self.twoRowTile = twoRowTile; self.fourRowTile = fourRowTile
        self.gemvStrips = gemvStrips; self.gemvVectors = gemvVectors
    }

    /// 256-bit registers (16 of them): a SIMD16<Float> is two ymm, so a 6×16 tile holds 12 accumulators and
    /// leaves three for B's two halves and the broadcast A value; 2 edge rows span 2 strips and 4 edge rows 1 (8
    /// accumulators each, enough to keep two FMA pipes of 4-cycle latency busy).
    @inlinable public static var registers256: TilePlan {
        TilePlan(wholeTile: 1, twoRowTile: 2, fourRowTile: 1, gemvStrips: 4, gemvVectors: 4)
    }

    /// This plan with whole tiles of half the width (for k blocks deeper than `wholeTileMaxDepth`).
    @inlinable public var halved: TilePlan {
        var plan = self
        plan.wholeTile = max(1, wholeTile / 2); plan.wholeTileMaxDepth = .max
        return plan
    }

    /// 512-bit registers (32 of them): a SIMD16<Float> is one zmm. A 6×64 tile holds 24 accumulators and reads
    /// four 16-wide strips of B per k (4 loads and 6 broadcasts per 24 FMAs, where 6×32 needs 8 per 12); its B
    /// group (4 strips × 196 deep × 64 bytes = 50 KB at the MLP's k = 784) about fills a 48 KB L1. Deeper k
    /// blocks (256 at k = 1024: 64 KB) ran slower with it. Measured on a Xeon with AVX-512 (2026-12-03,
    /// `bench engine --only gemm`, alternated, 2 threads): 6×64 ran 128×784×900 at 165–172 GFLOP/s against 136–167
    /// for 6×32, and 1024³ (K blocks of 256) at 117–123 against 183–187. So the GEMM gives this plan K blocks of at
    /// most 200 (1024 → 6 × 171, 900 → 5 × 180), every one 6×64; a block deeper than 200 (weights packed under
    /// another plan) runs 6×32 tiles (`halved`). Edge rows keep 8 accumulators.
    @inlinable public static var registers512: TilePlan {
        TilePlan(wholeTile: 4, wholeTileMaxDepth: 200, kBlockDepth: 200, twoRowTile: 4, fourRowTile: 2, gemvStrips: 8,
                 gemvVectors: 8)
    }
}
