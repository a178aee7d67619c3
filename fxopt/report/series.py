"""The three predicted timelines a report can show, by label: the planning code names its
timelines with these, and the text and HTML views key their symbols and colours by them."""

KEEP_SERIES = "keep everything"
DEFAULT_SERIES = "PyTorch default"
PLAN_SERIES = "fxopt plan"
