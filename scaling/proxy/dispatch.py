"""The MoE dispatch implementations a proxy can train with (torch-free, for validating configs).

``fused`` (the whole layer as one autograd Function with native routing), ``grouped``
(``torch._grouped_mm`` over tokens sorted by expert), ``sorted`` (one matmul per expert over
its contiguous slice), ``loop`` (the Hugging Face per-expert masking loop, the test oracle) and
``auto`` (chosen per shape and device; see :class:`scaling.proxy.model.ProxyConfig`).
"""

DISPATCH_MODES = ("auto", "fused", "grouped", "sorted", "loop")

# How an MoE layer runs under torch.inference_mode (scaling.proxy.moe_infer): ``auto`` (the path
# measured fastest for the shape regime), one path forced, or ``off`` (the training forward).
INFERENCE_PATHS = ("auto", "off", "native", "grouped", "sorted")
