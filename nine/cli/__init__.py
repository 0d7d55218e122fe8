"""The `nine` command (nine.cli.main.main); cmd/nine is its script."""


def main(argv=None):
    from .main import main as _main
    return _main(argv)
