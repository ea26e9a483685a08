import Foundation
import Logging
import StepwiseAgents
import StepwiseCore
import StepwiseLLM
import Testing

/// The parts of the `llm` agent that need no server: the SSE parser, the chunk accumulator, the
/// token coalescer, JSON repair, the quiz's shape check, options, the API key and the demo tools.
@Suite("llm agent parts: SSE parsing, chunk assembly, coalescing, JSON repair, options, tools")
struct LLMUnitTests {
    @Test func sseEventsSurviveAnyByteSplit() throws {
        let stream = "data: {\"a\":1}\r\n\r\n: keep-alive\n\nevent: x\ndata: {\"b\":\ndata: 2}\n\ndata: [DONE]\n\n"
        let bytes = Array(stream.utf8)
        for cut in 1..<bytes.count {
            var parser = ServerSentEventParser()
            let events = try parser.feed(bytes[..<cut]) + parser.feed(bytes[cut...])
            #expect(events == ["{\"a\":1}", "{\"b\":\n2}", "[DONE]"], "split at \(cut)")
            #expect(!parser.hasPartialEvent)
        }
        var parser = ServerSentEventParser(maxEventBytes: 8)
        #expect(throws: LLMError.self) { try parser.feed(Array("data: 0123456789\n\n".utf8)) }
    }

    @Test func toolCallArgumentsAreAssembledByIndex() throws {
        var acc = ChatStreamAccumulator()
        let chunks = [
            #"{"choices":[{"index":0,"delta":{"role":"assistant","content":null},"finish_reason":null}]}"#,
            #"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"calculator","arguments":""}}]}}]}"#,
            #"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"c2","type":"function","function":{"name":"clock","arguments":"{"}}]}}]}"#,
            #"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"expre"}}]}}]}"#,
            #"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"}"}}]}}]}"#,
            #"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ssion\":\"1+1\"}"}}]}}]}"#,
            #"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            #"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
        ]
        for c in chunks { #expect(try acc.apply(c) == nil) }
        let done = acc.completion
        #expect(done.toolCalls.map(\.name) == ["calculator", "clock"])
        #expect(done.toolCalls.map(\.arguments) == [#"{"expression":"1+1"}"#, "{}"])
        #expect(done.finishReason == "tool_calls")
        #expect(done.usage?["total_tokens"] == 7)
        #expect(done.message["content"] == .null)
        #expect(throws: LLMError.self) { try acc.apply("{not json") }
        #expect(throws: LLMError.self) { try acc.apply(#"{"id":"x"}"#) }
        #expect(throws: LLMError.self) { try acc.apply(#"{"error":{"message":"overloaded"}}"#) }
    }

    @Test func coalescingGroupsByTimeAndCount() {
        var c = TokenCoalescer(interval: .milliseconds(100), maxTokens: 3)
        let t0 = ContinuousClock.now
        #expect(c.add("a", now: t0)?.text == "a", "the first token goes out at once")
        #expect(c.add("b", now: t0 + .milliseconds(10)) == nil)
        #expect(c.add("c", now: t0 + .milliseconds(20)) == nil)
        #expect(c.add("d", now: t0 + .milliseconds(30))?.text == "bcd", "3 tokens make an event")
        #expect(c.add("e", now: t0 + .milliseconds(40)) == nil)
        #expect(c.add("f", now: t0 + .milliseconds(200))?.text == "ef", "100 ms make an event")
        #expect(c.add("g", now: t0 + .milliseconds(210)) == nil)
        #expect(c.drain()?.tokens == 1)
        #expect(c.drain() == nil)
    }

    @Test func jsonRepairFindsTheObject() {
        #expect(JSONRepair.object(in: #" {"a":1} "#)?.repaired == false)
        let fenced = "Sure!\n```json\n{\"a\": [1, 2,],}\n```\nBye"
        #expect(JSONRepair.object(in: fenced)?.value == ["a": [1, 2]])
        #expect(JSONRepair.object(in: #"Here: {"q":"a } in a string?","n":{"m":1}} done"#)?.value["q"] == "a } in a string?")
        #expect(JSONRepair.object(in: "no json here") == nil)
        #expect(JSONRepair.object(in: "[1,2]") == nil)
    }

    @Test func quizQuestionShape() {
        #expect(QuizQuestion.problem(["q": "Why?", "choices": ["a", "b", "c", "d"], "answer": 3]) == nil)
        #expect(QuizQuestion.problem(["q": "Why?", "choices": ["a", "b", "c"], "answer": 0]) != nil)
        #expect(QuizQuestion.problem(["q": "Why?", "choices": ["a", "a", "c", "d"], "answer": 0]) != nil)
        #expect(QuizQuestion.problem(["q": "Why?", "choices": ["a", "b", "c", "d"], "answer": 4]) != nil)
        #expect(QuizQuestion.problem(["q": "", "choices": ["a", "b", "c", "d"], "answer": 0]) != nil)
    }

    @Test func optionsAreCheckedAndTheKeyStaysHome() throws {
        let config = LLMConfiguration(baseURL: "http://127.0.0.1:1/v1/", allowedBaseURLs: ["https://api.openai.com/v1"], model: "m")
        let o = try LLMOptions(options: [:], configuration: config)
        #expect(o.baseURL == "http://127.0.0.1:1/v1" && o.model == "m" && o.maxToolRounds == 4 && o.stepTimeout == .seconds(120))
        #expect(
            try LLMOptions(options: ["base_url": "https://api.openai.com/v1/"], configuration: config).baseURL
                == "https://api.openai.com/v1")
        for bad: JSONValue in [
            ["base_url": "https://evil.example/v1"], ["temperature": 3], ["temperature": "hot"], ["max_tool_rounds": 21],
            ["step_timeout": 0],
            ["tools": ["nope"]], ["model": ""], ["response_format": "xml"], ["repairs": 9],
        ] {
            #expect(throws: LLMError.self, "\(bad)") { try LLMOptions(options: bad, configuration: config) }
        }
        let key = try APIKey(" sk-secret\n")
        #expect("\(key)" == "***" && String(reflecting: key) == "APIKey(***)")
        #expect(throws: LLMError.self) { try APIKey("  \n") }
        #expect(throws: LLMError.self) { try APIKey("sk secret") }
        let body = ChatCompletionClient(configuration: LLMConfiguration(baseURL: "http://x.invalid/v1", apiKey: key))
            .body(ChatRequest(messages: [["role": "user", "content": "hi"]]), options: o)
        #expect(!body.jsonString.contains("sk-secret"), "the key is a header, never in the body")
    }

    @Test func calculatorTool() async throws {
        let context = ToolContext(
            idempotencyKey: "s:1/tool/0", index: 0, callID: "c", sessionID: try SessionID("s"), attempt: 1, logger: Logger(label: "t"))
        let tool = CalculatorTool()
        #expect(try await tool.call(arguments: ["expression": "(2+3)*4 - -1/2"], context: context)["value"]?.doubleValue == 20.5)
        for bad in ["2+", "1/0", "2 $ 3", String(repeating: "(", count: 200) + "1"] {
            await #expect(throws: ToolError.self, "\(bad)") {
                try await tool.call(arguments: ["expression": .string(bad)], context: context)
            }
        }
    }
}
