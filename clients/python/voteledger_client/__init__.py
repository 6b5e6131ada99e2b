"""Typed client for the voteledger APIs."""
