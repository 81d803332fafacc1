"""The performance bench (issue 7): `python -m bench` (or `make bench`); see bench/README.md."""
