"""Development tooling: what `make run`, `make test` and `make bench` use on this machine; not
part of the installed package."""
