"""r1lite: reproduce the small-scale R1-Zero result (RL teaches search on Countdown) on one GPU."""

__version__ = "0.1.0"


def _quiet_optional_kernel_notice() -> None:
    """bitsandbytes warns on every import, on CPUs with AVX512-BF16, that the optional `kernels` package
    is missing; it then uses its own CPU kernel, which is all r1lite needs, so the notice only confuses."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()

    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(keep)


_quiet_optional_kernel_notice()
