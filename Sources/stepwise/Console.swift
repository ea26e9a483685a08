import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
    private let systemWrite = Glibc.write
#elseif canImport(Darwin)
    import Darwin
    private let systemWrite = Darwin.write
#endif

/// Every byte the CLI prints goes through here, with `write(2)`.
///
/// Foundation's `FileHandle.write(_:)` traps on EPIPE (a reader that went away, as in
/// `stepwise submit … | true`) and on EBADF (a closed descriptor), after the command's work is
/// done: a script that retries on failure then repeats a submit that happened. Here a failed
/// write is recorded instead: nothing more is written to that stream, and the process exits
/// with ``Console/outputFailedStatus`` (unless the command failed with its own non-zero status).
/// SIGPIPE is ignored (see `Stepwise.main`), so a broken pipe is an EPIPE error, not a signal.
enum Console {
    /// The exit status after a failed write to stdout or stderr: 74, `EX_IOERR` of sysexits.h.
    static let outputFailedStatus: Int32 = 74

    enum Stream: Sendable {
        case stdout, stderr

        var descriptor: Int32 { self == .stdout ? STDOUT_FILENO : STDERR_FILENO }
    }

    /// Set once a write to the stream failed; never cleared.
    private static let stdoutFailed = Atomic<Bool>(false)
    private static let stderrFailed = Atomic<Bool>(false)

    /// Whether a write to `stream` has failed.
    static func failed(_ stream: Stream) -> Bool {
        switch stream {
        case .stdout: stdoutFailed.load(ordering: .relaxed)
        case .stderr: stderrFailed.load(ordering: .relaxed)
        }
    }

    /// Whether any write failed.
    static var anyFailed: Bool { failed(.stdout) || failed(.stderr) }

    private static func markFailed(_ stream: Stream) {
        switch stream {
        case .stdout: stdoutFailed.store(true, ordering: .relaxed)
        case .stderr: stderrFailed.store(true, ordering: .relaxed)
        }
    }

    /// Writes all of `text` to `stream`, looping on partial writes, EINTR and EAGAIN.
    ///
    /// - Returns: `false` when the stream failed now or before (EPIPE, EBADF, EIO, ENOSPC, …);
    ///   nothing is written to a stream after its first failure.
    @discardableResult
    static func write(_ text: String, to stream: Stream) -> Bool {
        guard !failed(stream) else { return false }
        let ok = Array(text.utf8).withUnsafeBytes { buffer in writeAll(buffer, to: stream.descriptor) }
        if !ok { markFailed(stream) }
        return ok
    }

    private static func writeAll(_ buffer: UnsafeRawBufferPointer, to fd: Int32) -> Bool {
        guard let base = buffer.baseAddress else { return true }
        var offset = 0
        while offset < buffer.count {
            let n = systemWrite(fd, base + offset, buffer.count - offset)
            if n > 0 {
                offset += n
                continue
            }
            guard n < 0 else { return false }  // 0 bytes written for a non-empty buffer: give up rather than spin
            switch errno {
            case EINTR:
                continue
            case EAGAIN, EWOULDBLOCK:
                // A descriptor inherited in non-blocking mode: wait until it takes more.
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                if poll(&p, 1, -1) < 0 && errno != EINTR { return false }
            default:
                return false
            }
        }
        return true
    }

    /// Finds a broken stdout without writing to it: a pipe or socket whose reader is gone, or a
    /// descriptor that is not open. A command that may print nothing for a long time (`watch` of
    /// an idle session) calls it between reads, so `stepwise watch s | head -1` ends soon after
    /// `head` does, not at the next event.
    ///
    /// - Throws: ``OutputFailed``, and records the failure, when stdout is broken.
    static func checkStdout() throws(OutputFailed) {
        if failed(.stdout) { throw OutputFailed() }
        var p = pollfd(fd: STDOUT_FILENO, events: Int16(POLLOUT), revents: 0)
        guard poll(&p, 1, 0) == 1, p.revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 else { return }
        markFailed(.stdout)
        throw OutputFailed()
    }

    /// The process's exit status for a command that ended with `status`: a failed write turns
    /// success into ``outputFailedStatus``; a command's own failure status is kept.
    static func exitStatus(_ status: Int32) -> Int32 {
        status == 0 && anyFailed ? outputFailedStatus : status
    }
}

/// Thrown by ``output(_:)`` when stdout is broken: the command stops (a long-running one too)
/// and exits with ``Console/outputFailedStatus`` without printing anything more.
struct OutputFailed: Error {}

/// Writes one line to stdout at once (unbuffered), so live output is never held back.
///
/// - Throws: ``OutputFailed`` when stdout is closed or broken (now or by an earlier write).
func output(_ line: String) throws(OutputFailed) {
    guard Console.write(line + "\n", to: .stdout) else { throw OutputFailed() }
}

/// Writes `error: <message>` to stderr; a failure is recorded (see ``Console``), never thrown,
/// so the caller's own error path goes on.
func printError(_ message: String) {
    Console.write("error: \(message)\n", to: .stderr)
}

/// Writes progress text (no newline) to stderr; a failure is recorded, never thrown.
func progress(_ text: String) {
    Console.write(text, to: .stderr)
}
