"""How policies (and the toy-wan testbed model) are made: RL, distillation, oracle search, calibration."""
