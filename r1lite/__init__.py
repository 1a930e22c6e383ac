"""r1lite: reproduce the small-scale R1-Zero result (RL teaches search on Countdown) on one GPU."""

import logging
import os
import sys

__version__ = "0.1.0"

# Set to 1 to let bitsandbytes and transformers fetch compute kernels from the Hugging Face Hub.
HUB_KERNELS_ENV = "R1LITE_HUB_KERNELS"
_TRUE = {"1", "true", "yes", "y", "on"}


def _no_remote_kernels() -> None:
    """Hub kernels are remote code fetched at run time: on CPUs with AVX512-BF16 importing bitsandbytes asks
    the Hub for one through the `kernels` package (two connection attempts on every command, a notice about
    trust checks when offline), and transformers 5 kernelizes layers of every model it loads unless
    USE_HUB_KERNELS says no. A run should compute with the versions that were locked and tested, so r1lite
    turns both off unless the user opts in (R1LITE_HUB_KERNELS=1, or transformers' own USE_HUB_KERNELS=1);
    bitsandbytes then uses the CPU kernel it ships."""
    opted_in = os.environ.get(HUB_KERNELS_ENV, "").strip().lower() in _TRUE
    if opted_in or os.environ.get("USE_HUB_KERNELS", "").strip().lower() in _TRUE:
        return
    os.environ["USE_HUB_KERNELS"] = "NO"
    sys.modules.setdefault("kernels", None)  # `import kernels` now raises ImportError


def _quiet_optional_kernel_notice() -> None:
    """bitsandbytes then logs that the kernel could not be loaded; it falls back on its own, so the notice
    only confuses."""

    def keep(record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()

    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(keep)


_no_remote_kernels()
_quiet_optional_kernel_notice()
