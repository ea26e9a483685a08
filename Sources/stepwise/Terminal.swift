import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The terminal for `stepwise top`: raw input (no echo, no line buffering, Ctrl-C as a key), the
/// alternate screen and a hidden cursor while it runs, all restored by ``restore()``. Only plain
/// ANSI/VT100 sequences, so it works over any ssh session.
final class Terminal {
    private var saved = termios()
    private var active = false

    /// Whether stdin and stdout are both terminals.
    static var isInteractive: Bool { isatty(STDIN_FILENO) == 1 && isatty(STDOUT_FILENO) == 1 }

    /// Enters raw mode and the alternate screen.
    func enter() throws {
        guard tcgetattr(STDIN_FILENO, &saved) == 0 else { throw TerminalError("cannot read the terminal's settings") }
        var raw = saved
        raw.c_lflag &= ~tcflag_t(ICANON | ECHO | ISIG)
        raw.c_iflag &= ~tcflag_t(IXON | ICRNL)
        withUnsafeMutableBytes(of: &raw.c_cc) { cc in
            cc[Int(VMIN)] = 0
            cc[Int(VTIME)] = 0
        }
        guard tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0 else { throw TerminalError("cannot set the terminal to raw mode") }
        active = true
        // Alternate screen, hide the cursor, clear.
        _ = Console.write("\u{1B}[?1049h\u{1B}[?25l\u{1B}[2J", to: .stdout)
    }

    /// Leaves the alternate screen, shows the cursor and restores the terminal's settings.
    func restore() {
        guard active else { return }
        active = false
        _ = Console.write("\u{1B}[?25h\u{1B}[?1049l", to: .stdout)
        tcsetattr(STDIN_FILENO, TCSANOW, &saved)
    }

    /// Rows and columns (80x24 when the terminal does not say).
    static func size() -> (rows: Int, columns: Int) {
        var w = winsize()
        if ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &w) == 0, w.ws_row > 0, w.ws_col > 0 { return (Int(w.ws_row), Int(w.ws_col)) }
        return (24, 80)
    }

    /// The keys typed since the last call, without waiting (stdin is in raw mode with VMIN 0).
    func pendingKeys() -> [UInt8] {
        var keys: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64)
        while true {
            var fds = pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0)
            guard poll(&fds, 1, 0) > 0 else { break }
            let n = read(STDIN_FILENO, &buffer, buffer.count)
            // 0 with POLLIN: the terminal went away (ssh closed); treat it as quit.
            if n == 0 { return keys + [0x04] }
            if n < 0 { break }
            keys.append(contentsOf: buffer[0..<n])
        }
        return keys
    }

    /// Draws `lines` from the top-left corner: each line cut to the width and cleared to its end,
    /// then the rest of the screen cleared. One write, so the screen never flickers.
    func draw(_ lines: [String], columns: Int, rows: Int) {
        var out = "\u{1B}[H"
        for (i, line) in lines.prefix(rows).enumerated() {
            if i > 0 { out += "\r\n" }
            out += String(line.prefix(columns)) + "\u{1B}[K"
        }
        out += "\u{1B}[J"
        _ = Console.write(out, to: .stdout)
    }
}

struct TerminalError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
