import ArgumentParser
struct LoadTestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "loadtest", abstract: "todo")
}
