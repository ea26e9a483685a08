import StepwiseAgents
import StepwiseCore
import StepwiseLLM

extension AgentRegistry {
    /// Every agent this binary knows: the built-in ones, the `quiz` with its model-backed mode and
    /// the `llm` chat, both served by `llm` (the worker's `--llm-*` flags; `nil` in commands that
    /// only submit, and in workers started without `--llm-base-url`, whose model steps fail with a
    /// message saying so).
    static func known(llm: LLMConfiguration? = nil) -> AgentRegistry {
        var registry = AgentRegistry.builtIn
        registry.register(QuizAgent(modelWriter: llm.map { ModelQuizWriter(configuration: $0) }))
        registry.register(LLMAgent(configuration: llm))
        return registry
    }
}
