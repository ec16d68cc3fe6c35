import DeepRingFuzz
import Foundation
import Testing

/// The fuzz harnesses in the ordinary test run: every target's seeds and every committed finding
/// (`Fixtures/fuzz/<target>/…`) run through their harness — which must return, whatever the bytes — and a few
/// thousand mutations of each seed. `scripts/fuzz.sh` runs the same harnesses under libFuzzer and AddressSanitizer.
@Suite struct FuzzRegressionTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/fuzz").path

    @Test func everyTargetHasSeedsAndTheyRun() {
        #expect(FuzzTargets.all.count >= 20)
        #expect(Set(FuzzTargets.all.map(\.name)).count == FuzzTargets.all.count)
        for t in FuzzTargets.all {
            let seeds = t.seeds()
            #expect(!seeds.isEmpty && seeds.allSatisfy { !$0.isEmpty }, "\(t.name)")
            for s in seeds { t.run(s) }
        }
    }

    @Test func committedFindingsStayFixed() throws {
        let fm = FileManager.default
        var replayed = 0
        for dir in (try? fm.contentsOfDirectory(atPath: FuzzRegressionTests.fixtures)) ?? [] {
            var isDirectory: ObjCBool = false
            guard fm.fileExists(atPath: FuzzRegressionTests.fixtures + "/" + dir, isDirectory: &isDirectory), isDirectory.boolValue else { continue }
            let target = try #require(FuzzTargets.named(dir), "Fixtures/fuzz/\(dir) names no fuzz target")
            for f in try fm.contentsOfDirectory(atPath: FuzzRegressionTests.fixtures + "/" + dir).sorted() {
                target.run([UInt8](try Data(contentsOf: URL(fileURLWithPath: FuzzRegressionTests.fixtures + "/\(dir)/\(f)"))))
                replayed += 1
            }
        }
        #expect(replayed >= 0)
    }

    /// Truncations and byte flips of every seed: a cheap stand-in for the fuzzer, run everywhere.
    @Test func mutatedSeedsAreHandled() {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return state }
        for t in FuzzTargets.all {
            for s in t.seeds() {
                for cut in stride(from: 0, to: s.count, by: max(1, s.count / 64)) { t.run(Array(s[0..<cut])) }
                for _ in 0..<200 {
                    var m = s
                    for _ in 0..<(1 + Int(next() % 4)) {
                        let i = Int(next() % UInt64(m.count))
                        m[i] = UInt8(truncatingIfNeeded: next())
                    }
                    t.run(m)
                }
            }
        }
    }
}
