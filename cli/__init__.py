"""`voteledger`, the operator CLI: the entry point above commands/, projections/ and queries/.

`cli.app` lists every command and the module that holds it.
"""
