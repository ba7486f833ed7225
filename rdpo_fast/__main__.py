"""`python -m rdpo_fast ...` is `rdpo-fast ...`."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
