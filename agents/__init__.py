"""Training loops for k-subset policies (installed as ``subset_rl.agents``)."""
