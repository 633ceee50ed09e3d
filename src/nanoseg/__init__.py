"""nanoseg: number-based particle size distributions from electron micrographs.

The package follows the workflow of Rühle, Krumrey & Hodoroaba, Sci. Rep. 11, 4942 (2021):
``shapes`` (WGAN-GP) -> ``masks`` (Perlin assembly) -> ``translate`` (CycleGAN, artifact
filter) -> ``segment`` (MultiResUNet + watershed) -> ``classify`` -> ``measure``, judged
by ``metrics``. Importing the package imports no torch.
"""

from nanoseg.errors import NanosegError

__version__ = "0.1.0"
__all__ = ["NanosegError", "__version__"]
