import CHiredis
import Foundation

/// A serial executor that runs every job on one dedicated OS thread.
///
/// ``RedisConnection`` uses one of these as its actor executor, so actor isolation means
/// exactly "only this thread touches the hiredis context", and blocking hiredis calls never
/// occupy a thread of Swift's cooperative pool.
public final class ThreadExecutor: SerialExecutor, @unchecked Sendable {
    // @unchecked Sendable: `queue` and `stopped` are only read or written while `condition`
    // (an NSCondition, i.e. a mutex plus condition variable) is locked.
    private let condition = NSCondition()
    private var queue: [UnownedJob] = []
    private var stopped = false

    /// Starts the thread.
    ///
    /// - Parameter name: the thread's name, visible in debuggers and `top -H`.
    public init(name: String) {
        // The thread keeps the executor alive until `shutdown()` lets `runLoop` return.
        let osName = String(name.utf8.prefix(15)) ?? "redis"
        let thread = Thread {
            // The OS-level name (15 bytes on Linux), as `top -H` and /proc/<pid>/task/*/comm show it.
            chiredis_name_this_thread(osName)
            self.runLoop()
        }
        thread.name = name
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Asks the thread to finish once the jobs already queued have run.
    public func shutdown() {
        condition.lock()
        stopped = true
        condition.signal()
        condition.unlock()
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        condition.lock()
        queue.append(unowned)
        condition.signal()
        condition.unlock()
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    private func runLoop() {
        var batch: [UnownedJob] = []
        while true {
            condition.lock()
            while queue.isEmpty && !stopped { condition.wait() }
            if queue.isEmpty && stopped {
                condition.unlock()
                return
            }
            swap(&batch, &queue)
            condition.unlock()
            for job in batch { job.runSynchronously(on: asUnownedSerialExecutor()) }
            batch.removeAll(keepingCapacity: true)
        }
    }
}
