"""GPU architecture from a GPU's name, and its $/GPU-hour from the pricing table."""

from __future__ import annotations

import re

from gpufleet.server.config import Pricing

# Most specific first: "L40S" must win over "L40", and "L40" over "L4";
# "A100" over "A10", "A10G" over "A10".
KNOWN_ARCHS: tuple[str, ...] = (
    "GB200", "B200", "B100", "H200", "H100", "H800", "H20", "GH200", "A100", "A800",
    "L40S", "L40", "L4", "A10G", "A40", "A30", "A16", "A10", "A2", "T4", "V100", "P100", "P40", "P4",
)
_PATTERNS = [(arch, re.compile(rf"(?<![A-Z0-9]){arch}(?![0-9])", re.IGNORECASE)) for arch in KNOWN_ARCHS]


def gpu_arch(gpu_name: str | None) -> str:
    """"NVIDIA A100-SXM4-80GB" -> "A100"; an unknown name keeps its name; none -> "unknown"."""
    if not gpu_name or not gpu_name.strip():
        return "unknown"
    for arch, pattern in _PATTERNS:
        if pattern.search(gpu_name):
            return arch
    return gpu_name.strip()


def rate_for(arch: str, pricing: Pricing) -> float:
    """$/GPU-hour for an architecture: the table's entry, else the default rate."""
    rate = pricing.gpu_rates_usd.get(arch)
    return pricing.default_rate_usd if rate is None else rate
