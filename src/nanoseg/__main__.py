"""``python -m nanoseg``: the same command line as ``nanoseg``."""

from nanoseg.cli import main

if __name__ == "__main__":
    main()
