"""``python -m vlattn`` (and ``torchrun -m vlattn``) run the command line."""

from vlattn.cli import main

if __name__ == "__main__":
    main()
