/// Size and character limits on a submission's owner and options, checked by ``Dispatcher``
/// before anything reaches Redis, so every way in (the CLI, a library caller) shares them.
extension Submission {
    /// The longest owner, in bytes.
    public static let maxOwnerBytes = 128
    /// The default largest session options document, in bytes of its JSON text (64 KiB).
    public static let defaultMaxOptionsBytes = 64 * 1024

    /// Checks an owner: 1-128 bytes from `A-Z a-z 0-9 _ . @ : -`.
    ///
    /// - Throws: ``StepwiseError`` with code ``StepwiseError/Code/invalidOwner``.
    public static func validateOwner(_ owner: String) throws(StepwiseError) {
        let bytes = owner.utf8
        guard !bytes.isEmpty else {
            throw StepwiseError(.invalidOwner, "owner is empty: use 1-\(maxOwnerBytes) characters from A-Z a-z 0-9 _ . @ : -")
        }
        guard bytes.count <= maxOwnerBytes else {
            throw StepwiseError(.invalidOwner, "owner is \(bytes.count) bytes, over the limit of \(maxOwnerBytes) bytes")
        }
        if let bad = owner.unicodeScalars.first(where: { !isOwnerCharacter($0) }) {
            // Printable ASCII as itself; anything else (space, control, non-ASCII) as its code point.
            let shown = (0x21...0x7E).contains(bad.value) ? "'\(bad)'" : "U+\(String(bad.value, radix: 16, uppercase: true))"
            throw StepwiseError(.invalidOwner, "owner has the character \(shown): use only A-Z a-z 0-9 _ . @ : -")
        }
    }

    private static func isOwnerCharacter(_ c: Unicode.Scalar) -> Bool {
        switch c {
        case "A"..."Z", "a"..."z", "0"..."9", "_", ".", "@", ":", "-": true
        default: false
        }
    }

    /// Checks session options: a JSON object whose keys are not empty, at most `maxBytes` bytes
    /// of JSON text.
    ///
    /// - Throws: ``StepwiseError`` with code ``StepwiseError/Code/invalidOptions``.
    public static func validateOptions(_ options: JSONValue, maxBytes: Int = defaultMaxOptionsBytes) throws(StepwiseError) {
        guard let object = options.objectValue else {
            throw StepwiseError(.invalidOptions, "options must be a JSON object, like {\"model\":\"small\"}")
        }
        if object.keys.contains("") { throw StepwiseError(.invalidOptions, "options have an empty key: every key needs a name") }
        let size = options.jsonString.utf8.count
        guard size <= maxBytes else {
            throw StepwiseError(
                .invalidOptions, "options are \(size) bytes, over the limit of \(maxBytes) bytes: send fewer or smaller settings")
        }
    }

    /// Checks ``owner`` and ``options`` when given.
    func validateOwnerAndOptions(maxOptionsBytes: Int) throws(StepwiseError) {
        if let owner { try Self.validateOwner(owner) }
        if let options { try Self.validateOptions(options, maxBytes: maxOptionsBytes) }
    }
}
