/// Metadata keys used in Stepwise logs, in one place.
public enum LogKeys {
    public static let jobID = "stepwise.job_id"
    public static let sessionID = "stepwise.session_id"
    public static let workerID = "stepwise.worker_id"
    public static let step = "stepwise.step"
    public static let attempt = "stepwise.attempt"
    public static let error = "stepwise.error"
    public static let count = "stepwise.count"
}
