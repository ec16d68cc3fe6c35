/// The compute kernels one instruction set runs: the GEMM's register tiles, the batch-1 GEMVs and Winograd's
/// transforms.
///
/// Swift has no per-function target attributes, so each instruction set's kernels live in a target of their own,
/// compiled with that set's `-target-cpu` (`DeepRingKernelsAVX512`, `DeepRingKernelsAVX2`, and
/// `DeepRingKernelsPortable` with no target flags). All three instantiate the one definition of every FMA chain
/// in this module (`TileKernels`, `GEMVKernels`, `@inlinable`, so each is compiled again, inlined, in the target
/// that calls it); they differ only in how many 16-column strips a register tile spans (`TilePlan`). The engine
/// picks a set at run time, after asking the CPU (see the engine's `ISA`).
///
/// Determinism contract, the same for every conformer: each output element is **one sequential fused
/// multiply-add chain over k = 0, 1, …, K−1**, started from C's value when `load` is set, from +0 otherwise.
/// Vector width and tile shape change only how many elements run at once, never an element's operations, so
/// every set gives the same bytes (the tests force each set and compare).
public protocol KernelSet {
    /// The shapes this set's kernels are compiled for (the GEMM reads its K block depth).
    static var plan: TilePlan { get }

    /// C[rows×cols] (+)= packed A · packed B for one (A block, B block) pair.
    ///
    /// - `aPack`: A packed in strips of `TileKernels.mr` rows, `kc` deep (strip s at `aPack + s·mr·kc`, value
    ///   (k, r) at `[k·mr + r]`, rows beyond `rows` zero-padded);
    /// - `bPack`: B in strips of `TileKernels.nr` columns, `kc` deep: value (k, q) of strip s at
    ///   `bPack[s·bStripStride + k·bRowStride + q]`. Packed B: `bStripStride` nr·kc, `bRowStride` nr, columns beyond
    ///   `cols` zero-padded. A row-major B read in place: `bStripStride` nr, `bRowStride` its row stride, and `cols`
    ///   a multiple of nr (no partial strip to pad);
    /// - `c`: row stride `ldc`; `load`: continue the chains from C (a later K block, or accumulation);
    /// - `edge`: scratch for `mr × nr` floats.
    static func tiles(rows: Int, cols: Int, kc: Int, aPack: UnsafePointer<Float>, bPack: UnsafePointer<Float>,
                      bRowStride: Int, bStripStride: Int,
                      c: UnsafeMutablePointer<Float>, ldc: Int, load: Bool, edge: UnsafeMutablePointer<Float>)

    /// y[strips·16 ∩ n] (+)= x[k] · B over the strips `strips` of a pre-packed B (the engine's `GEMM.PackedB`):
    /// strip s's part of K block p is `kcur` rows of 16 values at `storage + offsets[(s / stripsPerBlock)·kBlocks
    /// + p] + (s mod stripsPerBlock)·16·kcur`, K blocks `step` deep. Strips of one group never cross a column block.
    static func gemvPacked(strips: Range<Int>, x: UnsafePointer<Float>, storage: UnsafePointer<Float>,
                           offsets: UnsafePointer<Int>, kBlocks: Int, step: Int, stripsPerBlock: Int,
                           n: Int, k: Int, y: UnsafeMutablePointer<Float>, accumulate: Bool)

    /// Winograd's input transform V = Bᵀ d B for the tiles `tiles` (`WinogradKernels.input`).
    static func winogradInput(tiles: Range<Int>, first: Int, perImage: Int, tilesWide: Int, x: UnsafePointer<Float>,
                              h: Int, w: Int, inC: Int, v: UnsafeMutablePointer<Float>, ldv: Int)

    /// Winograd's output transform Y = Aᵀ M A + bias (then the ReLU) for the tiles `tiles` and the output channels
    /// `cols` (`WinogradKernels.output`).
    static func winogradOutput(tiles: Range<Int>, first: Int, perImage: Int, tilesWide: Int, m: UnsafePointer<Float>,
                               ldm: Int, outC: Int, cols: Range<Int>, bias: UnsafePointer<Float>, relu: Bool,
                               y: UnsafeMutablePointer<Float>, h: Int, w: Int)

    /// y[columns] (+)= x[k] · W[k × columns] with W row-major (row stride `ldw`).
    static func gemv(columns: Range<Int>, k: Int, x: UnsafePointer<Float>, w: UnsafePointer<Float>, ldw: Int,
                     y: UnsafeMutablePointer<Float>, accumulate: Bool)
}
