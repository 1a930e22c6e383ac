"""r1lite: reproduce the small-scale R1-Zero result (RL teaches search on Countdown) on one GPU."""

__version__ = "0.1.0"
