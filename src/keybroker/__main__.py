"""``python -m keybroker``: the same as the ``keybroker`` command."""

from keybroker.cli import main

if __name__ == "__main__":
    main()
