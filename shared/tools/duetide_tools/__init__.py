"""duetide's developer tooling, kept out of the runtime and its image.

`cli` (the `duetide` command), `manifests` (knative/ and kafka/ read into the wiring),
`local` (the local stack: embedded broker, KafkaSource and PingSource emulation,
supervision), `deploy`, `deadletters` and `topic_reader`. It imports the runtime
(`duetide`); the runtime never imports it.
"""
