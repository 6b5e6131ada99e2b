"""`python -m cli`: the same as the `voteledger` command."""

from cli.app import main

main()
