"""Scale of the 7-D delta end-effector action (see env.py's docstring for the whole convention)."""

POS_SCALE = 0.02  # metres of end-effector motion per control step at |action| = 1
ROT_SCALE = 0.1  # radians of end-effector rotation per control step at |action| = 1
