import DeepRingLedger
import DeepRingLedgerSQLite
import Foundation
import Testing

/// The memo of authentic entries answers only for entries equal, byte for byte, to one it was given; everything
/// else gets the full check (stored hash recomputed, signature verified), so a row changed after its append is caught.
@Suite struct AuthenticEntriesTests {
    func appended(_ n: Int, payloadBytes: Int = 300) throws -> (SQLiteLedger, [LedgerEntry]) {
        let ledger = try SQLiteLedger(path: tempLedgerPath())
        let s = LedgerSigner()
        var out: [LedgerEntry] = []
        for i in 0..<n {
            out.append(try ledger.append(kind: .layer, queryID: "q\(i)", payload: (0..<payloadBytes).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ i) }, signer: s))
        }
        return (ledger, out)
    }

    @Test func vouchesForAnAppendedEntryAndItsRowReadBack() throws {
        let (ledger, es) = try appended(3)
        let memo = AuthenticEntries()
        for e in es { memo.remember(e) }
        for e in try ledger.allEntries() {        // other buffers, the same bytes
            #expect(memo.vouches(for: e))
            #expect(memo.isAuthentic(e))
        }
        #expect(memo.counts.vouched == 3 && memo.counts.checkedInFull == 0)
    }

    @Test func aRowDifferingInAnyFieldIsCheckedInFullAndRefused() throws {
        let (_, es) = try appended(1)
        let memo = AuthenticEntries()
        memo.remember(es[0])
        var variants: [LedgerEntry] = []
        for i in [0, 150, 299] { var e = es[0]; e.payload[i] ^= 1; variants.append(e) }
        var e = es[0]; e.payload.removeLast(); variants.append(e)
        e = es[0]; e.signature[5] ^= 0x10; variants.append(e)
        e = es[0]; e.hash[0] ^= 1; variants.append(e)
        e = es[0]; e.queryID = "other"; variants.append(e)
        e = es[0]; e.queryID = nil; variants.append(e)
        e = es[0]; e.previousHash[31] ^= 1; variants.append(e)
        e = es[0]; e.kind = .alarm; variants.append(e)
        e = es[0]; e.author = LedgerSigner().publicKey; variants.append(e)
        for v in variants {
            #expect(!memo.vouches(for: v))
            #expect(!memo.isAuthentic(v))
        }
        #expect(memo.counts.checkedInFull == variants.count)
        #expect(memo.isAuthentic(es[0]))
    }

    @Test func anEntryNeverGivenIsCheckedInFullThenRemembered() throws {
        let (_, es) = try appended(2)
        let memo = AuthenticEntries()
        #expect(!memo.vouches(for: es[1]))
        #expect(memo.isAuthentic(es[1]))          // full check passes: remembered
        #expect(memo.vouches(for: es[1]))
        var forged = es[0]; forged.payload[0] ^= 0xFF
        #expect(!memo.isAuthentic(forged))        // fails the full check: not remembered
        #expect(!memo.vouches(for: forged))
    }

    /// Query ids are compared as bytes: "K" and the Kelvin sign (U+212A) are equal as Swift strings.
    @Test func queryIDsAreComparedByteForByte() throws {
        let ledger = try SQLiteLedger(path: tempLedgerPath())
        let e = try ledger.append(kind: .layer, queryID: "K1", payload: [1, 2, 3], signer: LedgerSigner())
        let memo = AuthenticEntries()
        memo.remember(e)
        var kelvin = e; kelvin.queryID = "\u{212A}1"
        #expect(kelvin.queryID == e.queryID)        // the premise
        #expect(!memo.vouches(for: kelvin))
    }

    @Test func boundedByEntriesAndBytes() throws {
        let (_, es) = try appended(6, payloadBytes: 1000)
        let byCount = AuthenticEntries(capacity: 4, maxBytes: 1 << 20)
        for e in es { byCount.remember(e) }
        #expect(es.map { byCount.vouches(for: $0) } == [false, false, true, true, true, true])
        let byBytes = AuthenticEntries(capacity: 100, maxBytes: 2500)
        for e in es { byBytes.remember(e) }
        #expect(es.map { byBytes.vouches(for: $0) } == [false, false, false, false, true, true])
        let tooBig = AuthenticEntries(capacity: 100, maxBytes: 999)
        tooBig.remember(es[0])
        #expect(!tooBig.vouches(for: es[0]))
    }

    @Test func theNewerEntryUnderOneNumberReplacesTheOlder() throws {
        // A database that lost its last lazily committed rows in a crash numbers the next rows the same.
        let (_, a) = try appended(1)
        let (_, b) = try appended(1, payloadBytes: 10)
        #expect(a[0].sequence == b[0].sequence)
        let memo = AuthenticEntries()
        memo.remember(a[0]); memo.remember(b[0])
        #expect(!memo.vouches(for: a[0]))
        #expect(memo.vouches(for: b[0]))
    }
}
