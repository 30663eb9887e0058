"""The policy model: loading (builtin:tiny, local dirs, hub ids), prompts, sampling and decoding,
and the policy's two roles inside search (proposer and graft)."""
