/// An error of the Stepwise engine, with an opaque code that can grow without an API break.
public struct StepwiseError: Error, Sendable, CustomStringConvertible {
    /// What went wrong.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private enum Base: String, Sendable, Hashable {
            case invalidSessionID, invalidJSON, inputTooLarge, unknownAgent, agentMismatch, notOwner
            case sessionNotFound, jobDecodeFailed, sessionVersionConflict, stepTimedOut, shutdownInProgress
            case invalidConfiguration, unexpectedReply, sessionCancelled, notDeadLetter, unsafeRedisConfiguration
            case invalidArgument, holdLost
            case invalidOwner, invalidOptions
            case keyUnavailable, sealedDataInvalid, sessionEncrypted
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// A session id that does not match `[A-Za-z0-9_-]{1,64}`.
        public static let invalidSessionID = Code(.invalidSessionID)
        /// Text that is not valid UTF-8 JSON.
        public static let invalidJSON = Code(.invalidJSON)
        /// A step input over the configured size limit.
        public static let inputTooLarge = Code(.inputTooLarge)
        /// An owner that is empty, longer than 128 bytes, or has a character outside `A-Z a-z 0-9 _ . @ : -`.
        public static let invalidOwner = Code(.invalidOwner)
        /// Session options that are not a JSON object, have an empty key, or are over the size limit.
        public static let invalidOptions = Code(.invalidOptions)
        /// An agent name no worker knows.
        public static let unknownAgent = Code(.unknownAgent)
        /// A submit names another agent than the session was created with.
        public static let agentMismatch = Code(.agentMismatch)
        /// A submit by someone other than the session's owner.
        public static let notOwner = Code(.notOwner)
        /// No session with that id.
        public static let sessionNotFound = Code(.sessionNotFound)
        /// A job or session document could not be decoded.
        public static let jobDecodeFailed = Code(.jobDecodeFailed)
        /// A commit lost its hold on the session (fenced).
        public static let sessionVersionConflict = Code(.sessionVersionConflict)
        /// A step ran past its time limit.
        public static let stepTimedOut = Code(.stepTimedOut)
        /// The worker is shutting down.
        public static let shutdownInProgress = Code(.shutdownInProgress)
        /// A configuration value is out of range.
        public static let invalidConfiguration = Code(.invalidConfiguration)
        /// A submit to a session that was cancelled.
        public static let sessionCancelled = Code(.sessionCancelled)
        /// A dead-letter action on a job that is not a dead letter.
        public static let notDeadLetter = Code(.notDeadLetter)
        /// Redis is configured in a way that can lose jobs (eviction on, or no append-only file).
        public static let unsafeRedisConfiguration = Code(.unsafeRedisConfiguration)
        /// A protocol script refused an argument before writing anything.
        public static let invalidArgument = Code(.invalidArgument)
        /// The worker no longer holds the session its step runs for (it was presumed dead and the
        /// step went to another worker): the step's progress and commit change nothing.
        public static let holdLost = Code(.holdLost)
        /// A session's data is encrypted under a key this process does not have: no keyring is
        /// configured, or the keyring lacks the key id the session's data key is wrapped with.
        public static let keyUnavailable = Code(.keyUnavailable)
        /// A sealed value did not open with its session's data key: it was altered, or moved from
        /// another session or field.
        public static let sealedDataInvalid = Code(.sealedDataInvalid)
        /// A client without a keyring wrote to an encrypted session.
        public static let sessionEncrypted = Code(.sessionEncrypted)
        /// Redis answered something the engine did not expect.
        public static let unexpectedReply = Code(.unexpectedReply)

        public var description: String { base.rawValue }
    }

    /// What went wrong.
    public var code: Code
    /// A sentence saying what is wrong and, where possible, how to fix it.
    public var message: String

    /// Creates an error.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
