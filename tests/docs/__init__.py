"""The documents' command blocks as tests: every shell block of the README and of `docs/` is run as written on a CPU,
or states what it needs (a GPU, the network, ...) and is parsed (docs/development.md, "Documents that are tests")."""
