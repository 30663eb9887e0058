"""The GRPO learner: the loss maths (TRL-named options), the dataset layer that turns stored
evaluations into grouped samples, and the trainer."""
