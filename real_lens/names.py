"""The names the command line offers, kept free of torch so that ``real-lens --help`` answers at once.

Each is defined here once and re-exported where it belongs (``models.DEFAULT_MODEL``,
``models.DTYPES``' keys, ``models.DEVICE_MAP_STRATEGIES``, ``activations.READOUTS``,
``scoring.STRENGTHS``, ``inspection.DEFAULT_HOOKS_PROMPT``); ``tests/unit/cli/test_main.py``
checks that building the parser imports no torch.
"""

DEFAULT_MODEL = "smollm2-135m-instruct"
# The dtypes a model's weights (and a bank's activations) can be held in; models.DTYPES maps them to torch's.
DTYPE_NAMES = ("float32", "bfloat16", "float16")
# accelerate's placement strategies; anything else must be an explicit {module: device} map.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
# Which token's activation a bank reads: the last one, or the mean over the answer's tokens.
READOUTS = ("last", "mean_answer")
# Per-module steering strengths: the method's own rule, score / max score, or 1.
STRENGTHS = ("method", "score", "uniform")
DEFAULT_HOOKS_PROMPT = "Q: What is the capital of France? A:"
