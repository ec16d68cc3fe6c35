import DeepRingEngine
import DeepRingTraining
import Foundation

/// Training progress: a live bar on a terminal, one plain line per ~10% of an epoch otherwise.
final class ProgressPrinter {
    let live = isatty(STDERR_FILENO) != 0
    var lastPrinted = -1.0
    var lastDecile = -1

    func update(_ p: TrainingProgress) {
        let frac = Double(p.batch) / Double(p.batches)
        let epochsLeft = Double(p.epochs - p.epoch) + (1 - frac)
        let perEpoch = p.epochElapsed / max(frac, 1e-9)
        let eta = epochsLeft * perEpoch
        let bps = Double(p.batch) / max(p.epochElapsed, 1e-9)
        let text = String(format: "epoch %d/%d %@ %5.1f%%  %.0f batches/s  loss %.4f  acc %.2f%%  lr %.4g  ETA %@",
                          p.epoch, p.epochs, bar(frac) as NSString, frac * 100, bps, p.loss, p.accuracy * 100,
                          p.learningRate, formatDuration(eta) as NSString)
        if live {
            if p.totalElapsed - lastPrinted < 0.1 && p.batch != p.batches { return }
            lastPrinted = p.totalElapsed
            FileHandle.standardError.write(Data("\r\u{1B}[2K\(text)".utf8))
        } else {
            let d = Int(frac * 10)
            if d != lastDecile {
                lastDecile = d
                stderrPrint(text)
            }
        }
    }

    func endEpoch(_ s: EpochSummary) {
        if live { FileHandle.standardError.write(Data("\r\u{1B}[2K".utf8)) }
        lastDecile = -1
        var line = String(format: "epoch %d: loss %.4f, train accuracy %.2f%%", s.epoch, s.trainLoss, s.trainAccuracy * 100)
        if let t = s.testAccuracy { line += String(format: ", test accuracy %.2f%%", t * 100) }
        line += String(format: ", %.1f s", s.seconds)
        stderrPrint(line)
    }

    func bar(_ f: Double) -> String {
        let w = 24
        let n = Int((f * Double(w)).rounded(.down))
        return "[" + String(repeating: "#", count: n) + String(repeating: ".", count: w - n) + "]"
    }
}

func formatDuration(_ s: Double) -> String {
    if !s.isFinite { return "?" }
    let t = Int(s.rounded())
    return t >= 3600 ? String(format: "%dh%02dm", t / 3600, (t % 3600) / 60) : t >= 60 ? String(format: "%dm%02ds", t / 60, t % 60) : "\(t)s"
}

/// Ctrl-C during training: finish the current batch, keep the last checkpoint, exit 130.
func installInterruptHandler() {
    signal(SIGINT) { _ in
        if trainingInterrupted { _exit(130) }
        trainingInterrupted = true
    }
}
