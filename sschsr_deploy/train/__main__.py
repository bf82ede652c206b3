"""``python -m sschsr_deploy.train``: runs :func:`sschsr_deploy.train.cli.main`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
