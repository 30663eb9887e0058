"""MCTS over workflow programs: contracts (base), tree, selection, proposers and the driver."""
