"""Who writes a node's children: the model-free mutation proposer (with its routing and graft edits
and the operators' type signatures) and the LLM optimizer proposer. The trained policy's proposers
live in :mod:`workflow_rl.policy` (search does not import the project's model code)."""
