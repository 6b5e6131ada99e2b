"""MCP tools for agents: cast a vote, read the charts, over streamable HTTP or stdio."""
